"""Turns the official GTSRB or LISA archives into the .npz file that `moth_tf.data` loads.

    python -m moth_tf.prepare --dataset=gtsrb --source=DIR [--data_dir=OUT]
    python -m moth_tf.prepare --dataset=lisa --source=DIR [--data_dir=OUT]

writes OUT/gtsrb.npz or OUT/lisa.npz (OUT defaults to $MOTH_TF_DATA_DIR, else ~/moth_tf_data).
`moth_tf/data/local_sets.py` describes the file format, the classes and the splits.

GTSRB source: the folder into which GTSRB_Final_Training_Images.zip, GTSRB_Final_Test_Images.zip
and GTSRB_Final_Test_GT.zip were extracted (it holds GTSRB/ and GT-final_test.csv), or GTSRB/
itself. Expected inside:
    GTSRB/Final_Training/Images/{class:05d}/GT-{class:05d}.csv and *.ppm
    GTSRB/Final_Test/Images/*.ppm, labels in GT-final_test.csv (in the source folder, GTSRB/,
    GTSRB/Final_Test/ or next to the images).

LISA source: the folder holding allAnnotations.csv (or its parent); the CSV's Filename column is
relative to the CSV's folder.

Every image is cropped to its annotated box (corners inclusive, clipped to the image) and resized
to 32x32 with PIL's bilinear filter, which averages over the whole source footprint when
shrinking. The output is written to a temporary file in the output folder and renamed into place,
so an interrupted run never leaves a truncated .npz. Bad input stops the run with a one-line
error before anything is written.
"""

import collections
import contextlib
import csv
import os
import sys

from absl import app
from absl import flags
from absl import logging
import numpy as np

from moth_tf.data import base
from moth_tf.data import local_sets

IMAGE_SIZE = 32

GTSRB_VAL_FRACTION = 0.1
GTSRB_SPLIT_SEED = 0

LISA_NUM_CLASSES = 18
LISA_SPLIT_FRACTIONS = (0.7, 0.1, 0.2)
LISA_SPLIT_SEED = 0
LISA_ANNOTATIONS = "allAnnotations.csv"

_GTSRB_TEST_GT = "GT-final_test.csv"
_GTSRB_COLUMNS = ("Filename", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId")
_LISA_COLUMNS = ("Filename", "Annotation tag", "Upper left corner X", "Upper left corner Y",
                 "Lower right corner X", "Lower right corner Y")


class PrepareError(ValueError):
  """The source folder is not usable; the one-line message names the problem and the fix."""


def prepare_gtsrb(source_dir: str, out_path: str) -> dict:
  """Builds gtsrb.npz from the official GTSRB training and test archives.

  Args:
    source_dir: the folder that contains GTSRB/ (and usually GT-final_test.csv), or GTSRB/ itself.
    out_path: the .npz file to write; its folder is created if needed.

  Returns:
    A summary dict: dataset, path, class_names, num_classes, split_sizes {train, val, test} and
    class_counts {split: per-class counts}.

  Raises:
    PrepareError: the source folder lacks the expected files; nothing is written.
  """
  # Every CSV and image path is checked before the first image is decoded, so a broken source
  # fails in seconds rather than after minutes of decoding.
  root = _find_gtsrb_root(source_dir)
  train_entries = _gtsrb_training_entries(os.path.join(root, "Final_Training", "Images"))
  test_entries = _gtsrb_test_entries(source_dir, root)
  x_all, y_all = _decode_entries(train_entries, "GTSRB training")
  x_test, y_test = _decode_entries(test_entries, "GTSRB test")

  train, val = base.stratified_split(y_all, (1.0 - GTSRB_VAL_FRACTION, GTSRB_VAL_FRACTION),
                                     GTSRB_SPLIT_SEED)
  arrays = dict(x_train=x_all[train], y_train=y_all[train], x_val=x_all[val], y_val=y_all[val],
                x_test=x_test, y_test=y_test)
  return _write_and_summarise("gtsrb", out_path, arrays, local_sets.GTSRB_CLASS_NAMES)


def prepare_lisa(source_dir: str, out_path: str, num_classes: int = LISA_NUM_CLASSES) -> dict:
  """Builds lisa.npz from the LISA Traffic Sign Dataset's frames and allAnnotations.csv.

  Keeps the `num_classes` most frequent annotation tags (ties broken by name); if fewer exist, all
  are kept with a warning. Labels follow the alphabetical order of the kept tags.

  Args:
    source_dir: the folder holding allAnnotations.csv, or its parent.
    out_path: the .npz file to write; its folder is created if needed.
    num_classes: how many sign types to keep.

  Returns:
    A summary dict as `prepare_gtsrb`'s, plus dropped_types {tag: count} and skipped_boxes (boxes
    with no area inside their frame).

  Raises:
    PrepareError: the source folder lacks the expected files; nothing is written.
  """
  if num_classes < 1:
    raise ValueError(f"num_classes must be at least 1, got {num_classes}")
  csv_path = _find_lisa_annotations(source_dir)
  rows = _read_csv(csv_path, _LISA_COLUMNS, "the LISA annotation file")
  for row in rows:
    row["Annotation tag"] = row["Annotation tag"].strip()
  if not rows:
    raise PrepareError(f"{csv_path} lists no annotations; use the allAnnotations.csv that comes "
                       f"with the LISA Traffic Sign Dataset")

  counts = collections.Counter(row["Annotation tag"] for row in rows)
  ranked = sorted(counts, key=lambda tag: (-counts[tag], tag))
  kept = sorted(ranked[:num_classes])
  if len(kept) < num_classes:
    logging.warning("LISA: only %d sign types in %s (wanted %d); keeping all of them",
                    len(kept), csv_path, num_classes)
  label_of = {tag: i for i, tag in enumerate(kept)}

  root = os.path.dirname(csv_path)
  # Frames often carry several signs, so each frame is decoded once for all of its boxes.
  boxes_by_frame = collections.defaultdict(list)
  for row in rows:
    if row["Annotation tag"] in label_of:
      filename = row["Filename"].replace("\\", "/")
      boxes_by_frame[filename].append((_box(row, _LISA_COLUMNS[2:], csv_path),
                                       label_of[row["Annotation tag"]]))
  frame_paths = {f: _existing_image(os.path.join(root, f), csv_path) for f in boxes_by_frame}
  images, labels, skipped = [], [], 0
  for filename, boxes in boxes_by_frame.items():
    frame = _open_rgb(frame_paths[filename], csv_path)
    for box, label in boxes:
      crop = _crop_resize(frame, box)
      if crop is None:
        skipped += 1
        continue
      images.append(crop)
      labels.append(label)
  if not images:
    raise PrepareError(f"no usable sign boxes in {csv_path}; check that the frames sit next to it "
                       f"as its Filename column says")
  if skipped:
    logging.warning("LISA: skipped %d boxes with no area inside their frame", skipped)

  x = np.stack(images)
  y = np.asarray(labels, np.int64)
  train, val, test = base.stratified_split(y, LISA_SPLIT_FRACTIONS, LISA_SPLIT_SEED)
  arrays = dict(x_train=x[train], y_train=y[train], x_val=x[val], y_val=y[val], x_test=x[test],
                y_test=y[test])
  summary = _write_and_summarise("lisa", out_path, arrays, tuple(kept))
  summary["dropped_types"] = {tag: counts[tag] for tag in ranked[num_classes:]}
  summary["skipped_boxes"] = skipped
  return summary


def _find_gtsrb_root(source_dir):
  """The GTSRB/ folder: source_dir/GTSRB or source_dir itself, whichever has Final_Training."""
  _require_dir(source_dir)
  for root in (os.path.join(source_dir, "GTSRB"), source_dir):
    if os.path.isdir(os.path.join(root, "Final_Training", "Images")):
      return root
  raise PrepareError(
      f"no GTSRB/Final_Training/Images under {source_dir}; extract the official "
      f"GTSRB_Final_Training_Images.zip there (or pass the folder that contains GTSRB/)")


def _gtsrb_training_entries(images_dir):
  """(image path, ROI, ClassId, CSV) of every training image, class folder by class folder."""
  class_dirs = sorted(d for d in os.listdir(images_dir)
                      if os.path.isdir(os.path.join(images_dir, d)))
  if not class_dirs:
    raise PrepareError(f"no class folders (00000, 00001, ...) in {images_dir}; re-extract "
                       f"GTSRB_Final_Training_Images.zip")
  entries = []
  for name in class_dirs:
    class_dir = os.path.join(images_dir, name)
    csv_path = os.path.join(class_dir, f"GT-{name}.csv")
    if not os.path.isfile(csv_path):
      raise PrepareError(f"no {os.path.basename(csv_path)} in {class_dir}; every class folder of "
                         f"GTSRB_Final_Training_Images.zip has one, re-extract it")
    entries += _gtsrb_csv_entries(class_dir, csv_path)
  if not entries:
    raise PrepareError(f"no training images listed in the GT-*.csv files under {images_dir}")
  return entries


def _gtsrb_test_entries(source_dir, root):
  """(image path, ROI, ClassId, CSV) of every test image; labels from GT-final_test.csv."""
  images_dir = os.path.join(root, "Final_Test", "Images")
  if not os.path.isdir(images_dir):
    raise PrepareError(f"no GTSRB/Final_Test/Images under {source_dir}; extract the official "
                       f"GTSRB_Final_Test_Images.zip there")
  # GTSRB_Final_Test_GT.zip holds only the CSV, so people extract it to different places. The
  # GT-final_test.test.csv shipped next to the images has no ClassId and is never used.
  candidates = (source_dir, root, os.path.dirname(os.path.abspath(root)),
                os.path.join(root, "Final_Test"), images_dir)
  for folder in candidates:
    csv_path = os.path.join(folder, _GTSRB_TEST_GT)
    if os.path.isfile(csv_path):
      entries = _gtsrb_csv_entries(images_dir, csv_path)
      if not entries:
        raise PrepareError(f"{csv_path} lists no test images; use the official "
                           f"GTSRB_Final_Test_GT.zip")
      return entries
  raise PrepareError(f"no {_GTSRB_TEST_GT} (the test labels) in {source_dir} or under GTSRB/; "
                     f"extract the official GTSRB_Final_Test_GT.zip into {source_dir}")


def _gtsrb_csv_entries(images_dir, csv_path):
  """(image path, ROI, ClassId, CSV) of the images one GTSRB CSV lists, checked to exist."""
  num_classes = len(local_sets.GTSRB_CLASS_NAMES)
  entries = []
  for row in _read_csv(csv_path, _GTSRB_COLUMNS, "a GTSRB annotation file"):
    label = _int(row, "ClassId", csv_path)
    if not 0 <= label < num_classes:
      raise PrepareError(f"{csv_path}: ClassId {label} of {row['Filename']} is outside "
                         f"0..{num_classes - 1}; this is not the official GTSRB")
    path = _existing_image(os.path.join(images_dir, row["Filename"]), csv_path)
    entries.append((path, _box(row, _GTSRB_COLUMNS[1:5], csv_path), label, csv_path))
  return entries


def _decode_entries(entries, what):
  """Decodes and ROI-crops GTSRB entries into (uint8 [N, 32, 32, 3], int64 [N])."""
  images = []
  for i, (path, box, _, csv_path) in enumerate(entries):
    crop = _crop_resize(_open_rgb(path, csv_path), box)
    if crop is None:
      raise PrepareError(f"{csv_path}: the ROI of {os.path.basename(path)} lies outside the image")
    images.append(crop)
    if (i + 1) % 5000 == 0:
      logging.info("%s: %d of %d images", what, i + 1, len(entries))
  return np.stack(images), np.asarray([entry[2] for entry in entries], np.int64)


def _find_lisa_annotations(source_dir):
  """allAnnotations.csv in `source_dir` or in one of its sub-folders (first by name)."""
  _require_dir(source_dir)
  direct = os.path.join(source_dir, LISA_ANNOTATIONS)
  if os.path.isfile(direct):
    return direct
  for name in sorted(os.listdir(source_dir)):
    nested = os.path.join(source_dir, name, LISA_ANNOTATIONS)
    if os.path.isfile(nested):
      return nested
  raise PrepareError(f"no {LISA_ANNOTATIONS} in {source_dir} or its sub-folders; pass the "
                     f"extracted LISA Traffic Sign Dataset folder that holds it")


def _require_dir(source_dir):
  if not os.path.isdir(source_dir):
    raise PrepareError(f"source folder {source_dir} does not exist; pass --source=DIR, the folder "
                       f"the raw archives were extracted into")


def _read_csv(csv_path, columns, what):
  """The rows of a ';'-separated CSV as dicts, after checking that `columns` are present."""
  # utf-8-sig: some copies of these files start with a byte-order mark, which would otherwise
  # become part of the first column's name.
  with open(csv_path, newline="", encoding="utf-8-sig") as f:
    reader = csv.DictReader(f, delimiter=";")
    header = [name.strip() for name in (reader.fieldnames or [])]
    missing = [c for c in columns if c not in header]
    if missing:
      raise PrepareError(f"{csv_path} is not {what}: no column {', '.join(missing)} in its "
                         f"';'-separated header")
    reader.fieldnames = header
    return [row for row in reader if row.get("Filename")]


def _int(row, column, csv_path):
  try:
    return int(row[column])
  except (TypeError, ValueError):
    raise PrepareError(f"{csv_path}: {column} of {row['Filename']} is {row[column]!r}, not an "
                       f"integer") from None


def _box(row, columns, csv_path):
  """(x1, y1, x2, y2) with inclusive corners, from the four named columns."""
  return tuple(_int(row, c, csv_path) for c in columns)


def _existing_image(path, csv_path):
  if not os.path.isfile(path):
    raise PrepareError(f"image {path} (listed in {csv_path}) does not exist; the archive seems "
                       f"incompletely extracted")
  return path


def _open_rgb(path, csv_path):
  """Decodes an image file to RGB, turning a broken file into a PrepareError."""
  from PIL import Image  # Imported lazily: only the prepare step needs PIL.

  try:
    with Image.open(path) as image:
      return image.convert("RGB")
  except OSError as err:
    raise PrepareError(f"cannot decode image {path} (listed in {csv_path}): {err}") from None


def _crop_resize(image, box):
  """The inclusive box clipped to the image, resized to 32x32 uint8; None if nothing is left."""
  from PIL import Image

  x1, y1, x2, y2 = box
  width, height = image.size
  left, top = max(x1, 0), max(y1, 0)
  right, bottom = min(x2 + 1, width), min(y2 + 1, height)
  if right <= left or bottom <= top:
    return None
  crop = image.crop((left, top, right, bottom))
  return np.asarray(crop.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR), np.uint8)


def _write_and_summarise(name, out_path, arrays, class_names):
  arrays = dict(arrays, class_names=np.asarray(class_names, dtype=np.str_))
  _write_npz_atomically(out_path, arrays)
  num_classes = len(class_names)
  return {
      "dataset": name,
      "path": out_path,
      "class_names": list(class_names),
      "num_classes": num_classes,
      "split_sizes": {s: int(len(arrays[f"y_{s}"])) for s in ("train", "val", "test")},
      "class_counts": {s: np.bincount(arrays[f"y_{s}"], minlength=num_classes).tolist()
                       for s in ("train", "val", "test")},
  }


def _write_npz_atomically(out_path, arrays):
  """Writes a compressed .npz next to `out_path`, then renames it into place."""
  out_dir = os.path.dirname(os.path.abspath(out_path))
  os.makedirs(out_dir, exist_ok=True)
  # Same folder, so os.replace is an atomic rename on one file system.
  tmp_path = os.path.join(out_dir, f".{os.path.basename(out_path)}.tmp-{os.getpid()}")
  try:
    with open(tmp_path, "xb") as f:
      np.savez_compressed(f, **arrays)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp_path, out_path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp_path)
    raise


def _format_summary(summary):
  sizes = summary["split_sizes"]
  totals = np.sum([summary["class_counts"][s] for s in ("train", "val", "test")], axis=0)
  lines = [
      f"wrote {summary['path']}",
      f"{summary['dataset']}: train {sizes['train']} / val {sizes['val']} / test {sizes['test']} "
      f"images of {summary['num_classes']} classes",
  ]
  lines += [f"  {label:2d} {name}: {int(count)}"
            for label, (name, count) in enumerate(zip(summary["class_names"], totals))]
  if summary.get("dropped_types"):
    dropped = ", ".join(f"{tag} ({n})" for tag, n in summary["dropped_types"].items())
    lines.append(f"dropped sign types below the cut: {dropped}")
  if summary.get("skipped_boxes"):
    lines.append(f"skipped {summary['skipped_boxes']} boxes with no area inside their frame")
  return "\n".join(lines)


_PREPARERS = {"gtsrb": prepare_gtsrb, "lisa": prepare_lisa}


def _define_flags():
  # Defined only when run as a program, so importing the library functions (tests, notebooks)
  # does not register flags that moth_tf.main also defines.
  flags.DEFINE_enum("dataset", None, sorted(_PREPARERS), "Which data set to prepare.")
  flags.DEFINE_string("source", None, "Folder the official raw archives were extracted into.")
  flags.DEFINE_string("data_dir", None, f"Output folder (default: ${local_sets.DATA_DIR_ENV}, "
                      f"else ~/moth_tf_data); the file is DATA_DIR/DATASET.npz.")


def main(argv):
  """Prepares --dataset from --source into --data_dir; returns the exit status."""
  if len(argv) > 1:
    print(f"prepare: error: unexpected arguments {' '.join(argv[1:])}; use --dataset, --source, "
          f"--data_dir", file=sys.stderr)
    return 1
  args = flags.FLAGS
  if not args.dataset or not args.source:
    print("prepare: error: both --dataset=gtsrb|lisa and --source=DIR (the folder the raw "
          "archives were extracted into) are required", file=sys.stderr)
    return 1
  out_path = local_sets.npz_path(args.dataset, args.data_dir)
  try:
    summary = _PREPARERS[args.dataset](args.source, out_path)
  except PrepareError as err:
    print(f"prepare: error: {err}", file=sys.stderr)
    return 1
  print(_format_summary(summary))
  return 0


if __name__ == "__main__":
  _define_flags()
  app.run(main)
