"""Trigger inversion spread over the replicas of a `tf.distribute` strategy.

The K directions of one `invert` call are independent optimisations (every direction has its own
trigger, Adam state, cost schedule and hash-seeded randomness; see moth_tf.triggers.engine), so
they split across replicas with no communication while they run:

* the K directions are cut into R contiguous blocks as even as possible (replica r gets the r-th
  block, in direction order), and every block is padded to the same length B = ceil(K / R) with
  *padding directions*: one image, already done, so the step loop never sends them through the
  model and they cost nothing;
* every replica gets its block's images, targets, seeds and initial state through
  `strategy.experimental_distribute_values_from_function`; blocks hold different numbers of images,
  which is fine: nothing is batched across replicas;
* one `strategy.run` per chunk runs each replica's `tf.while_loop` (the engine's own graph code,
  `TriggerInverter._chunk`) against that replica's copy of the model; a replica whose directions
  are all done leaves its loop early;
* between chunks the count of finished directions and the furthest step are all-reduced, so every
  worker of a multi-worker strategy makes the same decision to go on or stop;
* at the end `strategy.gather` collects every replica's block on every worker (per-image losses
  padded to the longest block), and the host drops the padding, giving the directions back in the
  order they were given.

Because a direction's arithmetic and random numbers do not depend on its batch-mates, one device
and R replicas give the same triggers; on CPU the same bits (tests/test_distributed.py).
"""

import math
from typing import Callable, Optional, Sequence

import numpy as np
import tensorflow as tf

from moth_tf.triggers import engine


def replica_blocks(num_directions: int, num_replicas: int):
  """Contiguous, as-even-as-possible [start, stop) direction ranges, one per replica.

  Example: 10 directions on 4 replicas -> [(0, 3), (3, 6), (6, 8), (8, 10)].
  """
  # np.array_split's rule: the first K % R blocks get one direction more.
  base, extra = divmod(num_directions, num_replicas)
  starts = [r * base + min(r, extra) for r in range(num_replicas + 1)]
  return [(starts[r], starts[r + 1]) for r in range(num_replicas)]


class DistributedInverter:
  """A TriggerInverter whose directions are split across the replicas of `strategy`.

  Same `invert` arguments and result as engine.TriggerInverter. Build the model (or load it)
  inside `strategy.scope()` so that every replica calls its own copy of the weights.

  Example:
    strategy = tf.distribute.MirroredStrategy()
    with strategy.scope():
      model = keras.saving.load_model("model.keras")
    inverter = DistributedInverter(model, InversionSettings(steps=1000), strategy)
    result = inverter.invert(images, targets, seeds)
  """

  def __init__(self, model: Callable, settings: engine.InversionSettings,
               strategy: tf.distribute.Strategy):
    self.model = model
    self.settings = settings
    self.strategy = strategy
    # The per-direction graph code is the engine's; this class only distributes it.
    self.inverter = engine.TriggerInverter(model, settings)
    self._run_chunk = tf.function(self._chunk, reduce_retracing=True)
    self._gather = tf.function(self._gather_state, reduce_retracing=True)

  @property
  def num_replicas(self) -> int:
    return self.strategy.num_replicas_in_sync

  def _chunk(self, state, x, sample_dir, targets, seeds, asr_bound, total_steps, chunk_end,
             early_stop_patience):
    """One chunk of steps on every replica; returns (state, directions done, furthest step)."""

    def replica_fn(st, xs, ds, ts, ss):
      new = self.inverter._chunk(st, xs, ds, ts, ss, asr_bound, total_steps, chunk_end,  # pylint: disable=protected-access
                                 early_stop_patience)
      return new, tf.reduce_sum(tf.cast(new["done"], tf.int32)), tf.reshape(new["step"], [1])

    state, done, step = self.strategy.run(replica_fn, args=(state, x, sample_dir, targets, seeds))
    # Reduced across all replicas (and workers), so every worker's host loop decides alike.
    done = self.strategy.reduce(tf.distribute.ReduceOp.SUM, done, axis=None)
    step = tf.reduce_max(self.strategy.gather(step, axis=0))  # ReduceOp has no MAX.
    return state, done, step

  def _gather_state(self, state, max_samples):
    """Every replica's block of the state, concatenated in replica order on every worker."""

    def pad(st):
      out = dict(st)
      for key in ("loss_start", "loss_end"):
        # Blocks hold different numbers of images; gather needs equal shapes.
        out[key] = tf.pad(st[key], [[0, max_samples - tf.shape(st[key])[0]]])
      out["step"] = tf.reshape(st["step"], [1])
      out["done"] = tf.cast(st["done"], tf.int32)  # Collective gathers take no bools.
      return out

    padded = self.strategy.run(pad, args=(state,))
    return {key: self.strategy.gather(value, axis=0) for key, value in padded.items()}

  def invert(self, images: Sequence[np.ndarray], targets: Sequence[int], seeds: Sequence[int],
             init_cost=None, steps: Optional[int] = None, init_mask=None, init_pattern=None,
             asr_bound: Optional[float] = None, progress: Optional[Callable] = None
             ) -> engine.InversionResult:
    """Optimises one trigger per direction, the directions split across the replicas.

    Args and Returns: as engine.TriggerInverter.invert.
    """
    s = self.settings
    k = engine.check_directions(images, targets, seeds)
    steps = int(steps or s.steps)
    r = self.num_replicas
    images = [np.asarray(im, np.float32) for im in images]
    image_shape = tuple(images[0].shape[1:])
    h, w, c = image_shape
    targets = np.asarray(targets, np.int32)
    seeds = np.asarray(seeds, np.int32)
    costs = np.broadcast_to(np.asarray(s.init_cost if init_cost is None else init_cost,
                                       np.float32), (k,))
    masks = None if init_mask is None else np.reshape(np.asarray(init_mask, np.float32),
                                                      (k, h, w))
    patterns = None if init_pattern is None else np.reshape(
        np.asarray(init_pattern, np.float32), (k, h, w, c))
    blocks = replica_blocks(k, r)
    width = max(math.ceil(k / r), 1)

    # Per replica: its block's directions, then padding directions (one blank image, done).
    per_replica = []
    for start, stop in blocks:
      pad = width - (stop - start)
      ims = images[start:stop] + [np.zeros((1, h, w, c), np.float32)] * pad
      x = np.concatenate(ims)
      sample_dir = np.concatenate([np.full(len(im), d, np.int32) for d, im in enumerate(ims)])
      block_targets = np.concatenate([targets[start:stop], np.zeros(pad, np.int32)])
      block_seeds = np.concatenate([seeds[start:stop], np.zeros(pad, np.int32)])
      block_costs = np.concatenate([costs[start:stop], np.zeros(pad, np.float32)])

      def padded(values, shape):
        if values is None:
          return None
        return np.concatenate([values[start:stop], np.full((pad,) + shape, 0.5, np.float32)])

      per_replica.append(dict(
          x=x, sample_dir=sample_dir, targets=block_targets, seeds=block_seeds, costs=block_costs,
          mask=padded(masks, (h, w)), pattern=padded(patterns, (h, w, c)),
          done=np.arange(width) >= stop - start))
    max_samples = max(len(p["x"]) for p in per_replica)

    def initial_state(p):
      state = self.inverter._initial_state(  # pylint: disable=protected-access
          len(p["x"]), image_shape, [int(v) for v in p["seeds"]], p["costs"], p["mask"],
          p["pattern"])
      state["done"] = tf.constant(p["done"])
      return state

    def distribute(fn):
      return self.strategy.experimental_distribute_values_from_function(
          lambda ctx: fn(per_replica[ctx.replica_id_in_sync_group]))

    state = distribute(initial_state)
    inputs = [distribute(lambda p, key=key: tf.constant(p[key]))
              for key in ("x", "sample_dir", "targets", "seeds")]
    scalars = (tf.constant(s.asr_bound if asr_bound is None else asr_bound, tf.float32),
               tf.constant(steps, tf.int32))
    es = tf.constant(s.early_stop_patience, tf.int32)
    padding = r * width - k
    chunk_end = 0
    while chunk_end < steps:
      chunk_end = min(steps, chunk_end + s.chunk_steps)
      state, done, step = self._run_chunk(state, *inputs, *scalars,
                                          tf.constant(chunk_end, tf.int32), es)
      done = int(done) - padding
      if progress is not None:
        progress(int(step), done, k)
      if done == k:
        break
    return self._result(self._gather(state, tf.constant(max_samples, tf.int32)), blocks, width,
                        max_samples, image_shape, images)

  def _result(self, gathered, blocks, width, max_samples, image_shape, images):
    """Drops the padding directions and images; the directions in the order they were given."""
    keep = np.concatenate([np.arange(r * width, r * width + stop - start)
                           for r, (start, stop) in enumerate(blocks)]).astype(np.int64)
    keep_samples = []
    for r, (start, stop) in enumerate(blocks):
      count = sum(len(im) for im in images[start:stop])
      keep_samples.append(np.arange(r * max_samples, r * max_samples + count))
    keep_samples = np.concatenate(keep_samples).astype(np.int64)
    state = {}
    for key, value in gathered.items():
      if key in ("loss_start", "loss_end"):
        state[key] = tf.gather(value, keep_samples)
      elif key != "step":
        state[key] = tf.gather(value, keep)
    state["done"] = tf.cast(state["done"], tf.bool)
    sample_dir = np.concatenate([np.full(len(im), d, np.int32) for d, im in enumerate(images)])
    return engine.TriggerInverter._result(state, image_shape, sample_dir)  # pylint: disable=protected-access


def make_inverter(model: Callable, settings: engine.InversionSettings = engine.InversionSettings(),
                  strategy: Optional[tf.distribute.Strategy] = None):
  """The inverter for `strategy`: a DistributedInverter when it has several replicas, else the
  one-device engine.TriggerInverter (the same results either way).

  Args:
    model: logits classifier (built under `strategy.scope()` when distributing).
    settings: inversion settings.
    strategy: a tf.distribute strategy, or None for the current one.
  """
  strategy = strategy or tf.distribute.get_strategy()
  if strategy.num_replicas_in_sync > 1:
    return DistributedInverter(model, settings, strategy)
  return engine.TriggerInverter(model, settings)
