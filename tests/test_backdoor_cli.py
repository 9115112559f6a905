"""The backdoor scenario through the command line: --phase=poison, backdoor, detect, --base_run and
--method=nc / moth / finetune on a poisoned model, and their one-line errors."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from moth_tf import data as data_lib
from moth_tf.models import io as model_io

from cli_testing import event_files  # pylint: disable=g-bad-import-order
from cli_testing import run_cli
from cli_testing import trained_workdir
from test_cli import run_cli_error


def _summary(run_dir):
  with open(os.path.join(run_dir, "summary.json")) as f:
    return json.load(f)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A natural digits LeNet and a poisoned one (2x2 patch, 10%, target 0), 10 epochs each."""
  return trained_workdir(tmp_path_factory, 10,
                         ("--phase=poison", "--epochs=10", "--poison_size=2"))


def test_poison_writes_the_trigger_the_model_and_its_backdoor_metrics(workdir):
  run_dir = os.path.join(workdir, "digits_lenet_poisoned")
  assert os.path.isfile(os.path.join(run_dir, "model.keras"))
  for name in ("trigger.npz", "trigger.json"):
    assert os.path.isfile(os.path.join(run_dir, name))
  summary = _summary(run_dir)
  assert summary["base_run"] == "poisoned"
  # 10% of the 1,258 training images, rounded.
  assert summary["poison"]["poisoned_images"] == 126
  assert summary["poison"]["natural_test_accuracy"] == _summary(
      os.path.join(workdir, "digits_lenet_natural"))["test_accuracy"]
  backdoor = summary["backdoor"]
  assert backdoor["asr"] > 0.9  # The backdoor is learnt ...
  assert backdoor["c_acc"] > 0.9  # ... and the model still classifies clean digits.
  y_test = data_lib.load_dataset("digits").y_test
  assert backdoor["stamped_images"] == np.sum(y_test != 0)  # The non-target test images.
  acc = event_accumulator.EventAccumulator(os.path.join(run_dir, "logs", "backdoor"))
  acc.Reload()
  asr = tf.make_ndarray(acc.Tensors("backdoor/asr")[0].tensor_proto)
  assert float(asr) == pytest.approx(backdoor["asr"], abs=1e-6)


def test_backdoor_phase_on_the_natural_model_measures_the_trigger_without_der(workdir, capsys):
  capsys.readouterr()
  run_cli("--phase=backdoor", f"--workdir={workdir}",
          f"--trigger_path={os.path.join(workdir, 'digits_lenet_poisoned')}")
  out = capsys.readouterr().out
  backdoor = _summary(os.path.join(workdir, "digits_lenet_natural"))["backdoor"]
  assert backdoor["asr"] < 0.2  # A clean model does not answer 0 for the patch.
  assert "der" not in backdoor
  assert f"ASR {backdoor['asr']:.4f}" in out


def test_detect_flags_the_target_of_the_poisoned_model_and_writes_everything(workdir, capsys):
  capsys.readouterr()
  run_cli("--phase=detect", "--base_run=poisoned", "--nc_steps=300", f"--workdir={workdir}")
  out = capsys.readouterr().out
  run_dir = os.path.join(workdir, "digits_lenet_poisoned")
  with open(os.path.join(run_dir, "detection.json")) as f:
    found = json.load(f)
  nc = found["neural_cleanse"]
  assert len(nc["l1_norms"]) == len(nc["anomaly_index"]) == 10
  assert nc["flagged"] == [0] and found["target_flagged"] is True
  assert found["clean_labels_flagged"] == []
  assert nc["anomaly_index"][0] > 2
  assert nc["images_per_label"] == [9 * 30] * 10
  assert "the backdoor's target 0 is flagged" in out
  assert found["class_distance"] is None and "class-distance detection skipped" in out
  with open(os.path.join(run_dir, "nc_norms.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  acc = event_accumulator.EventAccumulator(os.path.join(run_dir, "logs", "detect"),
                                           size_guidance={event_accumulator.TENSORS: 0})
  acc.Reload()
  norms = tf.make_ndarray(acc.Tensors("detect/l1_norms")[0].tensor_proto)
  np.testing.assert_allclose(norms, nc["l1_norms"], rtol=1e-6)
  flagged = tf.make_ndarray(acc.Tensors("detect/flagged")[0].tensor_proto)
  assert flagged.tolist() == [0]
  assert _summary(run_dir)["detect"]["flagged"] == [0]


def test_detect_with_a_distance_matrix_adds_the_class_distance_detection(workdir, capsys):
  run_cli("--phase=distance", "--distance_steps=60", "--seeds=1", "--distance_samples=5",
          f"--workdir={workdir}")
  capsys.readouterr()
  run_cli("--phase=detect", "--nc_steps=100", "--nc_samples=5", f"--workdir={workdir}")
  out = capsys.readouterr().out
  with open(os.path.join(workdir, "digits_lenet_natural", "detection.json")) as f:
    found = json.load(f)
  assert len(found["class_distance"]["column_mean"]) == 10
  assert "class-distance detection (column means of distance.json)" in out
  assert "backdoor_target" not in found  # No trigger was named for the natural model.


def _weights_changed(a_path, b_path):
  a, b = model_io.load_model(a_path), model_io.load_model(b_path)
  return max(float(np.abs(x - y).max()) for x, y in zip(a.get_weights(), b.get_weights()))


def test_nc_unlearns_the_flagged_trigger_and_lowers_the_asr(workdir, capsys):
  poisoned = os.path.join(workdir, "digits_lenet_poisoned", "model.keras")
  run_cli("--phase=harden", "--method=nc", "--base_run=poisoned", "--nc_steps=300",
          "--harden_steps=100", f"--workdir={workdir}")
  run_dir = os.path.join(workdir, "digits_lenet_poisoned_nc")
  assert os.path.isfile(os.path.join(run_dir, "model.keras"))
  assert event_files(os.path.join(run_dir, "logs", "harden"))
  harden = _summary(run_dir)["harden"]
  assert harden["nc"]["flagged"] == harden["nc"]["unlearned_labels"] == [0]
  assert harden["nc"]["note"] is None
  assert harden["generation_seconds"] == harden["nc"]["detection_seconds"] > 0
  assert _weights_changed(poisoned, os.path.join(run_dir, "model.keras")) > 1e-4
  capsys.readouterr()
  run_cli("--phase=backdoor", "--base_run=poisoned", "--method=nc", f"--workdir={workdir}")
  backdoor = _summary(run_dir)["backdoor"]
  original = backdoor["original"]
  assert original["model"] == poisoned and original["asr"] > 0.9
  assert backdoor["asr"] < 0.5 * original["asr"]
  assert backdoor["der"] == pytest.approx(
      (max(0, original["asr"] - backdoor["asr"]) - max(0, original["c_acc"] - backdoor["c_acc"])
       + 1) / 2)
  assert "DER" in capsys.readouterr().out


def test_nc_with_nothing_flagged_says_so_and_records_it(workdir, capsys):
  # The natural model has no backdoor: a strict threshold flags nothing.
  run_cli("--phase=harden", "--method=nc", "--nc_steps=50", "--nc_samples=5", "--nc_threshold=50",
          "--harden_steps=10", f"--workdir={workdir}")
  err = capsys.readouterr().err
  assert "WARNING: Neural Cleanse flagged no label" in err
  harden = _summary(os.path.join(workdir, "digits_lenet_nc"))["harden"]
  assert harden["nc"]["unlearned_labels"] == [] and "--nc_unlearn_all" in harden["nc"]["note"]


def test_moth_hardens_the_poisoned_run_into_its_own_directory(workdir):
  run_cli("--phase=harden", "--method=moth", "--base_run=poisoned", "--harden_steps=20",
          "--warmup_steps=20", "--pair_steps=10", "--fast_steps=3", "--trigger_samples=8",
          "--harden_learning_rate=1e-3", f"--workdir={workdir}")
  run_dir = os.path.join(workdir, "digits_lenet_poisoned_moth")
  summary = _summary(run_dir)
  assert summary["base_model"] == os.path.join(workdir, "digits_lenet_poisoned", "model.keras")
  assert summary["harden"]["steps"] == 20


def test_finetune_of_a_poisoned_model_path_gets_a_der(workdir, tmp_path, capsys):
  poisoned_dir = os.path.join(workdir, "digits_lenet_poisoned")
  other = str(tmp_path / "other")
  run_cli("--phase=harden", "--method=finetune", "--harden_steps=10",
          f"--model_path={os.path.join(poisoned_dir, 'model.keras')}", f"--workdir={other}")
  hardened = os.path.join(other, "digits_external_model_finetune", "model.keras")
  assert os.path.isfile(hardened)
  run_cli("--phase=backdoor", f"--model_path={hardened}", f"--trigger_path={poisoned_dir}",
          f"--workdir={other}")
  backdoor = _summary(os.path.join(other, "digits_external_model"))["backdoor"]
  assert "der" in backdoor and 0.0 <= backdoor["der"] <= 1.0


@pytest.mark.parametrize("args, message", [
    (("--phase=backdoor",), "needs a backdoor trigger: pass --base_run"),
    (("--phase=train", "--base_run=poisoned"), "--base_run=poisoned is made by --phase=poison"),
    (("--phase=poison", "--base_run=natural"), "not the natural one"),
    (("--phase=harden", "--base_run=other"), "make it first with `python -m moth_tf.main "
     "--phase=poison --dataset=digits --model=lenet --base_run=other"),
    (("--phase=poison", "--base_run=moth"), "is a hardening method's name"),
    (("--phase=poison", "--poison_position=9,9", "--base_run=p2"), "leaves the 8x8 image"),
])
def test_backdoor_bad_input_is_one_line(workdir, capsys, args, message):
  before = sorted(os.listdir(workdir))
  err = run_cli_error(capsys, *args, f"--workdir={workdir}")
  assert message in err
  assert sorted(os.listdir(workdir)) == before  # Nothing half-written.
