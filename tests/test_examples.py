"""The scripts in examples/ run, with tiny budgets, and print what their docstrings promise.

Each runs in a subprocess as a user would (`python examples/NAME.py ...`), so a change of the API
that breaks an example fails here.
"""

import os
import re
import subprocess
import sys

import pytest

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Every example's tiny budget. The scripts are independent processes that spend most of their time
# in one thread (importing TensorFlow, tracing, small models), so `examples` starts them all at
# once and each test waits for its own.
_ARGS = {
    "harden_your_model.py": ("--epochs=3", "--steps=10", "--distance_steps=5", "--samples=3"),
    "class_distance.py": ("--epochs=3", "--steps=5", "--samples=3"),
    "remove_backdoor.py": ("--epochs=5", "--nc_steps=20", "--nc_samples=3", "--steps=10"),
    # {out} is the fixture's temporary folder.
    "harden_in_your_fit.py": ("--epochs=2", "--harden_epochs=3", "--start_epoch=1",
                              "--steps_per_epoch=4", "--trigger_steps=5", "--distance_steps=5",
                              "--out={out}/harden_in_your_fit"),
}


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
  """Each script of _ARGS started as `python examples/NAME.py ARGS` (side by side); name -> (the
  process, its stdout file, its stderr file)."""
  env = {**os.environ, "PYTHONPATH": _REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
         "TF_CPP_MIN_LOG_LEVEL": "2"}
  out_dir = tmp_path_factory.mktemp("examples")
  started = {}
  try:
    for name, args in _ARGS.items():
      stdout, stderr = out_dir / f"{name}.out", out_dir / f"{name}.err"
      with open(stdout, "w") as out, open(stderr, "w") as err:  # Files: no pipe fills up.
        started[name] = (subprocess.Popen(
            [sys.executable, os.path.join(_REPO, "examples", name),
             *(arg.format(out=out_dir) for arg in args)], stdout=out,
            stderr=err, text=True, cwd=_REPO, env=env), stdout, stderr)
    yield started
  finally:
    for proc, _, _ in started.values():
      if proc.poll() is None:
        proc.kill()
        proc.wait()


def _run(examples, name):
  proc, stdout, stderr = examples[name]
  proc.wait(timeout=600)
  assert proc.returncode == 0, stderr.read_text()[-3000:]
  return stdout.read_text()


def _number(pattern, text):
  found = re.search(pattern, text)
  assert found, (pattern, text)
  return [float(v) for v in found.groups()]


def test_harden_your_model(examples):
  out = _run(examples, "harden_your_model.py")
  before, after = _number(r"test accuracy: ([\d.]+) -> ([\d.]+)", out)
  assert 0 < before <= 1 and 0 < after <= 1
  _number(r"mean class distance: ([\d.]+) -> ([\d.]+)", out)
  assert "hardening: 10 steps" in out


def test_harden_in_your_fit(examples):
  out = _run(examples, "harden_in_your_fit.py")
  before, after = _number(r"test accuracy: ([\d.]+) -> ([\d.]+)", out)
  assert 0 < before <= 1 and 0 < after <= 1
  assert "MOTH stamped for 8 steps after 1 plain epochs" in out  # Epochs 1 and 2, 4 steps each.
  _number(r"mean class distance: ([\d.]+) -> ([\d.]+)", out)
  checkpoint, hardened = re.search(r"checkpoint: (\S+); hardened model: (\S+)", out).groups()
  assert os.path.exists(checkpoint) and os.path.exists(hardened)


def test_class_distance(examples):
  out = _run(examples, "class_distance.py")
  assert "rows: source class" in out
  mean, pairs = _number(r"mean distance: ([\d.]+) over (\d+) pairs", out)
  assert mean > 0 and pairs <= 90


def test_remove_backdoor(examples):
  out = _run(examples, "remove_backdoor.py")
  assert re.search(r"poisoned 126 of \d+ training images \(target class 0\)", out)
  _number(r"poisoned model: C-Acc ([\d.]+), ASR ([\d.]+), R-Acc ([\d.]+)", out)
  assert "Neural Cleanse flags:" in out
  _number(r"hardened model: C-Acc ([\d.]+), ASR ([\d.]+), R-Acc ([\d.]+)", out)
