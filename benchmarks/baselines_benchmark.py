"""Benchmark: MOTH beside the baselines, one comparison table, through the command line.

From one natural base model of the data set, every method is run with `--phase=harden
--method=NAME` at the default budget (Pairwise at its own: one sweep over all pairs), then measured
by the same evaluations as the base model: clean test accuracy, `--phase=robustness` (L-inf PGD on
1,000 validation images with the data set's budget) and `--phase=distance --compare_to=<base run>`.
The row `moth_adv` is MOTH in adversarial mode (`--mode=adv`) on the `adv_train` model: the
paper's hardening of an adversarially trained model, with its own before/after.

    python benchmarks/baselines_benchmark.py --dataset=digits
    python benchmarks/baselines_benchmark.py --dataset=fashion_mnist \
        --methods=finetune,adv_train,uap,universal,moth,moth_adv

Distances: digits uses the command line's defaults (100 images per direction, 1,000 steps with
early stop, 3 seeds); fashion_mnist uses flags/fashion_mnist.flags (30 images, 300 steps, early stop
50, 1 seed). Steps already done (a run directory with a summary, a distance.json, a robustness
entry) are reused unless --fresh, so an interrupted benchmark continues. The table is printed and
written, with every figure, to benchmarks/results/baselines_<dataset>.json (and .md).

Another model: --model=resnet20 --flagfile=flags/fashion_mnist_resnet20.flags. The flagfile comes
first on every command (base training, hardening budget, distance protocol), so every row shares its
settings; results go to baselines_<dataset>_<model>.json.

    python benchmarks/baselines_benchmark.py --dataset=fashion_mnist --model=resnet20 \
        --flagfile=flags/fashion_mnist_resnet20.flags --methods=finetune,moth,universal,adv_train

Pairwise on a large model may not fit: --pairwise_minutes=M stops its sweep after M minutes and
measures its cost per pair from the run's logs instead (pairs finished, steps each, seconds per
step: a measured cost per pair and the whole sweep's projected cost, no distance or robustness):

    python benchmarks/baselines_benchmark.py --dataset=fashion_mnist --model=resnet20 \
        --flagfile=flags/fashion_mnist_resnet20.flags --methods=pairwise --pairwise_minutes=20

Costs on the project's 2-core CPU (measured; see docs/results.md): digits about 45 minutes for every
row (Pairwise about half of it), fashion_mnist without pairwise about 90 minutes; resnet20 (860 steps,
measurements included, idle machine; the flagfile now hardens for 1,720 steps, which roughly doubles
every row but pairwise) about 10 minutes each for finetune and moth, 20 for adv_train, 85 for
universal (its generation on every step) and 100 for pairwise (one sweep over the 45 pairs, whatever
the budget).
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top

ALL_METHODS = ("finetune", "adv_train", "uap", "universal", "pairwise", "moth", "moth_adv")
DEFAULT_MODELS = {"digits": "lenet", "fashion_mnist": "small_cnn"}


def distance_args(dataset, flagfile=None):
  """The distance flags of the data set's protocol (none beyond a run's own flagfile)."""
  if flagfile:
    return []
  if dataset == "fashion_mnist":
    return [f"--flagfile={os.path.join(common.REPO, 'flags', 'fashion_mnist.flags')}"]
  return ["--seeds=3"]


def read_json(path):
  with open(path) as f:
    return json.load(f)


def robust_accuracy(output):
  match = re.search(r"PGD robust accuracy: ([0-9.]+)", output)
  return float(match.group(1)) if match else None


class Bench:
  """Runs and measures one data set's rows; every figure lands in `self.results`."""

  def __init__(self, dataset, workdir, fresh, out_path, model=None, flagfile=None):
    self.dataset = dataset
    self.model = model or DEFAULT_MODELS[dataset]
    self.flagfile = flagfile
    self.workdir = workdir
    self.fresh = fresh
    self.out_path = out_path
    self.results = read_json(out_path) if os.path.exists(out_path) and not fresh else {}
    self.results.setdefault("rows", {})
    self.results["machine"] = common.machine_note()
    self.results["dataset"] = dataset
    self.results["model"] = self.model
    self.results["flagfile"] = flagfile

  def save(self):
    os.makedirs(os.path.dirname(self.out_path), exist_ok=True)
    with open(self.out_path + ".tmp", "w") as f:
      json.dump(self.results, f, indent=1)
    os.replace(self.out_path + ".tmp", self.out_path)

  def cli_args(self, *args):
    """The command line's arguments for this data set and model, then `args`."""
    # The flagfile first: flags after it win (it may set --phase=pipeline).
    flagfile = [f"--flagfile={self.flagfile}"] if self.flagfile else []
    return [*flagfile, f"--dataset={self.dataset}", f"--model={self.model}", *args]

  def cli(self, *args, workdir=None):
    return common.run_cli(*self.cli_args(*args), workdir=workdir or self.workdir)

  def run_dir(self, method, workdir=None):
    return os.path.join(workdir or self.workdir, f"{self.dataset}_{self.model}_{method}")

  def measure(self, label, method=None, model_path=None, workdir=None, compare_to=None):
    """Distance (with enlargement vs compare_to) and robustness of a run or a model file."""
    row = self.results["rows"].setdefault(label, {})
    target = [f"--method={method}"] if method else [f"--model_path={model_path}"]
    compare = [f"--compare_to={compare_to}"] if compare_to else []
    if "distance" not in row:
      # The flagfile first: flags after it win (it sets --phase=pipeline).
      wall, _ = self.cli(*distance_args(self.dataset, self.flagfile), "--phase=distance", *target,
                         *compare,
                         workdir=workdir)
      out_dir = (self.run_dir(method, workdir) if method else os.path.join(
          workdir, f"{self.dataset}_external_model"))
      d = read_json(os.path.join(out_dir, "distance.json"))
      row["distance"] = {"mean": d["mean"], "failures": len(d["failures"]),
                         "seeds": d.get("seeds"), "cli_seconds": wall}
      if "comparison" in d:
        row["distance"]["enlargement_mean_relative"] = d["comparison"]["mean_relative_change"]
        row["distance"]["enlargement_ratio_of_means"] = d["comparison"]["ratio_of_means"]
      self.save()
    if "robust_accuracy" not in row:
      wall, out = self.cli("--phase=robustness", *target, workdir=workdir)
      row["robust_accuracy"] = robust_accuracy(out)
      row["robustness_cli_seconds"] = wall
      self.save()
    return row

  def base(self):
    start = time.time()
    path = os.path.join(self.run_dir("natural"), "model.keras")
    if not os.path.exists(path):
      self.cli("--phase=train")
    row = self.results["rows"].setdefault("natural", {})
    summary = read_json(os.path.join(self.run_dir("natural"), "summary.json"))
    row["test_accuracy"] = summary["test_accuracy"]
    row["train_seconds"] = summary.get("train", {}).get("wall_seconds")
    self.measure("natural", method="natural")
    print(f"base model {path}: {json.dumps(row)} ({time.time() - start:.0f} s)", flush=True)
    return path

  def method(self, name):
    row = self.results["rows"].setdefault(name, {})
    summary_path = os.path.join(self.run_dir(name), "summary.json")
    if "harden" not in row:
      # A finished run directory (a summary with its hardening entry) is reused, not redone.
      reused = os.path.exists(summary_path) and "harden" in read_json(summary_path)
      wall = None if reused else self.cli("--phase=harden", f"--method={name}")[0]
      summary = read_json(summary_path)
      h = summary["harden"]
      row.update(test_accuracy=h["test_accuracy_after"], harden={
          "wall_seconds": h["wall_seconds"], "cli_seconds": wall, "steps": h["steps"],
          "generation_seconds": h["generation_seconds"] + h["warmup_seconds"],
          "test_accuracy_before": h["test_accuracy_before"], "reused_run": reused,
          **({"pairwise": {k: v for k, v in h["pairwise"].items() if k != "order"}}
             if "pairwise" in h else {})})
      self.save()
    self.measure(name, method=name, compare_to=self.run_dir("natural"))
    print(f"{name}: {json.dumps(row)}", flush=True)

  def pairwise_partial(self, minutes):
    """Pairwise's measured cost per pair from a sweep stopped after `minutes` of wall time.

    The run is interrupted like a user's Ctrl-C (its backup stays, so it can be resumed); the
    steps it logged (moth/pair_source, moth/pair_target: the step's pair, one point per step) give
    the pairs it finished, their steps and the seconds per step.
    """
    from moth_tf.reporting import reader  # pylint: disable=g-import-not-at-top
    row = self.results["rows"].setdefault("pairwise_partial", {})
    run_dir = self.run_dir("pairwise")
    if os.path.exists(run_dir):
      raise SystemExit(f"{run_dir} exists: remove it to measure Pairwise's cost per pair again")
    cmd = [sys.executable, "-m", "moth_tf.main",
           *self.cli_args("--phase=harden", "--method=pairwise"), f"--workdir={self.workdir}"]
    start = time.time()
    with open(os.path.join(self.workdir, "pairwise_partial.log"), "w") as log:
      proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
      try:
        proc.wait(timeout=60 * minutes)
      except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
          proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
          proc.kill()
          proc.wait()
    wall = time.time() - start
    runs = reader.read_runs(os.path.join(run_dir, "logs"))
    sources = [p for r in runs for p in r.points("moth/pair_source")]
    targets = [p for r in runs for p in r.points("moth/pair_target")]
    steps = [(round(s.value), round(t.value), s.wall_time) for s, t in zip(sources, targets)]
    if len(steps) < 2:
      raise SystemExit(f"Pairwise logged {len(steps)} steps in {minutes} minutes: too few "
                       "to measure; give --pairwise_minutes more time")
    # Consecutive steps of the same pair form its visit; the last visit is unfinished unless the
    # whole sweep ended within the time.
    visits = []
    for s, t, _ in steps:
      if visits and visits[-1][0] == (s, t):
        visits[-1][1] += 1
      else:
        visits.append([(s, t), 1])
    finished = [n for _, n in (visits if proc.returncode == 0 else visits[:-1])]
    seconds_per_step = (steps[-1][2] - steps[0][2]) / (len(steps) - 1)
    n = len(read_json(os.path.join(self.run_dir("natural"), "distance.json"))["matrix"])
    num_pairs = n * (n - 1) // 2
    row.update(
        minutes=minutes, cli_seconds=wall, finished_process=proc.returncode == 0,
        steps_logged=len(steps), pairs_started=len(visits), pairs_finished=len(finished),
        steps_per_finished_pair=finished, seconds_per_step=seconds_per_step,
        first_step_after_seconds=steps[0][2] - start)
    if finished:
      per_pair = float(np.mean(finished)) * seconds_per_step
      row.update(seconds_per_pair=per_pair, pairs=num_pairs,
                 projected_sweep_seconds=num_pairs * per_pair)
    self.save()
    print(f"pairwise (stopped after {minutes} min): {json.dumps(row)}", flush=True)

  def moth_adv(self):
    """MOTH in adversarial mode on the adv_train model, in a workdir of its own."""
    row = self.results["rows"].setdefault("moth_adv", {})
    workdir = os.path.join(self.workdir, "moth_on_adv_train")
    adv_model = os.path.join(self.run_dir("adv_train"), "model.keras")
    out_dir = os.path.join(workdir, f"{self.dataset}_external_model_moth")
    if "harden" not in row:
      wall, _ = self.cli("--phase=harden", "--method=moth", "--mode=adv",
                         f"--model_path={adv_model}", workdir=workdir)
      h = read_json(os.path.join(out_dir, "summary.json"))["harden"]
      row.update(test_accuracy=h["test_accuracy_after"], harden={
          "wall_seconds": h["wall_seconds"], "cli_seconds": wall, "steps": h["steps"],
          "generation_seconds": h["generation_seconds"] + h["warmup_seconds"],
          "test_accuracy_before": h["test_accuracy_before"]})
      self.save()
    self.measure("moth_adv", model_path=os.path.join(out_dir, "model.keras"), workdir=workdir,
                 compare_to=self.run_dir("natural"))
    # Against its own starting point, the adv_train model.
    base_distance = read_json(os.path.join(self.run_dir("adv_train"), "distance.json"))
    after = read_json(os.path.join(workdir, f"{self.dataset}_external_model", "distance.json"))
    row["vs_adv_train"] = {
        "distance_before": base_distance["mean"], "distance_after": after["mean"],
        "robust_accuracy_before": self.results["rows"]["adv_train"]["robust_accuracy"],
        "robust_accuracy_after": row["robust_accuracy"]}
    self.save()
    print(f"moth_adv: {json.dumps(row)}", flush=True)


def table(results) -> str:
  """The comparison table as Markdown."""
  rows = results["rows"]
  moth_wall = rows.get("moth", {}).get("harden", {}).get("wall_seconds")
  lines = ["| method | test acc | PGD robust acc | mean distance | enlargement (mean of per-pair) "
           "| enlargement (ratio of means) | hardening steps | hardening wall (s) | time vs MOTH |",
           "|---|---|---|---|---|---|---|---|---|"]
  for name in ("natural",) + ALL_METHODS:
    r = rows.get(name)
    if not r or "distance" not in r:
      continue
    d, h = r["distance"], r.get("harden", {})
    wall = h.get("wall_seconds")

    def pct(key):
      return f"{100 * d[key]:+.1f}%" if key in d else "-"
    lines.append(
        f"| {name} | {r.get('test_accuracy', float('nan')):.4f} | "
        f"{r.get('robust_accuracy') if r.get('robust_accuracy') is not None else float('nan'):.4f}"
        f" | {d['mean']:.3f} | {pct('enlargement_mean_relative')} | "
        f"{pct('enlargement_ratio_of_means')} | {h.get('steps', '-')} | "
        f"{f'{wall:.0f}' if wall else '-'} | "
        f"{f'{wall / moth_wall:.2f}x' if wall and moth_wall else '-'} |")
  partial = rows.get("pairwise_partial", {})
  if "seconds_per_pair" in partial:
    lines.append("")
    lines.append(
        f"pairwise, stopped after {partial['minutes']:g} min: {partial['pairs_finished']} of "
        f"{partial['pairs']} pairs finished in {np.mean(partial['steps_per_finished_pair']):.0f} "
        f"steps each, {partial['seconds_per_step']:.2f} s per step: "
        f"{partial['seconds_per_pair']:.0f} s per pair, the whole sweep about "
        f"{partial['projected_sweep_seconds'] / 60:.0f} min")
  adv = rows.get("moth_adv", {}).get("vs_adv_train")
  if adv:
    lines.append("")
    lines.append(f"moth_adv against its starting point (the adv_train model): mean distance "
                 f"{adv['distance_before']:.3f} -> {adv['distance_after']:.3f} "
                 f"({100 * (adv['distance_after'] / adv['distance_before'] - 1):+.1f}%), PGD robust "
                 f"accuracy {adv['robust_accuracy_before']:.4f} -> "
                 f"{adv['robust_accuracy_after']:.4f}")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--dataset", default="digits", choices=sorted(DEFAULT_MODELS))
  parser.add_argument("--methods", default=",".join(ALL_METHODS))
  parser.add_argument("--model", default=None,
                      help="the model to build (default: the data set's benchmark model)")
  parser.add_argument("--flagfile", default=None,
                      help="a flagfile put first on every command (training, budget, distance)")
  parser.add_argument("--workdir", default=None)
  parser.add_argument("--pairwise_minutes", type=float, default=None,
                      help="stop Pairwise after this many minutes and measure its cost per pair")
  parser.add_argument("--fresh", action="store_true",
                      help="forget the JSON of an earlier run (run directories are reused)")
  args = parser.parse_args()
  if args.pairwise_minutes is not None and args.pairwise_minutes <= 0:
    parser.error(f"--pairwise_minutes={args.pairwise_minutes:g}: give a positive number of minutes")
  name = f"baselines_{args.dataset}" + (
      f"_{args.model}" if args.model and args.model != DEFAULT_MODELS[args.dataset] else "")
  workdir = args.workdir or os.path.join(common.REPO, "benchmarks", "results", name)
  out_path = os.path.join(common.REPO, "benchmarks", "results", f"{name}.json")
  flagfile = os.path.abspath(args.flagfile) if args.flagfile else None
  bench = Bench(args.dataset, workdir, args.fresh, out_path, args.model, flagfile)
  start = time.time()
  bench.base()
  for name in args.methods.split(","):
    if name not in ALL_METHODS:
      raise SystemExit(f"unknown method {name!r}; choose from {', '.join(ALL_METHODS)}")
    if name == "moth_adv":
      bench.moth_adv()
    elif name == "pairwise" and args.pairwise_minutes:
      bench.pairwise_partial(args.pairwise_minutes)
    else:
      bench.method(name)
  common.finish(bench, table(bench.results), out_path, start)


if __name__ == "__main__":
  main()
