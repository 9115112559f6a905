"""The user guide's "Bad input" table (docs/user-guide.md), one test per row: each bad input ends
the command with exit code 1, one line on stderr (`moth_tf: error: ...`, no traceback) and nothing
written where a result would go. The expected messages here are the ones the table quotes.

`python tests/test_bad_input.py` prints every row's actual message (to refresh the table).
"""

import os
import re
import sys
import tempfile

from absl.testing import flagsaver
import keras
import numpy as np
import pytest

from moth_tf.cli import main as main_lib
from moth_tf import rundir

import cli_testing  # pylint: disable=g-bad-import-order
from cli_testing import copied_workdir
from cli_testing import run_cli


def _error_of(capsys, *args, parse=False):
  """Runs the command line; returns its one stderr line after checking exit code 1."""
  capsys.readouterr()
  with pytest.raises(SystemExit) as exit_info:
    if parse:  # Flag values are checked while parsing, before main runs.
      cli_testing.define_flags_once()
      with flagsaver.flagsaver():
        main_lib.parse_flags(["prog", *args])
    else:
      run_cli(*args)
  assert exit_info.value.code == 1
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1, err
  assert err.startswith("moth_tf: error: "), err
  return err[len("moth_tf: error: "):]


def _tree(path):
  """Every file under `path` with its bytes' hash (to show nothing was written or changed)."""
  if not os.path.exists(path):
    return None
  return {os.path.relpath(os.path.join(d, f), path): rundir.file_sha256(os.path.join(d, f))
          for d, _, files in os.walk(path) for f in files}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, digits_trained_1_epoch):
  """A workdir with a finished digits LeNet run (1 epoch): the session's `--phase=train
  --epochs=1` (tests/conftest.py), copied."""
  return copied_workdir(digits_trained_1_epoch[0], tmp_path_factory)


def _write_gtsrb_npz(directory, shape=(32, 32, 3), nan_pixels=0):
  from moth_tf.data import local_sets
  rng = np.random.default_rng(0)
  arrays = {}
  for split, per_class in (("train", 2), ("val", 1), ("test", 1)):
    y = np.repeat(np.arange(43), per_class)
    arrays[f"x_{split}"] = rng.uniform(0, 1, (len(y),) + shape).astype(np.float32)
    arrays[f"y_{split}"] = y
  arrays["x_train"].reshape(-1)[:nan_pixels] = np.nan
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, "gtsrb.npz")
  np.savez_compressed(path, class_names=np.array(local_sets.GTSRB_CLASS_NAMES), **arrays)
  return path


def _small_model(path, input_shape=(8, 8, 1), outputs=10, lambda_layer=False):
  layers = [keras.Input(input_shape), keras.layers.Flatten()]
  if lambda_layer:
    layers.append(keras.layers.Lambda(lambda x: x * 2.0))
  model = keras.Sequential(layers + [keras.layers.Dense(outputs)])
  model.save(path)
  return path


# --- unknown names and out-of-range flags ----------------------------------------------------------

@pytest.mark.parametrize("flag, expected", [
    ("--dataset=imagenet", r"flag --dataset=imagenet: value should be one of <digits\|.*>"),
    ("--model=resnet9000", r"flag --model=resnet9000: value should be one of <lenet\|.*>"),
    ("--method=magic", r"flag --method=magic: value should be one of <natural\|moth\|finetune\|.*>"),
    ("--phase=deploy", r"flag --phase=deploy: value should be one of <pipeline\|train\|.*>"),
    ("--seeds=0", r"flag --seeds=0: 0 is not a positive integer"),
    # A range with an open end is stated whole, in one message.
    ("--asr_bound=1.5", r"flag --asr_bound=1.5: --asr_bound must be in \(0, 1\]"),
    ("--poison_colour=white",
     r"flag --poison_colour=\['white'\]: --poison_colour=white: give comma-separated numbers in "
     r"\[0, 1\]"),
    ("--portion=2", r"flag --portion=2.0: --portion must be in \(0, 1\] .*"),
    ("--distance_steps=0", r"flag --distance_steps=0: 0 is not a positive integer"),
    ("--pair=3-3", r"flag --pair=3-3: --pair must look like s-t with two different class .*"),
])
def test_unknown_names_and_out_of_range_flags(flag, expected, tmp_path, capsys):
  workdir = tmp_path / "work"
  message = _error_of(capsys, flag, f"--workdir={workdir}", parse=True)
  assert re.fullmatch(expected, message), message
  assert not workdir.exists()


# --- data ------------------------------------------------------------------------------------------

def test_missing_data_names_the_preparation_command(tmp_path, capsys):
  empty, workdir = tmp_path / "empty", tmp_path / "work"
  empty.mkdir()
  message = _error_of(capsys, "--phase=train", "--dataset=gtsrb", f"--data_dir={empty}",
                      f"--workdir={workdir}")
  assert message.startswith(f"gtsrb is not prepared: {empty}/gtsrb.npz does not exist. To make "
                            "it, ")
  assert (f"run `python -m moth_tf.prepare --dataset=gtsrb --source=DIR --data_dir={empty}`"
          in message)
  assert not workdir.exists()


@pytest.mark.parametrize("damage, expected", [
    ("truncated", "{path} is not a readable .npz file (truncated or corrupt: {why}); re-create it "
                  "with `python -m moth_tf.prepare --dataset=gtsrb --source=DIR --data_dir={dir}`."),
    ("wrong_shape", "{path}: train images have shape (86, 32, 32), not [N, H, W, 3]; re-create it "
                    "with `python -m moth_tf.prepare --dataset=gtsrb --source=DIR --data_dir={dir}`."),
    ("nan", "gtsrb data set in {dir}: train images hold 9 non-finite values (NaN or inf); "
            "re-create or re-prepare the data set's files"),
])
def test_damaged_npz(damage, expected, tmp_path, capsys):
  data_dir, workdir = tmp_path / "data", tmp_path / "work"
  path = _write_gtsrb_npz(str(data_dir), shape=(32, 32) if damage == "wrong_shape" else (32, 32, 3),
                          nan_pixels=9 if damage == "nan" else 0)
  if damage == "truncated":
    with open(path, "rb") as f:
      content = f.read()
    with open(path, "wb") as f:
      f.write(content[:len(content) // 2])
  message = _error_of(capsys, "--phase=train", "--dataset=gtsrb", f"--data_dir={data_dir}",
                      "--epochs=1", f"--workdir={workdir}")
  pattern = re.escape(expected.format(path=path, dir=data_dir, why="WHY")).replace("WHY", ".+")
  assert re.fullmatch(pattern, message), message
  assert not workdir.exists()


# --- models ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, expected", [
    ("nonexistent", "model path {path} does not exist; train one with --phase=train or pass "
                    "--model_path=FILE.keras|SAVEDMODEL_DIR"),
    ("not_a_model", "{path} is not a .keras file or SavedModel directory; convert legacy .h5 "
                    "models with keras.models.load_model(h5).save('model.keras')"),
    ("unsafe", "{path} needs safe_mode=False to load (Requested the deserialization of a `Lambda` "
               "layer whose `function` is a Python lambda.); pass --unsafe_load if you trust the "
               "file"),
])
def test_bad_model_path(kind, expected, tmp_path, capsys):
  workdir = tmp_path / "work"
  if kind == "nonexistent":
    path = str(tmp_path / "nothing.keras")
  elif kind == "not_a_model":
    path = str(tmp_path / "notes.txt")
    with open(path, "w") as f:
      f.write("not a model\n")
  else:
    path = _small_model(str(tmp_path / "lambda.keras"), lambda_layer=True)
  message = _error_of(capsys, "--phase=test", f"--model_path={path}", f"--workdir={workdir}")
  assert message == expected.format(path=path)
  assert not workdir.exists()


@pytest.mark.parametrize("mismatch, expected", [
    ("classes", "model {path} has 5 outputs but digits has 10 classes"),
    ("shape", "model {path} takes images of shape (28, 28, 1) but digits images are (8, 8, 1); "
              "pass --image_size or a matching --model_path"),
])
def test_model_that_does_not_fit_the_data(mismatch, expected, tmp_path, capsys):
  workdir = tmp_path / "work"
  path = _small_model(str(tmp_path / "m.keras"),
                      input_shape=(28, 28, 1) if mismatch == "shape" else (8, 8, 1),
                      outputs=5 if mismatch == "classes" else 10)
  for phase in ("test", "harden"):
    message = _error_of(capsys, f"--phase={phase}", f"--model_path={path}", f"--workdir={workdir}")
    assert message == expected.format(path=path)
  assert not workdir.exists()


# --- outputs ---------------------------------------------------------------------------------------

def test_existing_finished_run_is_refused_without_overwrite(trained, capsys):
  run_dir = os.path.join(trained, "digits_lenet_natural")
  before = _tree(run_dir)
  message = _error_of(capsys, "--phase=train", "--epochs=1", f"--workdir={trained}")
  accuracy = rundir.read_json(os.path.join(run_dir, "summary.json"))["test_accuracy"]
  assert message == (f"{run_dir} already holds a finished trained model (model.keras, test "
                     f"accuracy {accuracy:.4f}); pass --overwrite to replace it, or another "
                     "--workdir")
  assert _tree(run_dir) == before


def test_read_only_output_directory_keeps_the_previous_model(trained, capsys, monkeypatch):
  # The tests run as root, for whom permission bits do not apply: a read-only folder is simulated
  # where every file creation goes through (tempfile.mkstemp, used by the writability check and by
  # every atomic write), failing as the kernel would.
  run_dir = os.path.join(trained, "digits_lenet_natural")
  before = _tree(run_dir)

  def read_only(*args, dir=None, **kwargs):  # pylint: disable=redefined-builtin
    raise PermissionError(13, "Permission denied", dir)

  monkeypatch.setattr(tempfile, "mkstemp", read_only)
  message = _error_of(capsys, "--phase=train", "--epochs=1", "--overwrite", f"--workdir={trained}")
  assert message == (f"cannot write to {run_dir} (Permission denied); choose a writable --workdir "
                     "(nothing there was changed)")
  assert _tree(run_dir) == before  # The previous model survives intact.


def test_unwritable_workdir_on_the_real_file_system(tmp_path, capsys):
  if not sys.platform.startswith("linux") or not os.path.isdir("/sys"):
    pytest.skip("needs Linux's /sys, in which even root cannot create folders")
  message = _error_of(capsys, "--phase=train", "--epochs=1", "--workdir=/sys/moth_tf_test")
  # The kernel says EPERM; inside Bazel's sandbox, which mounts /sys read-only, EROFS.
  assert re.fullmatch(r"cannot write to /sys/moth_tf_test/digits_lenet_natural \((Operation not "
                      r"permitted|Read-only file system)\); choose a writable --workdir \(nothing "
                      r"there was changed\)", message), message


if __name__ == "__main__":
  sys.exit(pytest.main([__file__, "-q", "-rA"]))
