"""Users' own data on the command line: `--dataset=tfds:NAME` and `--dataset=folder:PATH`, streamed.

The tfds sets are tiny builders defined here (tfds registers a GeneratorBasedBuilder subclass under
its snake-case name) and prepared by tfds's own code into a temporary data dir: only the bytes are
made up, there is no network. The folders hold PNGs of scikit-learn's 8x8 digits.
"""

import contextlib
import io
import json
import math
import os
import re

from absl import flags
from absl.testing import flagsaver
import numpy as np
import pytest
import tensorflow_datasets as tfds

from moth_tf import data as data_lib
from moth_tf.cli import main as main_lib
from moth_tf.data import own

from cli_testing import define_flags_once  # pylint: disable=g-bad-import-order
from cli_testing import parsed_config
from cli_testing import run_cli

FLAGS = flags.FLAGS
_TRAIN, _TEST = 60, 12  # Examples of the tfds builder's splits.


def _coded_images(n, offset):
  """n 8x8x1 uint8 images whose first pixel is offset + their index: an id that survives tfds."""
  rng = np.random.default_rng(offset)
  images = rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8)
  images[:, 0, 0, 0] = offset + np.arange(n)
  return images


class MothTestDigits(tfds.core.GeneratorBasedBuilder):
  """tfds:moth_test_digits: 8x8 grey images, 3 classes, train and test splits only."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, supervised_keys=("image", "label"),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(8, 8, 1)),
            "label": tfds.features.ClassLabel(names=["zero", "one", "two"])}))

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: the bytes are made here.
    return {"train": self._examples(_TRAIN, 0), "test": self._examples(_TEST, 100)}

  def _examples(self, n, offset):
    for i, image in enumerate(_coded_images(n, offset)):
      yield i, {"image": image, "label": i % 3}

  def _generate_examples(self):
    raise NotImplementedError  # _split_generators hands out the generators itself.


class MothTestTable(tfds.core.GeneratorBasedBuilder):
  """tfds:moth_test_table: no images, an integer label that is no ClassLabel."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "values": tfds.features.Tensor(shape=(4,), dtype=np.float32),
        "label": tfds.features.Tensor(shape=(), dtype=np.int64)}))

  def _split_generators(self, dl_manager):
    raise NotImplementedError  # Refused before anything is prepared.

  def _generate_examples(self):
    raise NotImplementedError


class MothTestPhotos(tfds.core.GeneratorBasedBuilder):
  """tfds:moth_test_photos: two images and two labels; the supervised_keys pick the pair."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, supervised_keys=("photo", "coarse"),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(8, 8, 1)),
            "photo": tfds.features.Image(shape=(None, None, 3)),
            "label": tfds.features.ClassLabel(num_classes=5),
            "coarse": tfds.features.ClassLabel(names=["cat", "dog"])}))

  def _split_generators(self, dl_manager):
    raise NotImplementedError  # Only its metadata is read.

  def _generate_examples(self):
    raise NotImplementedError


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  """A tfds data dir with moth_test_digits prepared by tfds itself."""
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  tfds.builder("moth_test_digits", data_dir=data_dir).download_and_prepare()
  return data_dir


def _save_digits(root, count, rgb_sizes=None):
  """The first `count` scikit-learn digits as PNGs in root/<digit>/, scaled 0..16 -> 0..255."""
  from PIL import Image
  from sklearn import datasets as sk_datasets

  bunch = sk_datasets.load_digits()
  for i, (image, label) in enumerate(zip(bunch.images[:count], bunch.target[:count])):
    folder = os.path.join(root, str(label))
    os.makedirs(folder, exist_ok=True)
    pixels = np.round(image * 255 / 16).astype(np.uint8)
    picture = Image.fromarray(pixels, mode="L")
    if rgb_sizes:
      picture = picture.convert("RGB").resize(rgb_sizes[i % len(rgb_sizes)])
    picture.save(os.path.join(folder, f"{i:04d}.png"))


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("own") / "digits")
  _save_digits(root, 400)
  return root


def _run_quietly(*args):
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    run_cli(*args)
  return out.getvalue()


def _cli_error(capsys, *args):
  """Runs the CLI expecting a user error; returns its one-line stderr after checking exit 1."""
  capsys.readouterr()
  with pytest.raises(SystemExit) as exit_info:
    run_cli(*args)
  assert exit_info.value.code == 1
  err = capsys.readouterr().err.strip()
  assert err.startswith("moth_tf: error: ") and len(err.splitlines()) == 1, err
  return err


def _flag_error(capsys, *args):
  """Parses flags as the binary does, expecting a bad value: its one line, exit code 1."""
  define_flags_once()
  capsys.readouterr()
  with flagsaver.flagsaver(), pytest.raises(SystemExit) as exit_info:
    main_lib.parse_flags(["prog", *args])
  assert exit_info.value.code == 1
  err = capsys.readouterr().err.strip()
  assert err.startswith("moth_tf: error: ") and len(err.splitlines()) == 1, err
  return err


# --- tfds:NAME ------------------------------------------------------------------------------------


def test_tfds_set_streams_train_and_holds_out_validation(tfds_dir):
  splits = data_lib.load_dataset("tfds:moth_test_digits", data_dir=tfds_dir, download=False,
                                 trigger_pool=4)
  held = own.held_out_size(_TRAIN)
  assert held == 2  # 4% of 60, rounded.
  assert splits.info.class_names == ("zero", "one", "two")
  assert splits.image_shape == (8, 8, 1) and splits.info.default_model == "small_cnn"
  assert splits.streaming and splits.train_count == splits.num_train == _TRAIN - held
  # Not materialised: in memory only the per-class sample.
  assert len(splits.x_train) == 12 and np.bincount(splits.y_train).tolist() == [4, 4, 4]
  ids = lambda x: np.round(x[:, 0, 0, 0] * 255).astype(int).tolist()
  streamed = np.stack([x for x, _ in splits.train_stream.as_numpy_iterator()])
  # Validation = the first training images in tfds's order on disk; the stream skips them.
  on_disk = tfds.builder("moth_test_digits", data_dir=tfds_dir).as_dataset(
      split="train", shuffle_files=False)
  first = [int(example["image"][0, 0, 0]) for example in on_disk.take(held).as_numpy_iterator()]
  assert ids(splits.x_val) == first
  assert sorted(ids(splits.x_val) + ids(streamed)) == list(range(_TRAIN))
  assert sorted(ids(splits.x_test)) == list(range(100, 100 + _TEST))  # The test split.
  assert 0.0 <= splits.x_val.min() and splits.x_val.max() <= 1.0


def test_tfds_set_picks_supervised_keys_and_needs_a_size():
  with pytest.raises(data_lib.DatasetUnavailableError, match=r"no fixed size.*--image_size"):
    data_lib.dataset_info("tfds:moth_test_photos")
  info = data_lib.dataset_info("tfds:moth_test_photos", image_size=12)
  assert info.class_names == ("cat", "dog") and info.image_shape == (12, 12, 3)


def test_tfds_refusals_are_one_line(tmp_path):
  with pytest.raises(data_lib.DatasetUnavailableError) as err:
    data_lib.load_dataset("tfds:moth_test_table", data_dir=str(tmp_path))
  message = str(err.value)
  assert "needs one Image and one ClassLabel" in message and "\n" not in message
  assert "values (Tensor), label (Tensor)" in message
  with pytest.raises(data_lib.DatasetUnavailableError, match="has no data set 'no_such_set_xyz'"):
    data_lib.load_dataset("tfds:no_such_set_xyz", data_dir=str(tmp_path))
  # Downloads off and nothing prepared: the built-in sets' message, naming the set and the dir.
  with pytest.raises(data_lib.DatasetUnavailableError) as err:
    data_lib.load_dataset("tfds:moth_test_digits", data_dir=str(tmp_path / "empty"),
                          download=False)
  assert str(err.value).startswith(f"tfds:moth_test_digits is not in the tfds data dir "
                                   f"{tmp_path / 'empty'}")


def test_tfds_train_phase_on_the_command_line(tfds_dir, tmp_path):
  work = str(tmp_path / "work")
  out = _run_quietly("--phase=train", "--dataset=tfds:moth_test_digits", f"--data_dir={tfds_dir}",
                     "--nodownload", "--epochs=1", "--batch_size=8", "--trigger_pool=2",
                     "--progress=epoch", f"--workdir={work}")
  run_dir = os.path.join(work, "tfds-moth_test_digits_small_cnn_natural")
  assert os.path.isfile(os.path.join(run_dir, "model.keras"))
  # One epoch is the whole stream (58 images in batches of 8), not the 6-image sample.
  assert "58 streamed train / 2 val / 12 test images" in out
  assert re.search(r"\b8/8 - ", out), out
  with open(os.path.join(run_dir, "summary.json")) as f:
    assert json.load(f)["dataset"] == "tfds:moth_test_digits"


# --- folder:PATH ----------------------------------------------------------------------------------


def test_folder_streams_train_and_splits_80_10_10(digits_folder):
  splits = data_lib.load_dataset(f"folder:{digits_folder}", trigger_pool=3)
  counts = np.bincount(splits.y_train, minlength=10)
  assert splits.streaming and len(splits.x_train) == 30 and counts.max() == 3
  assert splits.train_count == 320 and len(splits.y_val) == 40 and len(splits.y_test) == 40
  assert sum(1 for _ in splits.train_stream) == 320
  assert splits.image_shape == (8, 8, 1)  # Grey-scale PNGs: one channel.
  assert splits.info.class_names == tuple(str(d) for d in range(10))
  # The PNGs hold the digits' 0..16 scaled to 0..255: the pixels come back (to 8 bits).
  assert 0.0 <= splits.x_val.min() and splits.x_val.max() == 1.0


def test_folder_with_train_test_folders_and_mixed_sizes(tmp_path):
  for split, count in (("train", 60), ("test", 9)):
    _save_digits(str(tmp_path / "set" / split), count, rgb_sizes=[(12, 10), (6, 6)])
  splits = data_lib.load_dataset(f"folder:{tmp_path / 'set'}", trigger_pool=50)
  # RGB from the first image, every image resized to its 10x12 (rows x columns).
  assert splits.image_shape == (10, 12, 3)
  assert len(splits.y_test) == 9
  # No val/ folder: a stratified 10% of train/ (of each class, rounded) is validation, the stream
  # the rest.
  from sklearn import datasets as sk_datasets
  per_class = np.bincount(sk_datasets.load_digits().target[:60], minlength=10)
  expected_val = per_class - np.round(0.9 * per_class).astype(int)
  assert np.bincount(splits.y_val, minlength=10).tolist() == expected_val.tolist()
  assert 5 <= len(splits.y_val) <= 10 and splits.train_count == 60 - len(splits.y_val)
  # The whole (tiny) stream fits in the sample of 50 per class.
  assert len(splits.x_train) == splits.train_count


def test_folder_train_and_distance_on_the_command_line(digits_folder, tmp_path):
  work = str(tmp_path / "work")
  dataset = f"--dataset=folder:{digits_folder}"
  out = _run_quietly("--phase=train", dataset, "--epochs=4", "--batch_size=16",
                     "--learning_rate=0.005", "--trigger_pool=2", "--progress=epoch",
                     f"--workdir={work}")
  run_dir = parsed_config("--phase=train", dataset, f"--workdir={work}").run_dir()
  assert os.path.basename(run_dir) == f"{own.run_dir_name(dataset[10:])}_small_cnn_natural"
  assert re.fullmatch(r"folder-digits-[0-9a-f]{6}_small_cnn_natural", os.path.basename(run_dir))
  # Every epoch trains on the whole stream: ceil(320 / 16) steps.
  assert re.search(rf"\b{math.ceil(320 / 16)}/{math.ceil(320 / 16)} - ", out), out
  with open(os.path.join(run_dir, "summary.json")) as f:
    summary = json.load(f)
  assert summary["model"] == "small_cnn" and summary["test_accuracy"] > 0.3  # Chance: 0.1.
  _run_quietly("--phase=distance", dataset, "--distance_steps=5", "--seeds=1",
               "--distance_samples=3", "--pair=0-1", "--progress=none", f"--workdir={work}")
  with open(os.path.join(run_dir, "distance_pair_0-1.json")) as f:
    payload = json.load(f)
  assert payload["dataset"] == f"folder:{digits_folder}" and payload["pairs"] == [[0, 1]]
  # From the validation split held in memory (4 images per class, 3 used), 5 steps on the pair.
  assert payload["split"] == "val"
  assert payload["samples_per_class"] == {str(c): 3 for c in range(10)}
  assert payload["steps_run"][0][0][1] == 5
  # The report reads the run under its data set's own name.
  from moth_tf.reporting import comparison
  from moth_tf.reporting import reader
  (group,) = comparison.build_groups(reader.read_runs(work), "natural")
  assert (group.dataset, group.model) == (f"folder:{digits_folder}", "small_cnn")
  assert group.rows[0]["test_accuracy"] == pytest.approx(summary["test_accuracy"])


def test_folder_refusals_are_one_line(digits_folder, tmp_path, capsys):
  err = _flag_error(capsys, f"--dataset=folder:{tmp_path / 'missing'}")
  assert f"{tmp_path / 'missing'} is not a directory" in err
  err = _flag_error(capsys, "--dataset=mnist")
  assert err.endswith("value should be one of <digits|cifar10|svhn|gtsrb|lisa|fashion_mnist|"
                      "tfds:NAME|folder:PATH>"), err
  empty = tmp_path / "no_classes"
  empty.mkdir()
  (empty / "stray.png").write_bytes(b"")
  err = _cli_error(capsys, "--phase=test", f"--dataset=folder:{empty}",
                   f"--workdir={tmp_path / 'work'}")
  assert f"{empty} has no class sub-folders" in err
  damaged = tmp_path / "damaged"
  _save_digits(str(damaged), 40)
  (damaged / "7" / "0017.png").write_bytes(b"not a png")
  err = _cli_error(capsys, "--phase=test", f"--dataset=folder:{damaged}",
                   f"--workdir={tmp_path / 'work'}")
  assert f"cannot decode {damaged / '7' / '0017.png'} (Unknown image file format" in err
  err = _cli_error(capsys, "--phase=poison", f"--dataset=folder:{digits_folder}",
                   f"--workdir={tmp_path / 'work'}")
  assert "needs the training set in memory" in err
  err = _cli_error(capsys, "--phase=train", "--dataset=tfds:moth_test_table",
                   f"--data_dir={tmp_path}", f"--workdir={tmp_path / 'work'}")
  assert "needs one Image and one ClassLabel" in err
