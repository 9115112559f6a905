"""Batched trigger inversion: K trigger directions optimised together in one TensorFlow graph.

A *direction* is (a set of images, a target label): find the smallest mask (L1) and a pattern such
that at least `asr_bound` of the stamped images are classified as the target. K = 1 is one pair;
K = n(n-1) is the whole class-distance matrix; a universal trigger is a direction whose images come
from every class but the target; the two directions of a class pair (s->t on class-s images, t->s on
class-t images) are MOTH's two-sided generation (the reference's TriggerCombo), which is separable
into two independent directions.

The optimisation is the reference's (section 1): Adam(lr 0.1, beta1 0.5, beta2 0.9, eps 1e-7) whose
state is reset on every call; the regulariser weight ("cost") starts at `init_cost`, is multiplied by
1.5 after `patience` consecutive steps at or above the ASR bound and divided by 1.5**1.5 after
`patience` steps below it; a new best is taken when the ASR reaches the bound with a smaller mask,
after which the best mask and pattern are perturbed by +-0.01 (uniform) and the optimisation continues
from there. Deliberate differences from the authors' code, each for a reason:

* The classification loss is the true cross-entropy on logits. The reference's Keras code swaps the
  arguments of `categorical_crossentropy` and so minimises ~16.1 * (1 - p_target).
* Every step is one Adam update on the whole image set of each direction ("full-set steps"), not
  mini-batches of 32. On the sets used here (<= 100 images) that is one to four fewer launches per step
  and the same arithmetic; the measured distances agree with the one-pair mode (tests and
  benchmarks/inversion_benchmark.py).
* The best trigger is the one whose ASR and size were measured (before the step's update); Keras
  snapshots the mask after the update, which was never evaluated.
* Optional early stop: a direction stops once its best size has not improved by `early_stop_tol`
  (relative) for `early_stop_patience` steps. Stopped directions leave the batch, so the remaining
  ones run faster. 0 disables it (every direction runs all steps, as the reference).
* Randomness (initial trigger, perturbations) is a counter-based hash of (direction seed, step,
  element), so a direction gets exactly the same random numbers whether it runs alone or batched with
  others, and the same seed always gives the same result.

The step loop runs inside the graph (`tf.while_loop`); a call runs up to `chunk_steps` steps and
returns its state, so the host can show progress between chunks. Changing values (steps, costs,
bounds, targets) are tensors, so nothing is retraced between calls of the same shapes; calls of new
shapes are traced anew, with their shapes static (see TriggerInverter.__init__ for why).

Blocks: the K directions of a call are cut into `min(K, settings.direction_blocks)` contiguous
blocks, each with its own tensors and its own model call, so that a direction's result does not
depend on who runs its block (moth_tf.triggers.blocks says why and how). Randomness: a
counter-based hash of (direction seed, step, element) (moth_tf.triggers.hashing).
"""

import dataclasses
from typing import Callable, Optional, Sequence

import numpy as np
import tensorflow as tf

from moth_tf.triggers import blocks
from moth_tf.triggers import hashing
from moth_tf.triggers import params


@dataclasses.dataclass(frozen=True)
class InversionSettings:
  """Hyper-parameters of the trigger optimisation (defaults: the reference's distance measure)."""
  steps: int = 1000
  asr_bound: float = 0.9
  init_cost: float = 1e-3
  learning_rate: float = 0.1
  beta_1: float = 0.5
  beta_2: float = 0.9
  adam_epsilon: float = 1e-7
  patience: int = 10
  cost_multiplier_up: float = 1.5
  cost_multiplier_down: float = 1.5 ** 1.5
  perturbation: float = 0.01
  # "mean": mean CE over a direction's images + cost * L1 (reference Trigger); "sum": summed CE
  # + cost * L1 (reference TriggerCombo; MOTH's hardening costs were tuned with it).
  ce_reduction: str = "mean"
  early_stop_patience: int = 0
  early_stop_tol: float = 0.01
  chunk_steps: int = 100
  # The directions of a call are cut into at most this many contiguous blocks, each computed by its
  # own ops (see moth_tf.triggers.blocks). It fixes the arithmetic of every direction
  # whatever the number of replicas, and caps how many replicas get work.
  direction_blocks: int = 8
  # Compile the step loop (`TriggerInverter._chunk`, one chunk's tf.while_loop) with XLA.
  jit_compile: bool = False

  def __post_init__(self):
    if self.ce_reduction not in ("mean", "sum"):
      raise ValueError(f"ce_reduction must be mean or sum, got {self.ce_reduction!r}")
    if self.steps < 1 or self.chunk_steps < 1:
      raise ValueError("steps and chunk_steps must be >= 1")
    if self.direction_blocks < 1:
      raise ValueError(f"direction_blocks must be >= 1, got {self.direction_blocks}")


@dataclasses.dataclass
class InversionResult:
  """Best triggers of K directions (NumPy).

  Attributes:
    mask: [K, H, W] best masks in (0,1); zeros where the direction failed.
    pattern: [K, H, W, C] best patterns in [0,1].
    size: [K] reported size = C * L1(mask) (the reference's "3-ch L1" on RGB); NaN where failed.
    success: [K] whether the ASR bound was ever reached.
    steps_run: [K] steps each direction ran before stopping.
    final_cost: [K] regulariser weight at the end.
    loss_start, loss_end: per-image CE at the first step and at the step of the last new best, in
      the order the images were given (flattened over directions); loss_end = loss_start where a
      direction never succeeded.
    sample_direction: [M] direction index of each flattened image.
    asr_start: [K] attack success rate of the initial (warm-start or random) trigger on the
      direction's images, measured at the first step before any update (MOTH logs it for the
      previous trigger of a fast generation).
  """
  mask: np.ndarray
  pattern: np.ndarray
  size: np.ndarray
  success: np.ndarray
  steps_run: np.ndarray
  final_cost: np.ndarray
  loss_start: np.ndarray
  loss_end: np.ndarray
  sample_direction: np.ndarray
  asr_start: Optional[np.ndarray] = None

  def loss_decrease(self) -> np.ndarray:
    """Per-image relative loss decrease (start - end) / start; 0 where undefined or failed.

    This is the "speed" of a universal trigger that MOTH's warm-up prior is built from. Unlike the
    reference, a failed direction reports 0, not the maximal speed 1.
    """
    start, end = self.loss_start, self.loss_end
    ok = (start > 0) & self.success[self.sample_direction]
    out = np.zeros_like(start)
    out[ok] = (start[ok] - end[ok]) / start[ok]
    return out


class TriggerInverter:
  """Optimises batches of trigger directions against one model (called in inference mode).

  Example:
    inverter = TriggerInverter(model, InversionSettings(steps=1000))
    result = inverter.invert([x_of_class_3, x_of_class_5], targets=[5, 3], seeds=[1, 2])
  """

  def __init__(self, model: Callable, settings: InversionSettings = InversionSettings()):
    self.model = model
    self.settings = settings
    # Every new set of block shapes gets a trace of its own (no reduce_retracing): Grappler's
    # arithmetic optimizer and constant folding rewrite (and so round) a graph differently when it
    # knows its shapes, so a trace with relaxed shapes would change a block's bits depending on
    # which calls came before. Calls with the same shapes reuse their trace.
    self._run_chunk = tf.function(self._chunk, jit_compile=settings.jit_compile or None)

  # ----------------------------------------------------------------------------------------------
  # Graph code.

  def _block_step(self, st, step, x, sample_dir, targets, seeds, asr_bound, total_steps,
                  early_stop_patience):
    """One step of the directions of one block not yet done; returns the block's new state."""
    s = self.settings
    num_dirs = targets.shape[0] if targets.shape[0] is not None else tf.shape(targets)[0]
    sample_target = tf.gather(targets, sample_dir)
    image_shape = x.shape[1:]
    mask_shape = image_shape[:-1] + [1]

    active = tf.logical_not(st["done"])
    active_f = tf.cast(active, tf.float32)
    # Only images of directions still running go through the model.
    sel = tf.where(tf.gather(active, sample_dir))[:, 0]
    xs = tf.gather(x, sel)
    ds = tf.gather(sample_dir, sel)
    ts = tf.gather(sample_target, sel)
    mask_var, pattern_var = st["mask_var"], st["pattern_var"]
    with tf.GradientTape() as tape:
      tape.watch([mask_var, pattern_var])
      mask = params.decode(mask_var)  # [K, H, W, 1]
      pattern = params.decode(pattern_var)  # [K, H, W, C]
      m = tf.gather(mask, ds)
      stamped = (1.0 - m) * xs + m * tf.gather(pattern, ds)
      # A mixed-precision model computes (and returns logits) in its policy's dtype; the losses that
      # size the trigger, its L1 and the ASR stay float32. A no-op for a float32 model.
      logits = tf.cast(self.model(stamped, training=False), tf.float32)
      ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=ts, logits=logits)
      ce_dir = tf.math.unsorted_segment_sum(ce, ds, num_dirs)
      count = tf.math.unsorted_segment_sum(tf.ones_like(ce), ds, num_dirs)
      if s.ce_reduction == "mean":
        ce_dir = ce_dir / tf.maximum(count, 1.0)
      reg = tf.reduce_sum(mask, axis=[1, 2, 3])  # 2-D L1 of each mask.
      loss = tf.reduce_sum((ce_dir + st["cost"] * reg) * active_f)
    g_mask, g_pattern = tape.gradient(loss, [mask_var, pattern_var])

    hit = tf.cast(tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), ts), tf.float32)
    asr = tf.math.unsorted_segment_sum(hit, ds, num_dirs) / tf.maximum(count, 1.0)
    reached = tf.logical_and(active, asr >= asr_bound)

    # New best: the measured (pre-update) trigger reached the bound with a smaller mask.
    new_best = tf.logical_and(reached, reg < st["best_reg"])
    nb4 = new_best[:, None, None, None]
    best_reg = tf.where(new_best, reg, st["best_reg"])
    best_mask = tf.where(nb4, mask, st["best_mask"])
    best_pattern = tf.where(nb4, pattern, st["best_pattern"])

    # Per-image losses for the universal-trigger "speed" (first step, and at each new best).
    loss_start = tf.cond(
        tf.equal(step, 0),
        lambda: tf.tensor_scatter_nd_update(st["loss_start"], sel[:, None], ce),
        lambda: st["loss_start"])
    # The initial trigger's ASR (first step, before the update), per direction.
    asr_start = tf.where(tf.logical_and(active, tf.equal(step, 0)), asr, st["asr_start"])
    loss_end = tf.tensor_scatter_nd_update(
        st["loss_end"], sel[:, None],
        tf.where(tf.gather(new_best, ds), ce, tf.gather(st["loss_end"], sel)))

    # Adam (Keras' update rule), reset per call; inactive directions are frozen.
    t = tf.cast(step + 1, tf.float32)
    lr_t = s.learning_rate * tf.sqrt(1.0 - s.beta_2 ** t) / (1.0 - s.beta_1 ** t)

    def adam(var, grad, m1, m2):
      m1n = m1 + (grad - m1) * (1.0 - s.beta_1)
      m2n = m2 + (tf.square(grad) - m2) * (1.0 - s.beta_2)
      varn = var - lr_t * m1n / (tf.sqrt(m2n) + s.adam_epsilon)
      a4 = active[:, None, None, None]
      return tf.where(a4, varn, var), tf.where(a4, m1n, m1), tf.where(a4, m2n, m2)

    mask_var, m_mask, v_mask = adam(mask_var, g_mask, st["m_mask"], st["v_mask"])
    pattern_var, m_pat, v_pat = adam(pattern_var, g_pattern, st["m_pattern"], st["v_pattern"])

    # After a new best, perturb the trigger by +-perturbation to escape local minima (reference
    # 1.4, which perturbs the post-update trigger it snapshots; the step's update is kept).
    def perturbed():
      noise_m = hashing.hashed_uniform(seeds, 16 + 2 * step, mask_shape) * 2.0 - 1.0
      noise_p = hashing.hashed_uniform(seeds, 17 + 2 * step, image_shape) * 2.0 - 1.0
      mv = params.encode(params.decode(mask_var) + s.perturbation * noise_m)
      pv = params.encode(params.decode(pattern_var) + s.perturbation * noise_p)
      return tf.where(nb4, mv, mask_var), tf.where(nb4, pv, pattern_var)

    mask_var, pattern_var = tf.cond(tf.reduce_any(new_best), perturbed,
                                    lambda: (mask_var, pattern_var))

    # Cost schedule with patience, per direction.
    up = tf.where(reached, st["up"] + 1, 0)
    down = tf.where(tf.logical_and(active, tf.logical_not(reached)), st["down"] + 1, 0)
    raise_cost = up >= s.patience
    lower_cost = tf.logical_and(tf.logical_not(raise_cost), down >= s.patience)
    cost = st["cost"]
    # A zero cost restarts at 1e-3, as the reference.
    cost = tf.where(raise_cost, tf.where(cost == 0.0, 1e-3, cost * s.cost_multiplier_up), cost)
    cost = tf.where(lower_cost, cost / s.cost_multiplier_down, cost)
    up = tf.where(raise_cost, 0, up)
    down = tf.where(lower_cost, 0, down)

    # Early stop: no relative improvement of early_stop_tol for early_stop_patience steps.
    significant = tf.logical_and(new_best, reg < st["anchor_reg"] * (1.0 - s.early_stop_tol))
    anchor_reg = tf.where(significant, reg, st["anchor_reg"])
    last_significant = tf.where(significant, step, st["last_significant"])
    stalled = tf.logical_and(tf.math.is_finite(best_reg),
                             step - last_significant >= early_stop_patience)
    stop = tf.logical_and(active, tf.logical_and(early_stop_patience > 0, stalled))
    finished = tf.logical_or(stop, tf.fill([num_dirs], step + 1 >= total_steps))
    done = tf.logical_or(st["done"], tf.logical_and(active, finished))
    steps_run = tf.where(active, step + 1, st["steps_run"])

    return dict(st, mask_var=mask_var, pattern_var=pattern_var, m_mask=m_mask, v_mask=v_mask,
                m_pattern=m_pat, v_pattern=v_pat, cost=cost, up=up, down=down,
                best_reg=best_reg, best_mask=best_mask, best_pattern=best_pattern,
                anchor_reg=anchor_reg, last_significant=last_significant, done=done,
                steps_run=steps_run, loss_start=loss_start, loss_end=loss_end,
                asr_start=asr_start)

  def _chunk(self, step, states, inputs, asr_bound, total_steps, chunk_end, early_stop_patience):
    """Runs steps [step, min(chunk_end, total_steps)) of every block not yet done.

    Args:
      step: scalar int32, the next step.
      states: one state dict per block.
      inputs: one (x, sample_dir, targets, seeds) tuple per block.
      asr_bound, total_steps, chunk_end, early_stop_patience: scalar tensors.

    Returns:
      (step, states) after the chunk.
    """

    def all_done(sts):
      return tf.reduce_all(tf.stack([tf.reduce_all(st["done"]) for st in sts]))

    def cond(step, sts):
      return tf.logical_and(step < tf.minimum(chunk_end, total_steps),
                            tf.logical_not(all_done(sts)))

    def body(step, sts):
      new = []
      for st, (x, sample_dir, targets, seeds) in zip(sts, inputs):
        # Every block has its own ops; a finished block costs nothing. The blocks do not depend
        # on one another, so TensorFlow may run them concurrently.
        new.append(tf.cond(
            tf.reduce_all(st["done"]), lambda st=st: st,
            lambda st=st, x=x, d=sample_dir, t=targets, sd=seeds: self._block_step(
                st, step, x, d, t, sd, asr_bound, total_steps, early_stop_patience)))
      return [step + 1, new]

    return tf.while_loop(cond, body, [step, list(states)])

  # ----------------------------------------------------------------------------------------------
  # Host code.

  @staticmethod
  def block_inputs(block: blocks.DirectionBlock):
    """The (x, sample_dir, targets, seeds) tensors of a block, as `_chunk` takes them."""
    return (tf.constant(block.x), tf.constant(block.sample_dir), tf.constant(block.targets),
            tf.constant(block.seeds))

  @staticmethod
  def initial_state(block: blocks.DirectionBlock) -> dict:
    """The optimisation state of a block before its first step (tensors)."""
    k = block.num_directions
    h, w, c = block.x.shape[1:]
    seeds_t = tf.constant(block.seeds, tf.int32)
    if block.mask is None:
      init_mask = hashing.hashed_uniform(seeds_t, hashing.INIT_MASK_STREAM, [h, w, 1])
    else:
      init_mask = tf.reshape(tf.constant(block.mask, tf.float32), [k, h, w, 1])
    if block.pattern is None:
      init_pattern = hashing.hashed_uniform(seeds_t, hashing.INIT_PATTERN_STREAM, [h, w, c])
    else:
      init_pattern = tf.reshape(tf.constant(block.pattern, tf.float32), [k, h, w, c])
    zeros_m = tf.zeros([k, h, w, 1])
    zeros_p = tf.zeros([k, h, w, c])
    inf = tf.fill([k], np.float32(np.inf))
    num_samples = len(block.x)
    return {
        "mask_var": params.encode(init_mask), "pattern_var": params.encode(init_pattern),
        "m_mask": zeros_m, "v_mask": zeros_m, "m_pattern": zeros_p, "v_pattern": zeros_p,
        "cost": tf.constant(block.costs, tf.float32),
        "up": tf.zeros([k], tf.int32), "down": tf.zeros([k], tf.int32),
        "best_reg": inf, "best_mask": zeros_m, "best_pattern": zeros_p,
        "anchor_reg": inf, "last_significant": tf.zeros([k], tf.int32),
        "done": tf.constant(block.done), "steps_run": tf.zeros([k], tf.int32),
        "loss_start": tf.zeros([num_samples]), "loss_end": tf.zeros([num_samples]),
        "asr_start": tf.zeros([k]),
    }

  def invert(self, images: Sequence[np.ndarray], targets: Sequence[int], seeds: Sequence[int],
             init_cost=None, steps: Optional[int] = None, init_mask=None, init_pattern=None,
             asr_bound: Optional[float] = None, progress: Optional[Callable] = None,
             early_stop_patience: Optional[int] = None) -> InversionResult:
    """Optimises one trigger per direction.

    The directions are cut into `settings.direction_blocks` blocks (moth_tf.triggers.blocks),
    all run in one graph on this device.

    Args:
      images: K arrays [N_k, H, W, C] in [0,1]: the images each direction stamps.
      targets: K target labels.
      seeds: K integer seeds (initial trigger and perturbations).
      init_cost: scalar or [K] initial regulariser weights (default settings.init_cost).
      steps: optimisation steps (default settings.steps).
      init_mask, init_pattern: optional warm start, [K, H, W] (or [K,H,W,1]) and [K, H, W, C].
      asr_bound: attack success rate to reach (default settings.asr_bound).
      progress: optional callback(step, directions_done, K) called between chunks.
      early_stop_patience: this call's early stop (default settings.early_stop_patience).

    Returns:
      InversionResult.
    """
    s = self.settings
    steps = int(steps or s.steps)
    parts = blocks.split_directions(images, targets, seeds,
                                    s.init_cost if init_cost is None else init_cost, init_mask,
                                    init_pattern, s.direction_blocks)
    k = sum(b.num_directions for b in parts)
    states = [self.initial_state(b) for b in parts]
    inputs = [self.block_inputs(b) for b in parts]
    scalars = (tf.constant(s.asr_bound if asr_bound is None else asr_bound, tf.float32),
               tf.constant(steps, tf.int32))
    es = tf.constant(s.early_stop_patience if early_stop_patience is None
                     else early_stop_patience, tf.int32)
    step = tf.constant(0, tf.int32)
    while int(step) < steps:
      chunk_end = min(steps, int(step) + s.chunk_steps)
      step, states = self._run_chunk(step, states, inputs, *scalars,
                                     tf.constant(chunk_end, tf.int32), es)
      done = sum(int(tf.reduce_sum(tf.cast(st["done"], tf.int32))) for st in states)
      if progress is not None:
        progress(int(step), done, k)
      if done == k:
        break
    sample_dir = np.concatenate([np.full(len(im), d, np.int32) for d, im in enumerate(images)])
    return self.result(blocks.concat_states(states), parts[0].x.shape[1:], sample_dir)

  @staticmethod
  def result(state: dict, image_shape, sample_dir) -> InversionResult:
    """The InversionResult of a final state (all blocks joined, NumPy) of K directions."""
    best_reg = state["best_reg"]
    success = np.isfinite(best_reg)
    mask = state["best_mask"][..., 0]
    loss_start = state["loss_start"]
    loss_end = np.where(success[sample_dir], state["loss_end"], loss_start)
    size = np.where(success, params.trigger_size(mask, image_shape[-1]), np.nan)
    return InversionResult(mask=mask, pattern=state["best_pattern"], size=size,
                           success=success, steps_run=state["steps_run"],
                           final_cost=state["cost"], loss_start=loss_start,
                           loss_end=loss_end, sample_direction=sample_dir,
                           asr_start=state["asr_start"])
