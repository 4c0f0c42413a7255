"""The pruning engine: PAODING on Keras 3, vectorised.  Imports nothing of Jupyter."""
