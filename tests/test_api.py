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
from moth_tf import inputs
from moth_tf import logits
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
  assert set(out) == {"HardenResults", "HardeningModel", "backdoor_metrics", "class_distance",
                      "detect_backdoor", "harden", "hardening_model"}
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


def test_harden_a_stream_with_a_workdir(digits, logits_model, tmp_path):
  # A batched dataset is streamed: re-batched to the config's 128, exactly `steps` steps, and only
  # its per-class sample in memory; accuracy on `test` (a stream has no split to hold out).
  train = tf.data.Dataset.from_tensor_slices((digits.x_train, digits.y_train)).batch(100)
  hardened, results = moth_tf.harden(logits_model, train, method="finetune", config={"steps": 13},
                                     test=(digits.x_test, digits.y_test), workdir=str(tmp_path),
                                     verbose=0)
  assert results.accuracy_split == "test" and results.steps == 13
  assert results.raw["streamed"] is True
  assert os.path.isdir(tmp_path / "logs")
  assert hardened.output_shape == (None, 10)


def test_harden_arrays_without_val_hold_out_a_split(digits, logits_model):
  _, results = moth_tf.harden(logits_model, (digits.x_train, digits.y_train), method="finetune",
                              config={"steps": 9}, verbose=0)
  # 10% of the 1,257 training images, stratified: 1,131 are trained on (9 steps per epoch).
  assert results.accuracy_split == "val" and results.steps == 9
  assert results.raw["steps_per_epoch"] == 9 and results.raw["streamed"] is False


def test_dataset_inputs_become_the_same_arrays(digits):
  x, y = digits.x_val, digits.y_val
  for ds in (tf.data.Dataset.from_tensor_slices((x, y)),
             tf.data.Dataset.from_tensor_slices((x, y)).batch(7)):
    got_x, got_y = inputs.arrays(ds, "train")
    np.testing.assert_array_equal(got_x, x)
    np.testing.assert_array_equal(got_y, y)


def test_harden_a_savedmodel_path(digits, logits_model, tmp_path):
  path = str(tmp_path / "exported")
  logits_model.export(path, verbose=False)
  hardened, results = moth_tf.harden(path, (digits.x_train, digits.y_train), config=TINY,
                                     verbose=0)
  assert results.outputs == "logits" and results.steps == 20  # Exactly the budget.
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
  assert logits.output_form(loaded, "auto", digits.x_val) == "probabilities"
  assert logits.output_form(loaded, "logits", digits.x_val) == "logits"
  assert logits.output_form(softmax_model, "auto", digits.x_val) == "softmax_activation"
  # The logits view is the log of the probabilities: same ranking, and the copy is separate.
  view = logits.logits_model(loaded, "probabilities", copy=False)
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
       match="no validation split to hold out; pass val= or test=")
  _bad(harden, logits_model, (x, y), val=tf.data.Dataset.from_tensor_slices((x, y)).repeat(),
       match="val: the tf.data.Dataset is endless")
  _bad(harden, logits_model, tf.data.Dataset.from_tensor_slices(((x * 255).astype(np.uint8), y)),
       test=(x, y), match=r"uint8 \(0\.\.255\); map them")
  _bad(harden, logits_model, tf.data.Dataset.from_tensor_slices((x * 2, y)), test=(x, y),
       match=r"stream's images span \[0, 2\], outside \[0, 1\]")
  _bad(harden, logits_model, tf.data.Dataset.from_tensor_slices({"image": x, "label": y}),
       match=r"map it to \(image, label\) first")
  _bad(harden, logits_model, x, match=r"\(images, labels\) tuple")
  _bad(moth_tf.class_distance, logits_model, x, y, steps=0, match="steps must be >= 1")
  _bad(moth_tf.class_distance, logits_model, x, y, num_classes=5, match="num_classes=5")
  _bad(moth_tf.detect_backdoor, logits_model, x, y, config={"thresh": 1}, match="'thresh'")
  _bad(moth_tf.backdoor_metrics, logits_model, x, y, trigger=3, match="trigger must be")


# --- Hardening in the user's own compile/fit, any Keras model, streams -------------------------

# A few steps of MOTH with trigger generation cut to a minimum: the plumbing, not the hardening.
MINI = dict(warmup_steps=5, pair_steps=5, fast_steps=3, trigger_samples=5, period=3)


class SubclassedNet(keras.Model):
  """A subclassed classifier, as research code writes them (no input shape of its own)."""

  def __init__(self, classes=10, width=16, **kwargs):
    super().__init__(**kwargs)
    self.classes, self.width = classes, width
    self.conv = keras.layers.Conv2D(width, 3, activation="relu")
    self.flat = keras.layers.Flatten()
    self.out = keras.layers.Dense(classes)

  def call(self, x):
    return self.out(self.flat(self.conv(x)))


class OpaqueNet(SubclassedNet):
  """A subclassed classifier that Keras can neither rebuild from its config nor reload."""

  def __init__(self, layer_factory):
    super().__init__()
    self.factory = layer_factory  # Not serialisable: get_config cannot record it.


@pytest.fixture(scope="module")
def subclassed_model(digits):
  keras.utils.set_random_seed(2)
  return _fit(SubclassedNet(), digits.x_train, digits.y_train, epochs=10)


@pytest.fixture(scope="module")
def functional_model(logits_model):
  inputs = keras.Input((8, 8, 1))
  model = keras.Model(inputs, logits_model(inputs))  # A functional model around the Sequential.
  return model


# Sequential: test_harden_arrays_copies_the_model.
@pytest.mark.parametrize("kind", ["functional", "subclassed"])
def test_harden_any_keras_model(digits, functional_model, subclassed_model, kind):
  model = {"functional": functional_model, "subclassed": subclassed_model}[kind]
  before = _weights(model)
  hardened, results = moth_tf.harden(model, (digits.x_train, digits.y_train),
                                     (digits.x_val, digits.y_val), config=dict(MINI, steps=12),
                                     verbose=0)
  assert _same(_weights(model), before) and hardened is not model  # A copy was hardened.
  assert type(hardened) is type(model)
  # 10 warm-up steps (one per class), then pair triggers.
  assert results.steps == 12 and results.outputs == "logits"
  assert results.raw["events"]["generations"] > 0  # Triggers were generated and stamped.
  assert not _same(_weights(hardened), before)


def test_a_model_that_cannot_be_copied_is_hardened_in_place_only_when_asked(digits):
  keras.utils.set_random_seed(3)
  model = OpaqueNet(lambda: None)
  model(digits.x_train[:1])
  _bad(moth_tf.harden, model, (digits.x_train, digits.y_train), config=dict(MINI, steps=3),
       verbose=0, match=r"cannot copy the subclassed model OpaqueNet .* pass in_place=True")
  before = _weights(model)
  hardened, results = moth_tf.harden(model, (digits.x_train, digits.y_train),
                                     config=dict(MINI, steps=3), verbose=0, in_place=True)
  assert hardened is model and results.steps == 3 and not _same(_weights(model), before)


def test_an_unbuilt_model_is_refused_with_the_real_cause(digits):
  _bad(moth_tf.harden, SubclassedNet(), (digits.x_train, digits.y_train),
       match=r"has no weights yet \(never built, called or trained\)")


class _Record(keras.callbacks.Callback):
  """What a user's callback sees: every epoch's logs, the running stamped count per step and
  whether the step was to perturb (the model's switch, set by its driver before the step)."""

  def __init__(self):
    super().__init__()
    self.epochs, self.stamped, self.perturbing = [], [], []

  def on_train_batch_begin(self, batch, logs=None):
    self.perturbing.append(int(self.model.perturbing.numpy()))

  def on_train_batch_end(self, batch, logs=None):
    self.stamped.append(float(logs["stamped"]))

  def on_epoch_end(self, epoch, logs=None):
    self.epochs.append(epoch)


def test_hardening_model_in_the_users_own_fit(digits, logits_model, tmp_path):
  classifier = keras.models.clone_model(logits_model)
  classifier.set_weights(logits_model.get_weights())
  train = tf.data.Dataset.from_tensor_slices((digits.x_train, digits.y_train))
  # Warm-up triggers long enough to succeed, so the first stamping step stamps.
  wrapped = moth_tf.hardening_model(classifier, samples=train, config=dict(MINI, warmup_steps=20),
                                    start_step=4,
                                    log_dir=str(tmp_path / "driver"), verbose=0)
  assert isinstance(wrapped, moth_tf.HardeningModel) and wrapped.classifier is classifier
  optimizer = keras.optimizers.Adam(1e-3)
  wrapped.compile(optimizer=optimizer, metrics=["accuracy"])
  record = _Record()
  checkpoint = str(tmp_path / "ckpt.weights.h5")
  # An endless stream, the length set by steps_per_epoch; the user's callbacks join.
  history = wrapped.fit(train.shuffle(500, seed=0).repeat().batch(64), epochs=3,
                        steps_per_epoch=4, verbose=0,
                        callbacks=[record, keras.callbacks.ModelCheckpoint(
                            checkpoint, save_weights_only=True)])
  assert wrapped.optimizer is optimizer and int(optimizer.iterations.numpy()) == 12
  assert record.epochs == [0, 1, 2] and len(history.history["loss"]) == 3
  # Epoch 0's running mean of stamped images is 0 for exactly its first 4 steps: stamping starts
  # at step 4, the start of epoch 1, with the warm-up's universal triggers.
  assert record.perturbing == [0] * 4 + [1] * 8
  assert record.stamped[:4] == [0.0] * 4 and record.stamped[4] > 0
  assert wrapped.hardener.step == 8 and os.path.exists(checkpoint)
  assert os.listdir(tmp_path / "driver")  # The driver's TensorBoard events.
  # The hardened classifier is the user's plain model: saved, it names nothing of moth_tf.
  path = str(tmp_path / "hardened.keras")
  classifier.save(path)
  import zipfile
  with zipfile.ZipFile(path) as archive:
    assert "moth_tf" not in archive.read("config.json").decode()


def test_hardening_model_refusals(digits, logits_model):
  x, y = digits.x_train, digits.y_train
  _bad(moth_tf.hardening_model, logits_model, "nad", (x, y),
       match=r"method 'nad' runs several fits of its own .* moth_tf.harden")
  _bad(moth_tf.hardening_model, logits_model, "moth",
       match=r"generates triggers on training images: pass samples=")
  _bad(moth_tf.hardening_model, logits_model, "moth", (x, np.where(y == 3, 4, y)),
       match=r"no image of class\(es\) 3; every class needs some")
  _bad(moth_tf.hardening_model, logits_model, "moth", (x, y), start_step=-1,
       match=r"start_step=-1")
  _bad(moth_tf.hardening_model, logits_model, "moth", (x * 255, y),
       match=r"samples: image values span \[0, 255\], outside \[0, 1\]")
  _bad(moth_tf.hardening_model, logits_model, "moth", (x, y + 1),
       match=r"samples: labels span 1\.\.10, outside the classifier's classes 0\.\.9")
  _bad(moth_tf.hardening_model, object(), "finetune",
       match=r"classifier must be a keras.Model or the path")
  # finetune needs no trigger images, and its steps are the user's.
  wrapped = moth_tf.hardening_model(logits_model, "finetune")
  assert wrapped.image_shape == (8, 8, 1) and wrapped.num_classes == 10


def test_a_generator_stream_is_read_only_as_far_as_the_run_needs(digits, logits_model):
  read = []

  def endless():
    rng = np.random.default_rng(0)
    while True:  # An endless generator: only what 10 steps and the trigger sample need is read.
      i = int(rng.integers(len(digits.y_train)))
      read.append(i)
      yield digits.x_train[i], digits.y_train[i]

  spec = (tf.TensorSpec((8, 8, 1), tf.float32), tf.TensorSpec((), tf.int64))
  train = tf.data.Dataset.from_generator(endless, output_signature=spec)
  _, results = moth_tf.harden(logits_model, train, test=(digits.x_test, digits.y_test),
                              config=dict(MINI, steps=10, batch_size=32, trigger_pool=6),
                              verbose=0)
  assert results.steps == 10 and results.raw["streamed"]
  # The sample (6 per class: ~60-120 images) plus 10 batches of 32 and a few batches read ahead.
  assert 10 * 32 < len(read) < 10 * 32 + 400, len(read)


def test_the_users_fit_with_the_recipe_is_the_same_run_as_harden(digits, logits_model):
  # moth_tf.harden and --phase=harden are this model fitted with the recipe: the same steps on
  # the same seeded batches give the same weights, to the bit.
  config = dict(MINI, steps=20)  # 2 epochs of 10 steps on the 1,257 training images.
  hardened, results = moth_tf.harden(logits_model, (digits.x_train, digits.y_train),
                                     (digits.x_val, digits.y_val), config=config, verbose=0)
  keras.utils.set_random_seed(0)
  classifier = keras.models.clone_model(logits_model)
  classifier.set_weights(logits_model.get_weights())
  wrapped = moth_tf.hardening_model(classifier, samples=(digits.x_train, digits.y_train),
                                    config=config, verbose=0)
  wrapped.compile()  # The recipe's optimizer and schedule.
  batches = data_lib.make_pipeline(digits.x_train, digits.y_train, 128, shuffle=True, seed=0,
                                   repeat=True)
  wrapped.fit(batches, epochs=2, steps_per_epoch=10, verbose=0)
  assert results.steps == 20 and wrapped.hardener.step == 20
  assert _same(_weights(hardened), _weights(classifier))


def test_hardening_model_built_in_the_users_strategy_scope(digits, logits_model):
  strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
  with strategy.scope():  # As for any Keras model: built and compiled in the scope.
    classifier = keras.models.clone_model(logits_model)
    classifier.set_weights(logits_model.get_weights())
    wrapped = moth_tf.hardening_model(classifier, samples=(digits.x_train, digits.y_train),
                                      config=MINI, verbose=0)
    wrapped.compile(optimizer=keras.optimizers.SGD(0.01))
  batches = data_lib.make_pipeline(digits.x_train, digits.y_train, 64, shuffle=True, repeat=True)
  wrapped.fit(batches, epochs=1, steps_per_epoch=12, verbose=0)
  assert wrapped.distribute_strategy is strategy and wrapped.hardener.step == 12
  assert isinstance(classifier.trainable_variables[0].value, tf.distribute.DistributedValues)


def test_a_subclassed_model_hardens_in_the_users_own_fit(digits, subclassed_model):
  classifier = SubclassedNet.from_config(subclassed_model.get_config())
  classifier(digits.x_train[:1])
  classifier.set_weights(subclassed_model.get_weights())
  # No input or output shape of its own: both are taken from the samples.
  wrapped = moth_tf.hardening_model(classifier, samples=(digits.x_train, digits.y_train),
                                    config=MINI, verbose=0)
  assert wrapped.image_shape == (8, 8, 1) and wrapped.num_classes == 10
  wrapped.compile()
  wrapped.fit(tf.data.Dataset.from_tensor_slices((digits.x_train, digits.y_train)).repeat()
              .batch(64), epochs=1, steps_per_epoch=12, verbose=0)
  assert wrapped.hardener.events["generations"] > 0
  assert not _same(_weights(classifier), _weights(subclassed_model))


def test_a_stream_run_resumes_at_its_last_finished_epoch(digits, logits_model, tmp_path,
                                                        monkeypatch, capsys):
  from moth_tf.hardening import callbacks

  class Interrupted(Exception):
    pass

  def interrupt(self, epoch, logs=None):
    if epoch == 1:
      raise Interrupted("killed at the start of epoch 2")

  # An unbatched dataset of known size: epochs of 10 steps (1,257 images in batches of 128).
  train = tf.data.Dataset.from_tensor_slices((digits.x_train, digits.y_train))
  config = dict(MINI, steps=20)
  test = (digits.x_test, digits.y_test)
  monkeypatch.setattr(callbacks.MothCallback, "on_epoch_begin", interrupt, raising=False)
  with pytest.raises(Interrupted):
    moth_tf.harden(logits_model, train, test=test, config=config, workdir=str(tmp_path),
                   verbose=0)
  monkeypatch.undo()
  capsys.readouterr()
  _, results = moth_tf.harden(logits_model, train, test=test, config=config,
                              workdir=str(tmp_path), verbose=2)
  out = capsys.readouterr().out
  assert "resumed at step 10" in out and "MOTH warm-up" not in out  # The driver's state too.
  assert results.steps == 20 and results.raw["streamed"]
  assert not os.path.exists(tmp_path / "backup_harden")
