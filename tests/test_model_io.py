"""Tests of model saving/loading (moth_tf.models.io), natural training and run-directory files.

A LeNet trained for a few epochs on the digits is saved once (module fixture) and reloaded as a
`.keras` file and as the exported SavedModel; a legacy `tf.saved_model.save` module with a
dict-returning `serving_default` signature stands in for Keras 2 / hand-written SavedModels. A tiny
BatchNorm + Dropout model hardened as a SavedModel (5 fine-tuning steps) checks training mode and
that the hardened output stands alone.
"""

import io
import json
import math
import os
import shutil
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from moth_tf import config as config_lib
from moth_tf import data
from moth_tf import evaluation
from moth_tf.cli import phases
from moth_tf import rundir
from moth_tf import training
from moth_tf.models import io as model_io

from cli_testing import run_cli  # pylint: disable=g-bad-import-order


@pytest.fixture(scope="module")
def digits():
  return data.load_dataset("digits")


@pytest.fixture(scope="module")
def trained(digits, tmp_path_factory):
  """(model, results, run_dir): LeNet after 3 epochs of the digits recipe (~3 s)."""
  run_dir = str(tmp_path_factory.mktemp("run") / "digits_lenet_natural")
  recipe = config_lib.TrainConfig(epochs=3, batch_size=64, optimizer="adam", learning_rate=2e-3,
                                  schedule="cosine")
  model, results = training.train_natural("lenet", digits, recipe, run_dir,
                                          tf.distribute.get_strategy(), seed=0, verbose=0)
  return model, results, run_dir


def test_train_natural_learns_and_saves(trained, digits):
  model, results, run_dir = trained
  # Chance is 10%; 3 epochs reach ~95% (30 epochs: ~98%).
  assert results["test_accuracy"] > 0.8 and results["val_accuracy"] > 0.8
  assert results["test_accuracy"] == evaluation.accuracy(model, digits.x_test, digits.y_test)
  assert results["epochs"] == 3 and results["train_seconds"] > 0
  assert math.isfinite(results["final_train_loss"])
  assert os.path.isfile(os.path.join(run_dir, rundir.MODEL_FILE))
  assert os.path.isfile(os.path.join(run_dir, rundir.SAVED_MODEL_DIR, "saved_model.pb"))
  assert os.listdir(rundir.logs_dir(run_dir, "train"))


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_diverging_training_raises_and_saves_no_model(optimizer, tmp_path):
  # A learning rate of 1e10 sends a LeNet's loss (Adam) or, through the last update of an epoch
  # whose loss was still finite, its weights (SGD) to NaN/inf within the first epoch.
  rng = np.random.default_rng(0)

  def split(n):
    return (rng.uniform(0, 1, (n, 8, 8, 1)).astype(np.float32),
            rng.integers(0, 10, n).astype(np.int64))

  tiny = data.DatasetSplits(data.dataset_info("digits"), *split(64), *split(16), *split(16))
  run_dir = str(tmp_path / "run")
  recipe = config_lib.TrainConfig(epochs=3, batch_size=16, optimizer=optimizer,
                                  learning_rate=1e10, schedule="constant")
  with pytest.raises(training.NonFiniteTrainingError,
                     match=r"^training diverged: the (loss became (nan|inf) in epoch \d|weight \S+ "
                           r"holds NaN or infinite values); no model was saved; lower the "
                           r"learning rate \(--learning_rate, now 1e\+10\) or check the data for "
                           r"extreme values$"):
    training.train_natural("lenet", tiny, recipe, run_dir, tf.distribute.get_strategy(), seed=0,
                           verbose=0)
  # Logs may stay; no model file of any kind (not even the per-epoch checkpoint).
  assert not os.path.exists(os.path.join(run_dir, rundir.MODEL_FILE))
  assert not os.path.exists(os.path.join(run_dir, rundir.SAVED_MODEL_DIR))
  assert not os.path.exists(os.path.join(run_dir, "checkpoints"))
  assert sorted(os.listdir(run_dir)) == ["logs"]


def test_keras_file_round_trip_is_exact(trained, digits):
  model, _, run_dir = trained
  loaded = model_io.load_model(rundir.model_path(run_dir))
  assert isinstance(loaded, keras.Model)
  x = digits.x_test[:64]
  np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_exported_savedmodel_loads_through_tfsmlayer(trained, digits):
  model, _, run_dir = trained
  loaded = model_io.load_model(os.path.join(run_dir, rundir.SAVED_MODEL_DIR))
  assert any(isinstance(layer, keras.layers.TFSMLayer) for layer in loaded.layers)
  assert loaded.input_shape == (None, 8, 8, 1) and loaded.output_shape == (None, 10)
  x = digits.x_test[:64]
  np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)
  # Its variables stay trainable, so the wrapped model can be fine-tuned (hardened), and moth_tf's
  # export carries a training endpoint, so it is fine-tuned in training mode.
  assert len(loaded.trainable_weights) == len(model.trainable_weights)
  assert [layer.call_training_endpoint for layer in model_io.savedmodel_layers(loaded)] == [
      "call_training"]
  assert model_io.inference_mode_warning(loaded) is None


def test_save_model_is_atomic_and_replaces_cleanly(trained, tmp_path):
  model, _, _ = trained
  run_dir = str(tmp_path / "run")
  for _ in range(2):  # The second save replaces the first.
    path = model_io.save_model(model, run_dir)
    assert path == os.path.join(run_dir, "model.keras")
    assert sorted(os.listdir(run_dir)) == ["model.keras", "saved_model"]
    assert os.path.isfile(os.path.join(run_dir, "saved_model", "saved_model.pb"))
  assert not [n for n in os.listdir(tmp_path) if n != "run"]
  model_io.save_model(model, str(tmp_path / "no_export"), export=False)
  assert os.listdir(tmp_path / "no_export") == ["model.keras"]


class _LegacyClassifier(tf.Module):
  """A hand-written SavedModel: logits = flatten(x) @ kernel + bias, returned in a dict."""

  def __init__(self):
    super().__init__()
    rng = np.random.default_rng(0)
    self.kernel = tf.Variable(rng.normal(size=(16, 3)).astype(np.float32))
    self.bias = tf.Variable(np.array([0.5, -0.5, 0.0], np.float32))

  @tf.function(input_signature=[tf.TensorSpec([None, 4, 4, 1], tf.float32, name="images")])
  def classify(self, images):
    return {"logits": tf.reshape(images, [-1, 16]) @ self.kernel + self.bias}


def test_legacy_serving_default_savedmodel(tmp_path):
  module = _LegacyClassifier()
  path = str(tmp_path / "legacy")
  tf.saved_model.save(module, path, signatures={"serving_default": module.classify})
  loaded = model_io.load_model(path)
  assert loaded.output_shape == (None, 3)
  x = np.random.default_rng(1).uniform(0, 1, (5, 4, 4, 1)).astype(np.float32)
  expected = x.reshape(5, 16) @ module.kernel.numpy() + module.bias.numpy()
  np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, atol=1e-5)
  # No training endpoint: it would be fine-tuned in inference mode, which is said.
  assert model_io.describe_input(loaded, path) == {
      "format": "saved_model", "training_endpoint": None, "inference_mode_only": True,
      "warning": model_io.inference_mode_warning(loaded)}
  assert model_io.inference_mode_warning(loaded).startswith(
      f"{path} is a SavedModel without a 'call_training' endpoint or a __call__ traced with "
      "training=True, so it is fine-tuned in inference mode")


def test_savedmodel_with_two_outputs_is_rejected(tmp_path):
  module = tf.Module()
  module.fn = tf.function(lambda x: {"a": x[:, 0, 0, :], "b": x[:, 1, 1, :]},
                          input_signature=[tf.TensorSpec([None, 2, 2, 1], tf.float32)])
  path = str(tmp_path / "two")
  tf.saved_model.save(module, path, signatures={"serving_default": module.fn})
  with pytest.raises(model_io.ModelLoadError, match="2 outputs"):
    model_io.load_model(path)


def test_load_model_errors(tmp_path):
  with pytest.raises(model_io.ModelLoadError, match="does not exist.*--phase=train"):
    model_io.load_model(str(tmp_path / "missing.keras"))
  (tmp_path / "empty_dir").mkdir()
  with pytest.raises(model_io.ModelLoadError, match="without saved_model.pb"):
    model_io.load_model(str(tmp_path / "empty_dir"))
  h5 = tmp_path / "model.h5"
  h5.write_bytes(b"not really hdf5")
  with pytest.raises(model_io.ModelLoadError, match=r"\.h5.*save\('model.keras'\)"):
    model_io.load_model(str(h5))
  assert issubclass(model_io.ModelLoadError, ValueError)  # main turns it into exit code 1.


def _tiny_keras_bytes(directory):
  """The bytes of a real (tiny) `.keras` file."""
  model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(3)])
  path = os.path.join(directory, "tiny.keras")
  model.save(path)
  with open(path, "rb") as f:
    data = f.read()
  os.remove(path)
  return data


def _without_config(data):
  """A copy of the archive `data` with every member except config.json."""
  out = io.BytesIO()
  with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
    for name in src.namelist():
      if name != "config.json":
        dst.writestr(name, src.read(name))
  return out.getvalue()


def _bad_weights_crc(data):
  """`data` with bytes inside the stored model.weights.h5 member overwritten (its CRC fails)."""
  start = data.index(b"\x89HDF\r\n\x1a\n") + 64  # The HDF5 signature opens the weights member.
  return data[:start] + b"\xff" * 16 + data[start + 16:]


@pytest.mark.parametrize("name, damage, reason", [
    ("half.keras", lambda d: d[:len(d) // 2],
     "the zip archive has no end record, as when cut short"),
    ("text.keras", lambda d: b"this is not a zip archive", "not a zip archive"),
    ("empty.keras", lambda d: b"", "the file is empty"),
    ("noconfig.keras", _without_config, "the archive has no config.json"),
    ("flipped.keras", _bad_weights_crc, "model.weights.h5 fails its CRC check"),
])
def test_damaged_keras_file_is_one_line_naming_the_problem(name, damage, reason, tmp_path):
  path = tmp_path / name
  path.write_bytes(damage(_tiny_keras_bytes(str(tmp_path))))
  with pytest.raises(model_io.ModelLoadError) as info:
    model_io.load_model(str(path))
  # Keras alone says "File not found" for the first three, a file that exists.
  assert str(info.value) == (f"{path} is not a readable Keras model file (truncated or corrupt: "
                             f"{reason}); re-save or re-copy it")


def test_savedmodel_with_a_garbage_saved_model_pb(tmp_path):
  path = tmp_path / "exported"
  path.mkdir()
  (path / "saved_model.pb").write_bytes(b"garbage, not a protocol buffer \x00\x01\x02")
  with pytest.raises(model_io.ModelLoadError) as info:  # Was an OSError and chained tracebacks.
    model_io.load_model(str(path))
  assert str(info.value) == (f"{path} is not a readable TF SavedModel (truncated or corrupt: "
                             "saved_model.pb does not parse as a SavedModel); re-save or "
                             "re-copy it")


def test_intact_keras_file_still_loads(tmp_path):
  path = tmp_path / "ok.keras"
  path.write_bytes(_tiny_keras_bytes(str(tmp_path)))
  assert model_io.load_model(str(path)).output_shape == (None, 3)


def test_unsafe_keras_file_needs_unsafe_load(tmp_path):
  inputs = keras.Input((2,))
  model = keras.Model(inputs, keras.layers.Lambda(lambda t: t * 2.0)(inputs))
  path = str(tmp_path / "lambda.keras")
  model.save(path)
  with pytest.raises(model_io.ModelLoadError, match="--unsafe_load"):
    model_io.load_model(path)
  loaded = model_io.load_model(path, unsafe_load=True)
  np.testing.assert_allclose(loaded.predict(np.ones((1, 2), np.float32), verbose=0), [[2.0, 2.0]])


# -------------------------------------------------------------------------------------------------
# Hardening a SavedModel input: training mode, and an output that stands alone.

# 5 steps of clean fine-tuning (1,257 training digits in batches of 256): about 2 s.
_FINETUNE = ("--phase=harden", "--method=finetune", "--dataset=digits", "--harden_steps=5",
             "--harden_batch_size=256")


def _bn_dropout_model():
  """An untrained 8x8x1 -> 10 logits model with BatchNormalization and Dropout."""
  keras.utils.set_random_seed(0)
  return keras.Sequential([
      keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3), keras.layers.BatchNormalization(),
      keras.layers.ReLU(), keras.layers.Flatten(), keras.layers.Dropout(0.5),
      keras.layers.Dense(10)])


def _saved_value(saved_model_dir, variable):
  """The value in the SavedModel of the Keras `variable` of the model it was exported from."""
  suffix = f"{variable.path}:0"  # Saved as "sequential_3/dense_3/kernel:0": layer names vary.
  found = [v.numpy() for v in tf.saved_model.load(saved_model_dir).variables
           if v.name.endswith(suffix)]
  assert len(found) == 1, (suffix, found)
  return found[0]


def test_savedmodel_without_training_endpoint_warns_and_the_output_stands_alone(tmp_path, capsys):
  model = _bn_dropout_model()
  source = str(tmp_path / "exported")
  model.export(source, verbose=False)  # `serve` only: no training endpoint.
  workdir = str(tmp_path / "work")
  capsys.readouterr()
  run_cli(*_FINETUNE, f"--model_path={source}", f"--workdir={workdir}")
  captured = capsys.readouterr()
  warning = (f"{source} is a SavedModel without a 'call_training' endpoint or a __call__ traced "
             "with training=True, so it is fine-tuned in inference mode: BatchNorm moving "
             "statistics stay frozen and dropout is off while its weights train; to fine-tune in "
             "training mode pass a .keras file, or export the model with a 'call_training' "
             "endpoint (docs/user-guide.md#savedmodel-inputs)")
  assert f"WARNING: {warning}\n" in captured.err
  # Said before training: before the fit's progress bar and the closing line.
  assert captured.out.index("finetune hardening of") < captured.out.index("test accuracy")
  run_dir = os.path.join(workdir, "digits_external_exported_finetune")
  saved_model = os.path.join(run_dir, "saved_model")
  summary = rundir.read_json(os.path.join(run_dir, rundir.SUMMARY_FILE))
  assert summary["harden"]["model_input"] == {
      "format": "saved_model", "training_endpoint": None, "inference_mode_only": True,
      "warning": warning}
  assert summary["hardened_model"] == saved_model
  # Inference mode: the weights trained, the moving statistics did not move.
  bn = model.layers[1]
  kernel = model.layers[-1].kernel
  assert np.abs(_saved_value(saved_model, kernel) - kernel.numpy()).max() > 0
  for moving in (bn.moving_mean, bn.moving_variance):
    np.testing.assert_array_equal(_saved_value(saved_model, moving), moving.numpy())
  # The output stands alone: a SavedModel, no model.keras pointing at the input, and it loads,
  # tests and measures after the input is gone, without --unsafe_load.
  assert sorted(os.listdir(run_dir)) == ["logs", "saved_model", "summary.json"]
  shutil.rmtree(source)
  loaded = model_io.load_model(run_dir)  # A run directory: its saved_model/.
  assert loaded.output_shape == (None, 10)
  x = np.random.default_rng(0).uniform(0, 1, (4, 8, 8, 1)).astype(np.float32)
  exported = tf.saved_model.load(saved_model)
  np.testing.assert_allclose(loaded.predict(x, verbose=0), exported.serve(x).numpy(), atol=1e-5)
  capsys.readouterr()
  run_cli("--phase=test", f"--model_path={run_dir}", f"--workdir={workdir}")
  accuracy = float(capsys.readouterr().out.split("test accuracy: ")[1].split()[0])
  assert accuracy == pytest.approx(summary["test_accuracy"], abs=1e-4)
  run_cli("--phase=distance", "--pair=0-1", "--distance_steps=2", "--seeds=1",
          "--distance_samples=5", f"--model_path={saved_model}", f"--workdir={workdir}")
  assert os.path.isfile(os.path.join(workdir, "digits_external_saved_model",
                                     "distance_pair_0-1.json"))


def test_savedmodel_with_a_training_endpoint_trains_batchnorm(tmp_path, capsys):
  model = _bn_dropout_model()
  source = str(tmp_path / "archive")
  # The export the user guide recommends for a SavedModel: `serve` plus a `call_training` endpoint.
  archive = keras.export.ExportArchive()
  archive.track(model)
  spec = [tf.TensorSpec((None, 8, 8, 1), tf.float32)]
  archive.add_endpoint("serve", lambda x: model(x, training=False), input_signature=spec)
  archive.add_endpoint("call_training", lambda x: model(x, training=True), input_signature=spec)
  archive.write_out(source, verbose=False)
  workdir = str(tmp_path / "work")
  run_dir = os.path.join(workdir, "digits_external_archive_finetune")
  os.makedirs(run_dir)
  with open(rundir.model_path(run_dir), "w") as f:  # Left by an earlier run; must not survive.
    f.write("stale")
  capsys.readouterr()
  config = config_lib.RunConfig(
      phase="harden", method="finetune", model_path=source, workdir=workdir, overwrite=True,
      harden=config_lib.harden_config(steps=5, batch_size=256))
  results = phases.run_harden(config)  # The library call behind --phase=harden.
  assert results["run_dir"] == run_dir
  assert "WARNING" not in capsys.readouterr().err
  summary = rundir.read_json(os.path.join(run_dir, rundir.SUMMARY_FILE))
  assert summary["harden"]["model_input"] == {
      "format": "saved_model", "training_endpoint": "call_training", "inference_mode_only": False}
  # Training mode: the moving statistics moved (as for the same model hardened as .keras).
  saved_model = os.path.join(run_dir, "saved_model")
  bn = model.layers[1]
  for moving in (bn.moving_mean, bn.moving_variance):
    assert np.abs(_saved_value(saved_model, moving) - moving.numpy()).max() > 1e-3, moving.path
  assert sorted(os.listdir(run_dir)) == ["logs", "saved_model", "summary.json"]
  # The output keeps a training endpoint, so hardening it again also trains in training mode.
  shutil.rmtree(source)
  loaded = model_io.load_model(saved_model)
  assert model_io.describe_input(loaded, saved_model)["training_endpoint"] == "call_training"


# -------------------------------------------------------------------------------------------------
# The kinds of SavedModel export, and which of them fine-tune in training mode (docs/user-guide.md,
# SavedModel inputs: the support matrix).

_SPEC = tf.TensorSpec((None, 8, 8, 1), tf.float32)


class _HandClassifier(tf.Module):
  """A hand-written conv -> batch norm -> ReLU -> dropout -> dense classifier of 8x8x1 images.

  `forward(x, training)` normalises with the batch's statistics and updates its moving statistics
  in training mode (dropout on), and uses the moving statistics otherwise.
  """

  def __init__(self):
    super().__init__()
    rng = np.random.default_rng(0)
    self.kernel = tf.Variable(rng.normal(0, 0.3, (3, 3, 1, 4)).astype(np.float32), name="kernel")
    self.gamma = tf.Variable(np.ones(4, np.float32), name="gamma")
    self.beta = tf.Variable(np.zeros(4, np.float32), name="beta")
    self.moving_mean = tf.Variable(np.zeros(4, np.float32), trainable=False, name="moving_mean")
    self.moving_variance = tf.Variable(np.ones(4, np.float32), trainable=False,
                                       name="moving_variance")
    self.dense = tf.Variable(rng.normal(0, 0.1, (144, 10)).astype(np.float32), name="dense")

  def forward(self, x, training=False):
    h = tf.nn.conv2d(x, self.kernel, 1, "VALID")
    if training:
      mean, variance = tf.nn.moments(h, [0, 1, 2])
      self.moving_mean.assign(0.9 * self.moving_mean + 0.1 * mean)
      self.moving_variance.assign(0.9 * self.moving_variance + 0.1 * variance)
    else:
      mean, variance = tf.identity(self.moving_mean), tf.identity(self.moving_variance)
    h = tf.nn.relu(tf.nn.batch_normalization(h, mean, variance, self.beta, self.gamma, 1e-3))
    h = tf.reshape(h, [-1, 144])
    if training:
      h = tf.nn.dropout(h, 0.5)
    return h @ self.dense


def _export_module_python_bool(path):
  """tf.saved_model.save of a tf.Module whose `__call__(x, training)` is traced for both values."""
  module = _HandClassifier()
  module.__call__ = tf.function(module.forward)
  for training in (True, False):
    module.__call__.get_concrete_function(_SPEC, training=training)
  tf.saved_model.save(module, path)


def _export_module_bool_tensor(path):
  """The same with `training` a boolean tensor of the input signature (one trace for both)."""
  module = _HandClassifier()
  module.__call__ = tf.function(module.forward,
                                input_signature=[_SPEC, tf.TensorSpec([], tf.bool)])
  tf.saved_model.save(module, path)


def _export_keras3(path):
  _bn_dropout_model().export(path, verbose=False)


def _export_keras3_tf_saved_model(path):
  tf.saved_model.save(_bn_dropout_model(), path)


def _export_archive(path):
  model = _bn_dropout_model()
  archive = keras.export.ExportArchive()
  archive.track(model)
  archive.add_endpoint("serve", lambda x: model(x, training=False), input_signature=[_SPEC])
  archive.add_endpoint("call_training", lambda x: model(x, training=True), input_signature=[_SPEC])
  archive.write_out(path, verbose=False)


def _keras2_bn_dropout_model():
  """_bn_dropout_model in Keras 2 (tf_keras; the test is skipped where it is not installed)."""
  tf_keras = pytest.importorskip("tf_keras")
  tf_keras.utils.set_random_seed(0)
  layers = tf_keras.layers
  return tf_keras.Sequential([
      tf_keras.Input((8, 8, 1)), layers.Conv2D(4, 3), layers.BatchNormalization(), layers.ReLU(),
      layers.Flatten(), layers.Dropout(0.5), layers.Dense(10)])


def _export_keras2(path):
  _keras2_bn_dropout_model().save(path)  # A directory: Keras 2 writes a SavedModel.


def _export_keras2_tf_saved_model(path):
  tf.saved_model.save(_keras2_bn_dropout_model(), path)


# kind -> (exporter, the endpoint that runs training=True or None for inference mode only).
_EXPORTS = {
    "keras3_export": (_export_keras3, None),
    "keras3_tf_saved_model_save": (_export_keras3_tf_saved_model, None),
    "export_archive": (_export_archive, "call_training"),
    "module_python_bool": (_export_module_python_bool, "__call__"),
    "module_bool_tensor": (_export_module_bool_tensor, "__call__"),
    "keras2_save": (_export_keras2, "__call__"),
    "keras2_tf_saved_model_save": (_export_keras2_tf_saved_model, "__call__"),
}


def _variables(saved_model_dir):
  """{name: value} of a SavedModel's variables (their names survive fine-tuning and export)."""
  loaded = tf.saved_model.load(saved_model_dir)
  # Not every export lists them as `variables`: also collect its functions' own.
  found = list(getattr(loaded, "variables", []))
  call = getattr(loaded, "__call__", None)
  for fn in [*loaded.signatures.values(), *getattr(call, "concrete_functions", [])]:
    found.extend(fn.variables)
  return {v.name: v.numpy() for v in found}


def _moving(variables):
  return {name: value for name, value in variables.items() if "moving" in name}


def _weights(variables):
  """The trainable ones: not the moving statistics nor Keras 3's dropout seed state."""
  return {name: value for name, value in variables.items()
          if "moving" not in name and "seed_generator" not in name}


@pytest.mark.parametrize("kind", sorted(_EXPORTS))
def test_one_finetune_step_trains_in_the_mode_the_export_allows(kind, tmp_path, capsys):
  export, endpoint = _EXPORTS[kind]
  source = str(tmp_path / kind)
  export(source)
  before = _variables(source)
  assert len(_moving(before)) == 2, sorted(before)
  training_mode = endpoint is not None
  loaded = model_io.load_model(source)
  assert loaded.input_shape == (None, 8, 8, 1) and loaded.output_shape == (None, 10)
  info = model_io.describe_input(loaded, source)
  assert info["training_endpoint"] == endpoint and info["inference_mode_only"] != training_mode
  # Every weight but the moving statistics trains.
  trainable = {w.path for w in loaded.trainable_weights}
  assert len(trainable) == len(_weights(before)) and not [p for p in trainable if "moving" in p]
  # Dropout: two training-mode calls differ exactly when there is a training mode.
  x = np.random.default_rng(0).uniform(0, 1, (32, 8, 8, 1)).astype(np.float32)
  first, second = (loaded(x, training=True).numpy() for _ in range(2))
  assert (np.abs(first - second).max() > 0) == training_mode
  np.testing.assert_array_equal(loaded(x).numpy(), loaded(x).numpy())

  capsys.readouterr()
  config = config_lib.RunConfig(phase="harden", method="finetune", model_path=source,
                                workdir=str(tmp_path / "work"),
                                harden=config_lib.harden_config(steps=1, batch_size=256))
  run_dir = phases.run_harden(config)["run_dir"]
  assert ("WARNING" in capsys.readouterr().err) != training_mode
  unchanged = _variables(source)  # The input is never written to.
  assert all(np.array_equal(unchanged[k], v) for k, v in before.items())
  after = _variables(os.path.join(run_dir, "saved_model"))
  assert sorted(_weights(after)) == sorted(_weights(before))
  assert any(np.abs(after[k] - v).max() > 0 for k, v in _weights(before).items())
  for name, value in _moving(before).items():
    assert (np.abs(after[name] - value).max() > 1e-4) == training_mode, name
  summary = rundir.read_json(os.path.join(run_dir, rundir.SUMMARY_FILE))
  assert summary["harden"]["model_input"]["inference_mode_only"] != training_mode
  # The hardened export keeps a training mode where the input had one.
  hardened = model_io.load_model(run_dir)
  assert model_io.describe_input(hardened, run_dir)["training_endpoint"] == (
      "call_training" if training_mode else None)


def test_call_without_a_training_argument_runs_in_inference_mode(tmp_path):
  module = tf.Module()
  module.kernel = tf.Variable(np.ones((16, 3), np.float32))
  module.__call__ = tf.function(lambda x: tf.reshape(x, [-1, 16]) @ module.kernel,
                                input_signature=[tf.TensorSpec((None, 4, 4, 1), tf.float32)])
  path = str(tmp_path / "plain")
  tf.saved_model.save(module, path, signatures={})
  loaded = model_io.load_model(path)
  assert loaded.output_shape == (None, 3)
  assert [layer.call_endpoint for layer in model_io.savedmodel_layers(loaded)] == ["__call__"]
  assert model_io.describe_input(loaded, path)["training_endpoint"] is None
  np.testing.assert_allclose(loaded(np.ones((2, 4, 4, 1), np.float32)).numpy(), 16.0)


# -------------------------------------------------------------------------------------------------
# A SavedModel input under --strategy=mirrored: the model is loaded (and built with one batch) in
# the strategy's scope; on 2 logical CPU devices, in a fresh process (the CPU must be split before
# TensorFlow initialises its devices).

_MOTH_TINY = ("--harden_steps=10", "--warmup_steps=5", "--pair_steps=5", "--fast_steps=2",
              "--trigger_samples=4")


_MIRRORED_RUNS = [("finetune", "keras3_export"), ("moth", "keras3_export"),
                  ("finetune", "export_archive"), ("finetune", "keras2_save")]


@pytest.fixture(scope="module")
def mirrored_runs(tmp_path_factory):
  """For every (method, kind) of _MIRRORED_RUNS: the model exported as `kind`, its moving
  statistics, and `python -m moth_tf.main --phase=harden --method=METHOD --strategy=mirrored` on it,
  started at once (side by side: each process spends much of its time importing TensorFlow and
  tracing, in one thread). (method, kind) -> (the process, its workdir, its stderr file, the moving
  statistics before)."""
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=os.pathsep.join(
      p for p in (repo, os.environ.get("PYTHONPATH")) if p))
  started = {}
  try:
    for method, kind in _MIRRORED_RUNS:
      tmp_path = tmp_path_factory.mktemp(f"mirrored_{method}_{kind}")
      export, _ = _EXPORTS[kind]
      source = str(tmp_path / "model")
      export(source)
      before = _moving(_variables(source))
      workdir = str(tmp_path / "work")
      stderr = tmp_path / "stderr"
      with open(stderr, "w") as err:  # A file: no pipe fills up.
        proc = subprocess.Popen(
            [sys.executable, "-m", "moth_tf.main", "--phase=harden", f"--method={method}",
             "--dataset=digits", "--harden_batch_size=256", f"--model_path={source}",
             f"--workdir={workdir}", "--strategy=mirrored", "--cpu_devices=2",
             *(_MOTH_TINY if method == "moth" else ("--harden_steps=5",))],
            stdout=subprocess.DEVNULL, stderr=err, text=True, env=env, cwd=str(tmp_path))
      started[(method, kind)] = (proc, workdir, stderr, before)
    yield started
  finally:
    for proc, _, _, _ in started.values():
      if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("method, kind", _MIRRORED_RUNS)
def test_savedmodel_hardens_under_mirrored_strategy(mirrored_runs, method, kind):
  _, endpoint = _EXPORTS[kind]
  proc, workdir, stderr_file, before = mirrored_runs[(method, kind)]
  proc.wait(timeout=300)
  stderr = stderr_file.read_text()
  assert proc.returncode == 0, stderr[-3000:]
  assert "Traceback" not in stderr
  run_dir = os.path.join(workdir, f"digits_external_model_{method}")
  harden = rundir.read_json(os.path.join(run_dir, rundir.SUMMARY_FILE))["harden"]
  assert harden["replicas"] == 2 and harden["steps"] == (10 if method == "moth" else 5)
  assert harden["model_input"]["training_endpoint"] == endpoint
  after = _moving(_variables(os.path.join(run_dir, "saved_model")))
  for name, value in before.items():
    assert (np.abs(after[name] - value).max() > 1e-4) == (endpoint is not None), name


# -------------------------------------------------------------------------------------------------
# Run-directory files.


def test_write_json_converts_numpy_and_non_finite(tmp_path):
  path = str(tmp_path / "out.json")
  rundir.write_json(path, {
      "matrix": np.array([[np.nan, 1.5], [np.inf, 2.0]]),
      "ints": np.arange(3, dtype=np.int64),
      "scalar": np.float32(0.25), "count": np.int64(7), "flag": np.bool_(True),
      "nested": {3: [np.float64(-np.inf), (1, 2)]}, "plain_nan": float("nan"),
  })
  with open(path) as f:
    text = f.read()
  assert "NaN" not in text and "Infinity" not in text  # Strict JSON.
  loaded = json.loads(text)
  assert loaded == {
      "matrix": [[None, 1.5], [None, 2.0]], "ints": [0, 1, 2], "scalar": 0.25, "count": 7,
      "flag": True, "nested": {"3": [None, [1, 2]]}, "plain_nan": None,
  }
  assert os.listdir(tmp_path) == ["out.json"]  # No temporary file left.


def test_write_json_failure_leaves_the_old_file(tmp_path):
  path = str(tmp_path / "out.json")
  rundir.write_json(path, {"a": 1})
  with pytest.raises(TypeError):
    rundir.write_json(path, {"a": object()})
  assert rundir.read_json(path) == {"a": 1}
  assert os.listdir(tmp_path) == ["out.json"]


def test_update_summary_merges_nested_dicts(tmp_path):
  run_dir = str(tmp_path)
  rundir.update_summary(run_dir, test_accuracy=0.5, train={"epochs": 2, "seconds": 1.0})
  summary = rundir.update_summary(run_dir, train={"seconds": 3.0}, test={"images": 10},
                                  test_accuracy=0.75)
  expected = {"test_accuracy": 0.75, "train": {"epochs": 2, "seconds": 3.0},
              "test": {"images": 10}}
  assert summary == expected
  assert rundir.read_json(os.path.join(run_dir, rundir.SUMMARY_FILE)) == expected
  # A non-dict value replaces a dict (and vice versa).
  assert rundir.update_summary(run_dir, train=None)["train"] is None
