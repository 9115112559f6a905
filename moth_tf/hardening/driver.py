"""MOTH's driver (reference section 2): warm-up, pair periods, trigger store, resumable.

One run is `model.fit` on a `StampingModel` (moth_tf.hardening.model) whose `MothCallback`
(moth_tf.hardening.callbacks) runs this driver, which before every training step decides what
that step stamps (its checkpointed state: moth_tf.hardening.driver_state):

1. Warm-up (once, before the first step): one universal trigger per target class (500 steps, ASR
   0.99, `warmup_samples` images of every other class, all targets batched in one graph). Their
   per-image loss decrease gives the scheduler's prior U; each trigger seeds the warm start of every
   pair toward its target. The first n training steps then stamp the universal trigger toward class
   g on `warm_ratio` of the batch's other images (step g = 0..n-1).
2. Periods of `period` (3) steps on class pairs chosen by the K-arm scheduler. As published, a
   period has one pair and every step generates its two triggers (s->t on class-s images, t->s on
   class-t images) warm-started from the latest successful ones (the reference: the largest ever,
   `store_largest`): 200 steps at cost 1e-3 for the first step of a period, then 40 steps at cost
   0.2 while both directions keep succeeding, back to 200 / 1e-3 after a failure. The step stamps
   them on `portion` of the batch's class-s and class-t images (labels kept). At the end of the
   period the scheduler's reward V is updated from the average trigger sizes.
3. Our default generation schedule (the published one is
   recipes.PUBLISHED_GENERATION, used by `--preset=reference`) does the same work for less:
   * `pairs_per_period` (default min(5, n // 2)) pairs with no class in common per period, chosen
     one after another by the scheduler; all their directions are generated in one batched engine
     call (per mode) and all are stamped in every step of the period;
   * `generations_per_period` (1): only the period's first step generates, the others stamp the
     same triggers again (a failed direction is still regenerated in full at the next step);
   * `warm_fast_start` / `fast_first_visit`: a period starts in fast mode (40 steps at 0.2) from
     the stored triggers, which for a first visit are the warm-up's universal triggers;
   * `fixed_trigger_images` (off by default; on in the Fashion-MNIST recipe): one seeded sample of
     training images per class for every generation;
   * `fast_cost`, `period` (the Fashion-MNIST recipe: 0.015 and 9): the fast generations' initial
     cost (0.2 as published, but on a summed cross-entropy) and the period length;
   * `generation_early_stop` (off): the engine's early stop inside a pair generation.
   With MOTH's recipe (2,000 steps of 6-step periods, no replay) this enlarges the class distance
   of digits about as much as the published schedule, at the same test accuracy, in a fraction of
   its time (results: "Trigger generation").

Differences from the authors' code, on purpose (see also the scheduler's module docstring):

* Trigger images are `trigger_samples` random training images of each class of the pair, not the
  current batch's images: with batch 128 a class has ~13 images (and none at all for many of the 43
  GTSRB classes); a fixed-size set makes every generation well-posed.
* The stamped share is a fraction of each class's images in the batch (`portion`, default 0.5), not
  int(0.1 * min(#s, #t)) which is 1 image or none; `--preset=reference` restores 0.1.
* The pair triggers minimise the mean cross-entropy + cost * L1 (like the distance measure), so they
  stay near-minimal; the reference sums the cross-entropy over the N images, which makes the same
  cost ~N times weaker and its stamped triggers much larger than the measured class distance.
* Trigger replay (`replay`; 0.3 for Pairwise and Universal, 0 in MOTH's recipe): that share of
  the batch's other images carries the stored trigger of its class toward a random other class, so
  pairs hardened in earlier periods are not forgotten while the scheduler works on others (0 = as
  published; `--preset=reference`). MOTH's five pairs per period stamp most of a batch already.
* Optional trigger families (`families`, ours; default 1 = as published): each direction keeps
  that many independently initialised triggers (family 0 starts from the warm-up's universal
  trigger, the others from random ones), all generated in the same batched engine call, and each
  stamped image carries one of them at random. A model hardened against one trigger per direction
  keeps other minima that a differently seeded inversion finds (the seed-to-seed spread of a
  hardened model's distances is much wider than before hardening). More families harden a little
  more for proportionally more generation time (benchmarks/hardening_benchmark.py, `ablation`).
* Ablations (HardenConfig's `generation`, `schedule`, `trigger_reuse`; each switches one of the
  paper's design choices off, the defaults keep them all):
  - `generation="one_sided"`: each direction of a pair is generated on its own. Two-sided, the
    directions of an engine call share one block: one model call and one loss, the sum of the
    directions' losses (each its mean or summed cross-entropy, `pair_ce_reduction`, plus cost *
    L1), and the pair has one mode (fast while both directions succeed, rolled back to pair_cost
    when either fails). One-sided, every direction has its own engine block (own model call and
    loss, so its result does not depend on its partner's images, not even in the rounding) and
    its own mode: a failed direction rolls back alone, and only it regenerates in the steps that
    otherwise reuse. The events then count directions (`event_unit` in the results).
  - `schedule`: "prior_only", "reward_only", "random" and "round_robin" replace the K-arm
    scheduler (moth_tf.hardening.scheduler.make_scheduler); the period's pairs still share no
    class.
  - `trigger_reuse=False`: every generation starts from a random trigger (drawn from its seed by
    the engine) at pair_cost for pair_steps; no fast mode, no rollback (all are "start"). The
    steps that reuse within a period (`generations_per_period`) still stamp the last triggers,
    and the store still feeds replay and the stamping of a failed direction.
  The driver logs, for the paper's two figures: `moth/period_trigger_sizes` (each pair's
  period-average trigger sizes at the end of its period) and `moth/previous_trigger_asr` (the ASR
  of a fast generation's starting trigger on its images, which the engine measures at its first
  step), see moth_tf.reporting.records.
* The learning rate ramps up linearly over `lr_warmup_steps` (100) and then decays to 0 (cosine).
  At the full rate from the first step, the warm-up steps, whose universal triggers flip nearly
  every image they are stamped on, wreck the model and most of the budget goes into re-learning
  the task.
* A failed generation keeps stamping the last successful trigger of that direction (the reference
  stamps an all-zero mask, a no-op); no training step is ever skipped.
* The pair orientation of stored triggers is tracked per direction; every warm-up target
  starts from a fresh random trigger.
* The warm-up steps are the first n of the `epochs * steps_per_epoch` steps (the reference adds n).
* A resumed run continues at the epoch boundary of its last checkpoint and starts a fresh period.
"""

import time
from typing import Optional

import numpy as np
import tensorflow as tf

from moth_tf import config as config_lib
from moth_tf.evaluation import distance
from moth_tf.hardening import driver_state
from moth_tf.hardening import scheduler as scheduler_lib
from moth_tf.reporting import records
from moth_tf.triggers import distributed
from moth_tf.triggers import engine
from moth_tf.triggers import params


def pairs_per_period(config: config_lib.HardenConfig, num_classes: int) -> int:
  """The pairs per period of a run on an n-class model; a one-line ValueError if they cannot be
  disjoint."""
  pairs = int(config.pairs_for(num_classes))
  if 2 * pairs > num_classes:
    raise ValueError(f"pairs_per_period={pairs} needs {2 * pairs} classes (the pairs share none); "
                     f"this model has {num_classes}: use at most {num_classes // 2}")
  return pairs



def hardening_blocks(model) -> int:
  """Direction blocks of the hardening's engine calls: one per replica.

  The distance measurement cuts its directions into a fixed number of blocks (8) so that one
  device and N replicas give the same bits (moth_tf.triggers.blocks). The hardening's
  generations are not measurements, and each block is a model call of its own, which costs most on
  small models: they use as few blocks as the replicas need.
  """
  strategy = getattr(model, "distribute_strategy", None) or tf.distribute.get_strategy()
  return max(1, int(strategy.num_replicas_in_sync))



class MothHardener:
  """Host-side state of one MOTH run: trigger store, scheduler, period bookkeeping, timing.

  MothCallback calls `before_step` and `after_step` around every training step and `save_state`
  at every epoch end. The first n steps stamp the warm-up's universal triggers; every later step is
  `orthogonalisation_step`, MOTH's five public steps in turn:

      modes = self.step_modes(rng)                           # what each direction does
      images = self.trigger_images(rng, generating_pairs)    # what their triggers train on
      success, failures, asr = self.generate(images, modes)  # batched engine calls
      sizes = self.stamp(success, modes)                     # what the training step stamps
      self.end_step(sizes, modes, failures, start)           # period end: scheduler update; logs

  A schedule variant extends it in one of two ways:
  * a different choice of pairs: pass a `scheduler` (moth_tf.baselines.pairwise); the step stays;
  * different triggers: subclass and override `orthogonalisation_step` (and `extra_results` for
    its own result entries), using `step_rng`, `random_trigger`, `universal_images` and
    `push_store` (moth_tf.baselines.universal). Its counters go into `events` and its period
    progress into `period_pos` and `fails`, which `save_state` checkpoints (DriverState).
  """

  def __init__(self, model, x_train: np.ndarray, y_train: np.ndarray,
               config: config_lib.HardenConfig,
               writer: Optional[tf.summary.SummaryWriter] = None, verbose: bool = True,
               scheduler=None, warmup: bool = True):
    """Args:
      model: the StampingModel being trained.
      x_train, y_train: the training images and labels (trigger images are drawn from them).
      config: the hardening configuration.
      writer: TensorBoard writer for the driver's scalars and images.
      verbose: print progress lines.
      scheduler: what picks the pair of each period (default: config.moth.schedule's, MOTH's K-arm
        PairScheduler unless an ablation is asked for); any
        object with PairScheduler's choose / update / state_dict / load_state_dict / count /
        reward. A scheduler with a true `finished` attribute ends the fit (Pairwise's sweep).
      warmup: generate and stamp the universal triggers first (MOTH); off, the first step already
        generates a pair's triggers from a random start.
    """
    self.model = model
    self.config = config
    self.x = x_train
    self.y = y_train
    self.n = model.num_classes
    self.writer = writer
    self.verbose = verbose
    self.by_class = [np.flatnonzero(y_train == c) for c in range(self.n)]
    h, w, c = model.image_shape
    self.channels = c
    r = config.moth.families
    self.store_masks = np.zeros((self.n, self.n, r, h, w), np.float32)
    self.store_patterns = np.zeros((self.n, self.n, r, h, w, c), np.float32)
    self.universal_masks = None
    self.universal_patterns = None
    self.scheduler = scheduler or scheduler_lib.make_scheduler(
        config.moth.schedule, self.n, config.moth.epsilon, config.moth.alpha_steps,
        seed=config.seed)
    self.one_sided = config.moth.generation == "one_sided"
    self.warmup = bool(warmup)
    # Training steps that stamp the warm-up's universal triggers, one target class each.
    self.warmup_length = self.n if warmup else 0
    # Pairs hardened together in every period (their classes disjoint).
    self.num_pairs = pairs_per_period(config, self.n)
    if self.num_pairs > 1 and not hasattr(self.scheduler, "choose_many"):
      raise ValueError(f"pairs_per_period={self.num_pairs}: this method's scheduler hardens one "
                       f"pair at a time; use pairs_per_period=1")
    # Under a strategy the directions of every generation are split across its replicas (the
    # model was built in its scope, so each replica calls its own copy). One-sided generation
    # gives every direction an engine block of its own: its own tensors, model call and loss, so
    # that nothing of a direction's result, not even the rounding, depends on its partner's
    # images (moth_tf.triggers.blocks). Two-sided generation puts the directions of a
    # call in as few blocks as the replicas need: one summed loss over a pair's two directions.
    blocks = hardening_blocks(model)
    if self.one_sided:
      blocks = max(blocks, 2 * self.num_pairs * config.moth.families)
    self.pair_inverter = distributed.make_inverter(
        model.classifier, engine.InversionSettings(
            steps=config.moth.pair_steps, asr_bound=config.moth.pair_asr,
            init_cost=config.moth.pair_cost,
            ce_reduction=config.moth.pair_ce_reduction,
            chunk_steps=max(config.moth.pair_steps, config.moth.fast_steps),
            direction_blocks=blocks, jit_compile=config.jit_compile),
        getattr(model, "distribute_strategy", None))
    self.step = 0
    self.ready = False
    self._period_reset()
    self.generation_seconds = 0.0
    self.warmup_seconds = 0.0
    # Per pair and step: fast, rollback, warm_fast, reused (a step that generates nothing for the
    # pair) and generations; failed_directions per direction; engine_calls and inversion_steps
    # (the longest direction's steps, summed over calls) per batched engine call.
    self.events = {"fast": 0, "rollback": 0, "failed_directions": 0, "generations": 0,
                   "warm_fast": 0, "reused": 0, "engine_calls": 0, "inversion_steps": 0}

  def _period_reset(self):
    self.period_pos = 0
    self.pairs = None  # The period's pairs [(s, t)], P of them.
    self.cur_masks = None  # [P, 2, families, H, W]: each pair's current s->t and t->s triggers.
    self.cur_patterns = None  # [P, 2, families, H, W, C]
    self.fails = np.zeros((self.num_pairs, 2, self.config.moth.families), np.int64)
    self.period_sizes = []  # Per step of the period: [P, 2] trigger sizes.

  @property
  def pair(self):
    """The period's (first) pair, or None between periods."""
    return self.pairs[0] if self.pairs else None

  def step_rng(self, *salt):
    """The step's random generator: seeded by the run's seed, the step and `salt`, so that a
    resumed run draws what the uninterrupted run drew."""
    return np.random.default_rng([self.config.seed, self.step, *salt])

  # ----------------------------------------------------------------------------------------------
  # Warm-up.

  def universal_images(self, rng, target):
    """(images, their classes): `warmup_samples` random training images of each class but target."""
    parts, labels = [], []
    for i in range(self.n):
      if i == target or not len(self.by_class[i]):
        continue
      idx = rng.choice(self.by_class[i],
                       min(self.config.moth.warmup_samples, len(self.by_class[i])),
                       replace=False)
      parts.append(self.x[idx])
      labels.append(np.full(len(idx), i))
    return np.concatenate(parts), np.concatenate(labels)

  def warm_up(self):
    """Universal triggers toward every class (batched), the prior U and the store's warm starts."""
    start = time.time()
    cfg = self.config
    rng = self.step_rng(1)
    images, origin = map(list, zip(*(self.universal_images(rng, t) for t in range(self.n))))
    inverter = distributed.make_inverter(self.model.classifier, engine.InversionSettings(
        steps=cfg.moth.warmup_steps, asr_bound=cfg.moth.warmup_asr, init_cost=cfg.moth.pair_cost,
        direction_blocks=hardening_blocks(self.model), jit_compile=cfg.jit_compile),
                                         getattr(self.model, "distribute_strategy", None))
    if self.verbose:
      print(f"MOTH warm-up: {self.n} universal triggers ({cfg.moth.warmup_steps} steps, ASR "
            f"{cfg.moth.warmup_asr}) in one batched graph...", flush=True)
    seeds = [distance.stable_seed(cfg.seed, 7, t) for t in range(self.n)]
    result = inverter.invert(images, list(range(self.n)), seeds)
    speed = result.loss_decrease()
    prior = np.zeros((self.n, self.n))
    offset = 0
    for t in range(self.n):
      count = len(images[t])
      for i in range(self.n):
        sel = origin[t] == i
        if i != t and sel.any():
          prior[i, t] = float(np.mean(speed[offset:offset + count][sel]))
      offset += count
    sizes = np.where(result.success, result.size, 0.0)
    self.scheduler.set_prior(prior, sizes)
    self.universal_masks = result.mask
    self.universal_patterns = result.pattern
    for t in range(self.n):
      if result.success[t]:  # The universal trigger is family 0's warm start toward t.
        self.store_masks[:, t, 0] = result.mask[t]
        self.store_patterns[:, t, 0] = result.pattern[t]
        self.store_masks[t, t] = 0.0  # No trigger from a class to itself.
    self.push_store()
    self.warmup_seconds = time.time() - start
    if self.verbose:
      ok = int(result.success.sum())
      print(f"MOTH warm-up done in {self.warmup_seconds:.1f} s: {ok}/{self.n} universal triggers, "
            f"sizes {' '.join(f'{size:.1f}' for size in sizes)}", flush=True)
    if self.writer is not None:
      with self.writer.as_default():
        tf.summary.image("moth/prior_U", distance.heatmap_image(prior)[None], step=0)

  # ----------------------------------------------------------------------------------------------
  # Per step.

  def before_step(self):
    """Decides and assigns what the next training step stamps."""
    if not self.ready:
      if int(self.model.initialized.numpy()):
        self.load_state()
      elif self.warmup:
        self.warm_up()
      self.ready = True
    if self.step < self.warmup_length:
      t = self.step
      if self.universal_masks is not None and self.universal_masks[t].sum() > 0:
        self.model.set_warmup(t, self.universal_masks[t], self.universal_patterns[t])
      else:
        self.model.set_warmup(None)
      return
    self.model.set_warmup(None)
    self.orthogonalisation_step()

  def random_trigger(self, rng):
    """A (mask [H, W], pattern [H, W, C]) drawn uniformly from [0, 1) with `rng`."""
    h, w = self.store_masks.shape[-2:]
    return rng.random((h, w)).astype(np.float32), rng.random(
        (h, w, self.channels)).astype(np.float32)

  def _has_stored(self, s, t) -> bool:
    """Whether the store holds a trigger for every family of both directions of {s, t}."""
    return bool(all(self.store_masks[a, b, f].sum() > 0 for a, b in ((s, t), (t, s))
                    for f in range(self.config.moth.families)))

  def _trigger_image_indices(self, c, rng):
    """Training-image indices of class c that a generation optimises its triggers on.

    A fresh random sample for every generation; with `fixed_trigger_images`, the same seeded
    sample of the class for the whole run, so that a stored trigger is warm-started on the images
    it was found on (a near-minimal trigger that just reaches the ASR bound on one sample often
    misses it on another, and fast mode at its high cost cannot grow it back).
    """
    idx = self.by_class[c]
    if len(idx) <= self.config.moth.trigger_samples:
      return idx
    if self.config.moth.fixed_trigger_images:
      fixed = np.random.default_rng([self.config.seed, 11, c])
      return np.sort(fixed.choice(idx, self.config.moth.trigger_samples, replace=False))
    return rng.choice(idx, self.config.moth.trigger_samples, replace=False)

  def _start_period(self, rng):
    """Chooses the period's pairs, loads their warm starts and returns each direction's first mode
    (modes[p][d])."""
    cfg = self.config
    post = self.step - self.warmup_length
    self.pairs = (self.scheduler.choose_many(post, self.num_pairs) if self.num_pairs > 1
                  else [self.scheduler.choose(post)])
    self.cur_masks = np.stack([np.stack([self.store_masks[s, t], self.store_masks[t, s]])
                               for s, t in self.pairs])
    self.cur_patterns = np.stack([np.stack([self.store_patterns[s, t], self.store_patterns[t, s]])
                                  for s, t in self.pairs])
    for p in range(self.num_pairs):
      for d in range(2):
        for f in range(cfg.moth.families):
          if self.cur_masks[p, d, f].sum() <= 0:  # No trigger yet: start from a random one.
            self.cur_masks[p, d, f], self.cur_patterns[p, d, f] = self.random_trigger(rng)
    self.fails[:] = 0
    self.period_sizes = []
    modes = []
    for s, t in self.pairs:
      # A pair hardened in an earlier period (the scheduler has counted this choice already)
      # starts from its stored triggers in fast mode when warm_fast_start: they reached the bound
      # on a slightly older model; with fast_first_visit so does a first visit, from the warm-up's
      # universal triggers. A failure falls back to the full generation next step. One-sided
      # generation decides it for each direction from that direction's stored triggers.
      revisit = self.scheduler.count[s, t] >= 2
      if self.one_sided:
        modes.append([self._first_mode(revisit, self._has_stored_direction(a, b))
                      for a, b in ((s, t), (t, s))])
      else:
        mode = self._first_mode(revisit, self._has_stored(s, t))
        modes.append([mode, mode])
    return modes

  def _first_mode(self, revisit: bool, stored: bool) -> str:
    """The mode of a period's first generation: warm_fast or start (see _start_period)."""
    cfg = self.config
    if cfg.moth.warm_fast_start and (revisit or (cfg.moth.fast_first_visit and stored)):
      return "warm_fast"
    return "start"

  def _has_stored_direction(self, a, b) -> bool:
    """Whether the store holds a trigger for every family of the direction a -> b."""
    return bool(all(self.store_masks[a, b, f].sum() > 0 for f in range(self.config.moth.families)))

  def _next_mode(self, failed: bool) -> str:
    """The mode of a generation after a period's first step: rollback after a failure, reused in
    the period's steps that do not generate, fast otherwise."""
    if failed:
      return "rollback"
    if self.period_pos >= (self.config.moth.generations_per_period or self.config.moth.period):
      # The rest of the period stamps the triggers of the last (successful) generation.
      return "reused"
    return "fast"

  def step_modes(self, rng):
    """The mode of every direction at this step: modes[p][d] for pair p's s->t (d=0) and t->s.

    "start" (random or stored trigger at pair_cost for pair_steps), "warm_fast" and "fast" (the
    latest trigger at fast_cost for fast_steps), "rollback" (after a failure: back to pair_cost)
    or "reused" (no generation: the step stamps the direction's last trigger). At a period's first
    step it chooses the period's pairs first (the scheduler) and loads their warm starts.

    Two-sided generation decides for the pair (a failure of either direction rolls both back; the
    pair stays fast while both succeed); one-sided for each direction on its own. Without
    trigger_reuse every generation is a "start" (random trigger, pair_cost, pair_steps).
    """
    if self.period_pos == 0:
      modes = self._start_period(rng)
    else:
      modes = []
      for p in range(self.num_pairs):
        if self.one_sided:
          modes.append([self._next_mode(bool(self.fails[p, d].any())) for d in range(2)])
          self.fails[p, [d for d in range(2) if modes[-1][d] == "rollback"]] = 0
        else:
          mode = self._next_mode(bool(self.fails[p].any()))
          if mode == "rollback":
            self.fails[p] = 0
          modes.append([mode, mode])
    if not self.config.moth.trigger_reuse:
      modes = [[m if m == "reused" else "start" for m in pair_modes] for pair_modes in modes]
    # Two-sided counts pairs, one-sided directions.
    for pair_modes in modes:
      for mode in (pair_modes if self.one_sided else pair_modes[:1]):
        if mode in self.events:
          self.events[mode] += 1
    return modes

  def orthogonalisation_step(self):
    """One training step after the warm-up: generate the period's triggers and stamp them.

    The extension point of a schedule variant (class docstring). MOTH's version draws everything
    from `step_rng(2)`, in this order: the random starts of the period's first step, then the
    trigger images.
    """
    start = time.time()
    rng = self.step_rng(2)
    modes = self.step_modes(rng)
    if all(mode == "reused" for pair_modes in modes for mode in pair_modes):
      self.end_step(np.array(self.period_sizes[-1]), modes, 0, start)
      return
    images = self.trigger_images(rng, self._generating_pairs(modes))
    success, failures, previous_asr = self.generate(images, modes)
    sizes = self.stamp(success, modes)
    if self.writer is not None and previous_asr:
      with self.writer.as_default():
        records.write_matrix(records.PREVIOUS_ASR_TAG, np.array(previous_asr),
                             step=self.step, description=records.PREVIOUS_ASR_COLUMNS)
    self.end_step(sizes, modes, failures, start)

  def _generating_pairs(self, modes):
    """The pairs (indices) with a direction that generates at this step."""
    return [p for p in range(self.num_pairs) if any(mode != "reused" for mode in modes[p])]

  def trigger_images(self, rng, pairs):
    """{p: [class-s images, class-t images]} for the given pairs: what their triggers are
    generated on (`_trigger_image_indices`).

    Both classes' images are drawn even if one direction reuses: the draws stay the same whichever
    directions generate.
    """
    images = {}
    for p in pairs:
      images[p] = []
      for c in self.pairs[p]:
        images[p].append(self.x[self._trigger_image_indices(c, rng)])
    return images

  def generate(self, images, modes):
    """Generates the triggers of every direction that does not reuse, and keeps the results.

    One engine call per (steps, cost) setting optimises every family of the directions that use
    it: direction (p, d, f) is pair p's s->t (d=0) or t->s (d=1) trigger of family f, each
    warm-started from its own latest trigger (with trigger_reuse; else from a random one drawn
    from its seed). A success becomes the direction's current trigger and enters the store (the
    latest, or as the reference the largest: `store_largest`); a failure counts toward the
    direction's rollback.

    Args:
      images: trigger_images' dict.
      modes: step_modes' modes[p][d].

    Returns:
      (success [P, 2, families] bool, failed generations, previous_asr): the last holds (source,
      target, family, ASR) of each fast generation's starting trigger.
    """
    cfg = self.config
    families = cfg.moth.families
    # Directions that generate at this step, pair by pair, s->t before t->s.
    generated = [(p, d) for p in range(self.num_pairs) for d in range(2)
                 if modes[p][d] != "reused"]
    settings = {"start": (cfg.moth.pair_steps, cfg.moth.pair_cost),
                "rollback": (cfg.moth.rollback_steps or cfg.moth.pair_steps, cfg.moth.pair_cost),
                "fast": (cfg.moth.fast_steps, cfg.moth.fast_cost),
                "warm_fast": (cfg.moth.fast_steps, cfg.moth.fast_cost)}
    groups = {}
    for p, d in generated:
      groups.setdefault(settings[modes[p][d]], []).append((p, d))
    success = np.zeros((self.num_pairs, 2, families), bool)
    failures = 0
    previous_asr = []
    for (steps, cost), members in groups.items():
      directions = [(p, d, f) for p, d in members for f in range(families)]
      seeds = [distance.stable_seed(cfg.seed, self.step, d, *([f] if f or p else []),
                                    *([1000 + p] if p else []))
               for p, d, f in directions]
      warm = cfg.moth.trigger_reuse
      result = self.pair_inverter.invert(
          [images[p][d] for p, d, _ in directions],
          [self.pairs[p][1 - d] for p, d, _ in directions], seeds, init_cost=cost, steps=steps,
          init_mask=(np.stack([self.cur_masks[p, d, f] for p, d, f in directions]) if warm
                     else None),
          init_pattern=(np.stack([self.cur_patterns[p, d, f] for p, d, f in directions]) if warm
                        else None),
          early_stop_patience=cfg.moth.generation_early_stop)
      self.events["engine_calls"] += 1
      self.events["inversion_steps"] += int(result.steps_run.max())
      failures += int((~result.success).sum())
      for k, (p, d, f) in enumerate(directions):
        a, b = self.pairs[p] if d == 0 else self.pairs[p][::-1]
        if modes[p][d] in ("fast", "warm_fast") and result.asr_start is not None:
          previous_asr.append((a, b, f, float(result.asr_start[k])))
        if result.success[k]:
          success[p, d, f] = True
          self.cur_masks[p, d, f] = result.mask[k]
          self.cur_patterns[p, d, f] = result.pattern[k]
          if (not self.config.moth.store_largest or
              result.mask[k].sum() > self.store_masks[a, b, f].sum()):
            self.store_masks[a, b, f] = result.mask[k]
            self.store_patterns[a, b, f] = result.pattern[k]
        else:
          self.fails[p, d, f] += 1
          self.events["failed_directions"] += 1
    self.events["generations"] += (len(generated) if self.one_sided
                                   else len(self._generating_pairs(modes)))
    if self.config.moth.replay > 0:
      self.push_store()
    return success, failures, previous_asr

  def stamp(self, success, modes):
    """Assigns what the training step stamps: each direction's current triggers, every family
    that once succeeded (this step, or the store, which only ever holds successful triggers;
    never the random start of a family that failed).

    Returns:
      [P, 2] trigger sizes: a direction's smallest stamped family, the class distance the model
      still has; a direction that reused its trigger keeps its last size.
    """
    families = self.config.moth.families
    enabled = np.array([[[success[p, d, f] or self.store_masks[a, b, f].sum() > 0
                          for f in range(families)]
                         for d, (a, b) in enumerate((pair, pair[::-1]))]
                        for p, pair in enumerate(self.pairs)])
    sizes = np.array(self.period_sizes[-1]) if self.period_sizes else np.zeros(
        (self.num_pairs, 2))
    for p in self._generating_pairs(modes):
      family_sizes = params.trigger_size(self.cur_masks[p], self.channels)
      for d in range(2):
        if modes[p][d] != "reused":
          sizes[p, d] = (family_sizes[d][enabled[p, d]].min() if enabled[p, d].any()
                         else family_sizes[d].min())
    self.model.set_pairs(self.pairs, self.cur_masks[..., None], self.cur_patterns,
                         enabled.astype(np.float32))
    return sizes

  def end_step(self, sizes, modes, failures: int, start: float):
    """Period bookkeeping (the scheduler's update at the period's end) and the step's logs.

    sizes: [P, 2], each pair's two trigger sizes at this step; modes: each direction's mode,
    modes[p][d].
    """
    cfg = self.config
    self.period_sizes.append(sizes)
    self.period_pos += 1
    period_rows = None
    if self.period_pos == cfg.moth.period:
      avg = np.mean(self.period_sizes, axis=0)
      for p, (s, t) in enumerate(self.pairs):
        self.scheduler.update(s, t, float(avg[p, 0]), float(avg[p, 1]))
      self.period_pos = 0
      period_rows = np.array([(s, t, avg[p, 0], avg[p, 1]) for p, (s, t) in enumerate(self.pairs)])
    self.generation_seconds += time.time() - start
    if self.writer is not None:
      s, t = self.pairs[0]
      first = modes[0]
      with self.writer.as_default():
        tf.summary.scalar("moth/pair_source", s, step=self.step)
        tf.summary.scalar("moth/pair_target", t, step=self.step)
        tf.summary.scalar("moth/trigger_size_st", sizes[0][0], step=self.step)
        tf.summary.scalar("moth/trigger_size_ts", sizes[0][1], step=self.step)
        if self.num_pairs > 1:
          tf.summary.scalar("moth/mean_trigger_size", float(np.mean(sizes)), step=self.step)
        # The share of the first pair's directions in each mode (both or neither when two-sided).
        tf.summary.scalar("moth/fast_mode", float(np.mean(
            [m in ("fast", "warm_fast") for m in first])), step=self.step)
        tf.summary.scalar("moth/rollback", float(np.mean([m == "rollback" for m in first])),
                          step=self.step)
        tf.summary.scalar("moth/generation_failures", float(failures), step=self.step)
        if period_rows is not None:
          records.write_matrix(records.PERIOD_SIZES_TAG, period_rows, step=self.step,
                                  description=records.PERIOD_SIZES_COLUMNS)

  def after_step(self):
    self.step += 1
    if getattr(self.scheduler, "finished", False):
      self.model.stop_training = True  # Keras ends the fit after this step.

  # ----------------------------------------------------------------------------------------------
  # Checkpointed state (lives in the model's non-trainable weights).

  def push_store(self):
    """Copies the trigger store into the model (replay stamps from it; checkpoints keep it)."""
    self.model.store_masks.assign(self.store_masks[..., None])
    self.model.store_patterns.assign(self.store_patterns)

  def save_state(self):
    """Copies the host state into the model's variables (BackupAndRestore then saves them)."""
    driver_state.save(self)

  def load_state(self):
    """Restores the host state from the model's variables (after BackupAndRestore loaded them)."""
    driver_state.load(self)

  def extra_results(self) -> dict:
    """The driver's own entries of the results dict."""
    # Two-sided generation counts its fast / rollback / warm_fast / reused / generations events
    # per pair, one-sided per direction.
    return {"pair_count": self.scheduler.count, "pairs_per_period": self.num_pairs,
            "event_unit": "direction" if self.one_sided else "pair"}

  def log_epoch(self, epoch):
    if self.writer is None:
      return
    with self.writer.as_default():
      tf.summary.image("moth/reward_V", distance.heatmap_image(self.scheduler.reward)[None],
                       step=epoch)
      tf.summary.image("moth/pair_count", distance.heatmap_image(self.scheduler.count)[None],
                       step=epoch)
      records.write_matrix("moth/pair_count_matrix", self.scheduler.count, step=epoch)
      if self.cur_masks is not None:
        tf.summary.image("moth/current_masks", self.cur_masks.reshape(
            -1, *self.cur_masks.shape[-2:], 1), step=epoch, max_outputs=8)
        tf.summary.image("moth/current_patterns", self.cur_patterns.reshape(
            -1, *self.cur_patterns.shape[-3:]), step=epoch, max_outputs=8)
    self.writer.flush()

