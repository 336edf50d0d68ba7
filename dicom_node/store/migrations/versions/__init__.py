"""Revisions of the node's database schema, oldest first."""
