"""Tests of MOTH's ablation options (HardenConfig's generation, schedule, trigger_reuse) and of the
summaries behind the paper's Fig. 8 and 9, on the digits data set with tiny budgets.

Each option must change what it names and nothing else; with the defaults the driver does what
tests/test_hardening.py checks. The driver is stepped by hand (before_step / after_step), as there.
"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from moth_tf.reporting import comparison
from moth_tf import config as config_lib
from moth_tf import recipes
from moth_tf import data as data_lib
from moth_tf.reporting import report_figures
from moth_tf.reporting import reader
from moth_tf.reporting import records
from moth_tf import training
from moth_tf.hardening import model as model_lib
from moth_tf.hardening import driver
from moth_tf.hardening import moth
from moth_tf.hardening import scheduler as scheduler_lib
from moth_tf.models import io as model_io

import cli_testing  # pylint: disable=g-bad-import-order

# The published generation schedule: one pair per period, a generation at every step.
_PUBLISHED = recipes.PUBLISHED_GENERATION


def _config(**fields):
  return config_lib.harden_config(**{**dict(_PUBLISHED, warmup_steps=5, pair_steps=20,
                                           fast_steps=5, trigger_samples=8, warmup_samples=2),
                                    **fields})


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  """(splits, the path of a natural LeNet trained for 3 epochs)."""
  splits = data_lib.load_dataset("digits")
  run_dir = str(tmp_path_factory.mktemp("natural"))
  recipe = config_lib.TrainConfig(epochs=3, batch_size=64, learning_rate=2e-3)
  _, results = training.train_natural("lenet", splits, recipe, run_dir,
                                      tf.distribute.get_strategy(), seed=0, verbose=0)
  assert results["test_accuracy"] > 0.85
  return splits, os.path.join(run_dir, "model.keras")


def _hardener(splits, classifier, config, warmup=True, writer=None, pairs=1):
  stamping = model_lib.StampingModel(classifier, 10, pairs=pairs)
  return driver.MothHardener(stamping, splits.x_train, splits.y_train, config, verbose=False,
                           warmup=warmup, writer=writer)


def _constant_classifier():
  """Always predicts class 0 and has no input gradient: every trigger toward 0 succeeds at once,
  every other one fails."""
  clf = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
  bias = np.zeros(10, np.float32)
  bias[0] = 5.0
  clf.layers[-1].set_weights([np.zeros((64, 10), np.float32), bias])
  return clf


def _spy_invert(hardener, calls):
  """Records every pair generation's (step, arguments, result)."""
  original = hardener.pair_inverter.invert

  def invert(images, targets, seeds, **kwargs):
    result = original(images, targets, seeds, **kwargs)
    calls.append({"step": hardener.step, "targets": list(targets), "images": images,
                  "kwargs": kwargs, "result": result})
    return result

  hardener.pair_inverter.invert = invert


def _run(hardener, steps):
  for _ in range(steps):
    hardener.before_step()
    hardener.after_step()


# ------------------------------------------------------------------------------------------------
# Configuration and flags.


def test_config_and_flags_of_the_ablations():
  config = config_lib.harden_config()
  assert (config.moth.generation, config.moth.schedule, config.moth.trigger_reuse, config.moth.epsilon,
          config.moth.alpha_steps) == ("two_sided", "karm", True, 0.3, 1000)
  harden = cli_testing.parsed_config().harden
  assert (harden.moth.generation, harden.moth.schedule, harden.moth.trigger_reuse, harden.moth.epsilon,
          harden.moth.alpha_steps) == ("two_sided", "karm", True, 0.3, 1000)
  harden = cli_testing.parsed_config(
      "--generation=one_sided", "--schedule=round_robin", "--schedule_epsilon=0.1",
      "--alpha_steps=50", "--notrigger_reuse").harden
  assert (harden.moth.generation, harden.moth.schedule, harden.moth.trigger_reuse, harden.moth.epsilon,
          harden.moth.alpha_steps) == ("one_sided", "round_robin", False, 0.1, 50)
  for fields, message in (
      (dict(generation="both"), "generation must be one of two_sided, one_sided, got 'both'"),
      (dict(schedule="greedy"), "schedule must be one of karm, prior_only, reward_only, random, "
                                "round_robin, got 'greedy'"),
      (dict(alpha_steps=0), "alpha_steps must be >= 1"),
      (dict(epsilon=1.5), "epsilon must be in"),
  ):
    with pytest.raises(ValueError, match=message) as error:
      config_lib.harden_config(**fields)
    assert "\n" not in str(error.value)
  described = moth.describe(config_lib.harden_config(generation="one_sided", schedule="random",
                                                    trigger_reuse=False), 1257)
  assert described.endswith("; ablation: one-sided generation; ablation: random pair schedule; "
                            "ablation: no trigger reuse (every generation from a random trigger)")
  assert "ablation" not in moth.describe(config, 1257)


# ------------------------------------------------------------------------------------------------
# generation = one_sided.


def test_one_sided_directions_do_not_depend_on_their_partners_images(base):
  """One-sided, pair (3, 5)'s 3 -> 5 trigger comes out bit for bit the same whatever images its
  partner 5 -> 3 is generated on (fewer and other ones here); the partner's trigger changes."""
  splits, path = base
  results = []
  for partner_images in (None, 3):
    hardener = _hardener(splits, model_io.load_model(path), _config(generation="one_sided"),
                         warmup=False)
    hardener.scheduler.choose = lambda step: (3, 5)
    original = hardener._trigger_image_indices

    def indices(c, rng, original=original, keep=partner_images):
      idx = original(c, rng)  # The same draws in both runs: class 3's images do not change.
      return idx[-keep:] if keep and c == 5 else idx

    hardener._trigger_image_indices = indices
    calls = []
    _spy_invert(hardener, calls)
    _run(hardener, 1)
    assert len(calls) == 1 and calls[0]["targets"] == [5, 3]
    assert [len(im) for im in calls[0]["images"]] == [8, partner_images or 8]
    results.append(calls[0]["result"])
  # Each direction has its own engine block, so its own model call and loss.
  assert hardener.pair_inverter.settings.direction_blocks >= 2
  first, second = results
  assert first.success[0]
  np.testing.assert_array_equal(first.mask[0], second.mask[0])
  np.testing.assert_array_equal(first.pattern[0], second.pattern[0])
  assert first.steps_run[0] == second.steps_run[0]
  assert not np.array_equal(first.mask[1], second.mask[1])


@pytest.mark.parametrize("generation", ["two_sided", "one_sided"])
def test_one_sided_directions_fall_back_on_their_own_failures(base, generation):
  """Pair (0, 1) on a model that always says 0: 0 -> 1 always fails, 1 -> 0 always succeeds.
  Two-sided, the failure rolls the whole pair back (one call at pair_steps); one-sided, only the
  failed direction rolls back while its partner stays fast."""
  splits = base[0]
  config = _config(generation=generation, epsilon=0.0, pair_steps=6, fast_steps=2)
  hardener = _hardener(splits, _constant_classifier(), config, warmup=False)
  calls = []
  _spy_invert(hardener, calls)
  _run(hardener, 3)  # One period: a start, then two steps after a failure.
  assert hardener.pairs == [(0, 1)]
  by_step = {}
  for call in calls:
    by_step.setdefault(call["step"], []).append(
        (call["targets"], call["kwargs"]["steps"], float(np.max(call["kwargs"]["init_cost"]))))
  assert by_step[0] == [([1, 0], 6, config.moth.pair_cost)]  # The period's start: both in full.
  for step in (1, 2):
    if generation == "two_sided":
      assert by_step[step] == [([1, 0], 6, config.moth.pair_cost)]
    else:
      assert sorted(by_step[step]) == sorted([([1], 6, config.moth.pair_cost),
                                              ([0], 2, pytest.approx(config.moth.fast_cost))])
  events = hardener.events
  if generation == "two_sided":  # Counted per pair.
    assert (events["rollback"], events["fast"], events["generations"]) == (2, 0, 3)
    assert hardener.extra_results()["event_unit"] == "pair"
  else:  # Counted per direction.
    assert (events["rollback"], events["fast"], events["generations"]) == (2, 2, 6)
    assert hardener.extra_results()["event_unit"] == "direction"
  assert events["failed_directions"] == 3


# ------------------------------------------------------------------------------------------------
# schedule.


def test_schedules_through_the_driver(base):
  """The driver builds config.moth.schedule's scheduler; round_robin visits the tournament order,
  random follows its seeded stream (a period per step here)."""
  splits = base[0]
  expected_types = {"karm": scheduler_lib.PairScheduler,
                    "prior_only": scheduler_lib.PriorOnlyScheduler,
                    "reward_only": scheduler_lib.RewardOnlyScheduler,
                    "random": scheduler_lib.RandomPairScheduler,
                    "round_robin": scheduler_lib.RoundRobinScheduler}
  for schedule, kind in expected_types.items():
    hardener = _hardener(splits, _constant_classifier(), _config(schedule=schedule), warmup=False)
    assert type(hardener.scheduler) is kind
  pairs = {}
  for schedule, seed in (("round_robin", 0), ("round_robin", 5), ("random", 0), ("random", 0),
                         ("random", 1)):
    config = _config(schedule=schedule, seed=seed, period=1, pair_steps=2, fast_steps=1)
    hardener = _hardener(splits, _constant_classifier(), config, warmup=False)
    visited = []
    for _ in range(12):
      hardener.before_step()
      visited.append(hardener.pairs[0])
      hardener.after_step()
    pairs.setdefault((schedule, seed), []).append(visited)
  order = scheduler_lib.tournament_order(10)
  assert pairs[("round_robin", 0)] == pairs[("round_robin", 5)] == [order[:12]]
  stream = scheduler_lib.RandomPairScheduler(10, seed=0)
  assert pairs[("random", 0)] == [[stream.choose(k) for k in range(12)]] * 2
  assert pairs[("random", 1)] != pairs[("random", 0)][:1]


def test_round_robin_with_several_pairs_per_period(base):
  """Five pairs per period: the period's pairs share no class and every pair comes once before
  any comes again (nine periods cover the 45 pairs of digits)."""
  splits = base[0]
  config = _config(schedule="round_robin", pairs_per_period=5, period=1, pair_steps=2,
                   fast_steps=1)
  hardener = _hardener(splits, _constant_classifier(), config, warmup=False, pairs=5)
  seen = []
  for _ in range(9):
    hardener.before_step()
    assert sorted(c for pair in hardener.pairs for c in pair) == list(range(10))
    seen += hardener.pairs
    hardener.after_step()
  assert sorted(seen) == sorted(scheduler_lib.tournament_order(10))


# ------------------------------------------------------------------------------------------------
# trigger_reuse = False.


@pytest.mark.parametrize("reuse", [True, False])
def test_without_trigger_reuse_every_generation_starts_from_scratch(base, reuse):
  """Off, every generation starts from the random trigger its seed draws (no warm start), at
  pair_cost for pair_steps: no fast, warm-fast or rollback generation. On (the default) the same
  run warm-starts its fast generations."""
  splits, path = base
  config = _config(trigger_reuse=reuse, warm_fast_start=True, fast_first_visit=True)
  hardener = _hardener(splits, model_io.load_model(path), config)
  calls = []
  _spy_invert(hardener, calls)
  _run(hardener, 10 + 2 * config.moth.period)  # The warm-up steps, then two periods.
  assert len(calls) == hardener.events["engine_calls"] >= 2 * config.moth.period
  assert hardener.events["generations"] == 2 * config.moth.period
  if reuse:
    assert any(c["kwargs"]["steps"] == config.moth.fast_steps for c in calls)
    assert all(c["kwargs"]["init_mask"] is not None for c in calls)
    return
  for call in calls:
    kwargs = call["kwargs"]
    assert kwargs["init_mask"] is None and kwargs["init_pattern"] is None
    assert kwargs["steps"] == config.moth.pair_steps
    assert np.all(np.asarray(kwargs["init_cost"]) == config.moth.pair_cost)
  assert hardener.events["fast"] == hardener.events["warm_fast"] == 0
  assert hardener.events["rollback"] == 0
  # Not for want of a warm start: the warm-up stored triggers of the first pair's classes.
  s, t = hardener.scheduler.count.nonzero()[0][0], hardener.scheduler.count.nonzero()[1][0]
  assert hardener.store_masks[:, t].sum() > 0 or hardener.store_masks[:, s].sum() > 0


# ------------------------------------------------------------------------------------------------
# Summaries for the paper's Fig. 8 and 9, written by the driver and read back by the report.


def test_summaries_are_written_and_read_back_by_the_report(base, tmp_path):
  splits, path = base
  run_dir = str(tmp_path / "digits_lenet_moth")
  writer = tf.summary.create_file_writer(os.path.join(run_dir, "logs", "harden_moth"))
  config = _config()
  hardener = _hardener(splits, model_io.load_model(path), config, writer=writer)
  calls, updates = [], []
  _spy_invert(hardener, calls)
  original_update = hardener.scheduler.update

  def update(s, t, st, ts):
    updates.append((hardener.step, s, t, st, ts))
    original_update(s, t, st, ts)

  hardener.scheduler.update = update
  periods = 4
  _run(hardener, 10 + periods * config.moth.period)
  writer.flush()
  # Who the run is, as the harden phase writes it (the report groups runs by it).
  records.write_run_metadata(
      run_dir, "harden", {"data": {"dataset": "digits"}, "model": "lenet", "method": "moth",
                          "seed": 0, "harden": {"mode": "nat"}}, [str(c) for c in range(10)])
  records.write_final_metrics(run_dir, "harden", {"steps": hardener.step})

  runs = reader.read_runs(str(tmp_path))
  assert len(runs) == 1
  run = runs[0]
  # (a) One row per pair at the last step of each period: what the scheduler's reward got.
  period_points = run.points(records.PERIOD_SIZES_TAG)
  assert [p.step for p in period_points] == [u[0] for u in updates]
  np.testing.assert_array_equal(np.concatenate([p.value for p in period_points]),
                                np.array([u[1:] for u in updates], np.float64))
  series, counts = report_figures.pair_distance_series(run)
  assert sum(counts.values()) == periods
  # (b) Each fast generation's previous trigger: its ASR on the generation's images, as the engine
  # measured it before its first update.
  fast = [(c["step"], c["targets"][d], c["result"].asr_start[d]) for c in calls
          for d in range(len(c["targets"])) if c["kwargs"]["steps"] == config.moth.fast_steps]
  assert fast
  asr_points = run.points(records.PREVIOUS_ASR_TAG)
  rows = [(p.step, int(row[1]), row[3]) for p in asr_points for row in p.value]
  assert rows == [(step, target, pytest.approx(float(asr))) for step, target, asr in fast]
  assert all(0.0 <= r[2] <= 1.0 and r[2] * config.moth.trigger_samples == int(
      round(r[2] * config.moth.trigger_samples)) for r in rows)
  steps, _, asr = report_figures.previous_asr_series(run)
  assert len(asr) == len(fast)
  # The report draws both figures.
  groups = comparison.build_groups(runs, "natural")
  written = report_figures.write_figures(groups, str(tmp_path / "report"))
  names = sorted(os.path.basename(p) for p in written)
  assert "digits_lenet_pair_distance.png" in names
  assert "digits_lenet_previous_trigger_asr.png" in names
