"""Hardening baselines beside MOTH, each one module with the entry points of
moth_tf.hardening.methods (the registry)."""
