"""Wall-time estimates of long work (class distance, hardening, the pipeline) from a few timed steps.

`--phase=distance`, `harden` and `pipeline` print one line before their long work starts, e.g.

    estimate: class distance, 90 directions x 3 seeds x 1000 steps: at most about 25.0 h at
    0.33 s per engine step on this device (...)

and record it in summary.json beside the measured time. The figures come from steps timed on this
device, in this process, on the run's own model and shapes:

* an engine step (moth_tf.triggers.engine): `invert` for 1 and for 3 steps with the inverter the
  run uses (the distance phase reuses the measurement's own inverter, so its graph is traced once
  for both); the difference is the cost of 2 steps without the call's set-up;
* a training step: 1 + `steps` `train_on_batch` calls of a throwaway copy of the model at the
  run's batch size, the first (tracing) not counted.

The formulas (the `formula` of each Estimate, printed in the benchmarks too):

* class distance: engine step x steps x groups of directions x seeds; an upper bound, since early
  stop ends most directions sooner;
* hardening: training steps x training step x (1 + PGD steps for adversarial training, 2 for UAP)
  + for the trigger methods (moth, universal, pairwise) the warm-up (warmup_steps engine steps of
  the n universal directions, scaled from the pair step by images) and one pair generation per
  generating step (2 x pairs x families directions; fast_steps, or pair_steps when a period starts
  from scratch) + for nc the detection (nc steps engine steps of its n directions);
* pipeline: base training (epochs x steps per epoch x training step, when the base model is
  missing) + class distance twice + hardening.

Every figure is an estimate: steps differ (early stop, fast and rollback generations), and a busy
machine is slower. Importing this module does not import TensorFlow.
"""

import dataclasses
import math
import time
from typing import Dict, Optional

import numpy as np


@dataclasses.dataclass
class Estimate:
  """An estimated wall time and how it was reached.

  Attributes:
    what: the work ("class distance", "moth hardening", "pipeline").
    seconds: the estimate.
    formula: the formula with its numbers.
    per_step: the timed steps it rests on, in seconds ({"engine_step": ..., "training_step": ...}).
    hint: what would cut it.
    upper_bound: True where the formula assumes every step runs (early stop shortens it).
    parts: the estimates it sums (the pipeline's stages).
  """
  what: str
  seconds: float
  formula: str
  per_step: Dict[str, float]
  hint: str = ""
  upper_bound: bool = False
  parts: Optional[Dict[str, "Estimate"]] = None

  def line(self) -> str:
    """The one line printed before the work starts."""
    steps = ", ".join(f"{seconds:.3g} s per {name.replace('_', ' ')}"
                      for name, seconds in self.per_step.items())
    about = "at most about" if self.upper_bound else "about"
    return (f"estimate: {self.what}: {about} {format_duration(self.seconds)} at {steps} on this "
            f"device ({self.formula}; an estimate from a few timed steps)"
            + (f"; {self.hint}" if self.hint else ""))

  def to_json(self) -> dict:
    out = {"what": self.what, "estimated_seconds": self.seconds, "formula": self.formula,
           "per_step_seconds": dict(self.per_step), "upper_bound": self.upper_bound}
    if self.parts:
      out["parts"] = {name: part.to_json() for name, part in self.parts.items()}
    return out


def format_duration(seconds: float) -> str:
  """40 s, 12 min, 3.5 h, 2.1 days."""
  if seconds < 120:
    return f"{seconds:.0f} s"
  if seconds < 2 * 3600:
    return f"{seconds / 60:.0f} min"
  if seconds < 72 * 3600:
    return f"{seconds / 3600:.1f} h"
  return f"{seconds / 86400:.1f} days"


# --- Timing ---------------------------------------------------------------------------------------


def time_inverter_step(inverter, images, targets, seeds) -> float:
  """Seconds per engine step of `inverter` on these directions: `invert` for 1 step (which traces
  the graph on a first call) and again for 1 and 3 steps; the difference of the last two is 2
  steps without the call's set-up and result."""
  inverter.invert(images, targets, seeds, steps=1, early_stop_patience=0)
  start = time.perf_counter()
  inverter.invert(images, targets, seeds, steps=1, early_stop_patience=0)
  one = time.perf_counter() - start
  start = time.perf_counter()
  inverter.invert(images, targets, seeds, steps=3, early_stop_patience=0)
  three = time.perf_counter() - start
  return max((three - one) / 2.0, three / 3.0 / 4.0, 1e-6)


def time_engine_step(model, directions: int, images_per_direction: int, settings,
                     strategy=None, seed: int = 0) -> float:
  """Seconds per engine step of `directions` directions of `images_per_direction` random images
  each on `model` (its own inverter: one more trace)."""
  from moth_tf.triggers import distributed

  shape = tuple(int(d) for d in model.input_shape[1:])
  rng = np.random.default_rng(seed)
  images = [rng.random((images_per_direction, *shape), dtype=np.float32)
            for _ in range(directions)]
  classes = int(model.output_shape[-1])
  inverter = distributed.make_inverter(
      model, dataclasses.replace(settings, chunk_steps=3, early_stop_patience=0), strategy)
  return time_inverter_step(inverter, images, [d % classes for d in range(directions)],
                            list(range(directions)))


def time_training_step(model, batch_size: int, jit_compile: bool = False, steps: int = 2,
                       seed: int = 0) -> float:
  """Seconds per training step (SGD, sparse cross-entropy on logits) of `model` on a batch of
  `batch_size` random images: 1 + `steps` train_on_batch calls, the first (tracing) not counted.

  `model` is compiled and trained: pass a throwaway copy.
  """
  import keras

  shape = tuple(int(d) for d in model.input_shape[1:])
  classes = int(model.output_shape[-1])
  rng = np.random.default_rng(seed)
  x = rng.random((batch_size, *shape), dtype=np.float32)
  y = rng.integers(0, classes, batch_size)
  model.compile(keras.optimizers.SGD(1e-6), keras.losses.SparseCategoricalCrossentropy(
      from_logits=True), jit_compile=jit_compile)
  model.train_on_batch(x, y)
  start = time.perf_counter()
  for _ in range(steps):
    loss = model.train_on_batch(x, y)
  np.asarray(loss)
  return (time.perf_counter() - start) / steps


# --- Formulas -------------------------------------------------------------------------------------


def distance_estimate(engine_step: float, directions: int, seeds: int, steps: int,
                      groups: int = 1) -> Estimate:
  """Class distance: engine step x steps x groups x seeds (every direction running every step)."""
  seconds = engine_step * steps * groups * seeds
  group_text = f" x {groups} groups" if groups > 1 else ""
  return Estimate(
      what=f"class distance, {directions} directions x {seeds} seed(s) x {steps} steps",
      seconds=seconds, per_step={"engine_step": engine_step}, upper_bound=True,
      formula=f"{engine_step:.3g} s x {steps} steps{group_text} x {seeds} seed(s); early stop "
      "usually ends directions sooner",
      hint=("--seeds=1, fewer --distance_steps or a GPU cut it" if seeds > 1
            else "fewer --distance_steps or a GPU cut it"))


def harden_estimate(method: str, config, num_classes: int, num_train: Optional[int],
                    training_step: float, engine_step: Optional[float] = None,
                    engine_images: int = 1, pgd_steps: int = 0) -> Estimate:
  """A hardening run's estimate (module docstring).

  Args:
    method: the hardening method.
    config: its HardenConfig.
    num_classes: n.
    num_train: training images (None: a stream; the budget in steps decides).
    training_step: seconds per plain training step at the hardening batch size.
    engine_step: seconds per engine step of the method's generation (moth, universal, pairwise:
      the pair generation's directions; nc: its n labels); None for the other methods.
    engine_images: images in the timed engine step (the warm-up's step is scaled from it by
      images).
    pgd_steps: the training PGD's steps (adversarial modes).
  """
  total = config.total_steps_for(num_train)
  factor = 1.0
  if method == "adv_train" or (method in ("moth", "universal", "pairwise")
                               and config.moth.mode == "adv"):
    factor = 1.0 + pgd_steps
  elif method == "uap":
    factor = 2.0
  training = total * training_step * factor
  parts = [f"{total} training steps x {training_step:.3g} s" + (f" x {factor:g}" if factor != 1
                                                                 else "")]
  seconds = training
  per_step = {"training_step": training_step}
  m = config.moth
  if method in ("moth", "universal", "pairwise") and engine_step is not None:
    per_step["engine_step"] = engine_step
    n = num_classes
    warm_images = n * (n - 1) * m.warmup_samples
    warm_step = engine_step * max(1.0, warm_images / max(engine_images, 1))
    warmup = m.warmup_steps * warm_step
    post = max(total - n, 0)
    periods = math.ceil(post / m.period) if post else 0
    per_period = min(m.generations_per_period or m.period, m.period)
    first_steps = m.fast_steps if (m.warm_fast_start and m.fast_first_visit) else m.pair_steps
    generation = periods * (first_steps + (per_period - 1) * m.fast_steps) * engine_step
    seconds += warmup + generation
    parts.append(f"warm-up {m.warmup_steps} x {warm_step:.3g} s")
    parts.append(f"{periods} periods x ({first_steps} + {per_period - 1} x {m.fast_steps}) engine "
                 f"steps x {engine_step:.3g} s")
  elif method == "nc" and engine_step is not None:
    per_step["engine_step"] = engine_step
    seconds += config.nc.steps * engine_step
    parts.append(f"detection {config.nc.steps} x {engine_step:.3g} s")
  elif method == "nad":
    parts.append("the teacher's fit not included")
  return Estimate(what=f"{method} hardening, {total} steps", seconds=seconds, per_step=per_step,
                  formula=" + ".join(parts),
                  hint="a GPU, or fewer --harden_steps, cut it")


def pipeline_estimate(train_epochs: int, train_steps_per_epoch: int, train_step: Optional[float],
                      distance: Estimate, harden: Estimate, distance_before: bool = True
                      ) -> Estimate:
  """The pipeline: base training (train_step None: the base model exists) + class distance before
  (unless reused) and after + hardening."""
  parts = {}
  seconds = 0.0
  formula = []
  if train_step is not None:
    training = train_epochs * train_steps_per_epoch * train_step
    parts["train"] = Estimate(
        what="base training", seconds=training, per_step={"training_step": train_step},
        formula=f"{train_epochs} epochs x {train_steps_per_epoch} steps x {train_step:.3g} s")
    seconds += training
    formula.append(f"training {format_duration(training)}")
  if distance_before:
    parts["distance_before"] = distance
    seconds += distance.seconds
    formula.append(f"distance {format_duration(distance.seconds)}")
  parts["harden"] = harden
  parts["distance_after"] = distance
  seconds += harden.seconds + distance.seconds
  formula += [f"hardening {format_duration(harden.seconds)}",
              f"distance {format_duration(distance.seconds)}"]
  per_step = dict(harden.per_step)
  per_step.update(distance.per_step)
  return Estimate(what="pipeline", seconds=seconds, per_step=per_step,
                  formula=" + ".join(formula) + "; the distances at most (early stop)",
                  upper_bound=False, parts=parts, hint=distance.hint)


def distance_groups(num_directions: int, batch_directions: int) -> int:
  """Engine calls per seed of a measurement (DistanceConfig.batch_directions; 0: one)."""
  return math.ceil(num_directions / batch_directions) if batch_directions else 1


# --- The phases' estimates ------------------------------------------------------------------------


def harden_probe(run_config, splits, model, strategy=None) -> Estimate:
  """`--phase=harden`'s estimate: a training step of `model` (a throwaway copy: it is compiled and
  trained) at the hardening batch size and, for the trigger methods and nc, an engine step of the
  method's generation (pairs x 2 x families directions of trigger_samples images; nc: n labels of
  up to nc.samples images of every other class)."""
  from moth_tf.hardening import driver

  h = run_config.harden
  method = run_config.method
  n = splits.num_classes
  # The hardening's generations use one block per replica (driver.hardening_blocks).
  settings = dataclasses.replace(_engine_settings(run_config), direction_blocks=1)
  engine_step, images = None, 1
  if method in ("moth", "universal", "pairwise"):
    pairs = driver.pairs_per_period(h, n) if method == "moth" else 1
    directions = 2 * pairs * h.moth.families
    images = min(h.moth.trigger_samples, max(1, int(np.bincount(splits.y_train).min())))
    engine_step = time_engine_step(model, directions, images, settings, strategy)
    images *= directions
  elif method == "nc":
    images = (n - 1) * h.nc.samples
    engine_step = time_engine_step(model, n, images, settings, strategy)
  training_step = time_training_step(model, h.batch_size, h.jit_compile)
  return harden_estimate(method, h, n, splits.num_train, training_step, engine_step, images,
                         pgd_steps=splits.info.train_pgd.steps)


def distance_probe(run_config, splits, model, strategy=None) -> Estimate:
  """A class-distance estimate from an engine step of its own inverter on `model` (the pipeline's;
  `--phase=distance` times the measurement's own inverter instead, see measure_distance)."""
  dist = run_config.distance
  directions = 1 if dist.pair else splits.num_classes * (splits.num_classes - 1)
  group = dist.batch_directions or directions
  engine_step = time_engine_step(model, min(group, directions), dist.samples,
                                 _engine_settings(run_config), strategy)
  return distance_estimate(engine_step, directions, len(dist.seeds), dist.steps,
                           distance_groups(directions, dist.batch_directions))


def _engine_settings(run_config):
  from moth_tf.evaluation import distance
  return distance.inversion_settings(run_config.distance, run_config.jit_compile)


def pipeline_probe(run_config, splits, model, train_needed: bool, distance_before: bool,
                   strategy=None) -> Estimate:
  """`--phase=pipeline`'s estimate, before its first stage: `model` is the base model, or when
  `train_needed` a freshly built one of the architecture (a throwaway either way: it is compiled
  and trained). Its parts are the distance (distance_probe), the hardening (harden_probe) and the
  base training (a training step at the recipe's batch size)."""
  distance = distance_probe(run_config, splits, model, strategy)
  harden = harden_probe(run_config, splits, model, strategy)
  train_step = None
  recipe = run_config.train
  if train_needed:
    train_step = (harden.per_step["training_step"] if recipe.batch_size ==
                  run_config.harden.batch_size else
                  time_training_step(model, recipe.batch_size, run_config.jit_compile))
  steps_per_epoch = math.ceil(len(splits.x_train) / recipe.batch_size)
  return pipeline_estimate(recipe.epochs, steps_per_epoch, train_step, distance, harden,
                           distance_before)
