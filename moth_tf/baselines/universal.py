"""`--method=universal`: MOTH's warm-up universal triggers for the whole budget (the paper's
"Universal" hardening).

The run starts like MOTH (one universal trigger per target class, each stamped for one step).
After that, instead of scheduled class pairs, every period of `period` steps hardens one target
class g in round robin (0, 1, ..., n-1, 0, ...): each step regenerates the universal trigger toward
g on `warmup_samples` training images of every other class, warm-started from g's latest
successful universal trigger, with MOTH's cost schedule (`pair_steps` at `pair_cost` for the first
step of a period and after a failure, `fast_steps` at `fast_cost` while it keeps succeeding; ASR
bound `pair_asr`), and stamps it on `portion` of the batch's images of the other classes (labels
kept). A failed generation keeps stamping the last successful trigger.

The universal triggers live in the trigger store's column g (every source class), so they are
checkpointed with the model and, with `replay` > 0, replayed on other images as in MOTH.
"""

import time

import numpy as np
import tensorflow as tf

from moth_tf import config as config_lib
from moth_tf.evaluation import distance
from moth_tf.hardening import driver
from moth_tf.hardening import fitting
from moth_tf.hardening import moth
from moth_tf.triggers import distributed
from moth_tf.triggers import engine
from moth_tf.triggers import params


class UniversalHardener(driver.MothHardener):
  """MothHardener whose periods regenerate and stamp one universal trigger, targets in turn."""

  def __init__(self, model, x_train, y_train, config, **kwargs):
    super().__init__(model, x_train, y_train, config, **kwargs)
    self.universal_inverter = distributed.make_inverter(
        model.classifier, engine.InversionSettings(
            steps=config.moth.pair_steps, asr_bound=config.moth.pair_asr,
            init_cost=config.moth.pair_cost,
            chunk_steps=max(config.moth.pair_steps, config.moth.fast_steps),
            jit_compile=config.jit_compile),
        getattr(model, "distribute_strategy", None))

  def target_of_step(self, step: int) -> int:
    """The class whose universal trigger training step `step` (after the warm-up) hardens."""
    return ((step - self.warmup_length) // self.config.moth.period) % self.n

  def orthogonalisation_step(self):
    """Regenerates the universal trigger toward this period's target class and stamps it.

    The MothHardener extension point: it replaces MOTH's pair generation (step_modes, generate,
    stamp, end_step) whole. The mode follows MOTH's cost schedule: "start" at a period's first
    step, "rollback" after a failed generation, "fast" while they succeed.
    """
    cfg = self.config
    start = time.time()
    # Universal stamps `portion` of the other images.
    self.model.warm_ratio.assign(cfg.moth.portion)
    g = self.target_of_step(self.step)
    if self.period_pos == 0:
      steps, cost, mode = cfg.moth.pair_steps, cfg.moth.pair_cost, "start"
    elif self.fails.any():  # The last generation failed (checkpointed with the period).
      steps, cost, mode = cfg.moth.pair_steps, cfg.moth.pair_cost, "rollback"
      self.events["rollback"] += 1
    else:
      steps, cost, mode = cfg.moth.fast_steps, cfg.moth.fast_cost, "fast"
      self.events["fast"] += 1
    images, _ = self.universal_images(self.step_rng(2), g)
    if self.universal_masks is not None and self.universal_masks[g].sum() > 0:
      init_mask, init_pattern = self.universal_masks[g], self.universal_patterns[g]
    else:
      init_mask, init_pattern = self.random_trigger(self.step_rng(3))
    result = self.universal_inverter.invert(
        [images], [g], [distance.stable_seed(cfg.seed, self.step, 5)], init_cost=cost,
        steps=steps, init_mask=init_mask[None], init_pattern=init_pattern[None])
    self.events["generations"] += 1
    failed = not bool(result.success[0])
    self.fails[:] = int(failed)
    if failed:
      self.events["failed_directions"] += 1
    else:
      if self.universal_masks is None:
        shape = self.store_masks.shape[-2:]
        self.universal_masks = np.zeros((self.n,) + shape, np.float32)
        self.universal_patterns = np.zeros((self.n,) + shape + (self.channels,), np.float32)
      self.universal_masks[g] = result.mask[0]
      self.universal_patterns[g] = result.pattern[0]
      # The store's column g (family 0) holds g's universal trigger: checkpointed, and replayed.
      self.store_masks[:, g, 0] = result.mask[0]
      self.store_patterns[:, g, 0] = result.pattern[0]
      self.store_masks[g, g] = 0.0
      self.store_patterns[g, g] = 0.0
      self.push_store()
    usable = self.universal_masks is not None and self.universal_masks[g].sum() > 0
    if usable:
      self.model.set_warmup(g, self.universal_masks[g], self.universal_patterns[g])
    else:
      self.model.set_warmup(None)
    self.period_pos = (self.period_pos + 1) % cfg.moth.period
    self.generation_seconds += time.time() - start
    if self.writer is not None:
      size = float(params.trigger_size(self.universal_masks[g][None], self.channels)[0]) \
          if usable else 0.0
      with self.writer.as_default():
        tf.summary.scalar("universal/target", g, step=self.step)
        tf.summary.scalar("universal/trigger_size", size, step=self.step)
        tf.summary.scalar("universal/fast_mode", float(mode == "fast"), step=self.step)
        tf.summary.scalar("universal/generation_failed", float(failed), step=self.step)

  def extra_results(self) -> dict:
    # Periods started per target class (they follow from the step count: round robin).
    post = max(self.step - self.warmup_length, 0)
    periods = -(-post // self.config.moth.period)
    return {"target_periods": [len(range(g, periods, self.n)) for g in range(self.n)]}


def describe(config: config_lib.HardenConfig, num_train: int, pgd_settings=None) -> str:
  del pgd_settings
  return (f"Universal: {fitting.describe_schedule(config, num_train)}; after the warm-up, one "
          f"target class per period of {config.moth.period} steps in turn, its universal trigger "
          f"regenerated every step and stamped on {100 * config.moth.portion:g}% of the other "
          f"classes' images, replay {config.moth.replay:.0%}")


def wrap(classifier, num_classes: int, config: config_lib.HardenConfig, samples, **kwargs):
  """A StampingModel whose `fit` runs the Universal driver (moth_tf.hardening.moth.wrap)."""
  return moth.wrap(classifier, num_classes, config_lib.replace(config, {"pairs_per_period": 1}),
                   samples, hardener_class=UniversalHardener, **kwargs)


def harden(classifier_factory, splits, config: config_lib.HardenConfig, run_dir: str,
           strategy=None, verbose: int = 1, pgd_settings=None):
  """Hardens a copy of the classifier with universal triggers; returns (classifier, results).

  Universal hardens one target class per period: `pairs_per_period` does not apply (taken as 1).
  """
  config = config_lib.replace(config, {"pairs_per_period": 1})
  return moth.harden(
      classifier_factory, splits, config, run_dir, strategy=strategy, verbose=verbose,
      pgd_settings=pgd_settings, hardener_class=UniversalHardener, log_name="harden_universal")
