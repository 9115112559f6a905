"""Benchmark: MOTH hardening of lenet on digits, through the command line.

Parts (all by default; pick with --parts=a,b,...):
  main      fresh base model -> distance (3 seeds) -> default hardening -> distance (3 seeds):
            enlargement (mean of per-pair relative changes and ratio of means), accuracy drop,
            hardening wall time and the share spent generating triggers vs training.
  reference the same hardening with --preset=reference (the authors' settings), distance 3 seeds.
  ablation  the default with the learning-rate ramp and decay, or replay, turned off, and with two
            trigger families; distance 3 seeds.
  sweep     stamped fraction x epoch budget (x learning rate) grid; each point's distance with
            1 seed (stated in the output) to keep the sweep affordable.
  mirrored  the default hardening under MirroredStrategy on 2 logical CPU devices.
  resume    a 200-step hardening killed (SIGKILL) just after epochs 2, 9 and 17 are checkpointed and
            restarted with the same command: each must resume, complete, and report the same
            steps, trigger-generation counters, scheduler pair counts and test accuracy as the
            uninterrupted run with the same flags.

    python benchmarks/hardening_benchmark.py [--parts=main,mirrored] [--workdir=DIR]
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top

PARTS = ("main", "reference", "ablation", "sweep", "mirrored", "resume")
# The sweep point that equals the default preset (part main measures it with 3 seeds).
DEFAULT_POINT = ("--portion=0.5", "--harden_steps=2000")
# Our changes to MOTH as published, each undone in turn (the rest stays at the default), plus the
# optional second trigger family.
ABLATIONS = (
    ("constant learning rate, no ramp", ("--lr_warmup_steps=0", "--lr_decay=constant")),
    ("no replay", ("--replay=0",)),
    ("two trigger families", ("--trigger_families=2",)),
)


def load(workdir, run):
  path = os.path.join(workdir, run, "summary.json")
  return json.load(open(path)) if os.path.exists(path) else {}


def distance_of(workdir, run):
  return json.load(open(os.path.join(workdir, run, "distance.json")))


def harden_and_measure(base_workdir, workdir, seeds, *flags):
  """Copies the base run into `workdir`, hardens with `flags`, measures distance vs the base."""
  shutil.rmtree(workdir, ignore_errors=True)
  os.makedirs(workdir)
  shutil.copytree(os.path.join(base_workdir, "digits_lenet_natural"),
                  os.path.join(workdir, "digits_lenet_natural"))
  wall, _ = common.run_cli("--phase=harden", *flags, workdir=workdir)
  common.run_cli("--phase=distance", "--method=moth", f"--seeds={seeds}",
                 f"--compare_to={os.path.join(workdir, 'digits_lenet_natural')}", workdir=workdir)
  return collect(workdir, flags, wall)


def collect(workdir, flags=(), wall=None):
  """The figures of a finished harden + distance run in `workdir`."""
  summary = load(workdir, "digits_lenet_moth")["harden"]
  dist = distance_of(workdir, "digits_lenet_moth")
  return {
      "flags": list(flags), "harden_command_seconds": wall,
      "harden_seconds": summary["wall_seconds"],
      "generation_seconds": summary["warmup_seconds"] + summary["generation_seconds"],
      "training_seconds": summary["training_seconds"],
      "acc_before": summary["test_accuracy_before"], "acc_after": summary["test_accuracy_after"],
      "distance_after": dist["mean"],
      "enlargement": dist["comparison"]["mean_relative_change"],
      "ratio_of_means": dist["comparison"]["ratio_of_means"],
      "failures_after": len(dist["failures"]),
  }


def save(results, path):
  """Writes the results so far (after every part, so a failure later keeps them)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(results, f, indent=2)


def describe(label, r):
  drop = 100 * (r["acc_before"] - r["acc_after"])
  gen_share = r["generation_seconds"] / r["harden_seconds"]
  return (f"{label:34s} enlargement {100 * r['enlargement']:+7.1f}% (ratio of means "
          f"{100 * r['ratio_of_means']:+6.1f}%)  accuracy {r['acc_before']:.4f} -> "
          f"{r['acc_after']:.4f} (drop {drop:+.2f} pts)  hardening {r['harden_seconds']:.0f} s "
          f"({100 * gen_share:.0f}% trigger generation)")


RESUME_STEPS = 200  # 20 epochs on digits: room for kill points early, mid-way and late.
RESUME_KILL_EPOCHS = (2, 9, 17)


def _harden_summary(workdir):
  h = load(workdir, "digits_lenet_moth")["harden"]
  return {"steps": h["steps"], "events": h["events"], "pair_count": h["pair_count"],
          "test_accuracy_after": h["test_accuracy_after"], "wall_seconds": h["wall_seconds"],
          "generation_seconds": h["generation_seconds"], "warmup_seconds": h["warmup_seconds"]}


def part_resume(base_workdir, workdir):
  """Kill-and-resume at 3 points against one uninterrupted run with the same flags."""
  shutil.rmtree(workdir, ignore_errors=True)

  def fresh(name):
    path = os.path.join(workdir, name)
    os.makedirs(path)
    shutil.copytree(os.path.join(base_workdir, "digits_lenet_natural"),
                    os.path.join(path, "digits_lenet_natural"))
    return path

  flags = ("--phase=harden", f"--harden_steps={RESUME_STEPS}")
  whole_dir = fresh("uninterrupted")
  whole_wall, _ = common.run_cli(*flags, workdir=whole_dir)
  whole = _harden_summary(whole_dir)
  results = {"uninterrupted": {**whole, "cli_seconds": whole_wall}, "kills": []}
  print(f"resume: uninterrupted run of {RESUME_STEPS} steps: accuracy "
        f"{whole['test_accuracy_after']:.4f}, events {whole['events']}", flush=True)
  for kill_epoch in RESUME_KILL_EPOCHS:
    run_workdir = fresh(f"killed_after_epoch_{kill_epoch}")
    backup = os.path.join(run_workdir, "digits_lenet_moth", "backup_harden")
    meta = os.path.join(backup, "training_metadata.json")
    cmd = [sys.executable, "-m", "moth_tf.main", *flags, f"--workdir={run_workdir}"]
    with open(os.path.join(run_workdir, "first_attempt.log"), "w") as log:
      proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
      # SIGKILL as soon as epoch `kill_epoch` is checkpointed: the process is then inside the next
      # epoch, whose steps are lost and redone.
      while proc.poll() is None:
        try:
          if json.load(open(meta))["epoch"] >= kill_epoch:
            break
        except (OSError, ValueError):
          pass
        time.sleep(0.2)
      if proc.poll() is not None:
        raise RuntimeError("the first attempt finished before it could be killed")
      time.sleep(0.5)
      proc.send_signal(signal.SIGKILL)
      proc.wait()
    saved_epoch = json.load(open(meta))["epoch"]
    wall, out = common.run_cli(*flags, workdir=run_workdir)
    resumed = f"resumed at step {saved_epoch * 10}" in out
    got = _harden_summary(run_workdir)
    same = {key: got[key] == whole[key] for key in ("steps", "events", "pair_count",
                                                    "test_accuracy_after")}
    results["kills"].append({"checkpointed_epochs": saved_epoch, "resumed": resumed,
                             "equal_to_uninterrupted": same, "summary": got,
                             "backup_removed": not os.path.exists(backup),
                             "second_run_cli_seconds": wall})
    print(f"resume: killed after epoch {saved_epoch}: {'resumed' if resumed else 'NOT resumed'}; "
          f"equal to the uninterrupted run: {same}; accuracy {got['test_accuracy_after']:.4f}; "
          f"wall (whole run, both processes) {got['wall_seconds']:.1f} s vs "
          f"{whole['wall_seconds']:.1f} s", flush=True)
  return results


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default=os.path.join(common.DEFAULT_WORKDIR, "harden_bench"))
  parser.add_argument("--parts", default=",".join(PARTS))
  parser.add_argument("--sweep", default="portion=0.1,0.5;harden_steps=300,2000",
                      help="grid as flag=v1,v2;flag=v1,v2 (each point: one seed of distance)")
  parser.add_argument("--out", default=os.path.join(common.REPO, "benchmarks", "results",
                                                    "hardening_benchmark.json"))
  args = parser.parse_args()
  parts = args.parts.split(",")
  print(common.machine_note(), flush=True)
  results = {}
  base = os.path.join(args.workdir, "base")
  if not os.path.exists(os.path.join(base, "digits_lenet_natural", "distance.json")):
    shutil.rmtree(base, ignore_errors=True)
    common.ensure_base_model(base)
    common.run_cli("--phase=distance", "--seeds=3", workdir=base)
  base_summary = load(base, "digits_lenet_natural")
  base_dist = distance_of(base, "digits_lenet_natural")
  print(f"base lenet: test accuracy {base_summary['test_accuracy']:.4f}, mean distance "
        f"{base_dist['mean']:.3f} (3 seeds, {base_dist['wall_seconds']:.0f} s)", flush=True)
  results["base"] = {"test_accuracy": base_summary["test_accuracy"], "distance": base_dist["mean"]}

  if "main" in parts:
    r = harden_and_measure(base, os.path.join(args.workdir, "default"), 3)
    results["default"] = r
    save(results, args.out)
    print(describe("default preset (3 seeds)", r), flush=True)
    print(f"  hardening wall time {r['harden_seconds']:.1f} s: trigger generation (warm-up + "
          f"pairs) {r['generation_seconds']:.1f} s, training steps {r['training_seconds']:.1f} s",
          flush=True)
  if "reference" in parts:
    r = harden_and_measure(base, os.path.join(args.workdir, "reference"), 3, "--preset=reference")
    results["reference"] = r
    save(results, args.out)
    print(describe("authors' preset (3 seeds)", r), flush=True)
  if "ablation" in parts:
    results["ablation"] = []
    for i, (label, flags) in enumerate(ABLATIONS):
      r = harden_and_measure(base, os.path.join(args.workdir, f"ablation_{i}"), 3, *flags)
      r["label"] = label
      results["ablation"].append(r)
      save(results, args.out)
      print(describe(f"{label} (3 seeds)", r), flush=True)
  if "mirrored" in parts:
    r = harden_and_measure(base, os.path.join(args.workdir, "mirrored"), 1, "--strategy=mirrored",
                           "--cpu_devices=2")
    s = load(os.path.join(args.workdir, "mirrored"), "digits_lenet_moth")["harden"]
    r["replicas"] = s["replicas"]
    results["mirrored"] = r
    save(results, args.out)
    print(describe(f"MirroredStrategy, {s['replicas']} replicas (1 seed)", r), flush=True)
  if "resume" in parts:
    results["resume"] = part_resume(base, os.path.join(args.workdir, "resume"))
    save(results, args.out)
  if "sweep" in parts:
    grid = [(kv.split("=")[0], kv.split("=")[1].split(",")) for kv in args.sweep.split(";")]
    points = [[]]
    for flag, values in grid:
      points = [p + [f"--{flag}={v}"] for p in points for v in values]
    results["sweep"] = []
    print(f"sweep ({len(points)} points, distance with 1 seed each):", flush=True)
    for i, flags in enumerate(points):
      default_dir = os.path.join(args.workdir, "default")
      if sorted(flags) == sorted(DEFAULT_POINT) and os.path.exists(
          os.path.join(default_dir, "digits_lenet_moth", "distance.json")):
        r = collect(default_dir, flags)
        print(describe("(default, 3 seeds, from part main) " + " ".join(
            f.lstrip("-") for f in flags), r), flush=True)
        continue
      r = harden_and_measure(base, os.path.join(args.workdir, f"sweep_{i}"), 1, *flags)
      results["sweep"].append(r)
      save(results, args.out)
      print(describe(" ".join(f.lstrip("-") for f in flags), r), flush=True)
  save(results, args.out)
  print(f"results written to {args.out}")


if __name__ == "__main__":
  main()
