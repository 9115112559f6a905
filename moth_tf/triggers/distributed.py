"""Trigger inversion spread over the replicas of a `tf.distribute` strategy.

The K directions of one `invert` call are independent optimisations (every direction has its own
trigger, Adam state, cost schedule and hash-seeded randomness; see moth_tf.triggers.engine), so
they split across replicas with no communication while they run:

* the directions are cut into the engine's blocks, `blocks.direction_blocks(K,
  settings.direction_blocks)`: the same contiguous blocks, each with its own tensors and model call,
  that the one-device engine runs in one graph. Replica r takes the r-th contiguous run of whole
  blocks, as even as possible, and every replica's list of blocks is padded to the same length with
  *padding blocks* (one direction of one image, already done: they never run);
* every replica gets its blocks' images, targets, seeds and initial states through
  `strategy.experimental_distribute_values_from_function`; blocks hold different numbers of images,
  which is fine: nothing is batched across replicas;
* one `strategy.run` per chunk runs each replica's `tf.while_loop` over its blocks (the engine's own
  graph code, `TriggerInverter._chunk`) against that replica's copy of the model; a replica whose
  blocks are all done leaves its loop early;
* between chunks the count of finished directions and the furthest step are all-reduced, so every
  worker of a multi-worker strategy makes the same decision to go on or stop;
* at the end `strategy.gather` collects every replica's blocks on every worker (padded to the
  longest replica), and the host drops the padding, giving the directions back in the order they
  were given.

A block's arithmetic depends only on the block (its shapes, its directions), not on who runs it, so
one device and R replicas give the same triggers, bit for bit on CPU (tests/test_distributed.py).
Only whole blocks are shared out: a call with fewer blocks than replicas leaves replicas idle.
"""

from typing import Callable, Optional, Sequence

from absl import logging
import numpy as np
import tensorflow as tf

from moth_tf.triggers import blocks
from moth_tf.triggers import engine

# Fields of a block state with one entry per image; the others have one per direction.
_SAMPLE_FIELDS = ("loss_start", "loss_end")


def replica_blocks(num_blocks: int, num_replicas: int):
  """Contiguous, as-even-as-possible [start, stop) ranges of blocks, one per replica.

  Example: 10 blocks on 4 replicas -> [(0, 3), (3, 6), (6, 8), (8, 10)].
  """
  return blocks.contiguous_blocks(num_blocks, num_replicas)


def _padding_block(image_shape, warm_start: bool) -> blocks.DirectionBlock:
  """A block of one finished direction of one blank image: it never runs."""
  h, w, c = image_shape
  return blocks.DirectionBlock(
      x=np.zeros((1, h, w, c), np.float32), sample_dir=np.zeros(1, np.int32),
      targets=np.zeros(1, np.int32), seeds=np.zeros(1, np.int32), costs=np.zeros(1, np.float32),
      mask=np.full((1, h, w), 0.5, np.float32) if warm_start else None,
      pattern=np.full((1, h, w, c), 0.5, np.float32) if warm_start else None,
      done=np.ones(1, bool))


class DistributedInverter:
  """A TriggerInverter whose blocks of directions are split across the replicas of `strategy`.

  Same `invert` arguments and result as engine.TriggerInverter, and the same bits. Build the model
  (or load it) inside `strategy.scope()` so that every replica calls its own copy of the weights.
  At most `settings.direction_blocks` replicas get work in one call.

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
    # The per-block graph code is the engine's; this class only distributes it.
    self.inverter = engine.TriggerInverter(model, settings)
    # Traced per set of shapes, as the engine's chunk (see TriggerInverter.__init__).
    self._run_chunk = tf.function(self._chunk)
    self._gather = tf.function(self._gather_state, reduce_retracing=True)
    self._warned_idle = False

  @property
  def num_replicas(self) -> int:
    return self.strategy.num_replicas_in_sync

  def _chunk(self, step, states, inputs, asr_bound, total_steps, chunk_end, early_stop_patience):
    """One chunk of steps on every replica; returns (step, states, directions done, furthest step).
    """

    # With XLA each replica runs the engine's compiled chunk; without, its graph code inline.
    chunk = (self.inverter._run_chunk if self.settings.jit_compile  # pylint: disable=protected-access
             else self.inverter._chunk)  # pylint: disable=protected-access

    def replica_fn(step, sts, ins):
      step, new = chunk(step, sts, ins, asr_bound, total_steps, chunk_end, early_stop_patience)
      done = tf.add_n([tf.reduce_sum(tf.cast(st["done"], tf.int32)) for st in new])
      return step, new, done, tf.reshape(step, [1])

    step, states, done, furthest = self.strategy.run(replica_fn, args=(step, states, inputs))
    # Reduced across all replicas (and workers), so every worker's host loop decides alike.
    done = self.strategy.reduce(tf.distribute.ReduceOp.SUM, done, axis=None)
    furthest = tf.reduce_max(self.strategy.gather(furthest, axis=0))  # ReduceOp has no MAX.
    return step, states, done, furthest

  def _gather_state(self, states, max_directions, max_samples):
    """Every replica's blocks, joined and padded, concatenated in replica order on every worker."""

    def join(sts):
      out = {}
      for key in sts[0]:
        value = tf.concat([st[key] for st in sts], axis=0)
        if value.dtype == tf.bool:
          value = tf.cast(value, tf.int32)  # Collective gathers take no bools.
        # Replicas hold different numbers of directions and images; gather needs equal shapes.
        length = max_samples if key in _SAMPLE_FIELDS else max_directions
        pad = [[0, length - tf.shape(value)[0]]] + [[0, 0]] * (len(value.shape) - 1)
        out[key] = tf.pad(value, pad)
      return out

    joined = self.strategy.run(join, args=(states,))
    return {key: self.strategy.gather(value, axis=0) for key, value in joined.items()}

  def invert(self, images: Sequence[np.ndarray], targets: Sequence[int], seeds: Sequence[int],
             init_cost=None, steps: Optional[int] = None, init_mask=None, init_pattern=None,
             asr_bound: Optional[float] = None, progress: Optional[Callable] = None,
             early_stop_patience: Optional[int] = None) -> engine.InversionResult:
    """Optimises one trigger per direction, the engine's blocks split across the replicas.

    Args and Returns: as engine.TriggerInverter.invert.
    """
    s = self.settings
    steps = int(steps or s.steps)
    parts = blocks.split_directions(images, targets, seeds,
                                    s.init_cost if init_cost is None else init_cost, init_mask,
                                    init_pattern, s.direction_blocks)
    k = sum(b.num_directions for b in parts)
    r = self.num_replicas
    image_shape = parts[0].x.shape[1:]
    if len(parts) < r and not self._warned_idle:
      self._warned_idle = True
      hint = (" (InversionSettings.direction_blocks would share them more widely)"
              if k > len(parts) else "")
      logging.warning("%d directions in %d blocks for %d replicas: %d replicas stay idle%s.",
                      k, len(parts), r, r - len(parts), hint)

    # Per replica: its run of whole blocks, then padding blocks up to the longest run.
    spans = replica_blocks(len(parts), r)
    width = max(stop - start for start, stop in spans)
    padding = _padding_block(image_shape, init_mask is not None or init_pattern is not None)
    per_replica = [parts[start:stop] + [padding] * (width - (stop - start))
                   for start, stop in spans]
    num_padding = sum(width - (stop - start) for start, stop in spans)

    def distribute(fn):
      return self.strategy.experimental_distribute_values_from_function(
          lambda ctx: fn(per_replica[ctx.replica_id_in_sync_group]))

    states = distribute(lambda bs: [self.inverter.initial_state(b) for b in bs])
    inputs = distribute(lambda bs: [self.inverter.block_inputs(b) for b in bs])
    step = distribute(lambda bs: tf.constant(0, tf.int32))
    scalars = (tf.constant(s.asr_bound if asr_bound is None else asr_bound, tf.float32),
               tf.constant(steps, tf.int32))
    es = tf.constant(s.early_stop_patience if early_stop_patience is None
                     else early_stop_patience, tf.int32)
    chunk_end = 0
    while chunk_end < steps:
      chunk_end = min(steps, chunk_end + s.chunk_steps)
      step, states, done, furthest = self._run_chunk(step, states, inputs, *scalars,
                                                     tf.constant(chunk_end, tf.int32), es)
      done = int(done) - num_padding
      if progress is not None:
        progress(int(furthest), done, k)
      if done == k:
        break
    max_directions = max(sum(b.num_directions for b in bs) for bs in per_replica)
    max_samples = max(sum(len(b.x) for b in bs) for bs in per_replica)
    gathered = self._gather(states, tf.constant(max_directions, tf.int32),
                            tf.constant(max_samples, tf.int32))
    return self._result(gathered, [parts[start:stop] for start, stop in spans], max_directions,
                        max_samples, image_shape, images)

  @staticmethod
  def _result(gathered, real_blocks, max_directions, max_samples, image_shape, images):
    """Drops the padding; the directions in the order they were given.

    `real_blocks[r]` are replica r's blocks without padding: they come first in its share, and the
    replicas hold the blocks in order.
    """
    keep, keep_samples = [], []
    for r, bs in enumerate(real_blocks):
      dirs = sum(b.num_directions for b in bs)
      samples = sum(len(b.x) for b in bs)
      keep.append(np.arange(r * max_directions, r * max_directions + dirs))
      keep_samples.append(np.arange(r * max_samples, r * max_samples + samples))
    keep = np.concatenate(keep).astype(np.int64)
    keep_samples = np.concatenate(keep_samples).astype(np.int64)
    state = {}
    for key, value in gathered.items():
      value = value.numpy()
      state[key] = value[keep_samples] if key in _SAMPLE_FIELDS else value[keep]
    state["done"] = state["done"].astype(bool)
    sample_dir = np.concatenate([np.full(len(im), d, np.int32) for d, im in enumerate(images)])
    return engine.TriggerInverter.result(state, image_shape, sample_dir)


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
