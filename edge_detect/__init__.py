"""edge-detect: visual anomaly detection on the edge device.

This package is the device side and must never import TensorFlow or Keras.
"""

__version__ = "0.1.0"
