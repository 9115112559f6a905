"""Shared helpers of the benchmark scripts: a trained digits base model and timing."""

import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_WORKDIR = os.path.join(REPO, "benchmarks", "results", "workdir")


def run_cli(*args, workdir, capture=True):
  """Runs `python -m moth_tf.main ARGS --workdir=WORKDIR`; returns (wall seconds, output)."""
  cmd = [sys.executable, "-m", "moth_tf.main", *args, f"--workdir={workdir}"]
  start = time.time()
  proc = subprocess.run(cmd, capture_output=capture, text=True, check=False)
  wall = time.time() - start
  if proc.returncode != 0:
    raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
  return wall, (proc.stdout or "")


def ensure_base_model(workdir, dataset="digits", model="lenet"):
  """Trains the natural base model through the CLI unless the workdir already has one."""
  path = os.path.join(workdir, f"{dataset}_{model}_natural", "model.keras")
  if not os.path.exists(path):
    run_cli("--phase=train", f"--dataset={dataset}", f"--model={model}", workdir=workdir)
  return path


def machine_note():
  load = os.getloadavg()
  return (f"{os.cpu_count()} CPU cores, load average {load[0]:.2f} at start; "
          "figures vary with machine load")


def finish(bench, text: str, out_path: str, start: float):
  """Ends a benchmark invocation: adds its time to the results, saves them (`bench.save()`), writes
  `text` (the Markdown table) beside the JSON and prints it with the wall time and machine note."""
  bench.results["benchmark_seconds"] = bench.results.get("benchmark_seconds", 0) + (
      time.time() - start)
  bench.save()
  with open(out_path[:-len(".json")] + ".md", "w") as f:
    f.write(text + "\n")
  print(text)
  print(f"benchmark wall time this invocation: {time.time() - start:.0f} s; "
        f"{bench.results['machine']}")
