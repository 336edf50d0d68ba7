"""The training engine: the loop, checkpoints, loss curves, the language-model loss, the
shared run context and the cached training images. Recipes (:mod:`training.recipes`) and
stages (:mod:`training.stages`) use it; it knows no recipe."""
