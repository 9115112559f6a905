"""Tests of --precision and --jit_compile: models rebuilt under a dtype policy, float16 loss
scaling, XLA against no XLA, the wall-time estimate of a run, and benchmarks/device_benchmark.py.

Every model is tiny (a 4-filter convolution on 8x8x1 images, 4 classes, 48 images); the command
line runs on the built-in 8x8 digits with a LeNet trained for one epoch. After every test the
global dtype policy must be float32 again (the autouse fixture checks it).
"""

import contextlib
import io
import json
import os
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import moth_tf
from moth_tf import config as config_lib
from moth_tf import estimate
from moth_tf.hardening import fitting
from moth_tf.hardening import model as model_lib
from moth_tf.models import io as model_io
from moth_tf.models import precision as precision_lib
from moth_tf.triggers import blocks
from moth_tf.triggers import engine

import cli_testing
import test_mixed_precision as mixed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
_COMPUTE = {"float32": "float32", "mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}


@pytest.fixture(autouse=True)
def float32_after():
  """Every library call must leave the global policy as it found it (float32)."""
  assert keras.mixed_precision.global_policy().name == "float32"
  yield
  assert keras.mixed_precision.global_policy().name == "float32"


@pytest.fixture(scope="module")
def data():
  return mixed._data()  # pylint: disable=protected-access


@pytest.fixture(scope="module")
def trained(data):
  return mixed._trained_classifier(*data)  # pylint: disable=protected-access


@pytest.mark.parametrize("precision", PRECISIONS)
def test_a_rebuilt_model_computes_in_the_policy_with_float32_weights_and_triggers(
    precision, data, trained):
  x, y = data
  model = precision_lib.with_precision(trained, precision, x[:1])
  assert precision_lib.model_precision(model) == precision
  assert model.layers[-1].compute_dtype == _COMPUTE[precision]
  assert model(x[:2]).dtype == _COMPUTE[precision]
  assert all(w.dtype == "float32" for w in model.trainable_weights)
  # The same weights: the outputs agree up to the compute dtype's rounding.
  np.testing.assert_allclose(np.asarray(model(x), np.float32), trained(x).numpy(),
                             atol=0.0 if precision == "float32" else 0.1)
  assert (model is trained) == (precision == "float32")
  # Triggers, masks and their losses stay float32 whatever the model computes in.
  inverter = engine.TriggerInverter(model, engine.InversionSettings(steps=3, chunk_steps=3))
  parts = blocks.split_directions([x[y == 0][:4]], [1], [3], 1e-3, None, None, 8)
  _, states = inverter._run_chunk(  # pylint: disable=protected-access
      tf.constant(0), [inverter.initial_state(parts[0])],
      [inverter.block_inputs(parts[0])], tf.constant(0.0), tf.constant(3), tf.constant(3),
      tf.constant(0))
  for key in ("mask_var", "pattern_var", "best_reg", "loss_start", "cost"):
    assert states[0][key].dtype == tf.float32, key
  # Saved from a mixed run: a float32 model with the same weights.
  back = precision_lib.float32_copy(model)
  assert precision_lib.model_precision(back) == "float32"
  for a, b in zip(back.get_weights(), trained.get_weights()):
    np.testing.assert_array_equal(a, b)


def test_a_subclassed_model_is_rebuilt_or_refused(data):
  x, _ = data

  class Tiny(keras.Model):
    def __init__(self, dtype_of_dense=None, **kwargs):
      super().__init__(**kwargs)
      self.dtype_of_dense = dtype_of_dense
      self.flat = keras.layers.Flatten()
      self.dense = keras.layers.Dense(4, dtype=dtype_of_dense)

    def call(self, inputs):
      return self.dense(self.flat(inputs))

    def get_config(self):
      return {**super().get_config(), "dtype_of_dense": self.dtype_of_dense}

  plain = Tiny()
  plain(x[:1])
  copy = precision_lib.with_precision(plain, "mixed_bfloat16", x[:1])
  assert copy.dense.compute_dtype == "bfloat16"
  np.testing.assert_array_equal(copy.dense.kernel.numpy(), plain.dense.kernel.numpy())
  fixed = Tiny(dtype_of_dense="float32")  # Its layer insists on float32: refused, one line.
  fixed(x[:1])
  with pytest.raises(ValueError, match="keeps dtype policies"):
    precision_lib.with_precision(fixed, "mixed_bfloat16", x[:1])


def test_mixed_float16_hardening_scales_the_loss(data, trained):
  x, y = data
  half = precision_lib.with_precision(trained, "mixed_float16", x[:1])
  config = config_lib.harden_config(steps=3, batch_size=16, lr_warmup_steps=0)
  model = fitting.build_hardening_model(
      tf.distribute.get_strategy(), lambda: model_lib.HardeningModel(half, 4), config, len(x),
      x[:1])
  assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
  history = model.fit(x, y, batch_size=16, epochs=1, verbose=0)
  assert np.isfinite(history.history["loss"][0])
  assert int(model.optimizer.iterations.numpy()) == 3
  # A float32 classifier's does not.
  plain = fitting.build_hardening_model(
      tf.distribute.get_strategy(), lambda: model_lib.HardeningModel(trained, 4), config, len(x),
      x[:1])
  assert not isinstance(plain.optimizer, keras.optimizers.LossScaleOptimizer)


def test_harden_with_a_precision_returns_the_inputs_policy(data, trained):
  x, y = data
  hardened, results = moth_tf.harden(trained, (x, y), method="finetune", config={"steps": 3},
                                     precision="mixed_bfloat16", verbose=0)
  assert precision_lib.model_precision(hardened) == "float32"
  assert results.steps == 3
  assert not all(np.array_equal(a, b) for a, b in zip(hardened.get_weights(),
                                                       trained.get_weights()))
  with pytest.raises(ValueError, match="precision='float64'"):
    moth_tf.class_distance(trained, x, y, precision="float64", verbose=0)


def test_xla_on_and_off_agree(data, trained):
  x, y = data
  pairs = [(0, 1), (2, 3)]
  results = {}
  for jit in (False, True):
    distance = moth_tf.class_distance(trained, x, y, samples=6, steps=20, seeds=1, pairs=pairs,
                                      verbose=0, jit_compile=jit)
    hardened, harden = moth_tf.harden(trained, (x, y), method="finetune", verbose=0,
                                      config={"steps": 2, "seed": 1}, jit_compile=jit)
    results[jit] = (distance, harden, hardened)
  (d0, h0, m0), (d1, h1, m1) = results[False], results[True]
  assert not d0.failures and not d1.failures
  # XLA fuses and rounds differently: close, not equal (measured: 1e-6 relative here).
  assert d1.mean == pytest.approx(d0.mean, rel=1e-3)
  assert h1.test_accuracy_after == pytest.approx(h0.test_accuracy_after, abs=0.05)
  np.testing.assert_allclose(m1.get_weights()[0], m0.get_weights()[0], atol=1e-4)
  assert h1.config.jit_compile and not h0.config.jit_compile


def test_estimate_formulas():
  config = config_lib.harden_config(steps=600, period=6, pairs_per_period=1,
                                        warmup_steps=10, fast_steps=4, pair_steps=20,
                                        warmup_samples=1, generations_per_period=1)
  # 10 classes: 10 warm-up steps = 10 x 9 images, scaled from a 2-direction, 10-image step.
  est = estimate.harden_estimate("moth", config, 10, None, training_step=0.5, engine_step=0.1,
                                 engine_images=10)
  periods = -(-(600 - 10) // 6)
  warm = 10 * 0.1 * (10 * 9 * 1) / 10
  assert est.seconds == pytest.approx(600 * 0.5 + warm + periods * 4 * 0.1)
  dist = estimate.distance_estimate(0.33, 90, 3, 1000)
  assert dist.seconds == pytest.approx(990.0) and dist.upper_bound
  assert "about 16 min at 0.33 s per engine step" in dist.line()


def test_cli_estimates_are_printed_and_recorded(tmp_path_factory):
  work = cli_testing.trained_workdir(tmp_path_factory, 1)
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    cli_testing.run_cli("--phase=distance", f"--workdir={work}", "--distance_samples=4",
                        "--distance_steps=3", "--seeds=1", "--progress=none", "--pair=0-1",
                        "--precision=mixed_bfloat16")
    cli_testing.run_cli("--phase=harden", "--method=finetune", f"--workdir={work}",
                        "--harden_steps=2", "--progress=none", "--precision=mixed_float16")
  lines = [l for l in out.getvalue().splitlines() if l.startswith("estimate: ")]
  assert len(lines) == 2 and "class distance, 1 directions x 1 seed(s) x 3 steps" in lines[0]
  assert "finetune hardening, 2 steps" in lines[1] and "per training step" in lines[1]
  pair = rundir_summary(work, "digits_lenet_natural", "distance_pair_0-1.json")
  assert pair["estimate"]["estimated_seconds"] > 0
  assert pair["estimate"]["per_step_seconds"]["engine_step"] > 0
  assert pair["wall_seconds"] > 0  # Measured, beside the estimate.
  hardened = rundir_summary(work, "digits_lenet_finetune")
  assert hardened["harden"]["estimate"]["estimated_seconds"] > 0
  assert hardened["harden"]["precision"] == "mixed_float16"
  assert hardened["config"]["precision"] == "mixed_float16"
  # The mixed run saved a float32 model.
  saved = model_io.load_model(os.path.join(work, "digits_lenet_finetune", "model.keras"))
  assert precision_lib.model_precision(saved) == "float32"


def rundir_summary(work, run, name="summary.json"):
  with open(os.path.join(work, run, name)) as f:
    return json.load(f)


def test_device_benchmark_prints_a_table(tmp_path):
  sys.path.insert(0, os.path.join(REPO, "benchmarks"))
  try:
    import device_benchmark  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.pop(0)
  out_path = str(tmp_path / "device.json")
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    results = device_benchmark.main(["--models=lenet", "--shapes=8x8x1",
                                     "--precisions=float32", "--xla=off", "--reps=1",
                                     "--steps=1", "--directions=6", "--images_per_direction=4",
                                     f"--out={out_path}"])
  rows = [l for l in printed.getvalue().splitlines() if l.startswith("| lenet |")]
  cells = [c.strip() for c in rows[-1].strip("|").split("|")]
  assert cells[:4] == ["lenet", "8x8x1", "float32", "off"]
  train_ms, invert_ms, floor_ms, ratio = (float(c) for c in cells[4:])
  assert min(train_ms, invert_ms, floor_ms) > 0
  assert ratio == pytest.approx(invert_ms / floor_ms, rel=0.02, abs=0.01)
  with open(out_path) as f:
    assert json.load(f)["rows"][0]["model"] == results["rows"][0]["model"] == "lenet"
  assert "not estimated" in printed.getvalue()  # No resnet20 32x32x3 row, so no pipeline line.
