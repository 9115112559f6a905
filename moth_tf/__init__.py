"""moth_tf: MOTH (Model Orthogonalization) class-distance hardening in TensorFlow 2 / Keras 3."""

__version__ = "0.1.0"
