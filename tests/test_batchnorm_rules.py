"""How BatchNorm layers see a hardening batch: the rules of HardenConfig.batchnorm.

A tiny model whose only statistics are one BatchNormalization layer with momentum 0 makes the moving
mean after one step equal to the mean of exactly the images that ran in training mode.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from moth_tf import config as config_lib
from moth_tf import data as data_lib
from moth_tf.hardening import fitting
from moth_tf.hardening import model as model_lib

N = 3
SHAPE = (2, 2, 1)


def _bn_classifier(momentum=0.0):
  inputs = keras.Input(SHAPE)
  x = keras.layers.Flatten()(inputs)
  x = keras.layers.BatchNormalization(momentum=momentum, name="bn")(x)
  return keras.Model(inputs, keras.layers.Dense(N, name="logits")(x))


class MarkFirstHalf(model_lib.HardeningModel):
  """Perturbs the first half of every batch by adding 5 to its pixels."""

  def perturb_batch(self, x, y, seed):
    del y, seed
    b = tf.shape(x)[0]
    perturbed = tf.range(b) < b // 2
    return tf.where(perturbed[:, None, None, None], x + 5.0, x), perturbed


def _one_step(rule, x, y):
  model = MarkFirstHalf(_bn_classifier(), N, batchnorm=rule)
  model.compile(optimizer=keras.optimizers.SGD(0.0),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  model.train_on_batch(x, y)
  bn = model.classifier.get_layer("bn")
  return np.asarray(bn.moving_mean), np.asarray(bn.moving_variance), model


@pytest.fixture(name="batch")
def _batch():
  rng = np.random.default_rng(0)
  return rng.random((8,) + SHAPE).astype(np.float32), rng.integers(0, N, 8)


def test_mixed_puts_the_perturbed_images_into_the_moving_statistics(batch):
  x, y = batch
  mean, _, _ = _one_step("mixed", x, y)
  seen = np.concatenate([x[:4] + 5.0, x[4:]]).reshape(8, -1)
  np.testing.assert_allclose(mean, seen.mean(axis=0), rtol=1e-5)


def test_clean_stats_takes_the_moving_statistics_from_the_clean_images_only(batch):
  x, y = batch
  mean, variance, _ = _one_step("clean_stats", x, y)
  clean = x[4:].reshape(4, -1)
  np.testing.assert_allclose(mean, clean.mean(axis=0), rtol=1e-5)
  # Keras keeps the batch's (biased) variance.
  np.testing.assert_allclose(variance, clean.var(axis=0), rtol=1e-4)


def test_clean_stats_normalises_perturbed_images_by_the_moving_statistics_in_batch_order(batch):
  x, y = batch
  model = MarkFirstHalf(_bn_classifier(), N, batchnorm="clean_stats")
  model(x)
  classifier = model.classifier
  before = [np.asarray(v) for v in classifier.get_layer("bn").weights]
  xp, perturbed = model.perturb_batch(tf.constant(x), None, None)
  logits = model.training_logits(xp, perturbed).numpy()
  for v, value in zip(classifier.get_layer("bn").weights, before):
    v.assign(value)  # The call above updated the moving statistics; compare from the start.
  expected_perturbed = classifier(xp[:4], training=False).numpy()
  np.testing.assert_allclose(logits[:4], expected_perturbed, rtol=1e-5, atol=1e-6)
  expected_clean = classifier(xp[4:], training=True).numpy()
  np.testing.assert_allclose(logits[4:], expected_clean, rtol=1e-5, atol=1e-6)


def test_clean_stats_without_clean_images_runs_in_inference_mode():
  class AllPerturbed(model_lib.HardeningModel):
    def perturb_batch(self, x, y, seed):
      return x + 1.0, tf.ones([tf.shape(x)[0]], tf.bool)

  x = np.random.default_rng(1).random((4,) + SHAPE).astype(np.float32)
  model = AllPerturbed(_bn_classifier(), N, batchnorm="clean_stats")
  model.compile(optimizer=keras.optimizers.SGD(0.0),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  model.train_on_batch(x, np.zeros(4, np.int64))
  bn = model.classifier.get_layer("bn")
  np.testing.assert_array_equal(np.asarray(bn.moving_mean), 0.0)  # Unchanged, and not NaN.
  np.testing.assert_array_equal(np.asarray(bn.moving_variance), 1.0)


def test_clean_stats_without_perturbed_images_trains_on_the_whole_batch_as_mixed():
  # A strided convolution: TensorFlow mis-shapes an empty batch through it, so the rule must not
  # run an empty perturbed part.
  def classifier():
    keras.utils.set_random_seed(3)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same")(inputs)
    x = keras.layers.BatchNormalization(momentum=0.0, name="bn")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(N)(x))

  class NonePerturbed(model_lib.HardeningModel):
    def perturb_batch(self, x, y, seed):
      return x, tf.zeros([tf.shape(x)[0]], tf.bool)

  x = np.random.default_rng(2).random((6, 8, 8, 1)).astype(np.float32)
  means = {}
  for rule in ("clean_stats", "mixed"):
    model = NonePerturbed(classifier(), N, batchnorm=rule)
    model.compile(optimizer=keras.optimizers.SGD(0.0),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.train_on_batch(x, np.zeros(6, np.int64))
    means[rule] = np.asarray(model.classifier.get_layer("bn").moving_mean)
  assert np.all(means["mixed"] != 0.0)  # The step took the batch's statistics.
  np.testing.assert_allclose(means["clean_stats"], means["mixed"], rtol=1e-5)


def test_frozen_keeps_the_moving_statistics(batch):
  x, y = batch
  mean, variance, _ = _one_step("frozen", x, y)
  np.testing.assert_array_equal(mean, 0.0)
  np.testing.assert_array_equal(variance, 1.0)


def test_a_model_without_batchnorm_trains_as_mixed_whatever_the_rule():
  inputs = keras.Input(SHAPE)
  outputs = keras.layers.Dense(N)(keras.layers.Dropout(0.5)(keras.layers.Flatten()(inputs)))
  model = MarkFirstHalf(keras.Model(inputs, outputs), N, batchnorm="frozen")
  assert model.batchnorm_rule == "mixed"
  assert MarkFirstHalf(_bn_classifier(), N, batchnorm="frozen").batchnorm_rule == "frozen"


def test_batchnorm_layers_are_found_in_nested_models():
  outer_in = keras.Input(SHAPE)
  outer = keras.Model(outer_in, _bn_classifier()(outer_in))
  assert [layer.name for layer in model_lib.batchnorm_layers(outer)] == ["bn"]


def test_recalibration_averages_the_clean_batches_statistics():
  classifier = _bn_classifier(momentum=0.9)
  x = np.random.default_rng(2).random((512,) + SHAPE).astype(np.float32)
  runs = fitting.recalibrate_batchnorm(classifier, x, batch_size=256, batches=50)
  assert runs == 2  # 512 images make two batches of 256.
  bn = classifier.get_layer("bn")
  np.testing.assert_allclose(np.asarray(bn.moving_mean), x.reshape(512, -1).mean(axis=0),
                             rtol=1e-5)
  assert bn.momentum == 0.9  # Restored.


def test_recalibrate_rule_ends_the_fit_with_clean_statistics():
  rng = np.random.default_rng(3)
  x = rng.random((64,) + SHAPE).astype(np.float32)
  y = rng.integers(0, N, 64)
  splits = data_lib.DatasetSplits(data_lib.dataset_info("digits"), x, y, x[:8], y[:8], x[:8],
                                  y[:8])
  config = config_lib.harden_config(steps=2, batch_size=32, batchnorm="recalibrate",
                                   lr_warmup_steps=0)
  model = fitting.build_hardening_model(
      tf.distribute.get_strategy(), lambda: MarkFirstHalf(_bn_classifier(0.5), N), config,
      len(x), x[:1])
  assert model.batchnorm == "recalibrate"
  import tempfile
  with tempfile.TemporaryDirectory() as run_dir:
    fitting.fit_hardening(model, splits, config, run_dir, verbose=0)
  bn = model.classifier.get_layer("bn")
  # Without recalibration the moving mean would hold perturbed images (+5 on half of them).
  np.testing.assert_allclose(np.asarray(bn.moving_mean), x.reshape(64, -1).mean(axis=0),
                             rtol=1e-5)


def test_the_config_refuses_an_unknown_rule():
  with pytest.raises(ValueError, match="batchnorm must be one of"):
    config_lib.harden_config(batchnorm="sometimes")


_MIRRORED_SCRIPT = r'''
import sys
import numpy as np
import tensorflow as tf
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
sys.path.insert(0, sys.argv[1])
import test_batchnorm_rules as rules

rng = np.random.default_rng(0)
x = rng.random((8,) + rules.SHAPE).astype(np.float32)
y = rng.integers(0, rules.N, 8)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
for rule in sys.argv[2:]:
  with strategy.scope():
    model = rules.MarkFirstHalf(rules._bn_classifier(), rules.N, batchnorm=rule)
    model.compile(optimizer=keras.optimizers.SGD(0.0),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(8), epochs=1, verbose=0)
  print("MEAN", rule, " ".join(repr(float(v)) for v in np.asarray(
      model.classifier.get_layer("bn").moving_mean)))
'''


def test_rules_under_mirrored_strategy_on_two_devices(tmp_path):
  """Each replica perturbs the first half of its own 4 images. Keras keeps the first replica's
  moving statistics (BatchNorm is not synchronised across replicas): its whole batch's mean
  (mixed), its clean half's (clean_stats), or none (frozen)."""
  import os
  import subprocess
  import sys
  script = tmp_path / "mirrored.py"
  script.write_text(_MIRRORED_SCRIPT)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  here = os.path.dirname(os.path.abspath(__file__))
  env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(here), here, env.get("PYTHONPATH", "")])
  rules = ("mixed", "clean_stats", "frozen")
  proc = subprocess.run([sys.executable, str(script), here, *rules], capture_output=True,
                        text=True, env=env, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  means = {line.split()[1]: np.array([float(v) for v in line.split()[2:]])
           for line in proc.stdout.splitlines() if line.startswith("MEAN")}
  assert sorted(means) == sorted(rules)
  x = np.random.default_rng(0).random((8,) + SHAPE).astype(np.float32).reshape(8, -1)
  np.testing.assert_array_equal(means["frozen"], 0.0)
  np.testing.assert_allclose(means["clean_stats"], x[2:4].mean(axis=0), rtol=1e-5)
  np.testing.assert_allclose(means["mixed"], np.concatenate([x[:2] + 5.0, x[2:4]]).mean(axis=0),
                             rtol=1e-5)
