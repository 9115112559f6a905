"""Smoke tests of the command line (`python -m moth_tf.main`) on the digits data set.

The binary runs in-process: flags are parsed with FLAGS([...]) inside `flagsaver.flagsaver()`, which
restores every flag (value and `present`) afterwards, and `moth_tf.cli.main.main(['prog'])` is
called directly. One test also runs the real binary in a subprocess.
"""

import json
import os
import re
import shlex
import subprocess
import sys

from absl import flags
from absl.testing import flagsaver
import numpy as np
import pytest

from moth_tf.cli import main as main_lib

from cli_testing import copied_workdir  # pylint: disable=g-bad-import-order
from cli_testing import define_flags_once
from cli_testing import event_files
from cli_testing import parsed_config
from cli_testing import run_cli

FLAGS = flags.FLAGS
_RUN = "digits_lenet_natural"


def run_cli_error(capsys, *args):
  """Runs the CLI expecting a user error: returns its stderr after checking exit code 1."""
  capsys.readouterr()
  with pytest.raises(SystemExit) as exit_info:
    run_cli(*args)
  assert exit_info.value.code == 1
  err = capsys.readouterr().err.strip()
  assert err.startswith("moth_tf: error: ")
  assert len(err.splitlines()) == 1, err  # One line, no traceback.
  return err


@pytest.fixture(scope="module")
def trained(tmp_path_factory, digits_trained_2_epochs):
  """A workdir with a digits LeNet trained for 2 epochs by --phase=train, and train's stdout.

  The training is the session's `digits_trained_2_epochs` (tests/conftest.py), copied: the tests
  below write into the workdir.
  """
  source, out = digits_trained_2_epochs
  return copied_workdir(source, tmp_path_factory), out


def test_train_writes_model_logs_and_summary(trained):
  workdir, stdout = trained
  run_dir = os.path.join(workdir, _RUN)
  assert os.path.isfile(os.path.join(run_dir, "model.keras"))
  assert os.path.isfile(os.path.join(run_dir, "saved_model", "saved_model.pb"))
  assert event_files(os.path.join(run_dir, "logs", "train"))
  with open(os.path.join(run_dir, "summary.json")) as f:
    summary = json.load(f)
  assert summary["dataset"] == "digits" and summary["model"] == "lenet"
  assert summary["method"] == "natural"
  # Two epochs of LeNet on the digits are far above chance (10%).
  assert 0.5 < summary["test_accuracy"] <= 1.0
  assert summary["train"]["epochs"] == 2
  assert "--epochs=2" in summary["flags"] and "--phase=train" in summary["flags"]
  assert summary["config"]["train"]["epochs"] == 2
  match = re.search(r"test accuracy: (\d\.\d{4})", stdout)
  assert match and float(match.group(1)) == pytest.approx(summary["test_accuracy"], abs=5e-5)
  # Nothing half-written is left behind (atomic writes use hidden temporary names).
  assert not [n for n in os.listdir(run_dir) if n.startswith(".")]


def test_test_phase_prints_and_records_the_same_accuracy(trained, capsys):
  workdir, _ = trained
  summary_path = os.path.join(workdir, _RUN, "summary.json")
  with open(summary_path) as f:
    train_accuracy = json.load(f)["test_accuracy"]
  capsys.readouterr()
  run_cli("--phase=test", f"--workdir={workdir}")
  out = capsys.readouterr().out
  match = re.search(r"test accuracy: (\d\.\d{4}) \((\d+) images", out)
  assert match, out
  assert float(match.group(1)) == pytest.approx(train_accuracy, abs=5e-5)
  with open(summary_path) as f:
    summary = json.load(f)
  assert summary["test"]["accuracy"] == pytest.approx(train_accuracy, abs=1e-9)
  assert summary["test"]["images"] == int(match.group(2)) > 300  # 20% of 1,797 digits.
  assert summary["train"]["epochs"] == 2  # Merged, not replaced.


def test_distance_single_pair(trained, capsys):
  workdir, _ = trained
  capsys.readouterr()
  run_cli("--phase=distance", "--distance_steps=20", "--seeds=1", "--pair=3-5",
          f"--workdir={workdir}")
  out = capsys.readouterr().out
  assert re.search(r"distance 3->5: (\d+\.\d{3}|failed)", out), out
  path = os.path.join(workdir, _RUN, "distance_pair_3-5.json")
  with open(path) as f:
    payload = json.load(f)
  assert payload["pairs"] == [[3, 5]]
  assert payload["seeds"] == [1024]  # --seeds=1: the reference's first seed.
  assert payload["settings"]["steps"] == 20
  matrix = np.array(payload["matrix"], dtype=float)  # None -> NaN.
  assert matrix.shape == (10, 10)
  unmeasured = np.ones((10, 10), bool)
  unmeasured[3, 5] = False
  assert np.all(np.isnan(matrix[unmeasured]))
  # A single pair does not overwrite the full matrix file.
  assert not os.path.exists(os.path.join(workdir, _RUN, "distance.json"))


@pytest.fixture(scope="module")
def full_distance(trained):
  workdir, _ = trained
  run_cli("--phase=distance", "--distance_steps=10", "--seeds=1", "--distance_samples=5",
          f"--workdir={workdir}")
  run_dir = os.path.join(workdir, _RUN)
  with open(os.path.join(run_dir, "distance.json")) as f:
    return run_dir, json.load(f)


def test_distance_full_matrix(full_distance):
  run_dir, payload = full_distance
  matrix = np.array(payload["matrix"], dtype=float)
  assert matrix.shape == (10, 10)
  assert np.all(np.isnan(np.diag(matrix)))
  assert len(payload["pairs"]) == 90
  failures = {tuple(p) for p in payload["failures"]}
  off_diagonal = [(s, t) for s in range(10) for t in range(10) if s != t]
  assert failures == {p for p in off_diagonal if np.isnan(matrix[p])}
  finite = [matrix[p] for p in off_diagonal if np.isfinite(matrix[p])]
  if finite:
    assert payload["mean"] == pytest.approx(np.mean(finite))
  else:
    assert payload["mean"] is None
  assert payload["settings"]["steps"] == 10 and payload["settings"]["samples"] == 5
  assert payload["wall_seconds"] > 0
  assert payload["samples_per_class"] == {str(c): 5 for c in range(10)}
  assert os.path.getsize(os.path.join(run_dir, "distance_heatmap.png")) > 0
  with open(os.path.join(run_dir, "distance_heatmap.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert event_files(os.path.join(run_dir, "logs", "distance"))
  with open(os.path.join(run_dir, "summary.json")) as f:
    summary = json.load(f)
  assert summary["distance"]["failures"] == len(failures)
  assert summary["distance"]["seeds"] == [1024]


def test_distance_compare_to(full_distance, capsys):
  run_dir, before = full_distance
  workdir = os.path.dirname(run_dir)
  capsys.readouterr()
  run_cli("--phase=distance", "--distance_steps=10", "--seeds=1", "--distance_samples=5",
          f"--compare_to={run_dir}", f"--workdir={workdir}")
  out = capsys.readouterr().out
  assert re.search(r"enlargement vs .*: mean of per-pair relative changes .*%, ratio of means", out)
  with open(os.path.join(run_dir, "distance.json")) as f:
    payload = json.load(f)
  comparison = payload["comparison"]
  assert comparison["baseline"] == run_dir
  # The same model with the same seeds measures the same distances: a 0% enlargement.
  np.testing.assert_array_equal(np.array(payload["matrix"], dtype=float),
                                np.array(before["matrix"], dtype=float))
  compared = int(np.sum(np.isfinite(np.array(before["matrix"], dtype=float))))
  assert comparison["pairs_compared"] == compared
  assert compared > 0  # 10 steps are enough for most directions (observed: 85 of 90).
  assert comparison["mean_relative_change"] == 0.0 and comparison["ratio_of_means"] == 0.0
  assert "+0.00%" in out


# -------------------------------------------------------------------------------------------------
# User errors: exit code 1 and one line on stderr.


def test_test_phase_without_a_model(tmp_path, capsys):
  err = run_cli_error(capsys, "--phase=test", f"--workdir={tmp_path}")
  assert "--phase=train" in err and "no trained model" in err


def test_missing_cifar10_data_with_nodownload(tmp_path, capsys):
  empty = tmp_path / "tfds"
  empty.mkdir()
  err = run_cli_error(capsys, "--phase=train", "--dataset=cifar10", f"--data_dir={empty}",
                      f"--workdir={tmp_path}", "--epochs=1", "--nodownload")
  assert "--nodownload" in err and str(empty) in err
  assert "copy a prepared tensorflow_datasets/ folder" in err
  assert not os.listdir(empty) and not os.path.exists(tmp_path / "cifar10_resnet20_natural")


def test_failed_cifar10_download_is_one_line(tmp_path, capsys, monkeypatch):
  import requests
  from tensorflow_datasets.core.download import downloader

  def unreachable(url, **kwargs):
    raise requests.exceptions.ConnectionError(f"Max retries exceeded with url: {url}")

  # Only the network is faked: tfds's builder and download manager run as on a user's machine.
  monkeypatch.setattr(downloader, "_open_url", unreachable)
  monkeypatch.delenv("MOTH_TF_NO_DOWNLOAD", raising=False)
  # The download hosts answer the quick probe, so that tfds's download is tried (and fails).
  from moth_tf.data import tfds_sets
  monkeypatch.setattr(tfds_sets, "network_problem", lambda urls: None)
  data_dir = tmp_path / "tfds"
  capsys.readouterr()
  with pytest.raises(SystemExit) as exit_info:
    run_cli("--phase=train", "--dataset=cifar10", f"--data_dir={data_dir}",
            f"--workdir={tmp_path}", "--epochs=1")
  assert exit_info.value.code == 1
  # tfds's own download progress comes first on stderr; the error is the last line, whole.
  err = capsys.readouterr().err.rstrip("\n").split("\n")[-1]
  assert err.startswith("moth_tf: error: ")
  assert "cifar10 could not be downloaded" in err and str(data_dir) in err
  assert "ConnectionError" in err and "from a machine with internet" in err
  assert not os.path.exists(tmp_path / "cifar10_resnet20_natural")


def test_progress_flag_reaches_the_config():
  # Under pytest stdout is captured, not a terminal: auto means plain lines.
  assert parsed_config().progress == "epoch"
  assert parsed_config("--progress=bar").progress == "bar"
  assert parsed_config("--progress=none").progress == "none"


def test_download_flag_reaches_the_config():
  assert parsed_config().data.download
  assert not parsed_config("--nodownload").data.download


def test_missing_model_path(tmp_path, capsys):
  missing = tmp_path / "nope.keras"
  err = run_cli_error(capsys, "--phase=test", f"--model_path={missing}", f"--workdir={tmp_path}")
  assert str(missing) in err and "does not exist" in err


def test_pair_outside_the_class_range(trained, capsys):
  workdir, _ = trained
  err = run_cli_error(capsys, "--phase=distance", "--pair=3-12", "--distance_steps=1",
                      "--seeds=1", f"--workdir={workdir}")
  assert "--pair=3-12" in err and "0..9" in err
  assert not os.path.exists(os.path.join(workdir, _RUN, "distance_pair_3-12.json"))


def test_malformed_pair_is_rejected_by_the_flag_validator():
  define_flags_once()
  with flagsaver.flagsaver():
    for bad in ("3", "3-3", "a-b", "3-5-7"):
      with pytest.raises(flags.IllegalFlagValueError, match="--pair must look like s-t"):
        FLAGS(["prog", f"--pair={bad}"])


def test_stray_positional_argument_is_a_usage_error():
  define_flags_once()
  from absl import app
  with flagsaver.flagsaver():
    FLAGS(["prog"])
    with pytest.raises(app.UsageError, match="unexpected arguments: extra"):
      main_lib.main(["prog", "extra"])


# -------------------------------------------------------------------------------------------------
# The real binary.


def test_subprocess_train(tmp_path):
  proc = _run_binary("--phase=train", "--epochs=1", f"--workdir={tmp_path}", cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "test accuracy" in proc.stdout
  assert os.path.isfile(os.path.join(tmp_path, _RUN, "model.keras"))
  # stdout is a pipe, so Keras prints one plain line per epoch instead of redrawing a bar.
  assert "\r" not in proc.stdout + proc.stderr
  assert re.search(r"^1/1 \- |^\d+/\d+ - \d+s - ", proc.stdout, re.M), proc.stdout


def test_hardening_into_a_pipe_prints_a_few_step_lines(trained, tmp_path):
  import shutil
  workdir, _ = trained
  work = tmp_path / "work"
  shutil.copytree(os.path.join(workdir, _RUN), work / _RUN)
  # 300 steps are 30 epochs of 10 steps on digits: Keras's own display would print 30 epochs.
  proc = _run_binary("--phase=harden", "--method=finetune", "--harden_steps=300",
                     f"--workdir={work}", cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "\r" not in proc.stdout + proc.stderr
  assert not re.search(r"^Epoch \d+/\d+", proc.stdout, re.M), proc.stdout
  lines = [line for line in proc.stdout.splitlines() if line.startswith("hardening step ")]
  assert 10 <= len(lines) <= 20, proc.stdout
  assert lines[-1].startswith("hardening step 300/300 (epoch 30/30) - "), lines[-1]


def test_robustness_phase(trained, capsys):
  workdir, _ = trained
  capsys.readouterr()
  run_cli("--phase=robustness", f"--workdir={workdir}")
  out = capsys.readouterr().out
  robust = float(re.search(r"PGD robust accuracy: ([0-9.]+)", out).group(1))
  with open(os.path.join(workdir, _RUN, "summary.json")) as f:
    summary = json.load(f)
  assert summary["robustness"]["accuracy"] == pytest.approx(robust, abs=1e-4)
  assert summary["robustness"]["epsilon"] == pytest.approx(0.1)
  # PGD at eps 0.1 must hurt a naturally trained model, and cannot beat clean accuracy.
  assert robust < summary["test_accuracy"]


def test_hardened_model_missing_says_harden(trained, capsys):
  workdir, _ = trained
  err = run_cli_error(capsys, "--phase=test", "--method=moth", f"--workdir={workdir}")
  assert "--phase=harden" in err and "no hardened model" in err


# -------------------------------------------------------------------------------------------------
# Bad input: one line on stderr, exit code 1, nothing written.

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_binary(*args, cwd):
  """Runs the real `python -m moth_tf.main ARGS`, importing this checkout's moth_tf."""
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      p for p in (_REPO, os.environ.get("PYTHONPATH")) if p))
  return subprocess.run([sys.executable, "-m", "moth_tf.main", *args], capture_output=True,
                        text=True, timeout=300, cwd=str(cwd), env=env)


def test_zero_portion_is_refused_by_the_binary_in_one_line(tmp_path):
  workdir = tmp_path / "work"
  proc = _run_binary("--phase=harden", "--portion=0", f"--workdir={workdir}", cwd=tmp_path)
  assert proc.returncode == 1
  assert proc.stderr.strip() == (
      "moth_tf: error: flag --portion=0.0: --portion must be in (0, 1] (the share of each "
      "scheduled pair's images that carry its triggers)")
  assert not workdir.exists()


def test_portion_flag_parser_refuses_zero_and_keeps_the_range(tmp_path, capsys):
  define_flags_once()
  with flagsaver.flagsaver():
    for bad in ("0", "0.0", "-0.5", "1.5"):
      capsys.readouterr()
      with pytest.raises(SystemExit) as exit_info:
        main_lib.parse_flags(["prog", "--phase=harden", f"--portion={bad}",
                              f"--workdir={tmp_path / 'work'}"])
      assert exit_info.value.code == 1
      err = capsys.readouterr().err.strip()
      assert len(err.splitlines()) == 1, err
      assert err.startswith(f"moth_tf: error: flag --portion={float(bad)}: --portion must be in "
                            "(0, 1]"), err
    assert main_lib.parse_flags(["prog", "--portion=1"]) == ["prog"]
    assert main_lib.config_from_flags(FLAGS).harden.moth.portion == 1.0
  assert not (tmp_path / "work").exists()


@pytest.mark.parametrize("method, phase, kind", [("natural", "train", "trained"),
                                                 ("moth", "harden", "hardened")])
def test_missing_model_hint_makes_the_model_where_it_was_looked_for(method, phase, kind, tmp_path,
                                                                   capsys):
  workdir = str(tmp_path / "my runs")  # A space: the suggested command must quote it.
  err = run_cli_error(capsys, "--phase=test", f"--method={method}", f"--workdir={workdir}",
                      "--image_size=16", "--strategy=mirrored", f"--data_dir={tmp_path}")
  missing = re.search(rf"no {kind} model at (.*?); make it first with `", err).group(1)
  command = re.search(r"make it first with `([^`]*)`", err).group(1)
  assert f"--workdir={workdir}" in command
  argv = shlex.split(command)
  assert argv[:3] == ["python", "-m", "moth_tf.main"] and f"--phase={phase}" in argv
  # Following the hint writes the very file that was missing, built for the same images.
  config = parsed_config(*argv[3:])
  assert config.phase == phase
  assert os.path.join(config.run_dir(method), "model.keras") == missing
  assert (config.data.image_size, config.strategy, config.data.data_dir) == (16, "mirrored",
                                                                               str(tmp_path))
  assert not os.path.exists(workdir)


def test_missing_model_hint_leaves_out_default_flags(tmp_path, capsys, monkeypatch):
  monkeypatch.chdir(tmp_path)  # The default workdir is relative: look in an empty folder.
  err = run_cli_error(capsys, "--phase=test")
  assert err.endswith("make it first with `python -m moth_tf.main --phase=train --dataset=digits "
                      "--model=lenet` or pass --model_path")


@pytest.mark.parametrize("kind", ["truncated_file", "garbage_savedmodel"])
def test_damaged_model_path_is_one_line(kind, tmp_path, capsys):
  import keras
  if kind == "truncated_file":
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(10)])
    path = tmp_path / "model.keras"
    model.save(str(path))
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    problem = ("a readable Keras model file (truncated or corrupt: the zip archive has no end "
               "record, as when cut short)")
  else:
    path = tmp_path / "exported"
    path.mkdir()
    (path / "saved_model.pb").write_bytes(b"not a protocol buffer")
    problem = ("a readable TF SavedModel (truncated or corrupt: saved_model.pb does not parse as a "
               "SavedModel)")
  workdir = tmp_path / "work"
  err = run_cli_error(capsys, "--phase=test", f"--model_path={path}", f"--workdir={workdir}")
  assert err == f"moth_tf: error: {path} is not {problem}; re-save or re-copy it"
  assert not workdir.exists()
