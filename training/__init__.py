"""edge-detect training: the workstation side (TensorFlow + Keras 3).

Imports ``edge_detect`` for preprocessing, scoring and bundle writing; never the reverse.
"""
