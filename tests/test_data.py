"""Tests of the data loaders (moth_tf.data) and of the raw-archive converter (moth_tf.data.prepare).

CIFAR-10 and SVHN run through the real loaders with tfds's mock data, and through tfds's real
download-and-prepare path with the download manager serving tiny fake files (no network); GTSRB and
LISA are built from tiny fake copies of the official raw layouts written into tmp_path.
"""

import csv
import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np
from PIL import Image
import pytest

from moth_tf import data
from moth_tf.data import prepare
from moth_tf.data import local_sets
from moth_tf.data import tfds_sets

from cli_testing import run_cli  # pylint: disable=g-bad-import-order


def _assert_valid_splits(splits, image_shape, num_classes):
  for name in ("train", "val", "test"):
    x, y = splits.split(name)
    assert x.dtype == np.float32 and y.dtype == np.int64
    assert x.shape[1:] == image_shape
    assert len(x) == len(y)
    assert x.min() >= 0.0 and x.max() <= 1.0
    if len(y):
      assert 0 <= y.min() and y.max() < num_classes


# ---------------------------------------------------------------------------------------------
# digits


@pytest.fixture(scope="module")
def digits():
  return data.load_dataset("digits")


def test_digits_shapes_ranges_and_classes(digits):
  _assert_valid_splits(digits, (8, 8, 1), 10)
  assert digits.num_classes == 10
  assert set(np.unique(digits.y_train)) == set(range(10))
  # The scaled 0..16 intensities reach both ends of [0, 1].
  assert digits.x_train.min() == 0.0 and digits.x_train.max() == 1.0


def test_digits_split_sizes_are_stratified_70_10_20(digits):
  sizes = [len(digits.y_train), len(digits.y_val), len(digits.y_test)]
  assert sum(sizes) == 1797
  np.testing.assert_allclose(np.array(sizes) / 1797, [0.7, 0.1, 0.2], atol=0.01)
  overall = np.bincount(np.concatenate([digits.y_train, digits.y_val, digits.y_test]), minlength=10)
  for y, fraction in ((digits.y_train, 0.7), (digits.y_val, 0.1), (digits.y_test, 0.2)):
    # Per class, each split holds its fraction of that class, up to rounding.
    np.testing.assert_allclose(np.bincount(y, minlength=10), overall * fraction, atol=1)


def test_digits_splits_partition_the_data_set(digits):
  from sklearn import datasets as sk_datasets
  bunch = sk_datasets.load_digits()
  everything = (bunch.images.astype(np.float32) / 16.0).reshape(1797, -1)
  labelled = np.concatenate([everything, bunch.target[:, None]], axis=1)
  parts = [np.concatenate([x.reshape(len(x), -1), y[:, None]], axis=1)
           for x, y in (digits.split("train"), digits.split("val"), digits.split("test"))]
  # Same multiset of (image, label) rows: no image lost, none in two splits.
  np.testing.assert_array_equal(np.unique(np.concatenate(parts), axis=0, return_counts=True)[1],
                                np.unique(labelled, axis=0, return_counts=True)[1])
  np.testing.assert_array_equal(np.unique(np.concatenate(parts), axis=0),
                                np.unique(labelled, axis=0))


def test_digits_is_deterministic(digits):
  again = data.load_dataset("digits")
  for name in ("train", "val", "test"):
    np.testing.assert_array_equal(digits.split(name)[0], again.split(name)[0])
    np.testing.assert_array_equal(digits.split(name)[1], again.split(name)[1])


def test_load_dataset_resizes(digits):
  resized = data.load_dataset("digits", image_size=16)
  _assert_valid_splits(resized, (16, 16, 1), 10)
  for name in ("train", "val", "test"):
    assert len(resized.split(name)[0]) == len(digits.split(name)[0])
    np.testing.assert_array_equal(resized.split(name)[1], digits.split(name)[1])


# ---------------------------------------------------------------------------------------------
# CIFAR-10 and SVHN through tfds


@pytest.mark.parametrize("name, val_size", [("cifar10", tfds_sets.CIFAR10_VAL_SIZE),
                                            ("svhn", tfds_sets.SVHN_VAL_SIZE)])
def test_tfds_sets_under_mock_data(name, val_size, tmp_path):
  import tensorflow_datasets as tfds
  num_examples = val_size + 100
  # mock_data yields num_examples random examples for every split, the same ones for each split.
  with tfds.testing.mock_data(num_examples=num_examples):
    splits = data.load_dataset(name, data_dir=str(tmp_path))
  _assert_valid_splits(splits, (32, 32, 3), 10)
  assert splits.info.name == name
  assert (len(splits.y_train), len(splits.y_val), len(splits.y_test)) == (100, val_size,
                                                                         num_examples)
  # Train and test hold the same mock examples, both sorted by id, so validation must be the
  # first val_size of them and train the rest.
  np.testing.assert_array_equal(np.concatenate([splits.x_val, splits.x_train]), splits.x_test)
  np.testing.assert_array_equal(np.concatenate([splits.y_val, splits.y_train]), splits.y_test)


# The download path runs tfds's real builders (download_and_prepare writes the prepared data set
# into data_dir); only what the network would deliver is faked. The download manager hands the builders
# tiny files in the original formats instead of fetching them, or, for a failed download, tfds's
# downloader meets the error that requests raises when no server can be reached.

_TFDS_NAMES = [("cifar10", "cifar10"), ("svhn", "svhn_cropped")]
_FAKE_TRAIN, _FAKE_TEST = 10, 4


def _fake_pixel(index, offset):
  """A distinct image per original index, so the order can be checked after preparation."""
  return np.full((32, 32, 3), offset + 10 * index, np.uint8)


def _fake_cifar10_archive(root):
  """cifar-10-binary.tar.gz as extracted: 5 train batches + test batch of label byte + CHW bytes."""
  folder = root / "cifar-10-batches-bin"
  folder.mkdir(parents=True)
  (folder / "batches.meta.txt").write_text("\n".join(tfds_sets.CIFAR10_INFO.class_names) + "\n")

  def write(name, indices, offset):
    with open(folder / name, "wb") as f:
      for i in indices:
        f.write(bytes([i % 10]) + _fake_pixel(i, offset).transpose(2, 0, 1).tobytes())

  per_batch = _FAKE_TRAIN // 5
  for b in range(5):
    write(f"data_batch_{b + 1}.bin", range(b * per_batch, (b + 1) * per_batch), 0)
  write("test_batch.bin", range(_FAKE_TEST), 5)
  return str(root)


def _fake_svhn_files(root):
  """train/test/extra_32x32.mat: X [32, 32, 3, N] uint8, y [N, 1] in 1..10 (10 is the digit 0)."""
  from scipy import io as scipy_io
  root.mkdir(parents=True)
  paths = {}
  for split, count, offset in (("train", _FAKE_TRAIN, 0), ("test", _FAKE_TEST, 5), ("extra", 2, 7)):
    images = np.stack([_fake_pixel(i, offset) for i in range(count)], axis=-1)
    labels = np.array([[i % 10 or 10] for i in range(count)], np.uint8)
    paths[split] = str(root / f"{split}_32x32.mat")
    scipy_io.savemat(paths[split], {"X": images, "y": labels})
  return paths


@pytest.fixture
def fake_downloads(tmp_path, monkeypatch):
  """tfds's DownloadManager hands out local copies of the files; returns the URLs asked for."""
  import tensorflow_datasets as tfds
  asked = []
  served = tmp_path / "served"

  def download_and_extract(self, url):
    asked.append(url)
    return _fake_cifar10_archive(served / "cifar10")

  def download(self, urls):
    asked.append(urls)
    return _fake_svhn_files(served / "svhn")

  monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract", download_and_extract)
  monkeypatch.setattr(tfds.download.DownloadManager, "download", download)
  # A small validation split, so that the tiny fake train split still has training images left.
  monkeypatch.setattr(tfds_sets, "CIFAR10_VAL_SIZE", 3)
  monkeypatch.setattr(tfds_sets, "SVHN_VAL_SIZE", 3)
  monkeypatch.delenv(tfds_sets.NO_DOWNLOAD_ENV, raising=False)
  monkeypatch.setattr(tfds_sets, "network_problem", lambda urls: None)  # The hosts answer.
  return asked


@pytest.fixture
def no_network(monkeypatch):
  """tfds's downloader fails as with no network; returns the URLs it tried."""
  import requests
  from tensorflow_datasets.core.download import downloader
  tried = []

  def unreachable(url, **kwargs):
    tried.append(url)
    raise requests.exceptions.ConnectionError(
        f"HTTPSConnectionPool(host='example.invalid', port=443): Max retries exceeded with url: "
        f"{url} (Caused by NameResolutionError(\"Failed to resolve 'example.invalid' ([Errno -2] "
        f"Name or service not known)\"))")

  monkeypatch.setattr(downloader, "_open_url", unreachable)
  monkeypatch.delenv(tfds_sets.NO_DOWNLOAD_ENV, raising=False)
  # The hosts answer the probe, so that the download itself is tried (and fails).
  monkeypatch.setattr(tfds_sets, "network_problem", lambda urls: None)
  return tried


@pytest.mark.parametrize("name, tfds_name", _TFDS_NAMES)
def test_tfds_sets_download_and_prepare_into_data_dir(name, tfds_name, tmp_path, fake_downloads):
  data_dir = tmp_path / "tfds"
  splits = data.load_dataset(name, data_dir=str(data_dir))
  assert len(fake_downloads) == 1  # Fetched once, for both splits.
  _assert_valid_splits(splits, (32, 32, 3), 10)
  assert (len(splits.y_train), len(splits.y_val), len(splits.y_test)) == (_FAKE_TRAIN - 3, 3,
                                                                         _FAKE_TEST)
  # Validation is the first three training images of the original files, train the others.
  pixels = np.concatenate([splits.x_val, splits.x_train])[:, 0, 0, 0]
  np.testing.assert_allclose(pixels * 255, 10 * np.arange(_FAKE_TRAIN), atol=0.5)
  np.testing.assert_array_equal(np.concatenate([splits.y_val, splits.y_train]),
                                np.arange(_FAKE_TRAIN) % 10)
  np.testing.assert_allclose(splits.x_test[:, 0, 0, 0] * 255, 5 + 10 * np.arange(_FAKE_TEST),
                             atol=0.5)
  # tfds prepared it in data_dir: the next load reads it there without downloading again, even
  # with downloads off.
  assert os.path.isdir(data_dir / tfds_name)
  again = data.load_dataset(name, data_dir=str(data_dir), download=False)
  np.testing.assert_array_equal(again.x_train, splits.x_train)
  assert len(fake_downloads) == 1


@pytest.mark.parametrize("name, tfds_name", _TFDS_NAMES)
def test_tfds_sets_failed_download_is_one_line_with_the_offline_route(name, tfds_name, tmp_path,
                                                                      no_network):
  with pytest.raises(data.DatasetUnavailableError) as info:
    data.load_dataset(name, data_dir=str(tmp_path))
  assert no_network  # The real downloader was reached.
  message = str(info.value)
  assert "\n" not in message
  for part in (name, tfds_name, str(tmp_path), "could not be downloaded", "ConnectionError",
               "network access", "copy a prepared tensorflow_datasets/ folder",
               "from a machine with internet", "--data_dir", "--nodownload"):
    assert part in message, part
  assert "this machine" not in message


@pytest.mark.parametrize("name, tfds_name", _TFDS_NAMES)
def test_tfds_sets_nodownload_says_how_to_get_it_without_trying(name, tfds_name, tmp_path,
                                                                no_network):
  with pytest.raises(data.DatasetUnavailableError) as info:
    data.load_dataset(name, data_dir=str(tmp_path), download=False)
  assert not no_network  # No download was attempted.
  message = str(info.value)
  assert "\n" not in message
  for part in (tfds_name, str(tmp_path), "--nodownload", f"tfds.builder('{tfds_name}')",
               f"tfds build {tfds_name}", "~/tensorflow_datasets", "--data_dir",
               "from a machine with internet"):
    assert part in message, part
  assert "this machine" not in message
  assert not os.listdir(tmp_path)  # Looking did not create anything.


# Offline: before tfds's downloader (which retries for minutes), a TCP connection to each download
# host must open within seconds. Only the socket module is faked.

_PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                    "all_proxy")


@pytest.fixture
def offline(monkeypatch):
  """No name resolves (as without network), no proxy is set, downloads are allowed."""
  def unresolvable(*args, **kwargs):
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

  monkeypatch.setattr(socket, "getaddrinfo", unresolvable)
  for name in _PROXY_VARIABLES:
    monkeypatch.delenv(name, raising=False)
  monkeypatch.delenv(tfds_sets.NO_DOWNLOAD_ENV, raising=False)


def test_offline_download_fails_in_seconds_without_trying_tfds(tmp_path, offline, monkeypatch):
  import tensorflow_datasets as tfds  # Imported before the clock starts.

  def download_and_prepare(self, *args, **kwargs):
    raise AssertionError("tfds's download was attempted")

  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", download_and_prepare)
  start = time.monotonic()
  with pytest.raises(data.DatasetUnavailableError) as info:
    data.load_dataset("cifar10", data_dir=str(tmp_path))
  assert time.monotonic() - start < 5
  message = str(info.value)
  assert "\n" not in message
  for part in ("cifar10 could not be downloaded", str(tmp_path),
               "no network: cannot connect to www.cs.toronto.edu:443 (gaierror",
               "copy a prepared tensorflow_datasets/ folder", "--data_dir", "--nodownload"):
    assert part in message, part


def test_a_download_host_that_hangs_counts_as_offline_at_the_deadline(monkeypatch):
  release = threading.Event()

  def hanging_lookup(*args, **kwargs):
    release.wait(30)
    raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

  monkeypatch.setattr(socket, "getaddrinfo", hanging_lookup)
  for name in _PROXY_VARIABLES:
    monkeypatch.delenv(name, raising=False)
  start = time.monotonic()
  problem = tfds_sets.network_problem(["https://data.example/a.tar.gz"], timeout=0.3)
  release.set()
  assert time.monotonic() - start < 2
  assert problem == "data.example:443 did not answer within 0.3 s"


class _FakeBuilder:
  """The part of a tfds builder that `prepare` uses."""

  def __init__(self, prepared, urls=("https://data.example/a.tar.gz",)):
    self.prepared, self.url_infos, self.calls = prepared, dict.fromkeys(urls), 0

  def is_prepared(self):
    return self.prepared

  def download_and_prepare(self):
    self.calls += 1


def test_with_the_network_there_tfds_downloads(monkeypatch):
  connected = []

  class Connection:
    def close(self):
      pass

  def create_connection(address, timeout=None, **kwargs):
    connected.append(address)
    return Connection()

  monkeypatch.setattr(socket, "create_connection", create_connection)
  for name in _PROXY_VARIABLES:
    monkeypatch.delenv(name, raising=False)
  monkeypatch.delenv(tfds_sets.NO_DOWNLOAD_ENV, raising=False)
  builder = _FakeBuilder(prepared=False, urls=("https://data.example/a", "http://other.example/b",
                                               "https://data.example/c"))
  tfds_sets.prepare(builder, "tfds:fake", "fake", None, True)
  assert builder.calls == 1
  assert sorted(connected) == [("data.example", 443), ("other.example", 80)]


def test_the_probe_goes_to_the_proxy_the_environment_names(monkeypatch):
  monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
  monkeypatch.delenv("NO_PROXY", raising=False)
  monkeypatch.delenv("no_proxy", raising=False)
  tried = []

  def create_connection(address, timeout=None, **kwargs):
    tried.append(address)
    raise ConnectionRefusedError(111, "Connection refused")

  monkeypatch.setattr(socket, "create_connection", create_connection)
  problem = tfds_sets.network_problem(["https://data.example/a.tar.gz"])
  assert tried == [("proxy.example", 3128)]
  assert problem.startswith("cannot connect to proxy.example:3128 (ConnectionRefusedError")


def test_a_prepared_data_set_needs_no_network(offline):
  builder = _FakeBuilder(prepared=True)
  tfds_sets.prepare(builder, "tfds:fake", "fake", None, True)  # No probe, no error.
  assert builder.calls == 1  # tfds's own no-op for a prepared set.


def test_no_download_environment_variable_turns_downloads_off(tmp_path, no_network, monkeypatch):
  monkeypatch.setenv(tfds_sets.NO_DOWNLOAD_ENV, "1")
  with pytest.raises(data.DatasetUnavailableError, match=r"\$MOTH_TF_NO_DOWNLOAD is set"):
    data.load_dataset("cifar10", data_dir=str(tmp_path))
  assert not no_network and not os.listdir(tmp_path)
  assert tfds_sets.download_allowed(True, {"MOTH_TF_NO_DOWNLOAD": "0"})
  assert not tfds_sets.download_allowed(True, {"MOTH_TF_NO_DOWNLOAD": "true"})
  assert not tfds_sets.download_allowed(False, {})


# ---------------------------------------------------------------------------------------------
# GTSRB

_GTSRB_HEADER = ["Filename", "Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId"]
# ClassId -> the colour of its signs' ROI; everything outside the ROI is black.
_GTSRB_COLOURS = {0: (255, 255, 255), 14: (255, 0, 0), 42: (0, 0, 255)}


def _write_csv(path, header, rows):
  with open(path, "w", newline="") as f:
    writer = csv.writer(f, delimiter=";", lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(rows)


def _gtsrb_image(path, index, class_id):
  """A PPM of a varying size, black with the class colour in the ROI; returns its CSV row."""
  width, height = 30 + index % 7, 28 + index % 5
  x1, y1, x2, y2 = 5, 4, width - 6, height - 5  # Inclusive, as in the official CSVs.
  pixels = np.zeros((height, width, 3), np.uint8)
  pixels[y1:y2 + 1, x1:x2 + 1] = _GTSRB_COLOURS[class_id]
  Image.fromarray(pixels).save(path)
  return [os.path.basename(path), width, height, x1, y1, x2, y2, class_id]


def _write_gtsrb(source, train_per_class=10, test_per_class=2):
  """A tiny copy of the three official archives, extracted into `source`."""
  train_dir = os.path.join(source, "GTSRB", "Final_Training", "Images")
  test_dir = os.path.join(source, "GTSRB", "Final_Test", "Images")
  os.makedirs(test_dir)
  test_rows = []
  for class_id in _GTSRB_COLOURS:
    class_dir = os.path.join(train_dir, f"{class_id:05d}")
    os.makedirs(class_dir)
    rows = [_gtsrb_image(os.path.join(class_dir, f"00000_{i:05d}.ppm"), i, class_id)
            for i in range(train_per_class)]
    _write_csv(os.path.join(class_dir, f"GT-{class_id:05d}.csv"), _GTSRB_HEADER, rows)
    for i in range(test_per_class):
      index = len(test_rows)
      test_rows.append(_gtsrb_image(os.path.join(test_dir, f"{index:05d}.ppm"), index, class_id))
  # The test archive ships a label-less CSV next to the images; the labels come separately.
  _write_csv(os.path.join(test_dir, "GT-final_test.test.csv"), _GTSRB_HEADER[:-1],
             [row[:-1] for row in test_rows])
  _write_csv(os.path.join(source, "GT-final_test.csv"), _GTSRB_HEADER, test_rows)


@pytest.fixture(scope="module")
def gtsrb_source(tmp_path_factory):
  source = str(tmp_path_factory.mktemp("gtsrb_raw"))
  _write_gtsrb(source)
  return source


def test_gtsrb_prepare_and_load(gtsrb_source, tmp_path):
  out_dir = str(tmp_path / "prepared")
  summary = prepare.prepare_gtsrb(gtsrb_source, os.path.join(out_dir, "gtsrb.npz"))
  # 10 training images per class: 9 train + 1 validation; 2 test images per class.
  assert summary["split_sizes"] == {"train": 27, "val": 3, "test": 6}
  assert os.listdir(out_dir) == ["gtsrb.npz"]  # No temporary file left behind.

  splits = data.load_dataset("gtsrb", data_dir=out_dir)
  _assert_valid_splits(splits, (32, 32, 3), 43)
  assert splits.info.class_names == local_sets.GTSRB_CLASS_NAMES
  assert splits.info.class_names[14] == "Stop"
  for name in ("train", "val", "test"):
    x, y = splits.split(name)
    assert set(y.tolist()) == set(_GTSRB_COLOURS)  # Official ClassIds, every class in every split.
    for class_id, colour in _GTSRB_COLOURS.items():
      # Cropped to the ROI, only the class colour is left: no black border.
      np.testing.assert_allclose(x[y == class_id].reshape(-1, 3).min(axis=0),
                                 np.array(colour) / 255.0, atol=1e-6)
      np.testing.assert_allclose(x[y == class_id].reshape(-1, 3).max(axis=0),
                                 np.array(colour) / 255.0, atol=1e-6)


def test_gtsrb_prepare_is_deterministic_and_accepts_the_gtsrb_folder(gtsrb_source, tmp_path):
  first, second = str(tmp_path / "a.npz"), str(tmp_path / "b.npz")
  prepare.prepare_gtsrb(gtsrb_source, first)
  # Pointing at GTSRB/ itself works too; GT-final_test.csv is then found in the parent folder.
  prepare.prepare_gtsrb(os.path.join(gtsrb_source, "GTSRB"), second)
  with np.load(first) as a, np.load(second) as b:
    assert sorted(a.files) == sorted(local_sets.NPZ_KEYS)
    for key in a.files:
      np.testing.assert_array_equal(a[key], b[key])
    assert a["x_train"].dtype == np.uint8


def test_gtsrb_prepare_without_test_labels_writes_nothing(tmp_path):
  source = str(tmp_path / "raw")
  _write_gtsrb(source, train_per_class=2, test_per_class=1)
  os.remove(os.path.join(source, "GT-final_test.csv"))
  out_dir = tmp_path / "out"
  with pytest.raises(prepare.PrepareError, match="GT-final_test.csv"):
    prepare.prepare_gtsrb(source, str(out_dir / "gtsrb.npz"))
  assert not out_dir.exists()


@pytest.mark.parametrize("name, hint", [("gtsrb", "GTSRB_Final_Training_Images"),
                                        ("lisa", "LISA Traffic Sign Dataset")])
def test_local_sets_missing_file_says_how_to_get_it(name, hint, tmp_path, monkeypatch):
  monkeypatch.setenv(local_sets.DATA_DIR_ENV, str(tmp_path))
  with pytest.raises(data.DatasetUnavailableError) as info:
    data.load_dataset(name)  # No data_dir: the environment variable decides.
  message = str(info.value)
  assert "\n" not in message
  for part in (os.path.join(str(tmp_path), f"{name}.npz"), hint,
               f"python -m moth_tf.prepare --dataset={name} --source="):
    assert part in message


# ---------------------------------------------------------------------------------------------
# LISA

_LISA_HEADER = ["Filename", "Annotation tag", "Upper left corner X", "Upper left corner Y",
                "Lower right corner X", "Lower right corner Y", "Occluded,On another road",
                "Origin file", "Origin frame number", "Origin track", "Origin track frame number"]
_LISA_COLOURS = {"merge": (255, 255, 0), "school": (0, 255, 0), "stop": (255, 0, 0),
                 "yield": (255, 255, 255)}
# Two sign slots per 64x48 frame (inclusive corners), so frames carry one or two signs.
_LISA_SLOTS = ((4, 4, 19, 17), (30, 20, 49, 35))


def _write_lisa(source):
  """A tiny LISA copy: 10 merge, 11 stop (one box off the frame), 10 yield and 3 school signs."""
  root = os.path.join(source, "signDatabasePublicFramesOnly")
  frame_dir = os.path.join(root, "vid0", "frameAnnotations-fake.avi_annotations")
  os.makedirs(frame_dir)
  tags = ["merge"] * 10 + ["stop"] * 10 + ["yield"] * 10 + ["school"] * 3
  rows = []
  frame = None
  for i, tag in enumerate(tags):
    if i % 2 == 0:
      frame = np.zeros((48, 64, 3), np.uint8)
      filename = f"vid0/frameAnnotations-fake.avi_annotations/{tag}_{i:04d}.png"
    x1, y1, x2, y2 = _LISA_SLOTS[i % 2]
    frame[y1:y2 + 1, x1:x2 + 1] = _LISA_COLOURS[tag]
    Image.fromarray(frame).save(os.path.join(root, filename))
    rows.append([filename, tag, x1, y1, x2, y2, "0,0", "fake.avi", i, "fake.avi", i])
  # A box entirely outside its frame: counted as a stop annotation, but it has no pixels.
  Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(os.path.join(root, "vid0", "empty.png"))
  rows.append(["vid0/empty.png", "stop", 100, 100, 110, 110, "0,0", "fake.avi", 99, "fake.avi", 0])
  _write_csv(os.path.join(root, "allAnnotations.csv"), _LISA_HEADER, rows)


@pytest.fixture(scope="module")
def lisa_source(tmp_path_factory):
  source = str(tmp_path_factory.mktemp("lisa_raw"))
  _write_lisa(source)
  return source


def test_lisa_with_fewer_than_18_types_keeps_them_all(lisa_source, tmp_path, caplog):
  out_dir = str(tmp_path)
  summary = prepare.prepare_lisa(lisa_source, os.path.join(out_dir, "lisa.npz"))
  assert "only 4 sign types" in caplog.text
  assert summary["class_names"] == ["merge", "school", "stop", "yield"]  # Alphabetical.
  assert summary["skipped_boxes"] == 1 and summary["dropped_types"] == {}
  # 10 images per type -> 7/1/2; the 3 school signs -> 2/0/1.
  assert summary["split_sizes"] == {"train": 23, "val": 3, "test": 7}

  splits = data.load_dataset("lisa", data_dir=out_dir)
  _assert_valid_splits(splits, (32, 32, 3), 4)
  assert splits.info.num_classes == 4
  assert splits.info.class_names == ("merge", "school", "stop", "yield")
  assert splits.info.default_model == local_sets.LISA_INFO.default_model
  for name in ("train", "val", "test"):
    x, y = splits.split(name)
    for label, tag in enumerate(splits.info.class_names):
      # Each crop holds exactly its own sign, not the neighbouring one or the black frame.
      np.testing.assert_allclose(x[y == label].reshape(-1, 3),
                                 np.broadcast_to(np.array(_LISA_COLOURS[tag]) / 255.0,
                                                 (np.sum(y == label) * 32 * 32, 3)), atol=1e-6)


def test_lisa_cut_keeps_the_most_frequent_types_ties_by_name(lisa_source, tmp_path):
  first, second = str(tmp_path / "a.npz"), str(tmp_path / "b.npz")
  # stop has 11 annotations; merge and yield tie at 10, and merge wins by name.
  summary = prepare.prepare_lisa(lisa_source, first, num_classes=2)
  assert summary["class_names"] == ["merge", "stop"]
  assert summary["dropped_types"] == {"yield": 10, "school": 3}
  assert summary["split_sizes"] == {"train": 14, "val": 2, "test": 4}
  prepare.prepare_lisa(lisa_source, second, num_classes=2)
  with np.load(first) as a, np.load(second) as b:
    for key in a.files:
      np.testing.assert_array_equal(a[key], b[key])


# ---------------------------------------------------------------------------------------------
# Checks of the loaded data (moth_tf.data.check_splits)

_TINY_INFO = data.DatasetInfo(name="tiny", num_classes=3, image_shape=(4, 4, 1),
                              class_names=("a", "b", "c"))


def _tiny_splits():
  x = np.zeros((6, 4, 4, 1), np.float32)
  x[:, 0, 0, 0] = 1.0
  y = np.array([0, 1, 2, 0, 1, 2], np.int64)
  return data.DatasetSplits(_TINY_INFO, x.copy(), y.copy(), x.copy(), y.copy(), x.copy(), y.copy())


def _with(splits, **arrays):
  for name, value in arrays.items():
    setattr(splits, name, value)
  return splits


def _set_pixels(x, value, count):
  x = x.copy()
  x.reshape(-1)[:count] = value
  return x


@pytest.mark.parametrize("damage, problem", [
    (lambda s: _with(s, x_val=_set_pixels(s.x_val, np.inf, 2)),
     "val images hold 2 non-finite values (NaN or inf)"),
    (lambda s: _with(s, x_train=_set_pixels(s.x_train, np.nan, 9)),
     "train images hold 9 non-finite values (NaN or inf)"),
    (lambda s: _with(s, x_test=_set_pixels(s.x_test, 1.5, 1)),
     "test image values span [0, 1.5], outside [0, 1]"),
    (lambda s: _with(s, x_test=_set_pixels(s.x_test, -0.25, 3)),
     "test image values span [-0.25, 1], outside [0, 1]"),
    (lambda s: _with(s, x_train=s.x_train[..., 0]),
     "train images have shape (6, 4, 4), not 4-d [N, H, W, C]"),
    (lambda s: _with(s, x_val=np.zeros((6, 5, 4, 1), np.float32)),
     "val images are 5x4x1 (HxWxC) but train images are 4x4x1"),
    (lambda s: _with(s, y_train=s.y_train[:5]), "train has 6 images but labels of shape (5,)"),
    (lambda s: _with(s, y_test=s.y_test.astype(np.float32)),
     "test labels are float32, not integer class indices"),
    (lambda s: _with(s, y_val=s.y_val + 1), "val labels span 1..3, outside the classes 0..2"),
    (lambda s: _with(s, y_val=s.y_val - 1), "val labels span -1..1, outside the classes 0..2"),
])
def test_check_splits_names_the_split_and_the_problem(damage, problem):
  data.check_splits(_tiny_splits(), "tiny data set")  # Intact: no error.
  with pytest.raises(data.DatasetUnavailableError) as info:
    data.check_splits(damage(_tiny_splits()), "tiny data set")
  assert str(info.value) == (f"tiny data set: {problem}; re-create or re-prepare the data set's "
                             "files")


def _write_gtsrb_npz(directory, nan_pixels=0):
  """A prepared-layout gtsrb.npz of float [0, 1] images, with `nan_pixels` NaN values in x_train."""
  rng = np.random.default_rng(0)
  arrays = {}
  for split, per_class in (("train", 2), ("val", 1), ("test", 1)):
    y = np.repeat(np.arange(43), per_class)
    arrays[f"x_{split}"] = rng.uniform(0, 1, (len(y), 32, 32, 3)).astype(np.float32)
    arrays[f"y_{split}"] = y
  arrays["x_train"].reshape(-1)[:nan_pixels] = np.nan
  os.makedirs(directory, exist_ok=True)
  np.savez_compressed(os.path.join(directory, "gtsrb.npz"),
                      class_names=np.array(local_sets.GTSRB_CLASS_NAMES), **arrays)


def test_gtsrb_file_with_nan_pixels_is_refused(tmp_path):
  clean, broken = str(tmp_path / "clean"), str(tmp_path / "broken")
  _write_gtsrb_npz(clean)
  _assert_valid_splits(data.load_dataset("gtsrb", data_dir=clean), (32, 32, 3), 43)
  _write_gtsrb_npz(broken, nan_pixels=9)
  with pytest.raises(data.DatasetUnavailableError) as info:
    data.load_dataset("gtsrb", data_dir=broken, image_size=16)  # Not hidden by the resize.
  assert str(info.value) == (f"gtsrb data set in {broken}: train images hold 9 non-finite values "
                             "(NaN or inf); re-create or re-prepare the data set's files")


def test_cli_with_nan_pixels_is_one_line_and_trains_nothing(tmp_path, capsys):
  data_dir, workdir = str(tmp_path / "data"), tmp_path / "work"
  _write_gtsrb_npz(data_dir, nan_pixels=9)
  capsys.readouterr()
  with pytest.raises(SystemExit) as exit_info:
    run_cli("--phase=train", "--dataset=gtsrb", f"--data_dir={data_dir}", "--epochs=1",
            f"--workdir={workdir}")
  assert exit_info.value.code == 1
  err = capsys.readouterr().err.strip()
  assert err == (f"moth_tf: error: gtsrb data set in {data_dir}: train images hold 9 non-finite "
                 "values (NaN or inf); re-create or re-prepare the data set's files")
  assert not workdir.exists()  # No run directory, so no model.


# ---------------------------------------------------------------------------------------------
# The prepare command line


def _run_prepare(*args):
  return subprocess.run([sys.executable, "-m", "moth_tf.prepare", *args], capture_output=True,
                        text=True, timeout=120, check=False)


@pytest.mark.parametrize("args, expected", [
    (["--dataset=gtsrb", "--source={tmp}/no_such_dir"], "does not exist"),
    (["--dataset=lisa", "--source={tmp}/no_such_dir"], "does not exist"),
    (["--dataset=gtsrb", "--source={tmp}"], "no GTSRB/Final_Training/Images"),
    (["--dataset=lisa", "--source={tmp}"], "no allAnnotations.csv"),
    (["--dataset=gtsrb"], "--source=DIR"),
])
def test_prepare_cli_bad_source_fails_with_one_line(args, expected, tmp_path):
  out_dir = tmp_path / "out"
  args = [a.format(tmp=tmp_path) for a in args] + [f"--data_dir={out_dir}"]
  result = _run_prepare(*args)
  assert result.returncode != 0
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr
  assert expected in lines[0]
  assert not out_dir.exists()


def test_prepare_cli_writes_and_summarises(gtsrb_source, tmp_path):
  result = _run_prepare("--dataset=gtsrb", f"--source={gtsrb_source}", f"--data_dir={tmp_path}")
  assert result.returncode == 0, result.stderr
  assert f"wrote {tmp_path / 'gtsrb.npz'}" in result.stdout
  assert "train 27 / val 3 / test 6" in result.stdout
  assert "14 Stop: 12" in result.stdout
  assert os.path.isfile(tmp_path / "gtsrb.npz")
