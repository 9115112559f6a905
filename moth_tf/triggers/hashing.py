"""Counter-based random numbers: a direction's draws depend only on its seed, a stream, an element.

The trigger engine draws each direction's initial trigger and its perturbations from a hash of its
seed, the step and the element's index, so a direction gets exactly the same random numbers
whether it runs alone or batched with others, on one device or on any replica, and the same seed
always gives the same result.
"""

from typing import Sequence

import numpy as np
import tensorflow as tf


def _fmix32(h):
  """MurmurHash3's 32-bit finaliser: a cheap, well-mixed integer hash."""
  h = tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, tf.constant(16, tf.uint32)))
  h = h * tf.constant(0x85EBCA6B, tf.uint32)
  h = tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, tf.constant(13, tf.uint32)))
  h = h * tf.constant(0xC2B2AE35, tf.uint32)
  return tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, tf.constant(16, tf.uint32)))


def hashed_uniform(seeds, stream, shape_per_direction: Sequence[int]):
  """U[0,1) numbers of shape [K, *shape_per_direction] that depend only on (seed_k, stream, index).

  Args:
    seeds: [K] int32 per-direction seeds.
    stream: scalar int32 (e.g. the step number), so every step draws fresh numbers.
    shape_per_direction: static shape of one direction's tensor.
  """
  count = int(np.prod(shape_per_direction))
  index = tf.cast(tf.range(count, dtype=tf.int32), tf.uint32)[None, :]
  seeds = tf.cast(tf.cast(tf.reshape(seeds, [-1, 1]), tf.int32), tf.uint32)
  stream = tf.cast(tf.cast(stream, tf.int32), tf.uint32)
  h = _fmix32(seeds * tf.constant(0x9E3779B1, tf.uint32) + tf.constant(0x7F4A7C15, tf.uint32))
  h = _fmix32(h + stream * tf.constant(0x632BE5AB, tf.uint32))
  h = _fmix32(h + index * tf.constant(0x85157AF5, tf.uint32))
  # The top 24 bits give exactly representable float32 values in [0, 1).
  u = tf.cast(tf.bitwise.right_shift(h, tf.constant(8, tf.uint32)), tf.float32) / 16777216.0
  return tf.reshape(u, tf.concat([[tf.shape(seeds)[0]], shape_per_direction], 0))


# Hash streams for the initial mask/pattern; perturbations use stream 2 * step + {0, 1} + 16.
INIT_MASK_STREAM = 1
INIT_PATTERN_STREAM = 2
