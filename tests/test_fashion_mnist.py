"""Tests of the Fashion-MNIST loader (moth_tf.data.fashion_mnist) on tiny IDX files.

Every test runs with the default locations pointed into tmp_path (DEBIAN_DIR, $MOTH_TF_DATA_DIR
and $HOME), so a real copy installed on the machine is never picked up.
"""

import gzip
import os

import numpy as np
import pytest

from moth_tf import data
from moth_tf.data import fashion_mnist
from moth_tf.data import local_sets

from cli_testing import run_cli  # pylint: disable=g-bad-import-order

_TRAIN_PER_CLASS = 10
_TEST_SIZE = 20


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
  """Points every default location at (empty) places under tmp_path; returns their paths."""
  places = {"debian": tmp_path / "debian" / "fashion-mnist", "env": tmp_path / "env",
            "home": tmp_path / "home"}
  monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", str(places["debian"]))
  monkeypatch.delenv(local_sets.DATA_DIR_ENV, raising=False)
  monkeypatch.setenv("HOME", str(places["home"]))
  return places


def _idx_bytes(array):
  """An unsigned-byte IDX file's bytes: magic 0x0000080N, N big-endian uint32 dims, the data."""
  array = np.ascontiguousarray(array, dtype=np.uint8)
  header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, ">u4").tobytes()
  return header + array.tobytes()


def _write_file(directory, name, payload, gz):
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, name + (".gz" if gz else ""))
  with (gzip.open(path, "wb") if gz else open(path, "wb")) as f:
    f.write(payload)
  return path


def _make_set(seed=0, train_per_class=_TRAIN_PER_CLASS, test_size=_TEST_SIZE):
  """Random uint8 images and labels: {file name: array}, every class in the training file."""
  rng = np.random.default_rng(seed)
  y_train = rng.permutation(np.repeat(np.arange(10), train_per_class)).astype(np.uint8)
  y_test = (np.arange(test_size) * 3 % 10).astype(np.uint8)
  x_train = rng.integers(0, 256, (len(y_train), 28, 28), dtype=np.uint8)
  x_test = rng.integers(0, 256, (test_size, 28, 28), dtype=np.uint8)
  x_train[0, 0, :2] = (0, 255)  # Both ends of the byte range occur.
  return {fashion_mnist.TRAIN_IMAGES: x_train, fashion_mnist.TRAIN_LABELS: y_train,
          fashion_mnist.TEST_IMAGES: x_test, fashion_mnist.TEST_LABELS: y_test}


def _write_set(directory, arrays, gz=True):
  """Writes the four IDX files of `arrays` into `directory`; returns {file name: path}."""
  return {name: _write_file(str(directory), name, _idx_bytes(array), gz)
          for name, array in arrays.items()}


def _rows(x):
  return x.reshape(len(x), -1)


# ---------------------------------------------------------------------------------------------
# Loading


@pytest.mark.parametrize("gz", [True, False])
def test_load_shapes_values_and_split(gz, tmp_path):
  arrays = _make_set()
  _write_set(tmp_path / "fm", arrays, gz=gz)
  splits = data.load_dataset("fashion_mnist", data_dir=str(tmp_path / "fm"))
  assert splits.info is fashion_mnist.INFO
  for name in ("train", "val", "test"):
    x, y = splits.split(name)
    assert x.dtype == np.float32 and y.dtype == np.int64
    assert x.shape[1:] == (28, 28, 1) and len(x) == len(y)
  assert splits.x_train.min() == 0.0 and splits.x_train.max() == 1.0

  # Test is exactly the t10k file, in order, as bytes / 255.
  x_test, y_test = arrays[fashion_mnist.TEST_IMAGES], arrays[fashion_mnist.TEST_LABELS]
  np.testing.assert_array_equal(splits.x_test[..., 0], x_test.astype(np.float32) / 255.0)
  np.testing.assert_array_equal(splits.y_test, y_test)
  np.testing.assert_allclose(splits.x_test[3, 5, 7, 0], x_test[3, 5, 7] / 255.0, rtol=1e-7)

  # Train and validation partition the training file, images staying with their labels.
  x_all, y_all = arrays[fashion_mnist.TRAIN_IMAGES], arrays[fashion_mnist.TRAIN_LABELS]
  expected = {(row.tobytes(), int(label)) for row, label in zip(_rows(x_all), y_all)}
  assert len(expected) == len(y_all)  # The random images are all different.
  got = [(np.round(row * 255).astype(np.uint8).tobytes(), int(label))
         for x, y in (splits.split("train"), splits.split("val"))
         for row, label in zip(_rows(x), y)]
  assert len(got) == len(set(got)) == len(y_all)
  assert set(got) == expected

  # 100 training images: a tenth held out, one of every class.
  assert len(splits.y_val) == 10 and len(splits.y_train) == 90
  np.testing.assert_array_equal(np.bincount(splits.y_val, minlength=10), np.ones(10))


def test_gz_and_raw_load_identically(tmp_path):
  arrays = _make_set(seed=3)
  _write_set(tmp_path / "gz", arrays, gz=True)
  _write_set(tmp_path / "raw", arrays, gz=False)
  a = fashion_mnist.load(str(tmp_path / "gz"))
  b = fashion_mnist.load(str(tmp_path / "raw"))
  for name in ("train", "val", "test"):
    np.testing.assert_array_equal(a.split(name)[0], b.split(name)[0])
    np.testing.assert_array_equal(a.split(name)[1], b.split(name)[1])


def test_raw_file_wins_over_gz_in_the_same_folder(tmp_path):
  _write_set(tmp_path, _make_set(seed=1), gz=True)
  raw = _make_set(seed=2, test_size=7)
  _write_file(str(tmp_path), fashion_mnist.TEST_IMAGES, _idx_bytes(raw[fashion_mnist.TEST_IMAGES]),
              gz=False)
  _write_file(str(tmp_path), fashion_mnist.TEST_LABELS, _idx_bytes(raw[fashion_mnist.TEST_LABELS]),
              gz=False)
  splits = fashion_mnist.load(str(tmp_path))
  np.testing.assert_array_equal(splits.y_test, raw[fashion_mnist.TEST_LABELS])
  assert fashion_mnist.file_path(str(tmp_path), fashion_mnist.TEST_IMAGES).endswith("ubyte")
  assert fashion_mnist.file_path(str(tmp_path), fashion_mnist.TRAIN_IMAGES).endswith(".gz")


def test_fashion_mnist_subfolder_of_data_dir(tmp_path):
  arrays = _make_set()
  _write_set(tmp_path / "data" / "fashion-mnist", arrays)
  splits = data.load_dataset("fashion_mnist", data_dir=str(tmp_path / "data"))
  np.testing.assert_array_equal(splits.y_test, arrays[fashion_mnist.TEST_LABELS])
  assert fashion_mnist.find_data_dir(str(tmp_path / "data")) == str(
      tmp_path / "data" / "fashion-mnist")


def test_load_is_deterministic(tmp_path):
  _write_set(tmp_path, _make_set())
  a, b = fashion_mnist.load(str(tmp_path)), fashion_mnist.load(str(tmp_path))
  np.testing.assert_array_equal(a.y_val, b.y_val)
  np.testing.assert_array_equal(a.x_val, b.x_val)


# ---------------------------------------------------------------------------------------------
# Where the files are looked for


def test_search_order_env_then_debian_then_keras_cache(isolated, monkeypatch):
  env_dir = isolated["env"] / "fashion-mnist"
  keras_dir = isolated["home"] / ".keras" / "datasets" / "fashion-mnist"
  # Each location's copy has a different number of test images, which tells them apart.
  for directory, test_size in ((env_dir, 5), (isolated["debian"], 6), (keras_dir, 7)):
    _write_set(directory, _make_set(test_size=test_size))

  monkeypatch.setenv(local_sets.DATA_DIR_ENV, str(isolated["env"]))
  assert fashion_mnist.candidate_dirs() == [str(env_dir), str(isolated["debian"]), str(keras_dir)]
  assert len(data.load_dataset("fashion_mnist").y_test) == 5

  # An incomplete copy is skipped for the next location.
  os.remove(env_dir / (fashion_mnist.TEST_LABELS + ".gz"))
  assert len(data.load_dataset("fashion_mnist").y_test) == 6

  monkeypatch.delenv(local_sets.DATA_DIR_ENV)
  assert fashion_mnist.candidate_dirs() == [str(isolated["debian"]), str(keras_dir)]
  assert len(data.load_dataset("fashion_mnist").y_test) == 6

  monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", str(isolated["debian"] / "absent"))
  assert len(data.load_dataset("fashion_mnist").y_test) == 7


def test_nothing_found_names_every_location_and_the_ways_to_get_the_files(isolated, monkeypatch):
  monkeypatch.setenv(local_sets.DATA_DIR_ENV, str(isolated["env"]))
  partial = isolated["env"] / "fashion-mnist"
  _write_file(str(partial), fashion_mnist.TRAIN_IMAGES, b"", gz=False)
  with pytest.raises(data.DatasetUnavailableError) as info:
    data.load_dataset("fashion_mnist")
  message = str(info.value)
  assert "\n" not in message
  for part in (str(partial), str(isolated["debian"]),
               str(isolated["home"] / ".keras" / "datasets" / "fashion-mnist"),
               "lacks train-labels-idx1-ubyte[.gz]", "no such folder",
               "apt-get install dataset-fashion-mnist", "/usr/share/datasets/fashion-mnist",
               "$MOTH_TF_DATA_DIR/fashion-mnist", "--data_dir", "~/.keras/datasets/fashion-mnist",
               "keras.datasets.fashion_mnist.load_data()"):
    assert part in message
  assert "lacks train-images" not in message  # The one file that is there is not reported.


def test_explicit_data_dir_never_falls_back(isolated, monkeypatch, tmp_path):
  env_dir = isolated["env"] / "fashion-mnist"
  _write_set(env_dir, _make_set())
  monkeypatch.setenv(local_sets.DATA_DIR_ENV, str(isolated["env"]))
  assert len(data.load_dataset("fashion_mnist").y_test) == _TEST_SIZE  # The env copy is valid.

  given = tmp_path / "given"
  given.mkdir()
  _write_file(str(given), fashion_mnist.TRAIN_IMAGES, b"", gz=True)  # Incomplete.
  assert fashion_mnist.candidate_dirs(str(given)) == [str(given), str(given / "fashion-mnist")]
  with pytest.raises(data.DatasetUnavailableError) as info:
    data.load_dataset("fashion_mnist", data_dir=str(given))
  message = str(info.value)
  assert "\n" not in message
  assert f"only in the given data_dir: {given} (lacks" in message
  assert str(given / "fashion-mnist") in message
  # The other copy is pointed to, but not used.
  assert f"Without --data_dir the copy in {env_dir} would be used" in message
  assert os.listdir(given) == [fashion_mnist.TRAIN_IMAGES + ".gz"]  # Looking created nothing.


# ---------------------------------------------------------------------------------------------
# Malformed files


def test_read_idx_round_trip_and_header_checks(tmp_path):
  images = np.arange(2 * 28 * 28, dtype=np.uint64).reshape(2, 28, 28).astype(np.uint8)
  path = _write_file(str(tmp_path), "x", _idx_bytes(images), gz=False)
  read = fashion_mnist.read_idx(path)
  assert read.dtype == np.uint8 and read.shape == (2, 28, 28)
  np.testing.assert_array_equal(read, images)
  # A valid IDX file of another element type (0x0D, float32) is rejected.
  floats = bytes([0, 0, 0x0D, 1]) + np.array([2], ">u4").tobytes() + b"\0" * 8
  path = _write_file(str(tmp_path), "f", floats, gz=False)
  with pytest.raises(data.DatasetUnavailableError, match="is not an IDX file.*0x00000d01"):
    fashion_mnist.read_idx(path)


def _truncate(path, keep):
  with open(path, "rb") as f:
    payload = f.read()
  with open(path, "wb") as f:
    f.write(payload[:keep])


def _corrupt_gzip(path):
  with open(path, "rb") as f:
    payload = bytearray(f.read())
  for i in range(20, len(payload) - 8, 7):  # Leave the gzip header alone, scramble the data.
    payload[i] ^= 0x5A
  with open(path, "wb") as f:
    f.write(bytes(payload))


def _replace(directory, name, array, gz):
  for suffix in ("", ".gz"):
    if os.path.exists(os.path.join(directory, name + suffix)):
      os.remove(os.path.join(directory, name + suffix))
  return _write_file(directory, name, _idx_bytes(array), gz)


@pytest.mark.parametrize("case", ["truncated", "trailing", "header_cut", "magic", "count",
                                  "corrupt_gzip", "truncated_gzip", "label_range", "image_size",
                                  "labels_2d"])
def test_malformed_file_is_one_line_naming_the_file(case, tmp_path):
  directory = str(tmp_path)
  arrays = _make_set()
  gz = case.endswith("gzip")
  paths = _write_set(directory, arrays, gz=gz)
  images, labels = fashion_mnist.TRAIN_IMAGES, fashion_mnist.TRAIN_LABELS
  if case == "truncated":
    bad, phrase = paths[images], "is truncated"
    _truncate(bad, os.path.getsize(bad) - 100)
  elif case == "trailing":
    bad, phrase = paths[fashion_mnist.TEST_IMAGES], "has trailing bytes"
    with open(bad, "ab") as f:
      f.write(b"\0" * 3)
  elif case == "header_cut":
    bad, phrase = paths[images], "is truncated"
    _truncate(bad, 10)  # Magic and one of three dimensions.
  elif case == "magic":
    bad, phrase = paths[labels], "is not an IDX file"
    with open(bad, "r+b") as f:
      f.write(b"\x1f\x8b\x08\x01")
  elif case == "count":
    bad = _replace(directory, labels, arrays[labels][:-1], gz=False)
    phrase = f"{paths[images]} holds 100 images but {bad} holds 99 labels"
  elif case == "corrupt_gzip":
    bad, phrase = paths[images], "is not a valid or complete gzip file"
    _corrupt_gzip(bad)
  elif case == "truncated_gzip":
    bad, phrase = paths[labels], "is not a valid or complete gzip file"
    _truncate(bad, os.path.getsize(bad) // 2)
  elif case == "label_range":
    bad_labels = arrays[fashion_mnist.TEST_LABELS].copy()
    bad_labels[4] = 10
    bad = _replace(directory, fashion_mnist.TEST_LABELS, bad_labels, gz=False)
    phrase = "has labels outside 0..9 (found 10)"
  elif case == "image_size":
    bad = _replace(directory, images, arrays[images][:, :27], gz=False)
    phrase = "shape 100x27x28, not N x 28 x 28 images"
  else:  # labels_2d
    bad = _replace(directory, labels, arrays[labels].reshape(10, 10), gz=False)
    phrase = "shape 10x10, not a 1-d list of labels"
  with pytest.raises(data.DatasetUnavailableError) as info:
    data.load_dataset("fashion_mnist", data_dir=directory)
  message = str(info.value)
  assert "\n" not in message
  assert bad in message and phrase in message, message
  assert "re-copy it" in message and "--reinstall dataset-fashion-mnist" in message


def test_size_error_gives_expected_and_actual_byte_counts(tmp_path):
  path = _write_file(str(tmp_path), "labels", _idx_bytes(np.zeros(50, np.uint8)), gz=False)
  _truncate(path, 8 + 42)
  with pytest.raises(data.DatasetUnavailableError, match="announces 50 = 50 data bytes but it "
                                                          "holds 42"):
    fashion_mnist.read_idx(path)


# ---------------------------------------------------------------------------------------------
# The split arithmetic and the data set's facts


def test_real_size_split_is_5000_validation_images_500_per_class():
  labels = np.random.default_rng(7).permutation(np.repeat(np.arange(10), 6000))
  assert fashion_mnist.validation_fraction(60000) == pytest.approx(1 / 12)
  train, val = fashion_mnist.train_val_indices(labels)
  assert len(val) == fashion_mnist.VAL_SIZE == 5000 and len(train) == 55000
  np.testing.assert_array_equal(np.bincount(labels[val], minlength=10), np.full(10, 500))
  assert not np.intersect1d(train, val).size
  np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(60000))
  again_train, again_val = fashion_mnist.train_val_indices(labels)
  np.testing.assert_array_equal(val, again_val)
  np.testing.assert_array_equal(train, again_train)


def test_small_training_files_hold_out_a_tenth():
  assert fashion_mnist.validation_fraction(100) == pytest.approx(0.1)
  assert fashion_mnist.validation_fraction(20000) == pytest.approx(0.1)
  assert fashion_mnist.validation_fraction(100000) == pytest.approx(0.05)


def test_registered_info():
  info = data.dataset_info("fashion_mnist")
  assert info is fashion_mnist.INFO
  assert info.num_classes == len(info.class_names) == 10 and info.image_shape == (28, 28, 1)
  assert info.class_names[0] == "T-shirt/top" and info.class_names[9] == "Ankle boot"
  assert (info.train_pgd.epsilon, info.train_pgd.steps, info.train_pgd.step_size) == (0.1, 8, 0.02)
  assert (info.eval_pgd.epsilon, info.eval_pgd.steps, info.eval_pgd.step_size) == (0.1, 100, 0.01)


# ---------------------------------------------------------------------------------------------
# The command line


def test_cli_missing_data_is_one_line_and_creates_nothing(tmp_path, capsys):
  empty = tmp_path / "empty"
  empty.mkdir()
  workdir = tmp_path / "work"
  capsys.readouterr()
  with pytest.raises(SystemExit) as exit_info:
    run_cli("--phase=train", "--dataset=fashion_mnist", f"--data_dir={empty}",
            f"--workdir={workdir}")
  assert exit_info.value.code == 1
  err = capsys.readouterr().err.strip()
  assert err.startswith("moth_tf: error: ")
  assert len(err.splitlines()) == 1, err  # One line, no traceback.
  assert "apt-get install dataset-fashion-mnist" in err and str(empty) in err
  assert not workdir.exists() or not os.listdir(workdir)
  assert not os.listdir(empty)


def test_cli_trains_the_default_model_on_tiny_idx_files(tmp_path):
  # The real path end to end: IDX files -> loader -> the data set's default model and recipe.
  data_dir = tmp_path / "idx"
  _write_set(str(data_dir), _make_set())
  workdir = tmp_path / "runs"
  run_cli("--phase=train", "--dataset=fashion_mnist", f"--data_dir={data_dir}", "--epochs=1",
          f"--workdir={workdir}")
  run_dir = workdir / "fashion_mnist_small_cnn_natural"
  assert (run_dir / "model.keras").is_file() and (run_dir / "saved_model" / "saved_model.pb").is_file()
  import json
  summary = json.loads((run_dir / "summary.json").read_text())
  assert summary["model"] == "small_cnn" and summary["dataset"] == "fashion_mnist"
  assert 0.0 <= summary["test_accuracy"] <= 1.0

