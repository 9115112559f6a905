"""Backdoor metrics with the names BackdoorBench uses: C-Acc, ASR, R-Acc and DER.

* C-Acc: clean test accuracy.
* ASR (attack success rate): the share of stamped held-out images the backdoor applies to (all-to-one:
  the non-target classes) that the model classifies as the backdoor's label for them.
* R-Acc (robust accuracy): the share of those stamped images still classified as their true class.
* DER (defence effectiveness rating) of a defended model against its poisoned original:
  [max(0, dASR) - max(0, dAcc) + 1] / 2 with dASR = ASR drop and dAcc = C-Acc drop; 1 is a perfect
  defence (ASR to 0 at no accuracy cost), 0.5 changes nothing.
"""

from typing import Optional

import numpy as np

from moth_tf.evaluation.accuracy import predict_labels


def backdoor_metrics(model, x: np.ndarray, y: np.ndarray, trigger, num_classes: int,
                     batch_size: int = 512, clean_predictions: Optional[np.ndarray] = None) -> dict:
  """C-Acc, ASR and R-Acc of `model` on held-out images `x`, `y` under a BackdoorTrigger.

  Args:
    model: logits classifier (inference mode).
    x, y: held-out images and labels (the test split).
    trigger: moth_tf.attacks.backdoor.BackdoorTrigger.
    num_classes: n.
    clean_predictions: the model's predictions on `x`, if already computed.
  """
  y = np.asarray(y)
  clean = predict_labels(model, x, batch_size) if clean_predictions is None else clean_predictions
  victims = trigger.victims(y)
  if not np.any(victims):
    raise ValueError("no held-out images the backdoor applies to; cannot measure its ASR")
  stamped = predict_labels(model, trigger.stamp(x[victims]), batch_size)
  return {
      "c_acc": float(np.mean(clean == y)),
      "asr": float(np.mean(stamped == trigger.target_labels(y[victims], num_classes))),
      "r_acc": float(np.mean(stamped == y[victims])),
      "images": int(len(x)),
      "stamped_images": int(victims.sum()),
  }


def defence_effectiveness(original: dict, defended: dict) -> float:
  """DER of a defended model's metrics against its poisoned original's (both from backdoor_metrics)."""
  asr_drop = original["asr"] - defended["asr"]
  acc_drop = original["c_acc"] - defended["c_acc"]
  return (max(0.0, asr_drop) - max(0.0, acc_drop) + 1.0) / 2.0
