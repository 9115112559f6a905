"""Evasion attacks used for adversarial training and robustness evaluation (in-graph loops)."""
