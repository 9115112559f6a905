"""The scripts in examples/ run, with tiny budgets, and print what their docstrings promise.

Each runs in a subprocess as a user would (`python examples/NAME.py ...`), so a change of the API
that breaks an example fails here.
"""

import os
import re
import subprocess
import sys

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(name, *args):
  env = {**os.environ, "PYTHONPATH": _REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
         "TF_CPP_MIN_LOG_LEVEL": "2"}
  done = subprocess.run([sys.executable, os.path.join(_REPO, "examples", name), *args],
                        capture_output=True, text=True, cwd=_REPO, env=env, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  return done.stdout


def _number(pattern, text):
  found = re.search(pattern, text)
  assert found, (pattern, text)
  return [float(v) for v in found.groups()]


def test_harden_your_model():
  out = _run("harden_your_model.py", "--epochs=3", "--steps=10", "--distance_steps=5",
             "--samples=3")
  before, after = _number(r"test accuracy: ([\d.]+) -> ([\d.]+)", out)
  assert 0 < before <= 1 and 0 < after <= 1
  _number(r"mean class distance: ([\d.]+) -> ([\d.]+)", out)
  assert "hardening: 10 steps" in out


def test_harden_in_your_fit(tmp_path):
  checkpoint = str(tmp_path / "hardened.keras")
  out = _run("harden_in_your_fit.py", "--epochs=2", "--harden_epochs=3", "--start_epoch=1",
             "--steps_per_epoch=4", "--trigger_steps=5", "--distance_steps=5",
             f"--checkpoint={checkpoint}")
  before, after = _number(r"test accuracy: ([\d.]+) -> ([\d.]+)", out)
  assert 0 < before <= 1 and 0 < after <= 1
  assert "MOTH stamped for 8 steps after 1 plain epochs" in out  # Epochs 1 and 2, 4 steps each.
  _number(r"mean class distance: ([\d.]+) -> ([\d.]+)", out)
  assert os.path.exists(checkpoint) and not os.path.exists(checkpoint + ".partial.keras")


def test_class_distance():
  out = _run("class_distance.py", "--epochs=3", "--steps=5", "--samples=3")
  assert "rows: source class" in out
  mean, pairs = _number(r"mean distance: ([\d.]+) over (\d+) pairs", out)
  assert mean > 0 and pairs <= 90


def test_remove_backdoor():
  out = _run("remove_backdoor.py", "--epochs=5", "--nc_steps=20", "--nc_samples=3", "--steps=10")
  assert re.search(r"poisoned 126 of \d+ training images \(target class 0\)", out)
  _number(r"poisoned model: C-Acc ([\d.]+), ASR ([\d.]+), R-Acc ([\d.]+)", out)
  assert "Neural Cleanse flags:" in out
  _number(r"hardened model: C-Acc ([\d.]+), ASR ([\d.]+), R-Acc ([\d.]+)", out)
