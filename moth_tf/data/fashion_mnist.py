"""Fashion-MNIST from the four official IDX files, found on disk; nothing is ever downloaded.

Fashion-MNIST (Zalando Research, Xiao, Rasul & Vollgraf 2017) is a drop-in replacement for MNIST:
60,000 training and 10,000 test 28x28 grey-scale images of clothing in 10 classes (6,000 training
and 1,000 test images per class), stored as the same four IDX files as MNIST:
`train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte` and
`t10k-labels-idx1-ubyte`, each either raw or gzipped (`.gz`). When a folder holds both forms of a
file, the raw one is read (it needs no decompression).

Where the loader looks:

* with an explicit `data_dir` (`--data_dir`), only there: the files directly in `data_dir`, or in
  its `fashion-mnist` subfolder. It never falls back to another location, so a typo in --data_dir
  is an error rather than a silent switch to some other copy;
* otherwise, the first of these folders that holds all four files:
  `$MOTH_TF_DATA_DIR/fashion-mnist`, `/usr/share/datasets/fashion-mnist` (where Debian's and
  Ubuntu's `dataset-fashion-mnist` package installs them) and `~/.keras/datasets/fashion-mnist`
  (the cache that `keras.datasets.fashion_mnist.load_data()` fills).

The IDX headers are parsed and checked here with numpy, so a truncated or corrupt file is reported
as a one-line DatasetUnavailableError naming the file rather than as a reshape traceback.

Split: test is the official 10,000-image t10k set, unchanged and in file order. Validation is a
fixed stratified subset of the official training images (VAL_SIZE = 5,000, 500 per class, seeded
with SPLIT_SEED), and train is the remaining 55,000 (see `train_val_indices`). Training files
with fewer than 50,000 images (test copies, subsets) hold out a tenth instead.
"""

import gzip
import math
import os
from typing import List, Optional, Tuple
import zlib

import numpy as np

from moth_tf.data import augment
from moth_tf.data import base
from moth_tf.data import local_sets

INFO = base.DatasetInfo(
    name="fashion_mnist",
    num_classes=10,
    image_shape=(28, 28, 1),
    class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                 "Sneaker", "Bag", "Ankle boot"),
    # eps 0.1 (L-inf, [0,1] pixels) is the budget the Fashion-MNIST robustness literature uses
    # (e.g. Wong & Kolter 2018, "Provable defenses against adversarial examples via the convex outer
    # adversarial polytope", and Croce & Hein's robustness evaluations, both eps=0.1 on
    # Fashion-MNIST): MNIST's 0.3 destroys most clothing images. Training uses 8 steps of 0.02 (the
    # cost of the other sets' adversarial training); evaluation 100 steps of 0.01, like the 32x32
    # sets.
    train_pgd=base.PGDSettings(0.1, 8, 0.02),
    eval_pgd=base.PGDSettings(0.1, 100, 0.01),
    # Random crop with 2 px of zero padding and horizontal flips: the standard Fashion-MNIST
    # training augmentation (Zhong et al. 2017, "Random Erasing Data Augmentation", use crop + flip
    # as their baseline; clothing is left-right symmetric, unlike digits and traffic signs). 2 px
    # on 28x28 is a smaller shift than CIFAR-10's 4 px on 32x32: the garments fill the frame.
    augment=augment.Augmentation("crop_flip", 2),
    default_model="small_cnn",
)

TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"
FILES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)

# The name of the data set's folder under $MOTH_TF_DATA_DIR, a --data_dir, and the Keras cache.
SUBDIR = "fashion-mnist"
# Where Debian's and Ubuntu's `dataset-fashion-mnist` package installs the gzipped files, and the
# folder searched for them (the same, except where tests point DEBIAN_DIR elsewhere).
DEBIAN_PACKAGE_DIR = "/usr/share/datasets/fashion-mnist"
DEBIAN_DIR = DEBIAN_PACKAGE_DIR
# Keras's dataset cache (`keras.datasets.fashion_mnist.load_data()` downloads into it).
KERAS_CACHE_DIR = os.path.join("~", ".keras", "datasets", SUBDIR)

# Validation: a fixed stratified VAL_SIZE of the training images (a tenth of them for training
# files smaller than 10 * VAL_SIZE), always the same ones.
VAL_SIZE = 5000
SPLIT_SEED = 0

# The only IDX element type accepted: unsigned bytes.
_IDX_UBYTE = 0x08

_REINSTALL = ("re-copy it (or reinstall the Debian package: "
              "`apt-get install --reinstall dataset-fashion-mnist`)")


def candidate_dirs(data_dir: Optional[str] = None) -> List[str]:
  """The folders that may hold the four files, in the order they are tried.

  Args:
    data_dir: an explicit folder (--data_dir). If given, only it and its `fashion-mnist` subfolder
      are candidates; otherwise $MOTH_TF_DATA_DIR/fashion-mnist (if the variable is set), then
      DEBIAN_DIR, then ~/.keras/datasets/fashion-mnist.

  Returns:
    A list of folder paths (which need not exist).
  """
  if data_dir:
    return [data_dir, os.path.join(data_dir, SUBDIR)]
  dirs = []
  env_dir = os.environ.get(local_sets.DATA_DIR_ENV)
  if env_dir:
    dirs.append(os.path.join(env_dir, SUBDIR))
  dirs.append(DEBIAN_DIR)
  dirs.append(os.path.expanduser(KERAS_CACHE_DIR))
  return dirs


def file_path(directory: str, name: str) -> Optional[str]:
  """IDX file `name` in `directory`: the raw file if present, else `name`.gz, else None."""
  for candidate in (os.path.join(directory, name), os.path.join(directory, name + ".gz")):
    if os.path.isfile(candidate):
      return candidate
  return None


def find_data_dir(data_dir: Optional[str] = None) -> str:
  """The first of `candidate_dirs(data_dir)` that holds all four files (raw or gzipped).

  Args:
    data_dir: an explicit folder, searched alone (with its `fashion-mnist` subfolder); None to
      search the default locations.

  Returns:
    The folder's path.

  Raises:
    DatasetUnavailableError: no candidate holds all four files; the one-line message says where
      it looked and how to get the files.
  """
  looked = []
  for directory in candidate_dirs(data_dir):
    if not os.path.isdir(directory):
      looked.append(f"{directory} (no such folder)")
      continue
    missing = [f"{name}[.gz]" for name in FILES if file_path(directory, name) is None]
    if not missing:
      return directory
    looked.append(f"{directory} (lacks {', '.join(missing)})")
  where = "only in the given data_dir:" if data_dir else "in:"
  hint = ""
  if data_dir:
    # Not a fallback: only a pointer to a copy that dropping --data_dir would use.
    elsewhere = [d for d in candidate_dirs() if all(file_path(d, name) for name in FILES)]
    if elsewhere:
      hint = f" (Without --data_dir the copy in {elsewhere[0]} would be used.)"
  raise base.DatasetUnavailableError(
      f"Fashion-MNIST not found: looked {where} {'; '.join(looked)}.{hint} Nothing is downloaded. "
      f"Get the four IDX files ({', '.join(FILES)}, raw or .gz) in one of three ways: "
      f"`apt-get install dataset-fashion-mnist` (Debian/Ubuntu; installs them to "
      f"{DEBIAN_PACKAGE_DIR}); copy them from Zalando's fashion-mnist release into "
      f"${local_sets.DATA_DIR_ENV}/{SUBDIR} or into a folder passed as --data_dir; or fill the "
      f"Keras cache ~/.keras/datasets/{SUBDIR} by running "
      f"`keras.datasets.fashion_mnist.load_data()` on a machine with internet and copying it over.")


def _one_line(text: str) -> str:
  return " ".join(str(text).split())


def _read_bytes(path: str) -> bytes:
  """The (decompressed, for a .gz name) contents of `path`, with read errors as one line."""
  try:
    if path.endswith(".gz"):
      with gzip.open(path, "rb") as f:
        return f.read()
    with open(path, "rb") as f:
      return f.read()
  except (OSError, EOFError, zlib.error) as e:
    kind = "is not a valid or complete gzip file" if path.endswith(".gz") else "cannot be read"
    raise base.DatasetUnavailableError(
        f"{path} {kind} ({_one_line(e) or type(e).__name__}); {_REINSTALL}.") from None


def read_idx(path: str) -> np.ndarray:
  """Reads an unsigned-byte IDX file (raw, or gzipped if its name ends in .gz).

  The format: a big-endian 32-bit magic number made of two zero bytes, the element type (0x08 for
  unsigned bytes, the only type accepted) and the number of dimensions; then each dimension as a
  big-endian uint32; then the elements in C order.

  Args:
    path: the file.

  Returns:
    A read-only uint8 array of the shape in the header.

  Raises:
    DatasetUnavailableError: the file cannot be read or decompressed, is not an unsigned-byte IDX
      file, or holds more or fewer data bytes than its header announces.
  """
  raw = _read_bytes(path)
  if len(raw) < 4:
    raise base.DatasetUnavailableError(
        f"{path} is not an IDX file (only {len(raw)} bytes, shorter than the 4-byte magic "
        f"number); {_REINSTALL}.")
  magic = int.from_bytes(raw[:4], "big")
  ndim = raw[3]
  if raw[0] != 0 or raw[1] != 0 or raw[2] != _IDX_UBYTE or ndim == 0:
    raise base.DatasetUnavailableError(
        f"{path} is not an IDX file of unsigned bytes (magic 0x{magic:08x}; expected 0x00000803 "
        f"for images or 0x00000801 for labels); {_REINSTALL}.")
  header_size = 4 + 4 * ndim
  if len(raw) < header_size:
    raise base.DatasetUnavailableError(
        f"{path} is truncated: its header announces {ndim} dimensions ({header_size} header "
        f"bytes) but the file has only {len(raw)} bytes; {_REINSTALL}.")
  dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
  expected = math.prod(dims)
  actual = len(raw) - header_size
  if actual != expected:
    problem = "is truncated" if actual < expected else "has trailing bytes"
    raise base.DatasetUnavailableError(
        f"{path} {problem}: its header announces {' x '.join(map(str, dims))} = {expected} data "
        f"bytes but it holds {actual}; {_REINSTALL}.")
  return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(dims)


def _read_pair(directory: str, images_name: str, labels_name: str) -> Tuple[np.ndarray, np.ndarray]:
  """Reads and checks one images/labels pair: uint8 [N, 28, 28] images and int64 [N] labels."""
  images_path = file_path(directory, images_name)
  labels_path = file_path(directory, labels_name)
  images = read_idx(images_path)
  if images.ndim != 3 or images.shape[1:] != INFO.image_shape[:2]:
    raise base.DatasetUnavailableError(
        f"{images_path} holds an array of shape {'x'.join(map(str, images.shape))}, not "
        f"N x 28 x 28 images; {_REINSTALL}.")
  labels = read_idx(labels_path)
  if labels.ndim != 1:
    raise base.DatasetUnavailableError(
        f"{labels_path} holds an array of shape {'x'.join(map(str, labels.shape))}, not a 1-d list "
        f"of labels; {_REINSTALL}.")
  if len(images) != len(labels):
    raise base.DatasetUnavailableError(
        f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels; "
        f"the two must come from the same release: {_REINSTALL}.")
  if labels.size and labels.max() >= INFO.num_classes:
    raise base.DatasetUnavailableError(
        f"{labels_path} has labels outside 0..{INFO.num_classes - 1} (found {int(labels.max())}); "
        f"{_REINSTALL}.")
  return images, labels.astype(np.int64)


def validation_fraction(num_train: int) -> float:
  """The fraction of the training file held out for validation.

  VAL_SIZE / num_train, capped at a tenth so that small training files (test copies, subsets) keep
  most of their images for training: the real 60,000 images give 1/12, i.e. 5,000 validation images.
  """
  return min(VAL_SIZE / num_train, 0.1)


def train_val_indices(labels: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """The fixed stratified train/validation split of the training file's labels.

  Every class is cut in the proportion `validation_fraction(len(labels))` with seed SPLIT_SEED (see
  `base.stratified_split`). Fashion-MNIST's training file holds exactly 6,000 images of every
  class, so with the real data this gives exactly 500 validation images per class, 5,000 in all,
  and 55,000 training images.

  Args:
    labels: int labels of the whole training file (at least one).

  Returns:
    (train indices, validation indices), each sorted.
  """
  fraction = validation_fraction(len(labels))
  train, val = base.stratified_split(labels, (1.0 - fraction, fraction), SPLIT_SEED)
  return train, val


def load(data_dir: Optional[str] = None) -> base.DatasetSplits:
  """Loads Fashion-MNIST with the official test set and a fixed stratified validation set.

  Args:
    data_dir: folder holding the four IDX files, directly or in a `fashion-mnist` subfolder
      (None: the first of $MOTH_TF_DATA_DIR/fashion-mnist, DEBIAN_DIR and
      ~/.keras/datasets/fashion-mnist that holds them).

  Returns:
    DatasetSplits with float32 [0,1] 28x28x1 images and int64 labels: train and validation from the
    official training file (see `train_val_indices`), test the whole t10k file in file order.

  Raises:
    DatasetUnavailableError: the files are missing (the message says how to get them) or one of
      them is malformed (the message names it).
  """
  directory = find_data_dir(data_dir)
  x_train, y_train = _read_pair(directory, TRAIN_IMAGES, TRAIN_LABELS)
  x_test, y_test = _read_pair(directory, TEST_IMAGES, TEST_LABELS)
  if not len(y_train):
    raise base.DatasetUnavailableError(
        f"{file_path(directory, TRAIN_IMAGES)} holds no images; {_REINSTALL}.")
  train, val = train_val_indices(y_train)
  return base.DatasetSplits(
      INFO,
      base.as_float_images(x_train[train]), y_train[train],
      base.as_float_images(x_train[val]), y_train[val],
      base.as_float_images(x_test), y_test)
