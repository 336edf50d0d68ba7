"""Tiny checkpoints in the formats published models ship (issue 20)."""
