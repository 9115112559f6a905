"""Trigger parameterisation and stamping (reference section 1.1).

A trigger is a mask in (0,1) of shape [H, W, 1] (one channel, broadcast over the image's channels)
and a pattern in [0,1] of shape [H, W, C]. The optimiser works on unconstrained variables:

    mask    = tanh(mask_var)    / (2 - eps) + 0.5
    pattern = tanh(pattern_var) / (2 - eps) + 0.5
    stamped = (1 - mask) * x + mask * pattern

The (2 - eps) factor keeps the encoding of exactly 0 or 1 finite (about +-8.75).
"""

import numpy as np
import tensorflow as tf

EPSILON = 1e-7  # keras.backend.epsilon(), as the reference.


def decode(var):
  """Unconstrained variable -> value in (0, 1)."""
  return tf.tanh(var) / (2.0 - EPSILON) + 0.5


def encode(value):
  """Value in [0, 1] (clipped) -> unconstrained variable; the inverse of `decode`."""
  value = tf.clip_by_value(value, 0.0, 1.0)
  return tf.atanh((value - 0.5) * (2.0 - EPSILON))


def stamp(x, mask, pattern, clip: bool = True):
  """Stamps a trigger onto images: (1 - mask) * x + mask * pattern, optionally clipped to [0,1].

  `mask` broadcasts over channels ([..., H, W, 1]); shapes broadcast as usual, so one trigger can be
  stamped on a batch, or a batch of triggers on matching images.
  """
  out = (1.0 - mask) * x + mask * pattern
  return tf.clip_by_value(out, 0.0, 1.0) if clip else out


def trigger_size(mask, channels: int):
  """The reference's reported size: L1 norm of the mask broadcast over the image's channels.

  For a [..., H, W] or [..., H, W, 1] mask this is `channels * sum(mask)` (the "3-ch L1" of the
  reference on RGB images; the plain L1 on grey-scale images).
  """
  mask = np.asarray(mask)
  if mask.ndim >= 3 and mask.shape[-1] == 1:
    mask = mask[..., 0]
  return channels * np.abs(mask).sum(axis=(-2, -1))
