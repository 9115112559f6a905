"""Tests of the MOTH hardening driver (moth_tf.hardening.moth.harden) on the digits data set.

A LeNet trained for 3 epochs (97% test accuracy) is hardened with a tiny configuration: 20-step
trigger inversions, so a run takes a few seconds. With batch 128 the 1,257 training digits give 10
steps per epoch, and the first 10 steps (one per class) are the warm-up.
"""

import dataclasses
import hashlib
import json
import math
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from moth_tf import config as config_lib

from moth_tf import recipes
from moth_tf import data as data_lib
from moth_tf import evaluation
from moth_tf import training
from moth_tf.hardening import callbacks
from moth_tf.hardening import driver
from moth_tf.hardening import fitting
from moth_tf.hardening import moth
from moth_tf.models import io as model_io

# learning_rate 1e-3 (the reference's): the default 0.01 is tuned for a 2,000-step budget; with the
# default 100-step ramp this 20-step run trains at a small rate either way. The published generation
# schedule (one pair per period, a generation in every step), which these tests follow step by
# step; the default schedule (several pairs, one generation per period) has its own tests below.
_PUBLISHED = recipes.PUBLISHED_GENERATION
_TINY = config_lib.harden_config(epochs=2, batch_size=128, learning_rate=1e-3, warmup_steps=20,
                                pair_steps=20, fast_steps=5, trigger_samples=8, **_PUBLISHED)


def _sha256(path):
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def _copy_factory(model):
  """A factory returning a fresh copy (same weights) of an in-memory model."""
  def factory():
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone
  return factory


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  """(splits, natural LeNet, its model.keras path, its test accuracy)."""
  splits = data_lib.load_dataset("digits")
  run_dir = str(tmp_path_factory.mktemp("natural"))
  recipe = config_lib.TrainConfig(epochs=3, batch_size=64, learning_rate=2e-3)
  model, results = training.train_natural("lenet", splits, recipe, run_dir,
                                          tf.distribute.get_strategy(), seed=0, verbose=0)
  assert results["test_accuracy"] > 0.85  # The hardening checks below need a real model.
  return splits, model, os.path.join(run_dir, "model.keras"), results["test_accuracy"]


@pytest.fixture(scope="module")
def hardened(base, tmp_path_factory):
  """One tiny MOTH run from the saved base model, with what each step stamped recorded."""
  splits, model, path, _ = base
  run_dir = str(tmp_path_factory.mktemp("moth"))
  before = {"file": _sha256(path), "weights": [w.copy() for w in model.get_weights()]}
  steps, first = [], {}
  original_after_step = driver.MothHardener.after_step

  def after_step(self):
    m = self.model
    steps.append({
        "step": self.step,
        "warm_enabled": float(m.warm_enabled.numpy()),
        "warm_target": int(m.warm_target.numpy()),
        "pair_enabled": m.pair_enabled.numpy().copy(),
        "pair_classes": tuple(int(c) for c in m.pair_classes.numpy()),
        "learning_rate": float(m.optimizer.learning_rate.numpy()),  # The next step's rate.
    })
    if self.step == 0:
      first.update(
          prior=self.scheduler.prior.copy(), size=self.scheduler.size.copy(),
          store_masks=self.store_masks.copy(), store_patterns=self.store_patterns.copy(),
          model_store_masks=m.store_masks.numpy()[..., 0].copy(),
          universal_masks=np.array(self.universal_masks), universal_patterns=np.array(
              self.universal_patterns))
    original_after_step(self)

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(driver.MothHardener, "after_step", after_step)
    classifier, results = moth.harden(lambda: model_io.load_model(path), splits, _TINY, run_dir,
                                      verbose=0)
  return {"classifier": classifier, "results": results, "run_dir": run_dir, "steps": steps,
          "first": first, "before": before}


def test_harden_results_are_consistent(base, hardened):
  splits, _, _, _ = base
  results = hardened["results"]
  spe = math.ceil(len(splits.x_train) / _TINY.batch_size)
  assert results["steps_per_epoch"] == spe == 10
  assert results["steps"] == _TINY.epochs * spe
  assert results["epochs"] == _TINY.epochs
  assert [s["step"] for s in hardened["steps"]] == list(range(_TINY.epochs * spe))
  assert results["wall_seconds"] > 0
  assert results["warmup_seconds"] > 0 and results["generation_seconds"] > 0
  assert results["training_seconds"] >= 0
  assert (results["warmup_seconds"] + results["generation_seconds"] + results["training_seconds"]
          == pytest.approx(results["wall_seconds"]))
  # After the 10 warm-up steps every step generates triggers; periods of 3 steps on one pair.
  pair_steps = results["steps"] - splits.num_classes
  periods = math.ceil(pair_steps / _TINY.moth.period)
  events = results["events"]
  assert events["generations"] == pair_steps
  assert events["fast"] + events["rollback"] + periods == pair_steps
  count = np.asarray(results["pair_count"])
  assert count.shape == (10, 10)
  np.testing.assert_array_equal(count, count.T)
  assert np.all(np.diag(count) == 0) and np.all(count >= 0)
  assert count.sum() == 2 * periods
  assert 0.0 <= results["final_train_accuracy"] <= 1.0
  assert results["config"] == config_lib.flat_dict(_TINY)


def test_harden_trains_a_copy_and_keeps_accuracy(base, hardened):
  splits, model, path, base_accuracy = base
  classifier = hardened["classifier"]
  assert classifier is not model
  # The input is untouched: the file on disk and the in-memory model it was saved from.
  assert _sha256(path) == hardened["before"]["file"]
  for w, w0 in zip(model.get_weights(), hardened["before"]["weights"]):
    np.testing.assert_array_equal(w, w0)
  # The returned copy was trained.
  change = max(float(np.abs(a - b).max()) for a, b in
               zip(classifier.get_weights(), model.get_weights()))
  assert change > 1e-4
  accuracy = evaluation.accuracy(classifier, splits.x_test, splits.y_test)
  assert accuracy > base_accuracy - 0.1 and accuracy > 0.8


def test_harden_writes_logs_and_cleans_up_the_backup(hardened):
  run_dir = hardened["run_dir"]
  for phase in ("harden", "harden_moth"):
    found = [f for _, _, files in os.walk(os.path.join(run_dir, "logs", phase)) for f in files
             if f.startswith("events.out.tfevents.")]
    assert found, phase
  assert not os.path.exists(os.path.join(run_dir, "backup_harden"))  # Removed after success.


def test_warmup_sets_the_prior_and_stores_the_universal_triggers(hardened):
  first = hardened["first"]
  n = 10
  prior, size = first["prior"], first["size"]
  assert prior.shape == (n, n)
  assert np.all(np.isfinite(prior)) and np.all(prior >= 0)
  assert np.all(np.diag(prior) == 0) and np.all(np.diag(size) == 0)
  succeeded = [t for t in range(n) if size[(t + 1) % n, t] > 0]
  assert len(succeeded) >= n // 2  # 20 steps find most universal triggers (observed 9 of 10).
  assert prior.sum() > 0
  store, patterns = first["store_masks"], first["store_patterns"]
  for t in range(n):
    others = [i for i in range(n) if i != t]
    assert np.all(store[t, t] == 0)
    if t in succeeded:
      assert np.all(size[others, t] == size[(t + 1) % n, t])  # One size per target column.
      assert first["universal_masks"][t].sum() > 0
      for i in others:  # Family 0 (the only one here) starts from the universal trigger.
        np.testing.assert_array_equal(store[i, t, 0], first["universal_masks"][t])
        np.testing.assert_array_equal(patterns[i, t, 0], first["universal_patterns"][t])
    else:
      assert np.all(store[:, t] == 0) and np.all(prior[:, t] == 0) and np.all(size[:, t] == 0)
  # The model's store variables hold the same (BackupAndRestore checkpoints them).
  np.testing.assert_array_equal(first["model_store_masks"], store)


def test_harden_trains_with_the_ramped_and_decayed_learning_rate(hardened):
  """_TINY: 20 steps at peak 1e-3, ramp min(100, 19) = 19 steps, then cosine decay."""
  rates = [r["learning_rate"] for r in hardened["steps"]]
  assert len(rates) == 20
  # Recorded after step i, so rates[i] is the rate of step i + 1: (i + 1) / 19 of the peak.
  np.testing.assert_allclose(rates[:18], 1e-3 * np.arange(1, 19) / 19, rtol=1e-4)
  assert rates[18] == pytest.approx(1e-3, rel=1e-4)


def test_steps_stamp_the_warmup_then_the_pairs(hardened):
  steps = hardened["steps"]
  succeeded = {t for t in range(10) if hardened["first"]["size"][(t + 1) % 10, t] > 0}
  for record in steps[:10]:  # Step g stamps the universal trigger toward g (if it was found).
    g = record["step"]
    assert record["warm_enabled"] == float(g in succeeded)
    if g in succeeded:
      assert record["warm_target"] == g
    np.testing.assert_array_equal(record["pair_enabled"], [[0.0], [0.0]])
  for record in steps[10:]:
    assert record["warm_enabled"] == 0.0
    s, t = record["pair_classes"]
    assert s != t
  # A pair is kept for a whole period of 3 steps.
  pairs = [r["pair_classes"] for r in steps[10:]]
  for start in range(0, len(pairs), 3):
    assert len(set(pairs[start:start + 3])) == 1


class _Interrupted(Exception):
  pass


@pytest.mark.parametrize("cheap", [False, True], ids=["published", "three_pairs_cheap"])
def test_resume_after_an_interruption_equals_the_uninterrupted_run(base, tmp_path, capsys,
                                                                   monkeypatch, cheap):
  splits, model, _, _ = base
  config = dataclasses.replace(_TINY, epochs=3, batch_size=64)  # 20 steps per epoch.
  pairs = 3 if cheap else 1
  if cheap:  # Three pairs per period, generated in the period's first step only.
    config = config_lib.replace(config, dict(pairs_per_period=pairs, generations_per_period=1,
                                             warm_fast_start=True, fast_first_visit=True))
  spe = math.ceil(len(splits.x_train) / config.batch_size)
  whole, whole_results = moth.harden(_copy_factory(model), splits, config,
                                     str(tmp_path / "whole"), verbose=0)
  run_dir = str(tmp_path / "moth")

  def interrupt(self, epoch, logs=None):
    if epoch == 1:
      raise _Interrupted(f"stopped at the start of epoch {epoch + 1}")

  monkeypatch.setattr(callbacks.MothCallback, "on_epoch_begin", interrupt)
  with pytest.raises(_Interrupted):
    moth.harden(_copy_factory(model), splits, config, run_dir, verbose=0)
  monkeypatch.undo()
  backup = os.path.join(run_dir, "backup_harden")
  with open(os.path.join(backup, "training_metadata.json")) as f:
    assert json.load(f)["epoch"] == 1

  iterations = []
  original_after_step = driver.MothHardener.after_step

  def after_step(self):
    iterations.append(int(self.model.optimizer.iterations.numpy()))
    original_after_step(self)

  monkeypatch.setattr(driver.MothHardener, "after_step", after_step)
  capsys.readouterr()
  classifier, results = moth.harden(_copy_factory(model), splits, config, run_dir, verbose=2)
  out = capsys.readouterr().out
  # The optimizer step (which seeds the stamping) continues from the checkpoint.
  assert iterations == list(range(spe + 1, 3 * spe + 1))
  assert f"resumed at step {spe}" in out
  assert "MOTH warm-up" not in out  # Not redone, but its time is still counted.
  assert results["warmup_seconds"] > 0
  assert results["steps"] == 3 * spe == 60
  assert not os.path.exists(backup)
  # The counters cover the whole run, and the run continued the period it was interrupted in
  # (epoch 1 ends inside the period that started at step 19), so they equal the uninterrupted
  # run's: 17 periods (steps 10, 13, ..., 58), one generation per step after the warm-up.
  assert results["events"] == whole_results["events"]
  events = results["events"]
  assert events["generations"] + events["reused"] == pairs * (60 - splits.num_classes)
  if not cheap:
    assert events["generations"] == 60 - splits.num_classes
  np.testing.assert_array_equal(results["pair_count"], whole_results["pair_count"])
  assert np.asarray(results["pair_count"]).sum() == 2 * 17 * pairs
  # The time of the first process's completed epoch is in the total.
  assert results["wall_seconds"] > results["warmup_seconds"] + results["generation_seconds"] - 1e-6
  # Same batches, same triggers, same optimizer state: the same model.
  for a, b in zip(whole.get_weights(), classifier.get_weights()):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  accuracy = evaluation.accuracy(classifier, splits.x_test, splits.y_test)
  assert accuracy == evaluation.accuracy(whole, splits.x_test, splits.y_test)
  assert accuracy > 0.8


def test_a_direction_without_any_successful_trigger_is_not_stamped(base):
  """A failed generation keeps stamping the last *successful* trigger (module docstring); a
  direction that never had one must not stamp its random starting point.

  The classifier always predicts class 0 and has no input gradient: every trigger toward class 0
  succeeds at once and every other one fails. With epsilon 0 and an all-zero prior the scheduler
  picks the pair (0, 1): 0 -> 1 can never succeed, 1 -> 0 starts from the stored universal trigger.
  """
  splits = base[0]
  from moth_tf.hardening import model as model_lib
  clf = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
  bias = np.zeros(10, np.float32)
  bias[0] = 5.0
  clf.layers[-1].set_weights([np.zeros((64, 10), np.float32), bias])
  stamping = model_lib.StampingModel(clf, 10)
  config = config_lib.harden_config(warmup_steps=5, pair_steps=5, fast_steps=2, trigger_samples=4,
                                   warmup_samples=2, epsilon=0.0, **_PUBLISHED)
  hardener = driver.MothHardener(stamping, splits.x_train, splits.y_train, config, verbose=False)
  for _ in range(11):  # 10 warm-up steps, then the first pair step.
    hardener.before_step()
    hardener.after_step()
  assert tuple(stamping.pair_classes.numpy()) == (0, 1)
  assert hardener.events["failed_directions"] == 1  # 0 -> 1 failed; 1 -> 0 succeeded.
  np.testing.assert_array_equal(stamping.pair_enabled.numpy(), [[0.0], [1.0]])


@pytest.mark.parametrize("warmup,decay", [(0, "constant"), (50, "constant"), (0, "cosine"),
                                          (50, "cosine")])
def test_learning_rate_schedule(warmup, decay):
  # 1000 steps: 100 epochs of 100 images in batches of 10.
  config = config_lib.harden_config(learning_rate=0.02, lr_warmup_steps=warmup, lr_decay=decay,
                                   epochs=100, batch_size=10)
  assert config.total_steps_for(100) == 1000 and config.lr_ramp_steps_for(100) == warmup
  schedule = fitting.learning_rate_schedule(config, 100)
  rate = lambda step: float(schedule(step)) if callable(schedule) else float(schedule)
  assert rate(warmup) == pytest.approx(0.02, rel=1e-5)  # The peak, right after the ramp.
  if warmup:
    assert rate(0) == 0.0 and rate(warmup // 2) == pytest.approx(0.01, rel=1e-5)
  if decay == "constant":
    assert rate(999) == pytest.approx(0.02, rel=1e-5)
  else:
    assert rate(999) < 1e-5 and rate((1000 + warmup) // 2) == pytest.approx(0.01, rel=1e-3)


def test_config_rejects_bad_schedule_and_families():
  with pytest.raises(ValueError, match="lr_decay"):
    config_lib.harden_config(lr_decay="step")
  with pytest.raises(ValueError, match="families"):
    config_lib.harden_config(families=0)


@pytest.mark.parametrize("portion", [0.0, -0.1, 1.5, float("nan")])
def test_config_rejects_a_portion_outside_zero_to_one(portion):
  # Portion 0 used to pass: pair stamping off, yet every step still generated the pair triggers.
  with pytest.raises(ValueError, match=r"^portion must be in \(0, 1\] \(the share of each "
                                       r"scheduled pair's images that carry its triggers\); got "):
    config_lib.harden_config(portion=portion)


def test_config_portion_message_and_upper_end():
  with pytest.raises(ValueError, match=r"\); got 0$"):
    config_lib.harden_config(portion=0.0)
  assert config_lib.harden_config(portion=1.0).moth.portion == 1.0


def test_two_families_are_generated_stored_and_stamped(base):
  """families=2: each direction keeps two independently initialised triggers; after a pair step
  both families of both directions are stored (the second one from a random start) and enabled."""
  splits = base[0]
  from moth_tf.hardening import model as model_lib
  _, model, path, _ = base
  clf = model_io.load_model(path)
  config = config_lib.harden_config(warmup_steps=20, pair_steps=30, fast_steps=5,
                                   trigger_samples=8, warmup_samples=4, families=2, epsilon=0.0,
                                   **_PUBLISHED)
  stamping = model_lib.StampingModel(clf, 10, families=2)
  hardener = driver.MothHardener(stamping, splits.x_train, splits.y_train, config, verbose=False)
  for _ in range(11):  # 10 warm-up steps, then the first pair step.
    hardener.before_step()
    hardener.after_step()
  s, t = hardener.pair
  assert hardener.events["failed_directions"] == 0
  np.testing.assert_array_equal(stamping.pair_enabled.numpy(), np.ones((2, 2)))
  for a, b in ((s, t), (t, s)):
    assert (hardener.store_masks[a, b].sum(axis=(1, 2)) > 0).all()
    assert not np.allclose(hardener.store_masks[a, b, 0], hardener.store_masks[a, b, 1])
  np.testing.assert_allclose(stamping.pair_masks.numpy()[0, ..., 0], hardener.store_masks[s, t])


# -------------------------------------------------------------------------------------------------
# MirroredStrategy on 2 logical CPU devices (in a subprocess: devices must be split before TF
# initialises them, and this process has already initialised them).

_MIRRORED_SCRIPT = textwrap.dedent("""
    import json
    import os
    import sys

    from moth_tf import distribute
    distribute.split_cpu(2)

    import keras
    import numpy as np
    import tensorflow as tf

    from moth_tf import config as config_lib
    from moth_tf import data as data_lib
    from moth_tf import evaluation
    from moth_tf import recipes
    from moth_tf.hardening import model as model_lib
    from moth_tf.hardening import moth
    from moth_tf.models import io as model_io

    model_path, run_dir = sys.argv[1:3]
    strategy = distribute.get_strategy("mirrored")
    out = {"replicas": strategy.num_replicas_in_sync}

    # 1. One StampingModel step (portion 0: no stamping randomness) with and without the strategy,
    # on the same global batch: the loss scaling must make them equal.
    rng = np.random.default_rng(0)
    x = rng.random((16, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 4, 16)

    def build():
      return keras.Sequential([
          keras.Input((8, 8, 1)), keras.layers.Flatten(),
          keras.layers.Dense(8, activation="relu", kernel_regularizer=keras.regularizers.L2(0.05)),
          keras.layers.Dense(4)])

    keras.utils.set_random_seed(1)
    init = build().get_weights()

    def one_step(strat):
      with strat.scope():
        clf = build()
        clf.set_weights(init)
        m = model_lib.StampingModel(clf, 4, portion=0.0, warm_ratio=0.0)
        m.compile(optimizer=keras.optimizers.SGD(0.5),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
      history = m.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False).history
      return clf.get_weights(), history

    w_single, h_single = one_step(tf.distribute.get_strategy())
    w_mirror, h_mirror = one_step(strategy)
    out["step_max_weight_diff"] = max(float(np.abs(a - b).max()) for a, b in zip(w_single, w_mirror))
    out["step_weight_change"] = max(float(np.abs(a - b).max()) for a, b in zip(w_single, init))
    out["loss_single"] = h_single["loss"][0]
    out["loss_mirror"] = h_mirror["loss"][0]
    out["accuracy_single"] = h_single["accuracy"][0]
    out["accuracy_mirror"] = h_mirror["accuracy"][0]

    # 2. harden() under the strategy.
    splits = data_lib.load_dataset("digits")
    base = model_io.load_model(model_path)
    out["accuracy_before"] = evaluation.accuracy(base, splits.x_test, splits.y_test)
    config = config_lib.harden_config(epochs=1, batch_size=64, learning_rate=1e-3, warmup_steps=20,
                                     pair_steps=20, fast_steps=5, trigger_samples=8,
                                     **recipes.PUBLISHED_GENERATION)
    classifier, results = moth.harden(lambda: model_io.load_model(model_path), splits, config,
                                      run_dir, strategy=strategy, verbose=0)
    out["accuracy_after"] = evaluation.accuracy(classifier, splits.x_test, splits.y_test)
    out["weight_change"] = max(float(np.abs(np.asarray(a) - b).max())
                               for a, b in zip(classifier.get_weights(), base.get_weights()))
    out["steps"] = results["steps"]
    out["steps_per_epoch"] = results["steps_per_epoch"]
    out["generations"] = results["events"]["generations"]
    out["pair_count_sum"] = float(np.sum(results["pair_count"]))
    print("RESULT " + json.dumps(out))
""")


def test_mirrored_strategy_on_two_cpu_devices(base, tmp_path):
  _, _, path, _ = base
  script = tmp_path / "mirrored.py"
  script.write_text(_MIRRORED_SCRIPT)
  # PYTHONPATH: the script must import this checkout's moth_tf, not an installed copy.
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=os.pathsep.join(
      p for p in (repo, os.environ.get("PYTHONPATH")) if p))
  proc = subprocess.run([sys.executable, str(script), path, str(tmp_path / "moth")],
                        capture_output=True, text=True, timeout=300, env=env, cwd=str(tmp_path))
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  assert len(lines) == 1, proc.stdout[-2000:]
  out = json.loads(lines[0][len("RESULT "):])
  assert out["replicas"] == 2
  # The same step with and without the strategy: same update, same (unscaled) loss.
  assert out["step_weight_change"] > 1e-3
  assert out["step_max_weight_diff"] < 1e-5
  assert out["loss_mirror"] == pytest.approx(out["loss_single"], rel=1e-5)
  assert out["accuracy_mirror"] == pytest.approx(out["accuracy_single"], abs=1e-6)
  # harden() ran every step under the strategy and trained the model.
  assert out["steps"] == out["steps_per_epoch"] == 20
  assert out["generations"] == 10
  assert out["pair_count_sum"] == 2 * 4
  assert out["weight_change"] > 1e-4
  assert out["accuracy_after"] > out["accuracy_before"] - 0.1 and out["accuracy_after"] > 0.8


def test_generations_per_period_and_warm_fast_start(base):
  """generations_per_period=1: only a period's first step generates; the others stamp the same
  triggers and count its sizes again. warm_fast_start: a pair chosen a second time starts in fast
  mode (fast_steps at fast_cost) from its stored triggers instead of pair_steps."""
  splits = base[0]
  from moth_tf.hardening import model as model_lib
  _, _, path, _ = base
  config = config_lib.harden_config(warmup_steps=20, pair_steps=30, fast_steps=5,
                                   trigger_samples=8, warmup_samples=4,
                                   **dict(_PUBLISHED, generations_per_period=1,
                                          warm_fast_start=True))
  stamping = model_lib.StampingModel(model_io.load_model(path), 10)
  hardener = driver.MothHardener(stamping, splits.x_train, splits.y_train, config, verbose=False)
  calls = []
  original_invert, original_choose = hardener.pair_inverter.invert, hardener.scheduler.choose

  def invert(*args, **kwargs):
    calls.append((hardener.step, kwargs["steps"], float(np.max(kwargs["init_cost"]))))
    return original_invert(*args, **kwargs)

  def choose(step):  # Periods on (3, 5), (3, 5), (1, 7): the second one revisits its pair.
    original_choose(step)
    hardener.scheduler.count[:] = 0
    chosen = [(3, 5), (3, 5), (1, 7)][len(seen)]
    for a, b in (chosen, chosen[::-1]):
      hardener.scheduler.count[a, b] = 1 + sum(1 for c in seen if c == chosen)
    seen.append(chosen)
    return chosen

  seen = []
  hardener.pair_inverter.invert = invert
  hardener.scheduler.choose = choose
  sizes = []
  for _ in range(10 + 3 * config.moth.period):  # The warm-up steps, then three periods.
    hardener.before_step()
    if hardener.step >= 10:
      sizes.append(stamping.pair_masks.numpy().sum())
    hardener.after_step()
  assert hardener.events["generations"] == len(calls) == 3
  assert hardener.events["reused"] == 3 * (config.moth.period - 1)
  assert [c[0] for c in calls] == [10, 10 + config.moth.period, 10 + 2 * config.moth.period]
  assert sizes[0] == sizes[1] == sizes[2]  # Reused steps stamp the same triggers.
  # The first visit of a pair generates in full, its second visit starts warm and fast.
  assert calls[0][1:] == (config.moth.pair_steps, config.moth.pair_cost)
  assert calls[1][1:] == (config.moth.fast_steps, pytest.approx(config.moth.fast_cost))
  assert calls[2][1:] == (config.moth.pair_steps, config.moth.pair_cost)
  assert hardener.events["warm_fast"] == 1



def test_period_length_and_generation_early_stop(base):
  """--period sets the steps per period (a generation at each period's start, the rest reused);
  --generation_early_stop reaches every pair generation as the engine call's early stop, and the
  inversion_steps event counts the steps the calls really ran."""
  splits, _, path, _ = base
  from moth_tf.hardening import model as model_lib
  config = config_lib.harden_config(warmup_steps=20, pair_steps=60, fast_steps=5,
                                   trigger_samples=8, warmup_samples=4,
                                   **dict(_PUBLISHED, generations_per_period=1, period=4,
                                          generation_early_stop=3))
  stamping = model_lib.StampingModel(model_io.load_model(path), 10)
  hardener = driver.MothHardener(stamping, splits.x_train, splits.y_train, config, verbose=False)
  calls = []
  original_invert = hardener.pair_inverter.invert

  def invert(*args, **kwargs):
    result = original_invert(*args, **kwargs)
    calls.append((hardener.step, kwargs["early_stop_patience"], int(result.steps_run.max()),
                  bool(result.success.all())))
    return result

  hardener.pair_inverter.invert = invert
  for _ in range(10 + 3 * config.moth.period):
    hardener.before_step()
    hardener.after_step()
  assert all(c[1] == 3 for c in calls)
  starts = [10 + p * config.moth.period for p in range(3)]
  assert [c[0] for c in calls if c[0] in starts] == starts
  # Other steps generate only to retry a failure; successful periods reuse for 3 steps.
  assert hardener.events["generations"] + hardener.events["reused"] == 3 * config.moth.period
  assert hardener.events["inversion_steps"] == sum(c[2] for c in calls)
  assert any(c[3] and c[2] < config.moth.pair_steps for c in calls)  # Stopped early on success.
  with pytest.raises(ValueError, match="generation_early_stop must be >= 0"):
    config_lib.harden_config(generation_early_stop=-1)

def test_several_pairs_per_period_are_generated_in_one_call_and_stamped_together(base):
  """pairs_per_period=3: every period hardens three pairs with no class in common; their six
  directions are generated in one engine call per mode (fast_first_visit: the first periods start
  fast from the universal triggers), and all of them are stamped in every step."""
  splits, _, path, _ = base
  from moth_tf.hardening import model as model_lib
  config = config_lib.harden_config(warmup_steps=20, pair_steps=30, fast_steps=5,
                                   trigger_samples=8, warmup_samples=4, pairs_per_period=3,
                                   generations_per_period=1, warm_fast_start=True,
                                   fast_first_visit=True)
  stamping = model_lib.StampingModel(model_io.load_model(path), 10, pairs=3)
  hardener = driver.MothHardener(stamping, splits.x_train, splits.y_train, config, verbose=False)
  calls = []
  original_invert = hardener.pair_inverter.invert

  def invert(images, targets, seeds, **kwargs):
    calls.append((hardener.step, len(targets), kwargs["steps"]))
    return original_invert(images, targets, seeds, **kwargs)

  hardener.pair_inverter.invert = invert
  periods = 4
  stamped_classes = []
  for _ in range(10 + periods * config.moth.period):
    hardener.before_step()
    if hardener.step >= 10:
      classes = stamping.pair_classes.numpy().reshape(3, 2)
      assert [tuple(p) for p in classes] == hardener.pairs
      stamped_classes.append(tuple(classes.ravel()))
    hardener.after_step()
  for classes in stamped_classes:
    assert len(set(classes)) == 6  # Three pairs, no class shared.
  for start in range(0, len(stamped_classes), config.moth.period):  # Kept for the whole period.
    assert len(set(stamped_classes[start:start + config.moth.period])) == 1
  events = hardener.events
  # Every pair, every step: generated or reused; the first step of each period generates.
  assert events["generations"] + events["reused"] == 3 * periods * config.moth.period
  assert events["generations"] >= 3 * periods
  assert events["engine_calls"] == len(calls) >= periods
  assert {c[0] for c in calls} >= {10 + p * config.moth.period for p in range(periods)}
  # A call optimises whole pairs (2 directions each), and at most all three of them.
  assert all(c[1] in (2, 4, 6) for c in calls)
  assert sum(c[1] for c in calls) == 2 * events["generations"]
  # A pair starts fast when it was chosen before or, on a first visit, when the warm-up found the
  # universal triggers toward both of its classes; otherwise it starts with a full generation.
  found = [hardener.universal_masks[t].sum() > 0 for t in range(10)]
  seen, expected_fast = set(), 0
  for period in range(periods):
    step = 10 + period * config.moth.period
    fast = [frozenset(p) in seen or (found[p[0]] and found[p[1]])
            for p in map(tuple, np.reshape(stamped_classes[period * config.moth.period], (3, 2)))]
    expected_fast += sum(fast)
    steps_used = {c[2] for c in calls if c[0] == step}
    assert steps_used == ({config.moth.fast_steps} if any(fast) else set()) | (
        {config.moth.pair_steps} if not all(fast) else set())
    seen |= {frozenset(p) for p in np.reshape(stamped_classes[period * config.moth.period], (3, 2))}
  assert events["warm_fast"] == expected_fast > 0
  np.testing.assert_array_equal(hardener.scheduler.count, hardener.scheduler.count.T)
  assert hardener.scheduler.count.sum() == 2 * 3 * periods


def test_more_pairs_per_period_than_the_classes_allow_is_refused(base):
  splits, _, path, _ = base
  from moth_tf.hardening import model as model_lib
  config = config_lib.harden_config(pairs_per_period=6)
  stamping = model_lib.StampingModel(model_io.load_model(path), 10, pairs=1)
  with pytest.raises(ValueError, match="pairs_per_period=6 needs 12 classes.*at most 5"):
    driver.MothHardener(stamping, splits.x_train, splits.y_train, config, verbose=False)
  # The method's check, which phases.run_harden calls before it writes anything.
  with pytest.raises(ValueError, match="pairs_per_period=6 needs 12 classes.*at most 5"):
    moth.check_model(stamping.classifier, config)
  moth.check_model(stamping.classifier, config_lib.harden_config(pairs_per_period=5))


def test_generations_per_period_must_fit_the_period():
  with pytest.raises(ValueError, match="generations_per_period must be in 1..period"):
    config_lib.harden_config(generations_per_period=4)
