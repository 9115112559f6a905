"""Tests of the Python API (moth_tf.harden, class_distance, detect_backdoor, backdoor_metrics) on
digits, with Keras models built here as a user would, not by moth_tf.

Every run is tiny (20 hardening steps, a few distance steps on a few images): these tests check the
plumbing (inputs, copies, softmax handling, results), not how much the model hardens.
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import moth_tf
from moth_tf import api
from moth_tf import data as data_lib
from moth_tf.attacks import backdoor
from moth_tf.models import io as model_io

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 20 steps (2 epochs of 9 on 1,131 images), with trigger generation cut to match.
TINY = dict(steps=20, warmup_steps=20, pair_steps=20, fast_steps=5, trigger_samples=8)


def _cnn(last_activation=None, softmax_layer=False):
  layers = [keras.Input((8, 8, 1)), keras.layers.Conv2D(16, 3, activation="relu"),
            keras.layers.Flatten(), keras.layers.Dense(10, activation=last_activation)]
  if softmax_layer:
    layers.append(keras.layers.Softmax())
  return keras.Sequential(layers)


def _fit(model, x, y, epochs=15, from_logits=True):
  model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits),
                metrics=["accuracy"])
  model.fit(x, y, batch_size=64, epochs=epochs, verbose=0)
  return model


@pytest.fixture(scope="module")
def digits():
  return data_lib.load_dataset("digits")


@pytest.fixture(scope="module")
def logits_model(digits):
  keras.utils.set_random_seed(0)
  return _fit(_cnn(), digits.x_train, digits.y_train)


@pytest.fixture(scope="module")
def softmax_model(digits):
  keras.utils.set_random_seed(1)
  return _fit(_cnn("softmax"), digits.x_train, digits.y_train, from_logits=False)


def _weights(model):
  return [w.copy() for w in model.get_weights()]


def _same(a, b):
  return len(a) == len(b) and all(np.array_equal(u, v) for u, v in zip(a, b))


def test_import_is_cheap_and_lists_the_api():
  code = ("import sys, moth_tf; names = dir(moth_tf); "
          "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'imported'; "
          "print(' '.join(n for n in names if not n.startswith('_')))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=_REPO,
                       env={**os.environ, "PYTHONPATH": _REPO}, check=True).stdout.split()
  assert set(out) == {"HardenResults", "backdoor_metrics", "class_distance", "detect_backdoor",
                      "harden"}
  for name in out:
    assert getattr(moth_tf, name).__doc__


def test_harden_arrays_copies_the_model(digits, logits_model, tmp_path, monkeypatch):
  monkeypatch.setattr("tempfile.tempdir", str(tmp_path))  # Where the run's temporary folder goes.
  before = _weights(logits_model)
  hardened, results = moth_tf.harden(logits_model, (digits.x_train, digits.y_train),
                                     (digits.x_val, digits.y_val),
                                     test=(digits.x_test, digits.y_test), config=TINY, verbose=0)
  assert _same(_weights(logits_model), before)  # The input is never modified.
  assert hardened is not logits_model and not _same(_weights(hardened), before)
  assert isinstance(results, moth_tf.HardenResults)
  assert results.method == "moth" and results.accuracy_split == "test"
  assert results.steps == 20 and results.outputs == "logits"  # 2 epochs of 10 on 1,257 images.
  assert results.config.steps == 20 and results.config.moth.period == 6  # MOTH's recipe, then TINY.
  assert 0.8 < results.test_accuracy_before <= 1 and 0.5 < results.test_accuracy_after <= 1
  assert results.test_accuracy_after == pytest.approx(
      float(np.mean(np.argmax(hardened.predict(digits.x_test, verbose=0), 1) == digits.y_test)))
  assert results.raw["wall_seconds"] == results.wall_seconds > 0
  assert results.workdir is None  # Its temporary folder is gone.
  assert not [name for name in os.listdir(tmp_path) if name.startswith("moth_tf_")]
  assert "test accuracy" in str(results)


def test_harden_a_dataset_with_a_workdir_and_a_held_out_split(digits, logits_model, tmp_path):
  train = tf.data.Dataset.from_tensor_slices((digits.x_train, digits.y_train)).batch(100)
  hardened, results = moth_tf.harden(logits_model, train, method="finetune", config={"steps": 10},
                                     workdir=str(tmp_path), verbose=0)
  # No val: 10% of the 1,257 training images, stratified, so 1,131 are trained on (9 steps/epoch).
  assert results.accuracy_split == "val" and results.steps == 9
  assert os.path.isdir(tmp_path / "logs")
  assert hardened.output_shape == (None, 10)


def test_dataset_inputs_become_the_same_arrays(digits):
  x, y = digits.x_val, digits.y_val
  for ds in (tf.data.Dataset.from_tensor_slices((x, y)),
             tf.data.Dataset.from_tensor_slices((x, y)).batch(7)):
    got_x, got_y = api._arrays(ds, "train")
    np.testing.assert_array_equal(got_x, x)
    np.testing.assert_array_equal(got_y, y)


def test_harden_a_savedmodel_path(digits, logits_model, tmp_path):
  path = str(tmp_path / "exported")
  logits_model.export(path, verbose=False)
  hardened, results = moth_tf.harden(path, (digits.x_train, digits.y_train), config=TINY,
                                     verbose=0)
  assert results.outputs == "logits" and results.steps == 18
  assert os.listdir(path)  # Still there, untouched; the hardened copy is in memory.
  assert hardened.predict(digits.x_test[:4], verbose=0).shape == (4, 10)


@pytest.mark.parametrize("softmax_layer", [False, True])
def test_a_softmax_model_is_hardened_as_logits_and_returned_with_its_softmax(
    digits, softmax_model, softmax_layer):
  model = softmax_model
  if softmax_layer:  # The same classifier with a Softmax layer instead of the activation.
    model = _cnn(softmax_layer=True)
    model.set_weights(softmax_model.get_weights())
  before = _weights(model)
  hardened, results = moth_tf.harden(model, (digits.x_train, digits.y_train),
                                     test=(digits.x_test, digits.y_test), config=TINY, verbose=0)
  assert results.outputs == ("softmax_layer" if softmax_layer else "softmax_activation")
  assert "softmax" in results.note.lower()
  assert _same(_weights(model), before)
  assert type(hardened.layers[-1]) is type(model.layers[-1])  # pylint: disable=unidiomatic-typecheck
  probabilities = hardened.predict(digits.x_test, verbose=0)
  np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
  assert results.test_accuracy_after == pytest.approx(
      float(np.mean(probabilities.argmax(1) == digits.y_test)))


def test_outputs_auto_reads_probabilities_without_a_softmax_layer(digits, softmax_model, tmp_path):
  path = str(tmp_path / "probabilities")
  softmax_model.export(path, verbose=False)
  loaded = model_io.load_model(path)
  assert api._output_form(loaded, "auto", digits.x_val) == "probabilities"
  assert api._output_form(loaded, "logits", digits.x_val) == "logits"
  assert api._output_form(softmax_model, "auto", digits.x_val) == "softmax_activation"
  # The logits view is the log of the probabilities: same ranking, and the copy is separate.
  view = api._logits_model(loaded, "probabilities", copy=False)
  np.testing.assert_allclose(np.exp(view.predict(digits.x_val[:8], verbose=0)),
                             loaded.predict(digits.x_val[:8], verbose=0), rtol=1e-4, atol=1e-6)
  result = moth_tf.class_distance(path, digits.x_val, digits.y_val, samples=5, steps=10, seeds=1,
                                  pairs=[(0, 1)], verbose=0)
  assert result.pairs == [(0, 1)]


def test_class_distance_matrix(digits, logits_model):
  result = moth_tf.class_distance(logits_model, digits.x_val, digits.y_val, samples=5, steps=20,
                                  seeds=1, verbose=0)
  assert result.matrix.shape == (10, 10) and len(result.pairs) == 90
  assert np.isnan(np.diag(result.matrix)).all()
  assert np.isfinite(result.mean) and result.seeds == (1024,)
  assert isinstance(result.failures, list)


@pytest.fixture(scope="module")
def poisoned(digits):
  """A BadNets digits model: a 3x3 white patch bottom right sends 10% of the images to 0."""
  trigger = backdoor.make_trigger("patch", digits.image_shape, 10, target=0, size=3)
  x, y, _ = backdoor.poison_training_set(digits.x_train, digits.y_train, trigger, 10, 0.1)
  keras.utils.set_random_seed(2)
  return _fit(_cnn(), x, y, epochs=20), trigger


def test_detect_backdoor_flags_the_target(digits, poisoned):
  model, trigger = poisoned
  found = moth_tf.detect_backdoor(model, digits.x_val, digits.y_val,
                                  config={"steps": 300, "samples": 30}, verbose=0)
  assert found.l1_norms.shape == (10,)
  # On 8x8 digits the 3x3 patch is a seventh of the image, so the target's reversed trigger is an
  # outlier by a small margin (anomaly index ~2.6 against the threshold 2).
  assert np.nanargmin(found.l1_norms) == trigger.target
  assert found.flagged == [trigger.target]


def test_backdoor_metrics_take_a_trigger_a_path_or_arrays(digits, poisoned, tmp_path):
  model, trigger = poisoned
  metrics = moth_tf.backdoor_metrics(model, digits.x_test, digits.y_test, trigger)
  assert metrics["asr"] > 0.8 and metrics["c_acc"] > 0.8
  backdoor.save_trigger(trigger, str(tmp_path))
  assert moth_tf.backdoor_metrics(model, digits.x_test, digits.y_test, str(tmp_path)) == metrics
  arrays = (trigger.mask[..., 0], trigger.pattern, trigger.target)
  assert moth_tf.backdoor_metrics(model, digits.x_test, digits.y_test, arrays) == metrics
  with pytest.raises(ValueError, match="do not fit"):
    moth_tf.backdoor_metrics(model, digits.x_test, digits.y_test,
                             (np.ones((4, 4)), np.ones((4, 4, 1)), 0))


def _bad(call, *args, match, **kwargs):
  with pytest.raises(ValueError, match=match) as info:
    call(*args, **kwargs)
  assert "\n" not in str(info.value)


def test_bad_input_is_one_line(digits, logits_model):
  x, y = digits.x_val, digits.y_val
  harden = moth_tf.harden
  _bad(harden, logits_model, (x[..., 0], y), match=r"not 4-d .*x\[\.\.\., None\]")
  _bad(harden, logits_model, (np.zeros((4, 9, 9, 1), np.float32), y[:4]), match="model takes")
  _bad(harden, logits_model, (x, y[:-1]), match="labels of shape")
  _bad(harden, logits_model, (x, y + 10), match=r"outside the model's classes 0\.\.9")
  _bad(harden, logits_model, (x, np.eye(10)[y]), match="one-hot")
  _bad(harden, logits_model, (x * 255, y), match=r"outside \[0, 1\]; scale")
  _bad(harden, logits_model, ((x * 255).astype(np.uint8), y), match="uint8")
  _bad(harden, logits_model, (x, y), method="magic", match="unknown hardening method 'magic'")
  _bad(harden, logits_model, (x, y), config={"stepz": 5},
       match=r"unknown hardening setting 'stepz' \(did you mean 'steps'\?\); valid settings: "
             "epochs, steps")
  _bad(harden, logits_model, (x, y), config={"nc": {"stepz": 5}},
       match="unknown Neural Cleanse setting 'stepz'")
  _bad(harden, logits_model, (x, y), outputs="scores", match="outputs='scores'")
  _bad(harden, "no/such/model.keras", (x, y), match="does not exist")
  _bad(harden, object(), (x, y), match="must be a keras.Model or the path")
  _bad(harden, logits_model, tf.data.Dataset.from_tensor_slices((x, y)).repeat(),
       match="infinite")
  _bad(harden, logits_model, x, match=r"\(images, labels\) tuple")
  _bad(moth_tf.class_distance, logits_model, x, y, steps=0, match="steps must be >= 1")
  _bad(moth_tf.class_distance, logits_model, x, y, num_classes=5, match="num_classes=5")
  _bad(moth_tf.detect_backdoor, logits_model, x, y, config={"thresh": 1}, match="'thresh'")
  _bad(moth_tf.backdoor_metrics, logits_model, x, y, trigger=3, match="trigger must be")
