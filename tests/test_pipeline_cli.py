"""Smoke tests of the hardening and pipeline phases of the command line on the digits data set.

As in tests/test_cli.py, the binary runs in-process: flags are parsed inside `flagsaver.flagsaver()`
and `moth_tf.cli.main.main(['prog'])` is called directly. Budgets are tiny: with
--harden_batch_size=100 the 1,257 training digits give 13 hardening steps, 10 of warm-up and one
3-step pair period.
"""

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import re
import shutil

import pytest

from moth_tf import config as config_lib

from moth_tf import recipes
from moth_tf.cli import distance_phase

from cli_testing import DIGITS_PIPELINE_FLAGS  # pylint: disable=g-bad-import-order
from cli_testing import copied_workdir
from cli_testing import event_files
from cli_testing import parsed_config
from cli_testing import run_cli
import test_fashion_mnist  # The tiny IDX writers. pylint: disable=g-bad-import-order

_NATURAL = "digits_lenet_natural"
_MOTH = "digits_lenet_moth"
_HARDEN_FLAGS = ("--phase=harden", "--harden_epochs=1", "--harden_batch_size=100",
                 "--trigger_samples=8", "--portion=0.25", "--warm_ratio=0.4",
                 "--harden_learning_rate=0.001", "--warmup_steps=60", "--pair_steps=30",
                 "--fast_steps=10")


def _run_capturing(*args):
  out = io.StringIO()  # Module fixtures cannot use the function-scoped capsys.
  with contextlib.redirect_stdout(out):
    run_cli(*args)
  return out.getvalue()


def _sha256(path):
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def _read_json(path):
  with open(path) as f:
    return json.load(f)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, digits_trained_2_epochs):
  """A workdir with a digits LeNet trained for 2 epochs, and the hash of its model.keras.

  The training is the session's `--phase=train --epochs=2` (tests/conftest.py), copied.
  """
  workdir = copied_workdir(digits_trained_2_epochs[0], tmp_path_factory)
  path = os.path.join(workdir, _NATURAL, "model.keras")
  return workdir, path, _sha256(path)


@pytest.fixture(scope="module")
def hardened(trained):
  workdir, _, _ = trained
  stdout = _run_capturing(*_HARDEN_FLAGS, f"--workdir={workdir}")
  return workdir, stdout


def test_harden_writes_model_summary_and_logs(trained, hardened):
  workdir, natural_path, natural_hash = trained
  _, stdout = hardened
  run_dir = os.path.join(workdir, _MOTH)
  assert os.path.isfile(os.path.join(run_dir, "model.keras"))
  assert os.path.isfile(os.path.join(run_dir, "saved_model", "saved_model.pb"))
  assert event_files(os.path.join(run_dir, "logs", "harden"))
  assert event_files(os.path.join(run_dir, "logs", "harden_moth"))
  assert not os.path.exists(os.path.join(run_dir, "backup_harden"))
  summary = _read_json(os.path.join(run_dir, "summary.json"))
  assert summary["method"] == "moth" and summary["dataset"] == "digits"
  assert summary["base_model"] == natural_path
  harden = summary["harden"]
  natural = _read_json(os.path.join(workdir, _NATURAL, "summary.json"))
  assert harden["test_accuracy_before"] == pytest.approx(natural["test_accuracy"], abs=1e-9)
  assert 0.5 < harden["test_accuracy_after"] <= 1.0
  assert summary["test_accuracy"] == harden["test_accuracy_after"]
  assert harden["wall_seconds"] > 0 and harden["generation_seconds"] > 0  # One pair period ran.
  assert harden["steps"] == harden["steps_per_epoch"] == 13
  # The default schedule: 5 disjoint pairs in the one period, generated in its first step (and
  # again after a failure), their triggers reused in the other two.
  events = harden["events"]
  assert harden["pairs_per_period"] == 5
  assert events["generations"] >= 5 and events["generations"] + events["reused"] == 5 * 3
  assert harden["replicas"] == 1 and harden["strategy"] == "default"
  # The flags reached the hardening configuration.
  config = harden["config"]
  assert config["epochs"] == 1 and config["batch_size"] == 100
  assert config["trigger_samples"] == 8 and config["portion"] == 0.25
  assert config["warm_ratio"] == 0.4 and config["learning_rate"] == 0.001
  assert "--portion=0.25" in summary["flags"]
  match = re.search(r"test accuracy (\d\.\d{4}) -> (\d\.\d{4})", stdout)
  assert match, stdout[-2000:]
  assert float(match.group(2)) == pytest.approx(harden["test_accuracy_after"], abs=5e-5)
  # The natural model is never touched.
  assert _sha256(natural_path) == natural_hash
  assert not [n for n in os.listdir(run_dir) if n.startswith(".")]  # No half-written files.


def test_harden_an_external_model_path(trained, hardened):
  workdir, natural_path, natural_hash = trained
  moth_model = os.path.join(workdir, _MOTH, "model.keras")
  moth_hash = _sha256(moth_model)
  run_cli(*_HARDEN_FLAGS, f"--model_path={natural_path}", f"--workdir={workdir}")
  run_dir = os.path.join(workdir, "digits_external_model_moth")
  assert os.path.isfile(os.path.join(run_dir, "model.keras"))
  assert os.path.isfile(os.path.join(run_dir, "saved_model", "saved_model.pb"))
  summary = _read_json(os.path.join(run_dir, "summary.json"))
  assert summary["base_model"] == natural_path and summary["method"] == "moth"
  assert 0.5 < summary["harden"]["test_accuracy_after"] <= 1.0
  # Neither the input model nor the run's own hardened model is touched.
  assert _sha256(natural_path) == natural_hash
  assert _sha256(moth_model) == moth_hash
  assert sorted(os.listdir(os.path.join(workdir, _NATURAL))) == sorted(
      ["model.keras", "saved_model", "logs", "summary.json", "checkpoints"])
  assert sorted(os.listdir(workdir)) == sorted([_NATURAL, _MOTH, "digits_external_model_moth"])


def test_harden_without_a_trained_model(tmp_path, capsys):
  capsys.readouterr()
  with pytest.raises(SystemExit) as exit_info:
    run_cli("--phase=harden", "--harden_epochs=1", f"--workdir={tmp_path}")
  assert exit_info.value.code == 1
  err = capsys.readouterr().err.strip()
  assert err.startswith("moth_tf: error: ") and len(err.splitlines()) == 1, err
  assert "no trained model" in err and "--phase=train" in err
  assert not os.path.exists(tmp_path / _MOTH)


def test_diverging_hardening_is_one_line_and_saves_no_model(trained, tmp_path, capsys):
  workdir, natural_path, natural_hash = trained
  other = str(tmp_path / "work")  # Harden the trained model into a fresh workdir.
  capsys.readouterr()
  with pytest.raises(SystemExit) as exit_info:
    run_cli(*_HARDEN_FLAGS, "--harden_learning_rate=1e10", f"--model_path={natural_path}",
            f"--workdir={other}")
  assert exit_info.value.code == 1
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1, err
  assert re.match(r"moth_tf: error: hardening diverged: the (loss became (nan|inf) in epoch 1|"
                  r"weight \S+ holds NaN or infinite values); no model was saved; lower the "
                  r"learning rate \(--harden_learning_rate, now 1e\+10\) or check the data for "
                  r"extreme values$", err), err
  run_dir = os.path.join(other, "digits_external_model_moth")
  # Logs may stay; no model and no summary claiming a result.
  for name in ("model.keras", "saved_model", "summary.json"):
    assert not os.path.exists(os.path.join(run_dir, name)), name
  assert _sha256(natural_path) == natural_hash


def test_pipeline_runs_every_stage_and_prints_the_summary(digits_pipeline, tmp_path, capsys):
  # The run is the session's `digits_pipeline` (tests/conftest.py: DIGITS_PIPELINE_FLAGS, seed 0,
  # also reported by tests/test_report_cli.py); it is checked as it was written, then copied for
  # the re-runs below.
  shared_workdir, out = digits_pipeline
  workdir = shared_workdir
  for stage in ("[1/4] training the base model", "[2/4]", "[3/4] moth hardening", "[4/4]"):
    assert stage in out
  table = {}
  for line in out.splitlines():
    for name in ("test accuracy", "mean class distance", "failed directions"):
      if line.startswith(name):
        table[name] = line
  assert set(table) == {"test accuracy", "mean class distance", "failed directions"}, out[-3000:]
  assert re.match(r"test accuracy\s+\d\.\d{4}\s+\d\.\d{4}\s+[+-]\d+\.\d\d pts", table["test accuracy"])
  stage_line = [l for l in out.splitlines() if l.startswith("stage times:")]
  assert len(stage_line) == 1
  for stage in ("train", "distance_before", "harden", "distance_after", "total"):
    assert stage in stage_line[0]
  natural_dir = os.path.join(workdir, _NATURAL)
  moth_dir = os.path.join(workdir, _MOTH)
  for run_dir in (natural_dir, moth_dir):
    assert os.path.isfile(os.path.join(run_dir, "model.keras"))
    assert os.path.isfile(os.path.join(run_dir, "distance.json"))
  moth_distance = _read_json(os.path.join(moth_dir, "distance.json"))
  assert moth_distance["comparison"]["baseline"] == natural_dir
  assert moth_distance["settings"]["steps"] == 20 and moth_distance["seeds"] == [1024]
  summary = _read_json(os.path.join(moth_dir, "summary.json"))
  assert set(summary["stage_seconds"]) == {"train", "distance_before", "harden", "distance_after"}
  assert summary["harden"]["config"]["epochs"] == 1
  before = _read_json(os.path.join(natural_dir, "distance.json"))
  assert summary["distance"]["mean_before"] == pytest.approx(before["mean"])
  match = re.search(r"mean class distance\s+(\d+\.\d{3})\s+(\d+\.\d{3})",
                    table["mean class distance"])
  assert match and float(match.group(1)) == pytest.approx(before["mean"], abs=5e-4)
  assert float(match.group(2)) == pytest.approx(moth_distance["mean"], abs=5e-4)
  # Run again (in a copy of the workdir, with the same flags): a finished hardened run is not
  # replaced without --overwrite (refused before any stage ran, nothing changed) ...
  workdir = str(tmp_path / "copy")
  shutil.copytree(shared_workdir, workdir)
  pipeline_flags = (*DIGITS_PIPELINE_FLAGS, "--seed=0", f"--workdir={workdir}")
  natural_dir = os.path.join(workdir, _NATURAL)
  moth_dir = os.path.join(workdir, _MOTH)
  moth_model = os.path.join(moth_dir, "model.keras")
  moth_hash = _sha256(moth_model)
  capsys.readouterr()
  with pytest.raises(SystemExit) as exit_info:
    run_cli(*pipeline_flags)
  assert exit_info.value.code == 1
  captured = capsys.readouterr()
  assert captured.err.strip() == (
      f"moth_tf: error: {moth_dir} already holds a finished hardened model (model.keras, test "
      f"accuracy {summary['test_accuracy']:.4f}); pass --overwrite to replace it, or another "
      "--workdir")
  assert "[1/4]" not in captured.out and _sha256(moth_model) == moth_hash
  # ... with it, the base model is unchanged, so its distance is reused, not re-measured.
  base_distance = os.path.join(natural_dir, "distance.json")
  base_hash = _sha256(base_distance)
  run_cli(*pipeline_flags, "--overwrite")
  out = capsys.readouterr().out
  assert "[1/4] base model found" in out
  assert "[2/4] class distance of the base model: reusing" in out
  assert _sha256(base_distance) == base_hash
  assert _read_json(os.path.join(moth_dir, "summary.json"))["distance"]["mean_before"] == (
      pytest.approx(before["mean"]))
  # Other distance settings (or other model bytes) do not match the stored fingerprint.
  fingerprint = before["fingerprint"]
  assert fingerprint["distance"]["steps"] == 20 and len(fingerprint["model_sha256"]) == 64
  config = parsed_config("--phase=pipeline", "--seeds=1", "--distance_steps=20",
                         "--distance_samples=10", f"--workdir={workdir}")
  natural = dataclasses.replace(config, method="natural")
  model_file = os.path.join(natural_dir, "model.keras")
  assert distance_phase.distance_fingerprint(natural, model_file) == fingerprint
  other = dataclasses.replace(natural, distance=dataclasses.replace(natural.distance, steps=21))
  assert distance_phase.distance_fingerprint(other, model_file) != fingerprint


# -------------------------------------------------------------------------------------------------
# Presets and flag overrides (config only, nothing runs).


def test_default_preset_is_the_default_harden_config_with_the_methods_recipe():
  moth_recipe = recipes.METHOD_RECIPES[("moth", None)]
  assert parsed_config("--phase=harden").harden == config_lib.harden_config(**moth_recipe)
  assert parsed_config("--phase=harden").harden.steps == 2000
  # A method without a recipe hardens with the defaults; a flag still wins over a recipe.
  assert parsed_config("--phase=harden", "--method=finetune").harden == config_lib.harden_config()
  assert parsed_config("--phase=harden", "--harden_steps=500").harden.steps == 500


def test_reference_preset():
  harden = parsed_config("--phase=harden", "--preset=reference", "--seed=3").harden
  reference = recipes.REFERENCE_HARDENING
  assert harden.moth.portion == 0.1 and harden.epochs == 2
  assert harden == dataclasses.replace(reference, seed=3)


def test_explicit_flags_override_the_preset():
  harden = parsed_config("--phase=harden", "--preset=reference", "--portion=0.3",
                         "--harden_epochs=5", "--trigger_samples=4", "--harden_batch_size=32",
                         "--harden_learning_rate=0.01", "--warm_ratio=0.2", "--replay=0.1",
                         "--mode=adv").harden
  assert (harden.moth.portion, harden.epochs, harden.moth.trigger_samples) == (0.3, 5, 4)
  assert (harden.batch_size, harden.learning_rate) == (32, 0.01)
  assert (harden.moth.warm_ratio, harden.moth.replay, harden.moth.mode) == (0.2, 0.1, "adv")
  # Fields without a flag keep the preset's values.
  reference = recipes.REFERENCE_HARDENING
  assert harden.moth.pair_ce_reduction == reference.moth.pair_ce_reduction == "sum"
  assert harden.moth.store_largest is True


def test_family_and_learning_rate_flags():
  harden = parsed_config("--phase=harden", "--trigger_families=3", "--lr_warmup_steps=40",
                         "--lr_decay=cosine").harden
  assert (harden.moth.families, harden.lr_warmup_steps, harden.lr_decay) == (3, 40, "cosine")
  reference = parsed_config("--phase=harden", "--preset=reference").harden
  assert (reference.moth.families, reference.lr_warmup_steps, reference.lr_decay) == (
      1, 0, "constant")


def test_generation_schedule_flags():
  harden = parsed_config("--phase=harden", "--period=6", "--fast_cost=0.05",
                         "--generation_early_stop=12", "--rollback_steps=30").harden
  assert (harden.moth.period, harden.moth.fast_cost, harden.moth.generation_early_stop, harden.moth.rollback_steps) == (
      6, 0.05, 12, 30)
  # The published schedule (the reference preset) keeps the reference's period and fast cost.
  reference = parsed_config("--phase=harden", "--preset=reference").harden
  assert (reference.moth.period, reference.moth.fast_cost, reference.moth.generation_early_stop) == (3, 0.2, 0)
  # Fashion-MNIST's MOTH recipe rescales the fast cost to its mean cross-entropy.
  fashion = parsed_config("--phase=harden", "--dataset=fashion_mnist").harden
  assert fashion.moth.fast_cost < 0.2 and fashion.moth.period > 3

def test_step_budget_flag():
  harden = parsed_config("--phase=harden", "--harden_steps=50").harden
  assert harden.epochs is None and harden.steps == 50
  assert harden.epochs_for(1257) == 5  # 10 steps per epoch of batch 128.
  harden = parsed_config("--phase=harden", "--harden_steps=50", "--harden_epochs=2").harden
  assert harden.epochs_for(1257) == 2  # Explicit epochs win.


def test_every_flagfile_parses_into_a_valid_config():
  flag_dir = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "flags")
  files = sorted(f for f in os.listdir(flag_dir) if f.endswith(".flags"))
  assert "fashion_mnist.flags" in files and "fashion_mnist_reference.flags" in files
  for name in files:
    config = parsed_config(f"--flagfile={os.path.join(flag_dir, name)}")
    assert config.data.dataset in name, name


def test_fashion_mnist_flagfiles_cpu_and_reference_distance_settings():
  flag_dir = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "flags")
  cpu = parsed_config(f"--flagfile={os.path.join(flag_dir, 'fashion_mnist.flags')}")
  assert (cpu.phase, cpu.model) == ("pipeline", "small_cnn")
  assert (cpu.distance.samples, cpu.distance.steps, cpu.distance.early_stop_patience,
          cpu.distance.seeds) == (30, 300, 50, config_lib.REFERENCE_SEEDS[:1])
  reference = parsed_config(f"--flagfile={os.path.join(flag_dir, 'fashion_mnist_reference.flags')}")
  assert (reference.distance.samples, reference.distance.steps,
          reference.distance.early_stop_patience, reference.distance.seeds) == (
              100, 1000, 0, config_lib.REFERENCE_SEEDS)
  # Both harden with the data set's recipe, and the reference protocol keeps its own runs apart.
  assert cpu.harden == reference.harden == recipes.hardening_preset("default", "fashion_mnist")
  assert reference.workdir != cpu.workdir


def test_fashion_mnist_default_preset_is_its_recipe_and_flags_still_override_it():
  recipe = recipes.HARDENING_RECIPES["fashion_mnist"]
  harden = parsed_config("--phase=harden", "--dataset=fashion_mnist").harden
  moth_recipe = recipes.METHOD_RECIPES[("moth", None)]
  fashion_moth = recipes.METHOD_RECIPES[("moth", "fashion_mnist")]
  assert harden == config_lib.harden_config(**{**moth_recipe, **recipe, **fashion_moth})
  assert harden.moth.pairs_per_period == 1 and harden.moth.fixed_trigger_images and harden.steps == 2150
  # Another method on Fashion-MNIST gets the data set's recipe only.
  assert parsed_config("--phase=harden", "--dataset=fashion_mnist", "--method=universal"
                       ).harden == config_lib.harden_config(**recipe)
  assert harden != config_lib.harden_config(**moth_recipe)  # The digits-tuned defaults over-harden.
  # Digits keeps the defaults; the reference preset is the same for every data set.
  assert parsed_config("--phase=harden").harden == config_lib.harden_config(**moth_recipe)
  assert parsed_config("--phase=harden", "--dataset=fashion_mnist",
                       "--preset=reference").harden == recipes.REFERENCE_HARDENING
  overridden = parsed_config("--phase=harden", "--dataset=fashion_mnist", "--portion=0.7").harden
  assert overridden == config_lib.replace(harden, {"portion": 0.7})
  assert parsed_config("--dataset=fashion_mnist").model == "small_cnn"


def test_resnet20_flagfile_runs_the_pipeline_on_tiny_idx_files(tmp_path, capsys):
  """flags/fashion_mnist_resnet20.flags end to end on tiny IDX files (short budgets): a BatchNorm
  ResNet20 trained with the data set's augmentation, measured, hardened with MOTH, measured."""
  import json
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  data_dir = tmp_path / "idx"
  test_fashion_mnist._write_set(str(data_dir), test_fashion_mnist._make_set())
  workdir = tmp_path / "runs"
  run_cli(f"--flagfile={os.path.join(repo, 'flags', 'fashion_mnist_resnet20.flags')}",
          f"--data_dir={data_dir}", f"--workdir={workdir}", "--epochs=1", "--harden_steps=4",
          "--distance_steps=3", "--warmup_steps=3", "--pair_steps=3", "--fast_steps=2",
          "--period=2", "--batch_size=32", "--harden_batch_size=32", "--direction_blocks=1")
  out = capsys.readouterr().out
  assert "augmentation: random crop (2 px padding) + horizontal flip" in out
  base = json.loads((workdir / "fashion_mnist_resnet20_natural" / "summary.json").read_text())
  assert base["augmentation"]["recipe"] == "crop_flip"
  assert base["train"]["recipe"]["optimizer"] == "sgd"
  hardened = json.loads((workdir / "fashion_mnist_resnet20_moth" / "summary.json").read_text())
  assert hardened["harden"]["batchnorm"] == hardened["config"]["harden"]["batchnorm"]
  assert hardened["augmentation"]["recipe"] == "crop_flip"
  assert "enlargement_mean_relative" in hardened["distance"]
