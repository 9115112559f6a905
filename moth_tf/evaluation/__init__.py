"""Evaluations of a classifier.

* accuracy: clean accuracy (`accuracy`, `predict_labels`, exported here).
* robustness: robust accuracy under L-infinity PGD (the attack is moth_tf.attacks.pgd).
* backdoor: BackdoorBench's C-Acc, ASR, R-Acc and DER of a backdoor trigger.
* detection: Neural Cleanse's backdoor detection (reversed triggers, MAD outlier test).
* distance: MOTH's pairwise class distance (trigger inversion between every pair of classes).

Only the accuracy functions are imported with the package: the others import TensorFlow.
"""

from moth_tf.evaluation.accuracy import accuracy
from moth_tf.evaluation.accuracy import predict_labels

__all__ = ["accuracy", "predict_labels"]
