"""Recipes: whole runs built from the engine and the stages: the configured pipeline, the
demo model, a retrain from the node's signed reports, the content check fitted at packaging,
and the pretrained parts they start from."""
