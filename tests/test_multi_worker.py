"""`--strategy=multi_worker` end to end: two worker processes on 127.0.0.1 (free ports) train,
measure class distance and harden; only the chief writes, and its results match one process."""

import json
import os
import subprocess
import sys
import time

import numpy as np

from moth_tf import distribute

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env():
  # PYTHONPATH: subprocesses must import this checkout's moth_tf, not an installed copy.
  return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=os.pathsep.join(
      p for p in (REPO, os.environ.get("PYTHONPATH")) if p))




def _run_workers(args, workdir, timeout=600):
  """Runs `python -m moth_tf.main ARGS --strategy=multi_worker` as a two-worker cluster; returns
  (wall seconds, [(returncode, output)] per worker)."""
  procs = []
  start = time.time()
  for tf_config in distribute.loopback_tf_configs(2):
    env = dict(_env(), TF_CONFIG=tf_config)
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "moth_tf.main", *args, "--strategy=multi_worker",
         f"--workdir={workdir}"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True))
  results = []
  try:
    for proc in procs:
      output, _ = proc.communicate(timeout=timeout)
      results.append((proc.returncode, output))
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
  return time.time() - start, results


def _check_ok(results):
  for index, (code, output) in enumerate(results):
    assert code == 0, f"worker {index}:\n" + "\n".join(
        l for l in output.splitlines() if "━" not in l)[-3000:]


def test_multi_worker_train_distance_harden(tmp_path):
  workdir = str(tmp_path / "w")
  run = os.path.join(workdir, "digits_lenet_natural")
  _, results = _run_workers(["--phase=train", "--dataset=digits", "--epochs=1"], workdir)
  _check_ok(results)
  assert os.path.exists(os.path.join(run, "model.keras"))
  summary = json.load(open(os.path.join(run, "summary.json")))
  assert summary["test_accuracy"] > 0.3
  assert not [d for d in os.listdir(run) if d.startswith("workertemp")]

  distance_flags = ["--phase=distance", "--dataset=digits", "--distance_steps=30", "--seeds=1",
                    "--distance_samples=5"]
  # The same measurement in one process, on the chief's model: started now, it runs beside the
  # cluster's (it only reads model.keras; its output goes to its own workdir).
  single_dir = str(tmp_path / "single")
  single_log = tmp_path / "single.stderr"
  with open(single_log, "w") as err:
    single = subprocess.Popen([sys.executable, "-m", "moth_tf.main", *distance_flags,
                               f"--model_path={os.path.join(run, 'model.keras')}",
                               f"--workdir={single_dir}"], stdout=subprocess.DEVNULL,
                              stderr=err, text=True, env=_env())
  try:
    _, results = _run_workers(distance_flags, workdir)
    single.wait(timeout=600)
  finally:
    if single.poll() is None:
      single.kill()
      single.wait()
  _check_ok(results)
  chief = json.load(open(os.path.join(run, "distance.json")))
  assert not [d for d in os.listdir(run) if d.startswith("workertemp")]
  assert json.load(open(os.path.join(run, "summary.json")))["distance"]["replicas"] == 2
  assert single.returncode == 0, single_log.read_text()[-3000:]
  single = json.load(open(os.path.join(single_dir, "digits_external_model", "distance.json")))
  matrix = np.array(chief["matrix"], np.float64)
  expected = np.array(single["matrix"], np.float64)
  # The same blocks of directions, whoever runs them: the same bits (NaN where both failed).
  np.testing.assert_array_equal(matrix, expected)

  _, results = _run_workers(["--phase=harden", "--dataset=digits", "--harden_steps=12",
                             "--warmup_steps=20", "--pair_steps=20", "--fast_steps=5",
                             "--trigger_samples=8"], workdir)
  _check_ok(results)
  hardened = os.path.join(workdir, "digits_lenet_moth")
  assert os.path.exists(os.path.join(hardened, "model.keras"))
  harden = json.load(open(os.path.join(hardened, "summary.json")))["harden"]
  assert harden["replicas"] == 2 and harden["steps"] >= 10
  assert not [d for d in os.listdir(hardened) if d.startswith("workertemp")]
