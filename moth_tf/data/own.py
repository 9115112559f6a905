"""Users' own image-classification data, streamed: `tfds:NAME` and `folder:PATH`.

Both forms stream their training split (DatasetSplits.train_stream): it is never read into memory.
What is in memory is a bounded sample of it (the first `trigger_pool` images of every class, what
trigger generation draws from; moth_tf.data.stream.class_sample) and the validation and test
splits, read as arrays.

`tfds:NAME`: any tensorflow_datasets image-classification set (NAME may carry a config and version,
`mnist:3.*.*`). The image and label are the set's `Image` and `ClassLabel` features (its
`supervised_keys` when they are such a pair, else the only feature of each kind, else the ones
called "image" and "label"); class names come from the ClassLabel. Splits:

  * train: the "train" split, without the images held out below;
  * test: the "test" split, else the last other split (in the order tfds lists them), else the
    images held out right after the validation images;
  * validation: the "validation" split when the set has one (and it is not the test split), else
    the first `held_out_size(n)` training images: 4% of the n training images, at least 1 and at
    most 5,000 (CIFAR-10's 2,000 of 50,000, as moth_tf.data.tfds_sets holds out).

"First" is the train split's order on disk (`shuffle_files=False`), which tfds fixes when it
prepares the set and which is already shuffled. Sets whose images have no fixed size need
--image_size (all images are then resized to it). Downloads follow the rules of the built-in tfds
sets (moth_tf.data.tfds_sets): into `data_dir` (else $TFDS_DATA_DIR, else ~/tensorflow_datasets),
never with `download=False` or $MOTH_TF_NO_DOWNLOAD=1.

`folder:PATH`: the `keras.utils.image_dataset_from_directory` layout, one sub-folder of images per
class (class names are the sub-folders' names, sorted; images in nested folders count for their
class; .bmp, .gif, .jpeg, .jpg and .png files). Splits:

  * PATH/train/ and PATH/test/ (both present): those, each a folder of class folders; validation
    is PATH/val/ (or PATH/validation/) when there, else a stratified, seeded 10% of the training
    files;
  * otherwise PATH's class folders are split by file, stratified and seeded: 80% train, 10%
    validation, 10% test (each class's files, sorted by path, are shuffled with seed 0 and cut).

Images are read as grey-scale when the first training image (the first file of the first class,
by sorted path) has one channel, else as RGB (an alpha channel is dropped), and resized (bilinear)
to --image_size, else to the size of that first image. The training files are streamed in one
fixed shuffled order (seed 0), so the classes are interleaved from the start.

Both forms: default model small_cnn, no augmentation unless --augment asks for one.
"""

import hashlib
import os
import re
from typing import List, Optional, Tuple

import numpy as np

from moth_tf.data import base
from moth_tf.data import stream

TFDS_PREFIX = "tfds:"
FOLDER_PREFIX = "folder:"
DEFAULT_MODEL = "small_cnn"

# Validation (and, for a set with only a train split, test) images held out of a tfds train split.
HELD_OUT_FRACTION = 0.04
HELD_OUT_MAX = 5000

# What image_dataset_from_directory reads.
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
FOLDER_SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
FOLDER_VAL_FRACTION = 0.1
FOLDER_SPLIT_SEED = 0
# The split folders of the train/test layout; the first of the validation names present is used.
_TRAIN_DIR, _TEST_DIR, _VAL_DIRS = "train", "test", ("val", "validation")


def is_own(name: str) -> bool:
  """Whether `name` is a `tfds:NAME` or `folder:PATH` data set."""
  return isinstance(name, str) and name.startswith((TFDS_PREFIX, FOLDER_PREFIX))


def parse(name: str) -> Tuple[str, str]:
  """("tfds", NAME) or ("folder", PATH with ~ expanded) of an own data set's name."""
  if name.startswith(TFDS_PREFIX):
    return "tfds", name[len(TFDS_PREFIX):].strip()
  if name.startswith(FOLDER_PREFIX):
    return "folder", os.path.expanduser(name[len(FOLDER_PREFIX):].strip())
  raise ValueError(f"{name!r} is neither tfds:NAME nor folder:PATH")


def check_name(name: str) -> Optional[str]:
  """Why an own data set's name cannot work (one line), or None. Looks only at the name and, for
  a folder, whether it is a directory: the contents are checked when it is loaded."""
  kind, value = parse(name)
  if not value:
    return (f"give the {'tfds data set name' if kind == 'tfds' else 'folder'} after the colon, "
            "e.g. tfds:mnist or folder:/data/my_images")
  if kind == "folder" and not os.path.isdir(value):
    return f"{value} is not a directory; give a folder with one sub-folder of images per class"
  return None


def run_dir_name(name: str) -> str:
  """A directory-name component for a data set: registered names as they are, `tfds:NAME` as
  `tfds-NAME` (anything but letters, digits, `_`, `.` and `-` made `-`), `folder:PATH` as
  `folder-BASENAME-HASH`, HASH the first 6 hex digits of the SHA-1 of the folder's real path (two
  folders with the same base name must not share run directories)."""
  if not is_own(name):
    return name
  kind, value = parse(name)
  if kind == "tfds":
    return "tfds-" + _safe(value)
  real = os.path.realpath(value)
  digest = hashlib.sha1(real.encode("utf-8")).hexdigest()[:6]
  return f"folder-{_safe(os.path.basename(real.rstrip(os.sep)) or 'root')}-{digest}"


def _safe(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "data"


def held_out_size(num_train: int) -> int:
  """Training images held out of a tfds train split for validation: 4%, within [1, 5000]."""
  return int(min(HELD_OUT_MAX, max(1, round(HELD_OUT_FRACTION * num_train))))


def _info(name, image_shape, class_names) -> base.DatasetInfo:
  """The DatasetInfo of own data: no normalisation or augmentation, the default PGD budgets."""
  return base.DatasetInfo(name=name, num_classes=len(class_names), image_shape=tuple(image_shape),
                          class_names=tuple(class_names), default_model=DEFAULT_MODEL)


def describe(name: str, data_dir: Optional[str] = None,
             image_size: Optional[int] = None) -> base.DatasetInfo:
  """The DatasetInfo (classes, image shape as loaded) of an own data set, without reading it: a
  tfds builder's metadata (nothing is downloaded) or a folder's class folders and first image.

  Raises:
    DatasetUnavailableError: the set cannot be used (unknown tfds name, no image and label
      features, images without a fixed size and no `image_size`; a folder without class folders
      or images); the message says what to do.
  """
  kind, value = parse(name)
  if kind == "tfds":
    builder = _tfds_builder(name, value, data_dir)
    return _tfds_plan(name, builder, image_size)["info"]
  root = _check_folder(name, value)
  train_root = os.path.join(root, _TRAIN_DIR) if _has_split_dirs(root) else root
  classes = _class_dirs(name, train_root)
  first = _first_image(name, train_root, classes)
  shape, _ = _folder_image_shape(name, first, image_size)
  return _info(name, shape, classes)


def load(name: str, data_dir: Optional[str] = None, image_size: Optional[int] = None,
         download: bool = True,
         trigger_pool: int = stream.DEFAULT_PER_CLASS) -> base.DatasetSplits:
  """Loads an own data set with a streamed training split.

  Args:
    name: `tfds:NAME` or `folder:PATH`.
    data_dir: the tfds data directory (tfds: only).
    image_size: resize every image to image_size x image_size (bilinear); required for tfds sets
      whose images have no fixed size.
    download: tfds: may download and prepare a missing set (as moth_tf.data.tfds_sets).
    trigger_pool: training images per class held in memory (x_train/y_train), the first ones of
      the stream.

  Returns:
    DatasetSplits whose `train_stream` yields single (float32 [0,1] image, int64 label) examples,
    with `train_count` its size, `x_train`/`y_train` the per-class sample, and the validation and
    test splits as arrays.

  Raises:
    DatasetUnavailableError: as `describe`, or the data is missing and could not (or was not to)
      be downloaded, or an image cannot be decoded; the message says what to do.
  """
  kind, value = parse(name)
  if kind == "tfds":
    return _load_tfds(name, value, data_dir, image_size, download, trigger_pool)
  return _load_folder(name, value, image_size, trigger_pool)


def _splits(info, train_stream, train_count, val, test, trigger_pool, source, find_bad=None):
  """DatasetSplits of a stream and two datasets read into memory, with the stream's class sample.

  `find_bad`, if given, returns the first file that does not decode (called only after reading
  failed, to name it)."""
  import tensorflow as tf

  try:
    x_val, y_val = stream.read_all(val, f"{source}: validation")
    x_test, y_test = stream.read_all(test, f"{source}: test")
    x_train, y_train = stream.class_sample(train_stream, info.num_classes, trigger_pool)
  except tf.errors.OpError as err:
    bad = find_bad() if find_bad else None
    what = f"cannot decode {bad}" if bad else "cannot read its images"
    raise base.DatasetUnavailableError(
        f"{source}: {what} ({_first_line(err)}); remove or re-save the damaged file") from None
  return base.DatasetSplits(info, x_train, y_train, x_val, y_val, x_test, y_test,
                            train_stream=train_stream, train_count=train_count,
                            shuffle_stream=True)


def _first_line(err) -> str:
  """A TensorFlow error's own words, without the graph and iterator names around them."""
  text = str(getattr(err, "message", err))
  text = re.sub(r"\{\{.*?\}\}|\[\[.*?\]\]|\[Op:[^\]]*\]", " ", text, flags=re.S)
  text = re.sub(r"^.*transformation with iterator: \S+: ", "", " ".join(text.split()))
  text = re.sub(r"\s*name:\s*$", "", text).strip() or type(err).__name__
  return text[:240] + ("..." if len(text) > 240 else "")


def _first_undecodable(paths) -> Optional[str]:
  """The first of `paths` that tf.io.decode_image cannot decode (None: they all decode)."""
  import tensorflow as tf

  for path in paths:
    try:
      tf.io.decode_image(tf.io.read_file(path), expand_animations=False)
    except tf.errors.OpError:
      return path
  return None


# --- tfds:NAME ------------------------------------------------------------------------------------


def _tfds_builder(name, tfds_name, data_dir):
  """tfds's builder of `tfds_name` (its code, or a prepared copy in `data_dir`)."""
  import tensorflow_datasets as tfds  # Imported lazily: tfds is slow to import.
  from moth_tf.data import tfds_sets

  try:
    return tfds.builder(tfds_name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise base.DatasetUnavailableError(
        f"{name}: tensorflow_datasets has no data set {tfds_name!r}, and the tfds data dir "
        f"{tfds_sets.data_dir_shown(data_dir)} holds no prepared copy of it; pick a name from "
        "https://www.tensorflow.org/datasets/catalog/overview (or tfds.list_builders())") from None


def _tfds_plan(name, builder, image_size) -> dict:
  """What a tfds set's examples become: the image and label features, the scale and size of the
  images, the DatasetInfo. Refuses a set that is no image classification."""
  import tensorflow_datasets as tfds

  features = builder.info.features
  items = dict(features.items()) if hasattr(features, "items") else {}
  images = sorted(k for k, f in items.items() if isinstance(f, tfds.features.Image))
  labels = sorted(k for k, f in items.items() if isinstance(f, tfds.features.ClassLabel))
  keys = builder.info.supervised_keys
  if (isinstance(keys, tuple) and len(keys) == 2 and keys[0] in images and keys[1] in labels):
    image_key, label_key = keys
  else:
    image_key = _pick(images, "image")
    label_key = _pick(labels, "label")
  if image_key is None or label_key is None:
    listed = ", ".join(f"{k} ({type(f).__name__})" for k, f in items.items()) or repr(features)
    raise base.DatasetUnavailableError(
        f"{name} is not an image-classification set moth_tf can read: it needs one Image and one "
        f"ClassLabel feature (or supervised_keys naming such a pair), but its features are "
        f"{listed}; pick another set or write the images into a folder:PATH")
  image = items[image_key]
  height, width, channels = image.shape
  if channels is None:
    raise base.DatasetUnavailableError(
        f"{name}: its {image_key!r} images have no fixed number of channels (shape "
        f"{image.shape}); moth_tf needs one")
  if image_size:
    height = width = image_size
  elif height is None or width is None:
    raise base.DatasetUnavailableError(
        f"{name}: its {image_key!r} images have no fixed size (shape {image.shape}); pass "
        "--image_size=N to resize them all to N x N")
  dtype = np.dtype(image.np_dtype)
  # Images come as integers of their full range (uint8, uint16) or floats already in [0, 1].
  scale = float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else 1.0
  return {"image": image_key, "label": label_key, "scale": scale,
          "size": (height, width) if image_size else None,
          "info": _info(name, (height, width, channels), items[label_key].names)}


def _pick(keys: List[str], preferred: str) -> Optional[str]:
  if len(keys) == 1:
    return keys[0]
  return preferred if preferred in keys else None


def _tfds_split_names(name, builder):
  """(test split or None, validation split or None) as the module docstring says."""
  names = list(builder.info.splits.keys())
  if "train" not in names:
    raise base.DatasetUnavailableError(
        f"{name} has no train split (its splits: {', '.join(names) or 'none'}); moth_tf trains "
        "on the split called train")
  others = [s for s in names if s != "train"]
  test = "test" if "test" in others else (others[-1] if others else None)
  val = "validation" if "validation" in others and test != "validation" else None
  return test, val


def _load_tfds(name, tfds_name, data_dir, image_size, download, trigger_pool):
  import tensorflow as tf
  from moth_tf.data import tfds_sets

  builder = _tfds_builder(name, tfds_name, data_dir)
  plan = _tfds_plan(name, builder, image_size)  # Refused before any download.
  tfds_sets.prepare(builder, name, tfds_name, data_dir, download)
  if not builder.info.splits:
    raise base.DatasetUnavailableError(tfds_sets.missing_message(name, tfds_name, data_dir))
  test, val = _tfds_split_names(name, builder)
  num_train = builder.info.splits["train"].num_examples
  held = held_out_size(num_train)
  # The train split's leading images held out: validation's (when the set has no validation
  # split), then test's (when it has no other split at all).
  start = 0 if val else held
  val_split = val or f"train[:{held}]"
  test_split = test or f"train[{start}:{start + held}]"
  start += 0 if test else held
  if num_train <= start:
    raise base.DatasetUnavailableError(
        f"{name}: its train split has {num_train} images, too few to hold out {start} for "
        "validation and test and still train on some")
  train_split = f"train[{start}:]" if start else "train"

  def to_example(features):
    image = tf.cast(features[plan["image"]], tf.float32)
    if plan["scale"] != 1.0:
      image = image / plan["scale"]
    if plan["size"]:
      image = tf.clip_by_value(tf.image.resize(image, plan["size"], method="bilinear"), 0.0, 1.0)
    return image, tf.cast(features[plan["label"]], tf.int64)

  def read(split):
    try:
      ds = builder.as_dataset(split=split, shuffle_files=False)
    except AssertionError as err:
      # Downloads off and nothing prepared: tfds says so after looking only at the directory.
      raise base.DatasetUnavailableError(
          tfds_sets.missing_message(name, tfds_name, data_dir)) from err
    return ds.map(to_example, num_parallel_calls=tf.data.AUTOTUNE)

  return _splits(plan["info"], read(train_split), num_train - start, read(val_split),
                 read(test_split), trigger_pool, name)


# --- folder:PATH ----------------------------------------------------------------------------------


def _check_folder(name, path):
  if not os.path.isdir(path):
    raise base.DatasetUnavailableError(
        f"{name}: {path} is not a directory; give a folder with one sub-folder of images per "
        "class")
  return path


def _has_split_dirs(root):
  return all(os.path.isdir(os.path.join(root, d)) for d in (_TRAIN_DIR, _TEST_DIR))


def _class_dirs(name, root) -> List[str]:
  """The class folders of `root`, sorted (hidden folders left out)."""
  classes = sorted(d for d in os.listdir(root)
                   if not d.startswith(".") and os.path.isdir(os.path.join(root, d)))
  if not classes:
    raise base.DatasetUnavailableError(
        f"{name}: {root} has no class sub-folders; put each class's images in a folder of its "
        f"own ({os.path.join(root, 'CLASS_NAME', 'image.png')}), as "
        "keras.utils.image_dataset_from_directory reads them")
  return classes


def _image_files(class_dir) -> List[str]:
  """Every image file under `class_dir` (nested folders too), sorted by path."""
  found = []
  for folder, dirs, files in os.walk(class_dir, followlinks=True):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    found += [os.path.join(folder, f) for f in files
              if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")]
  return sorted(found)


def _first_image(name, root, classes):
  for c in classes:
    files = _image_files(os.path.join(root, c))
    if files:
      return files[0]
  raise base.DatasetUnavailableError(
      f"{name}: the class folders of {root} hold no images ({', '.join(IMAGE_EXTENSIONS)})")


def _folder_image_shape(name, path, image_size):
  """((H, W, C) as loaded, channels to decode to) from the first image and --image_size."""
  import tensorflow as tf

  try:
    shape = tf.io.decode_image(tf.io.read_file(path), expand_animations=False).shape
  except tf.errors.OpError as err:
    raise base.DatasetUnavailableError(
        f"{name}: cannot decode {path} ({_first_line(err)}); remove or re-save it") from None
  channels = 1 if shape[-1] == 1 else 3
  height, width = (image_size, image_size) if image_size else (shape[0], shape[1])
  return (height, width, channels), channels


def _labelled_files(name, root, classes, strict_classes=False):
  """(paths, labels) of the images in `root`'s class folders, labelled by their index in
  `classes` (with `strict_classes`, a folder not in `classes` is refused)."""
  paths, labels = [], []
  for c in _class_dirs(name, root):
    if c not in classes:
      if strict_classes:
        raise base.DatasetUnavailableError(
            f"{name}: {root} has a class folder {c!r} that {_TRAIN_DIR}/ does not have; every "
            f"split's class folders must be among {_TRAIN_DIR}/'s")
      continue
    files = _image_files(os.path.join(root, c))
    paths += files
    labels += [classes.index(c)] * len(files)
  return paths, np.asarray(labels, np.int64)


def _folder_files(name, root):
  """(class names, {"train"|"val"|"test": (paths, labels)}) by the module docstring's rules."""
  if _has_split_dirs(root):
    train_root = os.path.join(root, _TRAIN_DIR)
    classes = _class_dirs(name, train_root)
    parts = {"train": _labelled_files(name, train_root, classes),
             "test": _labelled_files(name, os.path.join(root, _TEST_DIR), classes, True)}
    val_dir = next((os.path.join(root, d) for d in _VAL_DIRS
                    if os.path.isdir(os.path.join(root, d))), None)
    if val_dir:
      parts["val"] = _labelled_files(name, val_dir, classes, True)
    else:
      paths, labels = parts["train"]
      train, val = base.stratified_split(labels, (1 - FOLDER_VAL_FRACTION, FOLDER_VAL_FRACTION),
                                         FOLDER_SPLIT_SEED)
      parts["train"] = ([paths[i] for i in train], labels[train])
      parts["val"] = ([paths[i] for i in val], labels[val])
  else:
    classes = _class_dirs(name, root)
    paths, labels = _labelled_files(name, root, classes)
    if not paths:
      _first_image(name, root, classes)  # Raises the "no images" error.
    cut = base.stratified_split(labels, FOLDER_SPLIT_FRACTIONS, FOLDER_SPLIT_SEED)
    parts = {split: ([paths[i] for i in index], labels[index])
             for split, index in zip(("train", "val", "test"), cut)}
  for split, (paths, _) in parts.items():
    if not paths:
      raise base.DatasetUnavailableError(
          f"{name}: its {split} split has no images ({_rule(root, split)}); add images (every "
          "class's cut is rounded: about 10 images per class give each split some)"
          + ("" if _has_split_dirs(root) else
             f", or make {_TRAIN_DIR}/, {_TEST_DIR}/ and val/ folders yourself"))
  return classes, parts


def _rule(root, split):
  """How `split` of the folder `root` is made, for messages."""
  if not _has_split_dirs(root):
    return "80/10/10 of every class's files"
  if split != "val" or any(os.path.isdir(os.path.join(root, d)) for d in _VAL_DIRS):
    return f"the {split} folder"
  return f"{FOLDER_VAL_FRACTION:.0%} of every class of {_TRAIN_DIR}/, no val/ folder"


def _load_folder(name, path, image_size, trigger_pool):
  import tensorflow as tf

  root = _check_folder(name, path)
  classes, parts = _folder_files(name, root)
  train_root = os.path.join(root, _TRAIN_DIR) if _has_split_dirs(root) else root
  shape, channels = _folder_image_shape(name, _first_image(name, train_root, classes), image_size)
  height, width = shape[:2]

  def decode(path, label):
    image = tf.io.decode_image(tf.io.read_file(path), channels=channels, dtype=tf.float32,
                               expand_animations=False)
    image = tf.cond(
        tf.reduce_all(tf.shape(image)[:2] == (height, width)),
        lambda: image,
        lambda: tf.clip_by_value(tf.image.resize(image, (height, width), "bilinear"), 0.0, 1.0))
    return tf.ensure_shape(image, shape), label

  def read(paths, labels):
    return tf.data.Dataset.from_tensor_slices((list(paths), labels)).map(
        decode, num_parallel_calls=tf.data.AUTOTUNE)

  train_paths, train_labels = parts["train"]
  # One fixed shuffle of the file list: a class-by-class stream would fill the per-class sample
  # only after reading most of the set, and a bounded shuffle buffer could not mix it.
  order = np.random.default_rng(FOLDER_SPLIT_SEED).permutation(len(train_paths))
  train = read([train_paths[i] for i in order], train_labels[order])
  every_file = [p for split in ("val", "test", "train") for p in parts[split][0]]
  return _splits(_info(name, shape, classes), train, len(train_paths), read(*parts["val"]),
                 read(*parts["test"]), trigger_pool, name,
                 find_bad=lambda: _first_undecodable(every_file))
