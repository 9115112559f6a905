"""Run directories: where one (dataset, model, method) run keeps its model, logs and results.

    saved_models/digits_lenet_natural/
      model.keras          the trained classifier (native Keras 3 format)
      saved_model/         the same model exported as a TF SavedModel (`serve` and `call_training`
                           endpoints); the only model of a run that hardened a SavedModel input
      checkpoints/         last.keras: the model after the last completed training epoch
      logs/                TensorBoard event files, one subfolder per phase
      summary.json         machine-readable results, merged across phases
      distance.json        pairwise class distances (after --phase=distance)

Every file is written atomically (temporary file in the same folder, then `os.replace`), so an
interrupted run never leaves a half-written result behind.
"""

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from typing import Any, Dict

import numpy as np

MODEL_FILE = "model.keras"
SAVED_MODEL_DIR = "saved_model"
SUMMARY_FILE = "summary.json"
DISTANCE_FILE = "distance.json"
LOGS_DIR = "logs"


def model_path(run_dir: str) -> str:
  return os.path.join(run_dir, MODEL_FILE)


def find_model(run_dir: str) -> str:
  """The run's model: model.keras, or saved_model/ where only that was written (a hardened
  SavedModel input, see moth_tf.models.io.save_model); model.keras when there is neither."""
  keras_path = model_path(run_dir)
  saved_model = os.path.join(run_dir, SAVED_MODEL_DIR)
  if not os.path.exists(keras_path) and os.path.exists(os.path.join(saved_model, "saved_model.pb")):
    return saved_model
  return keras_path


def logs_dir(run_dir: str, phase: str) -> str:
  return os.path.join(run_dir, LOGS_DIR, phase)


def _to_jsonable(value):
  if isinstance(value, dict):
    return {str(k): _to_jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_to_jsonable(v) for v in value]
  if isinstance(value, np.ndarray):
    return _to_jsonable(value.tolist())
  if isinstance(value, (np.floating, float)):
    value = float(value)
    return value if np.isfinite(value) else None  # JSON has no inf/NaN.
  if isinstance(value, np.integer):
    return int(value)
  if isinstance(value, np.bool_):
    return bool(value)
  return value


class OutputNotWritableError(ValueError):
  """A run directory cannot be written (read-only, no permission); nothing there was changed."""


class FinishedRunError(ValueError):
  """The run directory already holds a finished run and --overwrite was not given."""


def _not_writable(directory: str, error: OSError) -> OutputNotWritableError:
  reason = error.strerror or str(error)
  return OutputNotWritableError(f"cannot write to {directory} ({reason}); choose a writable "
                                "--workdir (nothing there was changed)")


def _temporary_file(directory: str, prefix: str, suffix: str) -> str:
  try:
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=directory)
  except OSError as e:
    raise _not_writable(directory, e) from None
  os.close(fd)
  return tmp


def check_writable(run_dir: str):
  """Raises OutputNotWritableError unless files can be created in `run_dir` (made if missing).

  Called before long work, so a read-only output fails in a second, not after the training.
  """
  os.remove(_temporary_file(run_dir, ".write_check.", ".tmp"))


def check_not_finished(run_dir: str, overwrite: bool, what: str, backup_name: str):
  """Refuses to replace a finished run unless `overwrite`.

  A run directory with a model (model.keras, or saved_model/ alone for a hardened SavedModel
  input) and no resumable backup (`backup_name`, which Keras deletes when a fit completes) is
  finished; one with a backup is an interrupted re-run and resumes.

  Args:
    run_dir: the run directory about to be written.
    overwrite: the user's --overwrite.
    what: "trained" or "hardened", for the message.
    backup_name: "backup_train" or "backup_harden".
  """
  finished = (os.path.exists(find_model(run_dir)) and
              not os.path.exists(os.path.join(run_dir, backup_name)))
  if finished and not overwrite:
    accuracy = ""
    summary_file = os.path.join(run_dir, SUMMARY_FILE)
    if os.path.exists(summary_file):
      try:
        value = read_json(summary_file).get("test_accuracy")
        accuracy = f", test accuracy {value:.4f}" if isinstance(value, float) else ""
      except (OSError, ValueError):
        pass
    raise FinishedRunError(f"{run_dir} already holds a finished {what} model "
                           f"({os.path.basename(find_model(run_dir))}{accuracy}); pass --overwrite "
                           "to replace it, or another --workdir")


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = ""):
  """Yields a temporary path next to `path`; on success it replaces `path` in one rename.

  Raises OutputNotWritableError (and leaves `path` as it was) when the folder is not writable.
  """
  directory = os.path.dirname(os.path.abspath(path)) or "."
  tmp = _temporary_file(directory, "." + os.path.basename(path) + ".", ".tmp" + suffix)
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_json(path: str, data: Dict[str, Any]):
  """Writes `data` as indented JSON, atomically; NumPy values and non-finite floats are converted."""
  with atomic_path(path) as tmp:
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(_to_jsonable(data), f, indent=2, sort_keys=False)
      f.write("\n")


def write_bytes(path: str, data: bytes):
  """Writes bytes atomically."""
  with atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      f.write(data)


def file_sha256(path: str) -> str:
  """Hex SHA-256 of a file's bytes."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def read_json(path: str) -> Dict[str, Any]:
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def update_summary(run_dir: str, **fields) -> Dict[str, Any]:
  """Merges `fields` into the run's summary.json (nested dicts are merged one level deep)."""
  path = os.path.join(run_dir, SUMMARY_FILE)
  summary = read_json(path) if os.path.exists(path) else {}
  for key, value in fields.items():
    if isinstance(value, dict) and isinstance(summary.get(key), dict):
      summary[key].update(value)
    else:
      summary[key] = value
  write_json(path, summary)
  return summary


def replace_dir(src: str, dst: str):
  """Moves the finished directory `src` to `dst`, replacing any previous `dst` as late as possible."""
  old = None
  if os.path.exists(dst):
    old = dst + ".old"
    if os.path.exists(old):
      shutil.rmtree(old)
    os.replace(dst, old)
  os.replace(src, dst)
  if old:
    shutil.rmtree(old, ignore_errors=True)
