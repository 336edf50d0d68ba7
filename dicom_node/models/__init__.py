"""The node's models: the registry of bundles and versions, the per-process model cache, and
the warm-up that builds, loads and self-tests the model before it drafts."""
