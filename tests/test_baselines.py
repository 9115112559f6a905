"""Tests of the hardening baselines (moth_tf.baselines) and the method registry.

* Every method through the command line: a short `--phase=harden --method=NAME` run from a digits
  LeNet trained for 3 epochs by `--phase=train` (in-process, see cli_testing), with budgets small
  enough that each run takes a few seconds.
* Properties of the training batches on a tiny classifier (Flatten -> Dense on 4x4 grey images):
  the UAP perturbation is one [H, W, C] tensor in its L-inf ball and the batch stays in [0, 1]; PGD
  batches stay in their ball. `_Recorder` (an identity layer, as in test_hardening_model.py) keeps
  the batch the classifier saw in its last training-mode call: the batch `train_step` trained on.
* The Pairwise sweep (SweepScheduler) driven by hand, Universal's round robin of targets, a resumed
  uap run, and adv_train / uap under MirroredStrategy on two logical CPU devices (in a subprocess).
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from moth_tf import config as config_lib
from moth_tf import data as data_lib
from moth_tf import rundir
from moth_tf.baselines import adv_train
from moth_tf.baselines import pairwise
from moth_tf.baselines import uap
from moth_tf.baselines import universal
from moth_tf.hardening import methods
from moth_tf.hardening import model as model_lib
from moth_tf.models import io as model_io

from cli_testing import event_files  # pylint: disable=g-bad-import-order
from cli_testing import run_cli
from cli_testing import trained_workdir
from test_cli import run_cli_error
from test_hardening_model import _Recorder  # Same 4x4x1 images.
from test_hardening_model import _round_half_up

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SHAPE = (4, 4, 1)
_N = 3  # Classes of the tiny classifier.


def _classifier(batch, seed=0):
  keras.utils.set_random_seed(seed)
  recorder = _Recorder(batch)
  clf = keras.Sequential([keras.Input(_SHAPE), recorder, keras.layers.Flatten(),
                          keras.layers.Dense(_N)])
  return clf, recorder


def _compile(model, learning_rate=0.1):
  model.compile(optimizer=keras.optimizers.SGD(learning_rate),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"])
  return model


def _batch(b, seed=0):
  """Images in [0, 1] with a band of exact 0s and 1s (the clipping must keep them in range)."""
  rng = np.random.default_rng(seed)
  x = rng.random((b,) + _SHAPE).astype(np.float32)
  x[:, 0, :2] = 0.0
  x[:, 3, 2:] = 1.0
  return x, rng.integers(0, _N, b)


# -------------------------------------------------------------------------------------------------
# The registry.


def test_every_hardening_method_imports_with_its_entry_points():
  assert config_lib.HARDENING_METHODS == tuple(methods.METHODS)
  assert set(config_lib.HARDENING_METHODS) == {"moth", "finetune", "adv_train", "uap", "universal",
                                               "pairwise", "nc", "nad"}
  for name in config_lib.HARDENING_METHODS:
    module = methods.get_method(name)
    assert module.__name__ == methods.METHODS[name].module
    assert callable(module.harden) and callable(module.describe), name
    # describe() is the line printed before a run: it must work on the default configuration.
    line = module.describe(config_lib.harden_config(), 1257, (0.1, 8, 0.02))
    assert isinstance(line, str) and line and "\n" not in line, name


def test_get_method_of_an_unknown_name_lists_the_choices():
  with pytest.raises(ValueError) as info:
    methods.get_method("nope")
  message = str(info.value)
  assert "'nope'" in message
  for name in methods.METHODS:
    assert name in message


def test_harden_with_the_natural_method_is_a_one_line_error(tmp_path, capsys):
  workdir = tmp_path / "work"
  err = run_cli_error(capsys, "--phase=harden", "--method=natural", f"--workdir={workdir}")
  assert "--method=natural is the base model, made by --phase=train" in err
  for name in config_lib.HARDENING_METHODS:
    assert name in err
  assert not workdir.exists()


# -------------------------------------------------------------------------------------------------
# Every method through the command line.


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A workdir with a digits LeNet trained for 3 epochs by --phase=train."""
  return trained_workdir(tmp_path_factory, 3)


# Learning rate 1e-3 (as test_hardening.py's _TINY): the default 0.01 is tuned for 2,000 steps; in
# 20 steps the warm-up's large universal triggers (20 inversion steps) cost Universal ~18 points.
_TRIGGER_FLAGS = ("--pair_steps=10", "--fast_steps=3", "--trigger_samples=8",
                  "--harden_learning_rate=1e-3")
# 1,257 training digits in batches of 128: 10 steps per epoch. Universal: 10 warm-up steps, then 10
# steps = periods of 3 steps toward classes 0, 1, 2 and the first step of 3's (the library test
# test_universal_run_stamps_every_target_in_turn runs every class). Pairwise: 45 pairs x 1 period x
# 3 steps.
_CLI_RUNS = {
    "finetune": (("--harden_steps=20",), 20),
    "adv_train": (("--harden_steps=20",), 20),
    "uap": (("--harden_steps=20",), 20),
    "universal": (("--harden_steps=20", "--warmup_steps=20") + _TRIGGER_FLAGS, 20),
    "pairwise": (("--pairwise_max_periods=1", "--pairwise_patience=1") + _TRIGGER_FLAGS, 135),
}


@pytest.mark.parametrize("method", sorted(_CLI_RUNS))
def test_cli_harden_changes_the_weights_and_writes_the_outputs(method, workdir, capsys):
  flags_, steps = _CLI_RUNS[method]
  base_path = os.path.join(workdir, "digits_lenet_natural", "model.keras")
  with open(base_path, "rb") as f:
    base_bytes = f.read()
  capsys.readouterr()
  run_cli("--phase=harden", f"--method={method}", f"--workdir={workdir}", *flags_)
  out = capsys.readouterr().out
  run_dir = os.path.join(workdir, f"digits_lenet_{method}")
  assert os.path.isfile(os.path.join(run_dir, "model.keras"))
  assert os.path.isfile(os.path.join(run_dir, "saved_model", "saved_model.pb"))
  assert event_files(os.path.join(run_dir, "logs", "harden"))
  if method in ("universal", "pairwise"):
    assert event_files(os.path.join(run_dir, "logs", f"harden_{method}"))
  assert not os.path.exists(os.path.join(run_dir, "backup_harden"))  # Removed after success.
  with open(os.path.join(run_dir, "summary.json")) as f:
    summary = json.load(f)
  harden = summary["harden"]
  assert summary["method"] == harden["method"] == method
  assert summary["base_model"] == base_path
  assert harden["steps"] == steps
  assert 0.8 < summary["test_accuracy"] == harden["test_accuracy_after"] <= 1.0
  assert f"--method={method}" in summary["flags"]
  assert f"test accuracy {harden['test_accuracy_before']:.4f} -> " in out
  # The hardened copy differs from the base model; the base model file is untouched.
  with open(base_path, "rb") as f:
    assert f.read() == base_bytes
  base = model_io.load_model(base_path)
  hardened = model_io.load_model(os.path.join(run_dir, "model.keras"))
  change = max(float(np.abs(a - b).max())
               for a, b in zip(hardened.get_weights(), base.get_weights()))
  assert change > 1e-4
  # What each method adds to the summary.
  pgd = data_lib.dataset_info("digits").train_pgd
  eps, pgd_steps, step_size = pgd.epsilon, pgd.steps, pgd.step_size
  if method == "adv_train":
    assert harden["pgd"] == {"epsilon": pytest.approx(eps), "steps": pgd_steps,
                             "step_size": pytest.approx(step_size), "mix": 1.0}
  if method == "uap":
    assert harden["uap"]["epsilon"] == pytest.approx(eps)
    assert 0.0 < harden["uap"]["final_linf"] <= eps + 1e-6
  if method == "universal":
    assert harden["target_periods"] == [1, 1, 1, 1] + [0] * 6  # Targets in turn from class 0.
    assert harden["events"]["generations"] == 10
  if method == "pairwise":
    pw = harden["pairwise"]
    assert pw["finished"] and pw["pairs"] == pw["pairs_finished"] == 45
    assert pw["periods_per_pair_min"] == pw["periods_per_pair_max"] == 1
    assert sorted(map(tuple, pw["order"])) == [(s, t) for s in range(10) for t in range(s + 1, 10)]
    # MOTH's default generation: the period's first step generates (a failure is retried at the
    # next), the others reuse its triggers.
    events = harden["events"]
    assert events["generations"] >= 45 and events["generations"] + events["reused"] == 135


# -------------------------------------------------------------------------------------------------
# UAP: one shared perturbation in its L-inf ball.


def test_uap_delta_is_one_tensor_in_its_ball_and_the_batch_is_clipped_x_plus_delta():
  b, eps, step = 12, 0.05, 0.02
  clf, recorder = _classifier(b)
  model = _compile(uap.UniversalPerturbationModel(clf, _N, epsilon=eps, step_size=step))
  x, y = _batch(b)
  model(x[:1])
  # One [H, W, C] variable for the whole batch, not trained by the optimiser.
  deltas = [v for v in model.weights if "uap_delta" in v.path]
  assert len(deltas) == 1 and tuple(deltas[0].shape) == _SHAPE
  assert all("uap_delta" not in v.path for v in model.trainable_weights)
  previous = np.zeros(_SHAPE, np.float32)
  np.testing.assert_array_equal(model.delta.numpy(), previous)
  for step_index in range(6):
    logs = model.train_on_batch(x, y, return_dict=True)
    delta = model.delta.numpy()
    seen = recorder.seen.numpy()
    assert np.abs(delta).max() <= eps + 1e-6
    assert np.abs(delta - previous).max() <= step + 1e-6  # One signed-gradient step per batch.
    assert np.abs(delta - previous).max() > step / 2  # ... which moved it.
    # The trained-on batch is clip(x + delta, 0, 1) with the updated delta, for every image.
    np.testing.assert_allclose(seen, np.clip(x + delta, 0.0, 1.0), atol=1e-6)
    assert seen.min() >= 0.0 and seen.max() <= 1.0
    inside = (x + delta >= 0.0) & (x + delta <= 1.0)  # Where clipping did not act.
    np.testing.assert_allclose((seen - x)[inside],
                               np.broadcast_to(delta, x.shape)[inside], atol=1e-6)
    assert logs["perturbed"] == b
    previous = delta
  # After 6 steps of 0.02 the ball's boundary was reached, and the projection held it there.
  assert np.isclose(np.abs(delta), eps, atol=1e-6).sum() > 0
  assert np.abs(delta).max() == pytest.approx(eps, abs=1e-6)


def test_uap_first_step_ascends_the_summed_loss():
  """From delta = 0, one step moves every pixel by step_size in the sign of the gradient of the
  batch's summed cross-entropy (on the pre-step classifier)."""
  b, step = 10, 0.01
  clf, _ = _classifier(b)
  model = _compile(uap.UniversalPerturbationModel(clf, _N, epsilon=0.1, step_size=step))
  rng = np.random.default_rng(1)
  x = rng.uniform(0.2, 0.8, (b,) + _SHAPE).astype(np.float32)  # No clipping at delta = 0.
  y = rng.integers(0, _N, b)
  model(x[:1])
  delta0 = tf.zeros(_SHAPE)
  with tf.GradientTape() as tape:
    tape.watch(delta0)
    loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=y, logits=clf(x + delta0, training=False)))
  grad = tape.gradient(loss, delta0).numpy()
  assert np.abs(grad).min() > 1e-6  # Every pixel has a sign.
  model.train_on_batch(x, y)
  np.testing.assert_allclose(model.delta.numpy(), step * np.sign(grad), atol=1e-7)


def test_uap_fit_keeps_delta_in_its_ball_over_many_steps():
  b, eps = 8, 0.03
  clf, recorder = _classifier(b)
  model = _compile(uap.UniversalPerturbationModel(clf, _N, epsilon=eps, step_size=0.01))
  x, y = _batch(64, seed=2)
  history = model.fit(x, y, batch_size=b, epochs=2, shuffle=False, verbose=0).history
  delta = model.delta.numpy()
  assert np.abs(delta).max() <= eps + 1e-6 and np.abs(delta).max() > 0
  assert history["perturbed"] == [b, b]
  np.testing.assert_allclose(recorder.seen.numpy(), np.clip(x[-b:] + delta, 0, 1), atol=1e-6)


# -------------------------------------------------------------------------------------------------
# adv_train: PGD batches in their ball.


@pytest.mark.parametrize("mix, b", [(1.0, 12), (0.5, 12), (0.5, 13), (0.25, 10)])
def test_adv_train_batches_stay_in_their_ball(mix, b):
  eps = 0.1
  clf, recorder = _classifier(b)
  model = _compile(adv_train.AdversarialTrainingModel(clf, _N, (eps, 4, 0.04), mix=mix))
  x, y = _batch(b, seed=3)
  history = model.fit(x, y, batch_size=b, epochs=1, shuffle=False, verbose=0).history
  seen = recorder.seen.numpy()
  assert seen.min() >= 0.0 and seen.max() <= 1.0
  assert np.abs(seen - x).max() <= eps + 1e-6
  changed = np.any(seen != x, axis=(1, 2, 3))
  expected = _round_half_up(mix, b)  # select_fraction's count: 6.5 -> 7 of 13.
  assert changed.sum() == expected
  assert history["adversarial"] == [float(expected)]
  # The changed images moved by a real PGD step, not a rounding error.
  assert np.abs(seen - x)[changed].max() > eps / 2


# -------------------------------------------------------------------------------------------------
# Pairwise: SweepScheduler.


def _drive(sweep, sizes, limit=10_000):
  """Runs the sweep to its end; sizes(pair, period_of_pair) -> (size_st, size_ts). Returns the
  pairs of every period."""
  visits, periods = [], {}
  while not sweep.finished:
    assert len(visits) < limit
    s, t = sweep.choose(len(visits))
    visits.append((s, t))
    periods[(s, t)] = periods.get((s, t), 0) + 1
    sweep.update(s, t, *sizes((s, t), periods[(s, t)] - 1))
  return visits


def _blocks(visits):
  """Run-length encoding: [(pair, consecutive periods)]."""
  blocks = []
  for pair in visits:
    if blocks and blocks[-1][0] == pair:
      blocks[-1][1] += 1
    else:
      blocks.append([pair, 1])
  return [tuple(b) for b in blocks]


@pytest.mark.parametrize("n", [2, 3, 5])
def test_sweep_visits_every_pair_once_in_consecutive_periods(n):
  # Pairs (s, t) with s + t even grow 10% every period (stopped by max_periods); the others are
  # flat after their first period (stopped by patience).
  def sizes(pair, k):
    if sum(pair) % 2 == 0:
      return 1.0 * 1.1 ** k, 2.0 * 1.1 ** k
    return 3.0, 1.0

  sweep = pairwise.SweepScheduler(n, tol=0.05, patience=2, max_periods=5, seed=4)
  all_pairs = [(s, t) for s in range(n) for t in range(s + 1, n)]
  assert sweep.num_pairs == len(all_pairs) == n * (n - 1) // 2
  assert sorted(sweep.order) == all_pairs
  visits = _drive(sweep, sizes)
  blocks = _blocks(visits)
  assert [pair for pair, _ in blocks] == sweep.order  # One block per pair, in the sweep's order.
  for pair, length in blocks:
    assert length == (5 if sum(pair) % 2 == 0 else 3), pair  # 1 growth + 2 stale periods.
    assert sweep.count[pair] == sweep.count[pair[::-1]] == length
  assert sweep.finished and sweep.position == sweep.num_pairs
  assert sweep.cap_steps(3) == len(all_pairs) * 5 * 3


def test_sweep_finishes_exactly_after_the_last_pair():
  sweep = pairwise.SweepScheduler(4, patience=1, max_periods=1, seed=0)
  for i, pair in enumerate(sweep.order):
    assert not sweep.finished
    assert sweep.choose(i) == pair
    sweep.update(*pair, 1.0, 1.0)
  assert sweep.finished


def test_sweep_order_is_seeded():
  orders = {seed: pairwise.SweepScheduler(6, seed=seed).order for seed in range(4)}
  assert orders[1] == pairwise.SweepScheduler(6, seed=1).order
  assert len({tuple(order) for order in orders.values()}) > 1


def _periods_until_next_pair(sweep, sums):
  """Feeds the current pair the given (size_st, size_ts) per period; returns after how many periods
  the sweep moved on (None if it did not)."""
  pair = sweep.choose(0)
  for k, (a, b) in enumerate(sums):
    sweep.update(*pair, a, b)
    if sweep.position > 0:
      return k + 1
  return None


def test_sweep_criterion_patience_tolerance_and_max_periods():
  make = lambda **kw: pairwise.SweepScheduler(3, **{"tol": 0.05, "patience": 3,
                                                    "max_periods": 100, **kw})
  # Flat: the first period grows from nothing, then `patience` periods without growth.
  assert _periods_until_next_pair(make(), [(1.0, 1.0)] * 10) == 4
  # Growth within the tolerance (4% each) does not count as growth.
  assert _periods_until_next_pair(make(), [(1.04 ** k, 1.04 ** k) for k in range(10)]) == 4
  # A growth above the tolerance restarts the count.
  sums = [(1.0, 1.0), (1.0, 1.0), (1.0, 1.0), (1.2, 1.2)] + [(1.2, 1.2)] * 5
  assert _periods_until_next_pair(make(), sums) == 7
  # The criterion is on the pair's sum: directions trading size back and forth do not grow.
  sweep = make()
  trading = [(1.0, 3.0), (3.0, 1.0), (2.0, 2.0), (0.5, 3.5), (3.9, 0.1)]
  assert _periods_until_next_pair(sweep, trading) == 4
  s, t = sweep.order[0]
  assert (sweep.size[s, t], sweep.size[t, s]) == (1.0, 3.0)  # The first of the equal sums.
  # A pair that keeps growing (20% a period) is stopped at max_periods.
  assert _periods_until_next_pair(make(max_periods=6), [(1.2 ** k, 1.2 ** k)
                                                        for k in range(20)]) == 6
  # `size` keeps the period of the largest sum, per direction.
  sweep = make()
  s, t = sweep.choose(0)
  for a, b in ((1.0, 2.0), (4.0, 0.5), (1.0, 1.0)):
    sweep.update(s, t, a, b)
  assert (sweep.size[s, t], sweep.size[t, s]) == (4.0, 0.5)


@pytest.mark.parametrize("n", [2, 3, 4])
def test_sweep_state_round_trip_resumes_at_the_same_position(n):
  rng = np.random.default_rng(n)
  table = {}

  def sizes(pair, k):
    if (pair, k) not in table:  # Random but the same for both sweeps.
      table[(pair, k)] = tuple(rng.uniform(1.0, 2.0, 2) * (1.0 + 0.1 * k))
    return table[(pair, k)]

  reference = pairwise.SweepScheduler(n, tol=0.05, patience=2, max_periods=6, seed=7)
  visits = _drive(reference, sizes)
  assert len(visits) > 3
  for cut in range(1, len(visits)):  # Interrupt after every period, including mid-pair.
    sweep = pairwise.SweepScheduler(n, tol=0.05, patience=2, max_periods=6, seed=7)
    periods = {}
    for i in range(cut):
      pair = sweep.choose(i)
      periods[pair] = periods.get(pair, 0) + 1
      sweep.update(*pair, *sizes(pair, periods[pair] - 1))
    # Through float32, as the model's variables hold it (MothHardener.save_state / load_state).
    state = {k: np.asarray(v).astype(np.float32) if k not in ("num_choices", "seed") else v
             for k, v in sweep.state_dict().items()}
    resumed = pairwise.SweepScheduler(n, tol=0.05, patience=2, max_periods=6, seed=7)
    resumed.load_state_dict(state)
    assert (resumed.position, resumed.periods, resumed.stale, resumed.finished) == (
        sweep.position, sweep.periods, sweep.stale, sweep.finished), cut
    rest = []
    while not resumed.finished:
      pair = resumed.choose(cut + len(rest))
      rest.append(pair)
      periods[pair] = periods.get(pair, 0) + 1
      resumed.update(*pair, *sizes(pair, periods[pair] - 1))
    assert visits[:cut] + rest == visits, cut
    np.testing.assert_array_equal(resumed.count, reference.count)


# -------------------------------------------------------------------------------------------------
# Universal: every target in turn.


def test_universal_target_of_step_is_a_round_robin_after_the_warmup(workdir):
  clf = model_io.load_model(os.path.join(workdir, "digits_lenet_natural", "model.keras"))
  stamping = model_lib.StampingModel(clf, 10)
  x = np.zeros((20, 8, 8, 1), np.float32)
  y = np.arange(20) % 10
  for period in (3, 2):
    config = config_lib.harden_config(period=period)
    hardener = universal.UniversalHardener(stamping, x, y, config, verbose=False)
    assert hardener.warmup_length == 10
    targets = [hardener.target_of_step(step) for step in range(10, 10 + 25 * period)]
    assert targets == [(i // period) % 10 for i in range(25 * period)]


def test_universal_run_stamps_every_target_in_turn(workdir, tmp_path, monkeypatch):
  """A library run of 40 steps (10 warm-up + one period of 3 per class); after every step, record
  the warm-up slot (which Universal stamps for the whole run) of the model."""
  splits = data_lib.load_dataset("digits")
  path = os.path.join(workdir, "digits_lenet_natural", "model.keras")
  # portion 0.25 (not the warm_ratio 0.5 of the warm-up steps): what Universal stamps after them.
  config = config_lib.harden_config(epochs=4, batch_size=128, learning_rate=1e-3, warmup_steps=20,
                                   pair_steps=10, fast_steps=3, trigger_samples=8, portion=0.25)
  records = []
  original_after_step = universal.UniversalHardener.after_step

  def after_step(self):
    m = self.model
    records.append((self.step, float(m.warm_enabled.numpy()), int(m.warm_target.numpy()),
                    float(m.warm_ratio.numpy()), float(m.pair_enabled.numpy().sum())))
    original_after_step(self)

  monkeypatch.setattr(universal.UniversalHardener, "after_step", after_step)
  _, results = universal.harden(lambda: model_io.load_model(path), splits, config,
                                str(tmp_path / "universal"), verbose=0)
  assert [r[0] for r in records] == list(range(40)) and results["steps"] == 40
  for step, enabled, target, ratio, pair_enabled in records:
    assert enabled == 1.0, step  # Every step stamps a universal trigger (the warm-up's at least).
    assert pair_enabled == 0.0  # Never a pair trigger.
    expected = step if step < 10 else (step - 10) // 3
    assert target == expected, (step, target)
    assert ratio == pytest.approx(config.moth.warm_ratio if step < 10 else config.moth.portion)
  assert results["target_periods"] == [1] * 10
  assert results["events"]["generations"] == 30


# -------------------------------------------------------------------------------------------------
# A resumed uap run continues its perturbation.


class _Interrupted(Exception):
  pass


def test_resumed_uap_run_continues_its_perturbation(tmp_path, monkeypatch):
  splits = data_lib.load_dataset("digits")
  keras.utils.set_random_seed(0)
  clf = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
  weights = clf.get_weights()

  def factory():
    copy = keras.models.clone_model(clf)
    copy.set_weights(weights)
    return copy

  config = config_lib.harden_config(epochs=3, batch_size=64, learning_rate=1e-2)  # 20 steps/epoch.
  eps, step = splits.info.train_pgd.epsilon, splits.info.train_pgd.step_size
  run_dir = str(tmp_path / "uap")
  checkpointed = {}

  def interrupt(self, epoch, logs=None):
    if epoch == 1:  # After epoch 0's backup: what the backup holds is the model's state now.
      checkpointed["delta"] = self.model.delta.numpy().copy()
      checkpointed["iterations"] = int(self.model.optimizer.iterations.numpy())
      raise _Interrupted()

  monkeypatch.setattr(keras.callbacks.TerminateOnNaN, "on_epoch_begin", interrupt, raising=False)
  with pytest.raises(_Interrupted):
    uap.harden(factory, splits, config, run_dir, verbose=0)
  monkeypatch.undo()
  assert checkpointed["iterations"] == 20
  delta = checkpointed["delta"]
  assert np.abs(delta).max() <= eps + 1e-6
  assert np.isclose(np.abs(delta), eps).mean() > 0.2  # Far from the zeros a fresh run starts at.
  backup = os.path.join(run_dir, "backup_harden")
  with open(os.path.join(backup, "training_metadata.json")) as f:
    assert json.load(f)["epoch"] == 1

  seen = []

  def record(self, batch, logs=None):
    seen.append((int(self.model.optimizer.iterations.numpy()), self.model.delta.numpy().copy()))

  monkeypatch.setattr(keras.callbacks.TerminateOnNaN, "on_train_batch_begin", record,
                      raising=False)
  _, results = uap.harden(factory, splits, config, run_dir, verbose=0)
  assert [i for i, _ in seen] == list(range(20, 60))  # Epochs 1 and 2 only.
  np.testing.assert_array_equal(seen[0][1], delta)  # The first resumed step starts from it.
  for (_, before), (_, after) in zip(seen, seen[1:]):
    assert np.abs(after - before).max() <= step + 1e-6
    assert np.abs(after).max() <= eps + 1e-6
  assert results["steps"] == 60
  assert results["uap"]["final_linf"] <= eps + 1e-6
  assert not os.path.exists(backup)


# -------------------------------------------------------------------------------------------------
# MirroredStrategy on 2 logical CPU devices (in a subprocess: devices must be split before TF
# initialises them, and this process has already initialised them).

_MIRRORED_SCRIPT = textwrap.dedent("""
    import json
    import sys

    from moth_tf import distribute
    distribute.split_cpu(2)

    import keras
    import numpy as np
    import tensorflow as tf

    from moth_tf import config as config_lib
    from moth_tf import data as data_lib
    from moth_tf.baselines import adv_train
    from moth_tf.baselines import uap

    strategy = distribute.get_strategy("mirrored")
    out = {"replicas": strategy.num_replicas_in_sync}

    # 1. A few UAP steps on the same global batches with and without the strategy: the summed
    # gradient makes every replica take the same step, so delta and the weights match.
    rng = np.random.default_rng(0)
    x = rng.random((32, 4, 4, 1)).astype(np.float32)
    y = rng.integers(0, 3, 32)

    def build():
      return keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(),
                               keras.layers.Dense(3)])

    keras.utils.set_random_seed(1)
    init = build().get_weights()

    def run(strat):
      with strat.scope():
        clf = build()
        clf.set_weights(init)
        m = uap.UniversalPerturbationModel(clf, 3, epsilon=0.05, step_size=0.02)
        m.compile(optimizer=keras.optimizers.SGD(0.5),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
      m.fit(x, y, batch_size=16, epochs=3, verbose=0, shuffle=False)
      return m

    single, mirror = run(tf.distribute.get_strategy()), run(strategy)
    copies = [np.asarray(v) for v in strategy.experimental_local_results(mirror.delta.value)]
    out["delta_copies"] = len(copies)
    out["delta_copies_diff"] = float(np.abs(copies[0] - copies[1]).max())
    out["delta_diff"] = float(np.abs(single.delta.numpy() - mirror.delta.numpy()).max())
    out["delta_linf"] = float(np.abs(mirror.delta.numpy()).max())
    out["weight_diff"] = max(float(np.abs(a - b).max()) for a, b in
                             zip(single.classifier.get_weights(), mirror.classifier.get_weights()))

    # 2. harden() of adv_train and uap under the strategy, on digits.
    splits = data_lib.load_dataset("digits")
    keras.utils.set_random_seed(0)
    clf = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                            keras.layers.Dense(10)])
    weights = clf.get_weights()

    def factory():
      copy = keras.models.clone_model(clf)
      copy.set_weights(weights)
      return copy

    config = config_lib.harden_config(epochs=1, batch_size=128, learning_rate=1e-2)
    for name, module in (("adv_train", adv_train), ("uap", uap)):
      classifier, results = module.harden(factory, splits, config, sys.argv[1] + "/" + name,
                                          strategy=strategy, verbose=0)
      out[name] = {
          "steps": results["steps"],
          "steps_per_epoch": results["steps_per_epoch"],
          "weight_change": max(float(np.abs(np.asarray(a) - b).max())
                               for a, b in zip(classifier.get_weights(), weights)),
          "finite": all(bool(np.isfinite(np.asarray(w)).all()) for w in classifier.get_weights()),
          "uap": results.get("uap")}
    print("RESULT " + json.dumps(out))
""")


def test_adv_train_and_uap_under_mirrored_strategy(tmp_path):
  script = tmp_path / "mirrored.py"
  script.write_text(_MIRRORED_SCRIPT)
  # PYTHONPATH: the subprocess must import this checkout's moth_tf, not an installed one.
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=os.pathsep.join(
      p for p in (_REPO, os.environ.get("PYTHONPATH")) if p))
  proc = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True,
                        text=True, timeout=300, env=env, cwd=str(tmp_path))
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  assert len(lines) == 1, proc.stdout[-2000:]
  out = json.loads(lines[0][len("RESULT "):])
  assert out["replicas"] == 2
  # One perturbation: both replicas hold the same delta, the one a single device computes.
  assert out["delta_copies"] == 2 and out["delta_copies_diff"] == 0.0
  assert out["delta_diff"] < 1e-6
  assert 0.0 < out["delta_linf"] <= 0.05 + 1e-6
  assert out["weight_diff"] < 1e-5
  eps = data_lib.dataset_info("digits").train_pgd.epsilon
  for name in ("adv_train", "uap"):
    run = out[name]
    assert run["steps"] == run["steps_per_epoch"] == 10, name
    assert run["finite"] and run["weight_change"] > 1e-4, name
  assert 0.0 < out["uap"]["uap"]["final_linf"] <= eps + 1e-6


def test_pipeline_with_a_baseline_method(tmp_path, capsys):
  """`--phase=pipeline --method=finetune`: the base model, its distance, the baseline and the
  enlargement against the base model, into the baseline's own run directory."""
  workdir = str(tmp_path)
  capsys.readouterr()
  run_cli("--phase=pipeline", "--method=finetune", "--epochs=2", "--harden_steps=10", "--seeds=1",
          "--distance_steps=20", "--distance_samples=10", f"--workdir={workdir}")
  out = capsys.readouterr().out
  assert "[3/4] finetune hardening" in out
  assert "summary (finetune)" in out
  run_dir = os.path.join(workdir, "digits_lenet_finetune")
  summary = rundir.read_json(os.path.join(run_dir, "summary.json"))
  assert summary["method"] == "finetune" and summary["harden"]["steps"] == 10
  distance = rundir.read_json(os.path.join(run_dir, "distance.json"))
  assert distance["comparison"]["baseline"] == os.path.join(workdir, "digits_lenet_natural")
  assert not os.path.exists(os.path.join(workdir, "digits_lenet_moth"))
