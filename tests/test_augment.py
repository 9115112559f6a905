"""Training-time augmentation (moth_tf.data.augment): the recipes, where they apply, the record."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from moth_tf import config as config_lib
from moth_tf import data as data_lib
from moth_tf import training
from moth_tf.baselines import nc
from moth_tf.data import augment
from moth_tf.hardening import fitting
import cli_testing  # pylint: disable=g-bad-import-order


def _dot_images(count, side=6):
  """Images that are zero but for one bright pixel at (2, 3)."""
  x = np.zeros((count, side, side, 1), np.float32)
  x[:, 2, 3, 0] = 1.0
  return x


def _shift_of(image):
  (row, col), = np.argwhere(image[..., 0] > 0.5)
  return row - 2, col - 3


# ---------------------------------------------------------------------------------------------
# The recipes.


def test_crop_shifts_each_image_by_whole_pixels_within_the_padding_and_fills_zeros():
  x = _dot_images(64)
  out = augment.augment_batch(tf.constant(x), augment.Augmentation("crop", 2),
                              tf.constant([0, 1])).numpy()
  shifts = [_shift_of(image) for image in out]
  assert all(abs(dy) <= 2 and abs(dx) <= 2 for dy, dx in shifts)
  assert len(set(shifts)) > 10  # Each image draws its own shift (Keras's RandomCrop would not).
  np.testing.assert_array_equal(out.sum(axis=(1, 2, 3)), 1.0)  # Exact pixels, nothing blurred.
  # Content shifted out leaves zeros behind: a full image shifted down has an empty first row.
  full = augment.augment_batch(tf.ones([32, 6, 6, 1]), augment.Augmentation("crop", 2),
                               tf.constant([0, 2])).numpy()
  assert full.min() == 0.0 and full.max() == 1.0
  assert np.all(np.isin(full, [0.0, 1.0]))


def test_flip_mirrors_about_half_of_the_images_and_nothing_else():
  x = _dot_images(200)
  out = augment.augment_batch(tf.constant(x), augment.Augmentation("flip"),
                              tf.constant([0, 3])).numpy()
  shifts = [_shift_of(image) for image in out]
  flipped = sum(shift == (0, (6 - 1 - 3) - 3) for shift in shifts)
  assert set(shifts) == {(0, 0), (0, -1)}  # Column 3 mirrors to column 2 on a 6-wide image.
  assert 70 < flipped < 130


def test_shift_is_continuous_and_stays_in_range():
  x = np.full((16, 8, 8, 1), 0.5, np.float32)
  out = augment.augment_batch(tf.constant(x), augment.Augmentation("shift", 2),
                              tf.constant([0, 4])).numpy()
  assert out.min() >= 0.0 and out.max() <= 0.5 + 1e-6
  assert np.any(out == 0.0)  # Zero fill.


def test_the_same_seed_gives_the_same_batch_and_another_seed_another():
  x = tf.random.stateless_uniform([16, 8, 8, 3], [1, 2])
  recipe = augment.Augmentation("crop_flip", 2)
  a = augment.augment_batch(x, recipe, tf.constant([5, 0])).numpy()
  b = augment.augment_batch(x, recipe, tf.constant([5, 0])).numpy()
  c = augment.augment_batch(x, recipe, tf.constant([5, 1])).numpy()
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_none_is_the_identity():
  x = tf.random.stateless_uniform([4, 8, 8, 1], [1, 2])
  assert augment.augment_batch(x, augment.NONE, tf.constant([0, 0])) is x


@pytest.mark.parametrize("recipe,pad,message", [
    ("rotate", 2, "--augment='rotate'"), ("crop", 0, "--augment_pad >= 1"),
    ("flip", -1, "--augment_pad=-1")])
def test_bad_recipes_are_refused_in_one_line(recipe, pad, message):
  with pytest.raises(ValueError, match=message.replace("(", r"\(")):
    augment.Augmentation(recipe, pad)


def test_data_set_defaults_and_resolution():
  assert data_lib.dataset_info("cifar10").augment == augment.Augmentation("shift_flip", 4)
  assert data_lib.dataset_info("fashion_mnist").augment == augment.Augmentation("crop_flip", 2)
  for name in ("digits", "svhn", "gtsrb", "lisa"):
    assert not data_lib.dataset_info(name).augment.active
  fashion = data_lib.dataset_info("fashion_mnist").augment
  assert augment.resolve(fashion) == fashion
  assert augment.resolve(fashion, "default", 3) == augment.Augmentation("crop_flip", 3)
  assert augment.resolve(fashion, "none") == augment.NONE
  # A data set without a default shift gets an eighth of its side: 1 px on 8x8 digits.
  assert augment.resolve(augment.NONE, "crop", image_side=8) == augment.Augmentation("crop", 1)
  assert augment.resolve(augment.NONE, "flip").pad == 0


# ---------------------------------------------------------------------------------------------
# The pipeline: resumable, training batches only.


def test_a_resumed_stream_draws_the_same_augmented_batches():
  rng = np.random.default_rng(0)
  x = rng.random((40, 6, 6, 1)).astype(np.float32)
  y = np.arange(40) % 3
  recipe = augment.Augmentation("crop_flip", 1)
  full = [b[0].numpy() for b in data_lib.make_pipeline(
      x, y, 8, shuffle=True, augment=recipe, seed=3, repeat=True).take(10)]
  resumed = [b[0].numpy() for b in data_lib.make_pipeline(
      x, y, 8, shuffle=True, augment=recipe, seed=3, repeat=True, skip_batches=6).take(4)]
  for a, b in zip(full[6:], resumed):
    np.testing.assert_array_equal(a, b)
  plain = [b[0].numpy() for b in data_lib.make_pipeline(
      x, y, 8, shuffle=True, seed=3, repeat=True).take(10)]
  assert not np.array_equal(full[0], plain[0])  # It did augment.


def _tiny_splits(recipe):
  rng = np.random.default_rng(1)
  x = rng.random((48, 8, 8, 1)).astype(np.float32)
  y = np.arange(48) % 10
  return data_lib.DatasetSplits(data_lib.dataset_info("digits"), x, y, x[:10], y[:10], x[:10],
                                y[:10], augmentation=recipe)


@pytest.fixture(name="pipelines")
def _pipelines(monkeypatch):
  """Records the `augment` argument of every pipeline a fit builds."""
  calls = []
  real = data_lib.make_pipeline

  def spy(x, y, batch_size, **kwargs):
    calls.append((len(x), kwargs.get("augment")))
    return real(x, y, batch_size, **kwargs)

  monkeypatch.setattr(data_lib, "make_pipeline", spy)
  return calls


def test_base_training_augments_its_training_batches_only(pipelines, tmp_path):
  recipe = augment.Augmentation("crop", 1)
  splits = _tiny_splits(recipe)
  training.train_natural("lenet", splits, config_lib.TrainConfig(epochs=1, batch_size=16),
                         str(tmp_path), tf.distribute.get_strategy(), verbose=0)
  assert (48, recipe) in pipelines
  assert all(aug is None for n, aug in pipelines if n != 48)  # Validation: never.


def test_stamping_happens_after_augmentation(pipelines, tmp_path):
  """A trigger in the corner of every training image stays exactly in place: the step stamps the
  augmented batch (augmenting after stamping would shift or mirror it)."""
  recipe = augment.Augmentation("crop_flip", 2)
  splits = _tiny_splits(recipe)
  seen = []

  class Recorder(keras.layers.Layer):
    def call(self, x, training=False):
      if training:
        seen.append(x)
      return x

  inputs = keras.Input((8, 8, 1))
  flat = keras.layers.Flatten()(Recorder()(inputs))
  classifier = keras.Model(inputs, keras.layers.Dense(10)(flat))
  mask = np.zeros((1, 8, 8), np.float32)
  mask[0, :2, :2] = 1.0
  pattern = np.full((1, 8, 8, 1), 0.75, np.float32)
  config = config_lib.harden_config(steps=1, batch_size=16, lr_warmup_steps=0)

  def make_model():
    return nc.TriggerUnlearningModel(classifier, 10, mask, pattern, share=1.0)

  model = fitting.build_hardening_model(tf.distribute.get_strategy(), make_model, config, 48,
                                        splits.x_train[:1])
  model.run_eagerly = True  # So the recorder sees the values.
  fitting.fit_hardening(model, splits, config, str(tmp_path), epochs=1, verbose=0)
  assert (48, recipe) in pipelines
  batch = np.asarray(seen[0])
  assert batch.shape[0] == 16
  np.testing.assert_array_equal(batch[:, :2, :2, 0], 0.75)  # The trigger, in place.
  originals = {row.tobytes() for row in splits.x_train[:, 2:, 2:]}
  moved = sum(image[2:, 2:].tobytes() not in originals for image in batch)
  assert moved > 8  # ... on images that augmentation moved.


# ---------------------------------------------------------------------------------------------
# The run setting: flags, summary.json, HParams.


def test_the_flags_resolve_to_a_concrete_recipe():
  config = cli_testing.parsed_config("--dataset=fashion_mnist")
  assert (config.data.augment, config.data.augment_pad) == ("crop_flip", 2)
  config = cli_testing.parsed_config("--dataset=digits")
  assert (config.data.augment, config.data.augment_pad) == ("none", 0)
  config = cli_testing.parsed_config("--dataset=digits", "--augment=crop")
  assert (config.data.augment, config.data.augment_pad) == ("crop", 1)
  config = cli_testing.parsed_config("--dataset=cifar10", "--augment=flip")
  assert (config.data.augment, config.data.augment_pad) == ("flip", 0)


def test_bad_augment_flag_is_one_line(capsys):
  cli_testing.define_flags_once()
  with pytest.raises(SystemExit):
    from moth_tf.cli import main as main_lib
    from absl.testing import flagsaver
    with flagsaver.flagsaver():
      main_lib.parse_flags(["prog", "--augment=rotate"])
  err = capsys.readouterr().err
  assert "--augment" in err and len(err.strip().splitlines()) == 1


def test_the_run_records_its_augmentation(tmp_path, capsys):
  work = str(tmp_path)
  cli_testing.run_cli("--phase=train", "--epochs=1", "--augment=crop", f"--workdir={work}")
  out = capsys.readouterr().out
  assert "augmentation: random crop (1 px padding)" in out
  run_dir = os.path.join(work, "digits_lenet_natural")
  with open(os.path.join(run_dir, "summary.json")) as f:
    summary = json.load(f)
  assert summary["augmentation"] == {"recipe": "crop", "pad": 1,
                                     "description": "random crop (1 px padding)"}
  assert summary["config"]["data"]["augment"] == "crop"
  hparams = _session_hparams(os.path.join(run_dir, "logs"))
  assert hparams["data.augment"] == "crop" and hparams["data.augment_pad"] == 1


def _session_hparams(log_dir):
  """The HParams session start values written directly into `log_dir`'s event files."""
  import glob
  from tensorboard.plugins.hparams import plugin_data_pb2
  found = {}
  for path in glob.glob(os.path.join(log_dir, "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.metadata.plugin_data.plugin_name != "hparams":
          continue
        data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
        for name, hparam in data.session_start_info.hparams.items():
          kind = hparam.WhichOneof("kind")
          found[name] = getattr(hparam, kind)
  return found
