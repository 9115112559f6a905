"""Clean accuracy of a logits classifier."""

import numpy as np


def predict_labels(model, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
  """Arg-max predictions of `model` (inference mode) on `x`, batched."""
  if len(x) == 0:
    return np.zeros((0,), np.int64)
  logits = model.predict(x, batch_size=batch_size, verbose=0)
  return np.argmax(logits, axis=-1).astype(np.int64)


def accuracy(model, x: np.ndarray, y: np.ndarray, batch_size: int = 512) -> float:
  """Fraction of `x` that `model` classifies as `y`."""
  if len(x) == 0:
    raise ValueError("cannot compute accuracy on an empty split")
  return float(np.mean(predict_labels(model, x, batch_size) == np.asarray(y)))
