"""Evaluations of a classifier: clean accuracy (here), PGD robustness (moth_tf.attacks.pgd) and
pairwise class distance (moth_tf.distance)."""

from moth_tf.evaluation.accuracy import accuracy
from moth_tf.evaluation.accuracy import predict_labels

__all__ = ["accuracy", "predict_labels"]
