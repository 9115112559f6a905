"""Common types for data sets: what every loader returns.

Every loader returns images as float32 in [0, 1], NHWC, and integer class labels. Per-dataset
normalisation (for example CIFAR-10's mean/std) is described by `DatasetInfo.normalization` and applied
inside the model, so triggers and attacks always work in [0, 1] pixel space.
"""

import dataclasses
from typing import Any, Optional, Sequence, Tuple

import numpy as np

from moth_tf.data import augment as augment_lib


class DatasetUnavailableError(RuntimeError):
  """The data set's files are missing and cannot be fetched; the message says how to get them."""


@dataclasses.dataclass(frozen=True)
class PGDSettings:
  """L-infinity PGD settings of one data set, in [0, 1] pixel units."""
  epsilon: float
  steps: int
  step_size: float


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Static facts about a data set.

  Attributes:
    name: registry name, e.g. "digits".
    num_classes: number of classes.
    image_shape: (H, W, C) at the data set's native size.
    class_names: human-readable class names, one per label.
    normalization: optional ((mean per channel), (std per channel)) on the [0,1] scale, applied
      inside the model.
    augment: the data set's training-time augmentation (moth_tf.data.augment), which every fit
      of a run uses unless --augment says otherwise.
    train_pgd: PGD used while training/hardening in adversarial mode (reference 2.1).
    eval_pgd: PGD used by the robustness evaluation (reference 3.4).
    default_model: the model used when --model is not given.
  """
  name: str
  num_classes: int
  image_shape: Tuple[int, int, int]
  class_names: Tuple[str, ...]
  normalization: Optional[Tuple[Tuple[float, ...], Tuple[float, ...]]] = None
  augment: augment_lib.Augmentation = augment_lib.NONE
  train_pgd: PGDSettings = PGDSettings(0.03, 8, 0.005)
  eval_pgd: PGDSettings = PGDSettings(0.03, 100, 0.001)
  default_model: str = "lenet"


@dataclasses.dataclass
class DatasetSplits:
  """Train/validation/test data of one data set.

  Images are float32 [N, H, W, C] in [0, 1]; labels are int64 [N]. `augmentation` is what every
  fit on these splits applies to its training batches (the data set's default unless the run chose
  another; `moth_tf.data.load_dataset`).

  Streaming training data: when `train_stream` is set, training batches come from it (a
  `tf.data.Dataset` of single (image, label) examples, never read into memory), and
  `x_train`/`y_train` hold only a bounded sample of it per class (moth_tf.data.stream), what trigger
  generation draws its images from. `train_count` is the stream's number of images when it is
  known (None: unknown or endless). Without a stream, `x_train`/`y_train` are the training set.
  """
  info: DatasetInfo
  x_train: np.ndarray
  y_train: np.ndarray
  x_val: np.ndarray
  y_val: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  augmentation: augment_lib.Augmentation = augment_lib.NONE
  train_stream: Any = None
  train_count: Optional[int] = None
  # Whether fits shuffle the stream through a bounded buffer: the data sets moth_tf streams itself
  # (tfds:, folder:) are; a user's own tf.data.Dataset is used as it is.
  shuffle_stream: bool = False

  @property
  def image_shape(self) -> Tuple[int, int, int]:
    return tuple(self.x_train.shape[1:])

  @property
  def streaming(self) -> bool:
    """Whether training batches come from `train_stream` (x_train is then a sample)."""
    return self.train_stream is not None

  @property
  def num_train(self) -> Optional[int]:
    """Training images: the stream's count (None: unknown or endless), else len(x_train)."""
    return self.train_count if self.streaming else len(self.x_train)

  @property
  def num_classes(self) -> int:
    return self.info.num_classes

  def split(self, name: str) -> Tuple[np.ndarray, np.ndarray]:
    """Returns (x, y) of the split called "train", "val" or "test"."""
    if name not in ("train", "val", "test"):
      raise ValueError(f"unknown split {name!r}; use train, val or test")
    return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")


def check_splits(splits: DatasetSplits, source: str):
  """Raises DatasetUnavailableError unless `splits` holds images and labels a model can train on.

  Every loader promises float [0, 1] NHWC images and integer labels; a damaged or hand-made file
  can break that silently (NaN pixels train a NaN model, and it gets saved). Checked, per split:
  4-d images with the same (H, W, C) in every split, one label per image, integer labels in
  0..num_classes-1, and finite image values in [0, 1].

  Args:
    splits: what a loader returned.
    source: names the data for the message, e.g. "gtsrb data set in /data".
  """
  def fail(split, problem):
    raise DatasetUnavailableError(f"{source}: {split} {problem}; re-create or re-prepare the data "
                                  "set's files")

  n = splits.num_classes
  first = None
  for name in ("train", "val", "test"):
    x, y = (np.asarray(a) for a in splits.split(name))
    if x.ndim != 4:
      fail(name, f"images have shape {x.shape}, not 4-d [N, H, W, C]")
    if first is None:
      first = (name, x.shape[1:])
    elif x.shape[1:] != first[1]:
      fail(name, f"images are {'x'.join(map(str, x.shape[1:]))} (HxWxC) but {first[0]} images "
                 f"are {'x'.join(map(str, first[1]))}")
    if y.ndim != 1 or len(y) != len(x):
      fail(name, f"has {len(x)} images but labels of shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
      fail(name, f"labels are {y.dtype}, not integer class indices")
    if y.size and (y.min() < 0 or y.max() >= n):
      fail(name, f"labels span {y.min()}..{y.max()}, outside the classes 0..{n - 1}")
    if not x.size:
      continue
    # min/max pass over the data without copies (the big sets are ~600 MB); either one is NaN or
    # infinite exactly when some value is, and only then are the bad values counted.
    low, high = x.min(), x.max()
    if not (np.isfinite(low) and np.isfinite(high)):
      bad = int(np.count_nonzero(~np.isfinite(x)))
      fail(name, f"images hold {bad} non-finite values (NaN or inf)")
    if low < 0.0 or high > 1.0:
      fail(name, f"image values span [{low:.4g}, {high:.4g}], outside [0, 1]")


def stratified_split(labels: np.ndarray, fractions: Sequence[float], seed: int):
  """Deterministic stratified split of indices into len(fractions) parts.

  Each class's indices are shuffled with `seed` and cut by the cumulative fractions, so every part
  holds about the same class proportions. Returns a list of sorted index arrays.
  """
  if abs(sum(fractions) - 1.0) > 1e-6:
    raise ValueError(f"fractions must sum to 1, got {fractions}")
  rng = np.random.default_rng(seed)
  parts = [[] for _ in fractions]
  bounds = np.cumsum(fractions)
  for c in np.unique(labels):
    idx = np.flatnonzero(labels == c)
    rng.shuffle(idx)
    cuts = np.round(bounds * len(idx)).astype(int)
    start = 0
    for k, stop in enumerate(cuts):
      parts[k].append(idx[start:stop])
      start = stop
  return [np.sort(np.concatenate(p)) for p in parts]


def as_float_images(x: np.ndarray) -> np.ndarray:
  """uint8 [0,255] (or float) images -> float32 in [0,1], NHWC with a channel axis."""
  x = np.asarray(x)
  if x.ndim == 3:
    x = x[..., None]
  if x.dtype == np.uint8:
    return (x.astype(np.float32) / 255.0)
  x = x.astype(np.float32)
  if x.size and x.max() > 1.0 + 1e-6:
    x = x / 255.0
  return x
