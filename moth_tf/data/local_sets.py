"""GTSRB and LISA traffic signs from `.npz` files made by `python -m moth_tf.prepare`.

Both sets come only as raw archives of full-size images with box annotations (LISA is not in tfds
at all), so `moth_tf.data.prepare` turns the official archives into `{data_dir}/gtsrb.npz` and
`{data_dir}/lisa.npz` once, and these loaders read them back. The default
data_dir is $MOTH_TF_DATA_DIR, else ~/moth_tf_data.

File format (np.savez_compressed, no pickled objects): x_train, x_val, x_test are uint8
[N, 32, 32, 3]; y_train, y_val, y_test are integer labels; class_names is a string array with one
name per label. The file's class_names are authoritative: a file with fewer classes (for example a
LISA export with fewer than 18 sign types) is loaded with a DatasetInfo narrowed to them.

GTSRB: the 43 classes of the German Traffic Sign Recognition Benchmark, labelled by the official
ClassId, each image cropped to its annotated ROI and resized to 32x32. Train/validation are a
stratified 90/10 split of the official training set (seeded); test is the official 12,630-image
test set. Note that the official training set consists of tracks of about 30 photographs of the
same physical sign, so a per-image split puts near-duplicates of validation images in train; the
validation accuracy is therefore optimistic, while the official test set is clean. The default
model stays "resnet20": the reference fixes no model for GTSRB, and resnet20 is the paper's main
32x32 architecture with a capacity suited to 43 classes and ~35k training images.

LISA: the 18 most frequent sign types of the LISA Traffic Sign Dataset (ties broken by name),
labelled in alphabetical order so labels do not depend on exact counts. With the public release
(about 7,855 annotations of 47 types) this should give, by label:

   0 addedLane          6 school              12 speedLimit45
   1 keepRight          7 schoolSpeedLimit25  13 speedLimitUrdbl
   2 laneEnds           8 signalAhead         14 stop
   3 merge              9 speedLimit25        15 stopAhead
   4 pedestrianCrossing 10 speedLimit30       16 turnRight
   5 rightLaneMustTurn  11 speedLimit35       17 yield

The list is computed from the annotations when preparing; the file's class_names record the list
actually produced, and `prepare` warns when fewer than 18 types exist. speedLimitUrdbl ("speed
limit, number unreadable") is an annotation tag like any other and is kept on frequency alone.
Every annotated box (occluded ones included) is cropped and resized to 32x32, then split 70/10/20
train/val/test, stratified by class with a fixed seed. As with GTSRB, boxes from consecutive frames
of one video show the same physical sign, so validation and test are not fully independent of
train.
"""

import dataclasses
import os
import zipfile
import zlib
import numpy as np

from moth_tf.data import base

GTSRB_CLASS_NAMES = (
    "Speed limit (20km/h)",
    "Speed limit (30km/h)",
    "Speed limit (50km/h)",
    "Speed limit (60km/h)",
    "Speed limit (70km/h)",
    "Speed limit (80km/h)",
    "End of speed limit (80km/h)",
    "Speed limit (100km/h)",
    "Speed limit (120km/h)",
    "No passing",
    "No passing for vehicles over 3.5 metric tons",
    "Right-of-way at the next intersection",
    "Priority road",
    "Yield",
    "Stop",
    "No vehicles",
    "Vehicles over 3.5 metric tons prohibited",
    "No entry",
    "General caution",
    "Dangerous curve to the left",
    "Dangerous curve to the right",
    "Double curve",
    "Bumpy road",
    "Slippery road",
    "Road narrows on the right",
    "Road work",
    "Traffic signals",
    "Pedestrians",
    "Children crossing",
    "Bicycles crossing",
    "Beware of ice/snow",
    "Wild animals crossing",
    "End of all speed and passing limits",
    "Turn right ahead",
    "Turn left ahead",
    "Ahead only",
    "Go straight or right",
    "Go straight or left",
    "Keep right",
    "Keep left",
    "Roundabout mandatory",
    "End of no passing",
    "End of no passing by vehicles over 3.5 metric tons",
)

LISA_CLASS_NAMES = (
    "addedLane", "keepRight", "laneEnds", "merge", "pedestrianCrossing", "rightLaneMustTurn",
    "school", "schoolSpeedLimit25", "signalAhead", "speedLimit25", "speedLimit30", "speedLimit35",
    "speedLimit45", "speedLimitUrdbl", "stop", "stopAhead", "turnRight", "yield",
)

GTSRB_INFO = base.DatasetInfo(
    name="gtsrb", num_classes=43, image_shape=(32, 32, 3),
    class_names=GTSRB_CLASS_NAMES,
    train_pgd=base.PGDSettings(0.03, 8, 0.005),
    eval_pgd=base.PGDSettings(0.03, 100, 0.001),
    default_model="resnet20")

LISA_INFO = base.DatasetInfo(
    name="lisa", num_classes=18, image_shape=(32, 32, 3),
    class_names=LISA_CLASS_NAMES,
    train_pgd=base.PGDSettings(0.1, 8, 0.02),
    eval_pgd=base.PGDSettings(0.1, 100, 0.01),
    default_model="cnn")

# Environment variable naming the directory that holds the prepared .npz files.
DATA_DIR_ENV = "MOTH_TF_DATA_DIR"

NPZ_ARRAY_KEYS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
NPZ_KEYS = NPZ_ARRAY_KEYS + ("class_names",)

_HOW_TO_GET = {
    "gtsrb": (
        "get the official German Traffic Sign Recognition Benchmark archives "
        "GTSRB_Final_Training_Images.zip, GTSRB_Final_Test_Images.zip and GTSRB_Final_Test_GT.zip "
        "(GT-final_test.csv) from the INI benchmark site (benchmark.ini.rub.de), extract them into "
        "one folder DIR"),
    "lisa": (
        "get the LISA Traffic Sign Dataset (the frames plus allAnnotations.csv) from UCSD's CVRR "
        "lab (cvrr.ucsd.edu/LISA), extract it into a folder DIR"),
}


def default_data_dir() -> str:
  """Where prepared .npz files live by default: $MOTH_TF_DATA_DIR, else ~/moth_tf_data."""
  return os.environ.get(DATA_DIR_ENV) or os.path.join(os.path.expanduser("~"), "moth_tf_data")


def npz_path(name: str, data_dir=None) -> str:
  """The prepared file of data set `name` ("gtsrb" or "lisa") under `data_dir` (None: default)."""
  return os.path.join(data_dir or default_data_dir(), f"{name}.npz")


def load_gtsrb(data_dir=None) -> base.DatasetSplits:
  """Loads GTSRB from `{data_dir}/gtsrb.npz`.

  Args:
    data_dir: folder holding gtsrb.npz (None: $MOTH_TF_DATA_DIR, else ~/moth_tf_data).

  Returns:
    DatasetSplits with float32 [0,1] 32x32x3 images and int64 labels (the official ClassIds).

  Raises:
    DatasetUnavailableError: the file is missing or is not a prepared GTSRB file.
  """
  return _load_npz(GTSRB_INFO, data_dir)


def load_lisa(data_dir=None) -> base.DatasetSplits:
  """Loads LISA from `{data_dir}/lisa.npz`.

  Args:
    data_dir: folder holding lisa.npz (None: $MOTH_TF_DATA_DIR, else ~/moth_tf_data).

  Returns:
    DatasetSplits with float32 [0,1] 32x32x3 images and int64 labels.

  Raises:
    DatasetUnavailableError: the file is missing or is not a prepared LISA file.
  """
  return _load_npz(LISA_INFO, data_dir)


def _one_line(error: Exception) -> str:
  text = " ".join(str(error).split()) or type(error).__name__
  return text[:200]


def _load_npz(info, data_dir):
  """Reads a prepared file and returns its splits, with `info` narrowed to the file's classes."""
  path = npz_path(info.name, data_dir)
  prepare_cmd = (f"`python -m moth_tf.prepare --dataset={info.name} --source=DIR "
                 f"--data_dir={os.path.dirname(path)}`")
  if not os.path.isfile(path):
    raise base.DatasetUnavailableError(
        f"{info.name} is not prepared: {path} does not exist. To make it, "
        f"{_HOW_TO_GET[info.name]} and run {prepare_cmd} (or point --data_dir / "
        f"${DATA_DIR_ENV} at the folder that holds {info.name}.npz).")
  # allow_pickle=False: the file may come from elsewhere, and a pickle could run code on load.
  try:
    with np.load(path, allow_pickle=False) as npz:
      missing = [k for k in NPZ_KEYS if k not in npz.files]
      if missing:
        raise base.DatasetUnavailableError(
            f"{path} is not a prepared {info.name} file (no {', '.join(missing)}); re-create it "
            f"with {prepare_cmd}.")
      arrays = {k: npz[k] for k in NPZ_ARRAY_KEYS}
      class_names = tuple(str(n) for n in npz["class_names"])
  except (zipfile.BadZipFile, EOFError, OSError, ValueError, zlib.error) as e:
    # A file cut short (an interrupted copy) or otherwise damaged: zip, zlib or npy header errors.
    raise base.DatasetUnavailableError(
        f"{path} is not a readable .npz file (truncated or corrupt: {_one_line(e)}); re-create "
        f"it with {prepare_cmd}.") from None

  for split in ("train", "val", "test"):
    # A prepared file holds colour images; grey or flattened ones come from a different tool.
    shape = arrays[f"x_{split}"].shape
    if len(shape) != 4 or shape[-1] != info.image_shape[-1]:
      raise base.DatasetUnavailableError(
          f"{path}: {split} images have shape {shape}, not [N, H, W, {info.image_shape[-1]}]; "
          f"re-create it with {prepare_cmd}.")
  if class_names != info.class_names:
    info = dataclasses.replace(info, num_classes=len(class_names), class_names=class_names)
  labels = [arrays[k].astype(np.int64) for k in ("y_train", "y_val", "y_test")]
  for y in labels:
    if y.size and (y.min() < 0 or y.max() >= info.num_classes):
      raise base.DatasetUnavailableError(
          f"{path} has labels outside 0..{info.num_classes - 1}; re-create it with {prepare_cmd}.")
  return base.DatasetSplits(
      info,
      base.as_float_images(arrays["x_train"]), labels[0],
      base.as_float_images(arrays["x_val"]), labels[1],
      base.as_float_images(arrays["x_test"]), labels[2])
