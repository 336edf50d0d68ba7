"""Vision backbones that are not transformers models, with their published key names."""
