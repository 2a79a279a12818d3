"""Workstation side of getting models onto devices: push bundles over SSH with health check and
rollback (``push``), signing keys and signatures (``edge_detect.signing``), and signed updates
over MQTT for devices behind NAT (``mqtt_update``).

Its own top-level package, not under ``training/``: pushing a bundle to a fleet (from a laptop,
a CI job or a jump host) needs only the device dependencies (edge_detect) plus OpenSSH, never
TensorFlow. The device-side halves (bundle store, signature check, update handler) live in
``edge_detect.update`` and ``edge_detect.signing`` because the device runs them.
"""
