"""MOTH's ablations: what each part of MOTH buys, through the command line.

From one natural base model per data set, MOTH with the default settings and MOTH with one change
each (MOTH's ablation options; docs/methods.md, "Ablations"):

  moth         the defaults: two-sided generation, the K-arm scheduler, trigger reuse;
  one_sided    --generation=one_sided: each direction of a pair generated on its own;
  random       --schedule=random: uniformly random pairs (seeded);
  round_robin  --schedule=round_robin: every pair in turn, in a fixed order;
  prior_only   --schedule=prior_only: the K-arm score from the warm-up's prior U alone;
  reward_only  --schedule=reward_only: the K-arm score from the reward V alone;
  no_reuse     --notrigger_reuse: every generation from a random trigger at the initial cost for
               the full pair_steps (no fast generations, no rollback).

Each point copies the base run (its model and its distance.json) into a workdir of its own, runs
`--phase=harden --method=moth` with its flags and `--phase=distance --compare_to=<the copied base
run>`, and reports: test accuracy before and after, the mean class distance, the enlargement (mean
of the per-pair changes, and the ratio of the means), the hardening wall time (and the part spent
generating triggers), the generation steps (`inversion_steps`: the longest direction's steps summed
over the engine calls), the engine calls, and the rollbacks and fast generations in directions
(two-sided generation counts them per pair, one-sided per direction; both are converted).

Data sets and their protocols:
  digits         LeNet, the data set's base training and MOTH recipe; distance with the command
                 line's defaults and 3 seeds (--seeds=3).
  fashion_mnist  small_cnn, flags/fashion_mnist.flags for training, hardening recipe and distance
                 (30 images, 300 steps, early stop 50, 1 seed).

    python benchmarks/ablation_benchmark.py
    python benchmarks/ablation_benchmark.py --datasets=digits --variants=moth,one_sided,no_reuse
    python benchmarks/ablation_benchmark.py --harden_steps=200 --distance_steps=100  # quick look

Steps already done (a run with a summary and a distance.json) are reused unless --fresh, so an
interrupted benchmark continues (with the same flags: a run made with others needs --fresh or
another --workdir). The results go to benchmarks/results/ablation_benchmark.json and a
Markdown table beside it (.md). Every point is one MOTH hardening and one distance measurement of
its data set (docs/results.md has the stage times): the whole default grid is 14 of each.
"""

import argparse
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top

# (name, the flags of its one change).
VARIANTS = (
    ("moth", ()),
    ("one_sided", ("--generation=one_sided",)),
    ("random", ("--schedule=random",)),
    ("round_robin", ("--schedule=round_robin",)),
    ("prior_only", ("--schedule=prior_only",)),
    ("reward_only", ("--schedule=reward_only",)),
    ("no_reuse", ("--notrigger_reuse",)),
)
DATASETS = {
    # data set: (model, flags of every command of its protocol).
    "digits": ("lenet", ("--dataset=digits", "--model=lenet", "--seeds=3")),
    "fashion_mnist": ("small_cnn", (
        f"--flagfile={os.path.join(common.REPO, 'flags', 'fashion_mnist.flags')}",
        "--model=small_cnn")),
}


def read_json(path):
  with open(path) as f:
    return json.load(f)


class Bench:
  """Runs the points of the asked data sets and variants; every figure lands in `self.results`."""

  def __init__(self, workdir, out_path, extra_flags, extra_harden, extra_distance):
    self.workdir = workdir
    self.out_path = out_path
    self.extra_flags = tuple(extra_flags)
    self.extra_harden = tuple(extra_harden)
    self.extra_distance = tuple(extra_distance)
    self.results = read_json(out_path) if os.path.exists(out_path) else {}
    self.results["machine"] = common.machine_note()
    self.results["flags"] = {"every_command": list(self.extra_flags),
                             "harden": list(self.extra_harden),
                             "distance": list(self.extra_distance)}

  def cli(self, dataset, *flags, workdir):
    """Runs one command of the data set's protocol (with the benchmark's extra flags)."""
    return common.run_cli(*DATASETS[dataset][1], *flags, *self.extra_flags, workdir=workdir)

  def save(self):
    os.makedirs(os.path.dirname(self.out_path) or ".", exist_ok=True)
    with open(self.out_path, "w") as f:
      json.dump(self.results, f, indent=2)

  def base(self, dataset):
    """The data set's natural run (trained, its distance measured) in its base workdir."""
    model = DATASETS[dataset][0]
    base_dir = os.path.join(self.workdir, dataset, "base")
    run = os.path.join(base_dir, f"{dataset}_{model}_natural")
    if not os.path.exists(os.path.join(run, "model.keras")):
      self.cli(dataset, "--phase=train", workdir=base_dir)
    if not os.path.exists(os.path.join(run, "distance.json")):
      self.cli(dataset, "--phase=distance", "--method=natural", *self.extra_distance,
               workdir=base_dir)
    return run

  def point(self, dataset, name, flags):
    """Hardens a copy of the base model with one variant and measures it; returns its figures."""
    model = DATASETS[dataset][0]
    base_run = self.base(dataset)
    point_dir = os.path.join(self.workdir, dataset, name)
    natural = os.path.join(point_dir, f"{dataset}_{model}_natural")
    hardened = os.path.join(point_dir, f"{dataset}_{model}_moth")
    if not os.path.isdir(natural):
      shutil.copytree(base_run, natural)
    # A hardening killed half-way resumes from its backup.
    if not os.path.exists(os.path.join(hardened, "summary.json")):
      self.cli(dataset, "--phase=harden", "--method=moth", *flags, *self.extra_harden,
               workdir=point_dir)
    if not os.path.exists(os.path.join(hardened, "distance.json")):
      self.cli(dataset, "--phase=distance", "--method=moth", f"--compare_to={natural}",
               *self.extra_distance, workdir=point_dir)
    summary = read_json(os.path.join(hardened, "summary.json"))
    distance = read_json(os.path.join(hardened, "distance.json"))
    base_distance = read_json(os.path.join(natural, "distance.json"))
    h = summary["harden"]
    events = h.get("events", {})
    # Two-sided generation counts its events per pair (two directions), one-sided per direction.
    per_event = 2 if h.get("event_unit", "pair") == "pair" else 1
    families = h["config"].get("families", 1)
    return {
        "flags": list(flags),
        "test_accuracy_before": h["test_accuracy_before"],
        "test_accuracy_after": h["test_accuracy_after"],
        "mean_distance_before": base_distance["mean"],
        "mean_distance_after": distance["mean"],
        "enlargement_mean_relative": distance["comparison"]["mean_relative_change"],
        "enlargement_ratio_of_means": distance["comparison"]["ratio_of_means"],
        "harden_seconds": h["wall_seconds"],
        "generation_seconds": h["warmup_seconds"] + h["generation_seconds"],
        "training_seconds": h["training_seconds"],
        "steps": h["steps"],
        "generation_steps": events.get("inversion_steps"),
        "engine_calls": events.get("engine_calls"),
        "rollback_directions": events.get("rollback", 0) * per_event * families,
        "fast_directions": (events.get("fast", 0) + events.get("warm_fast", 0)) * per_event
                           * families,
        "failed_directions": events.get("failed_directions"),
        "events": events,
        "event_unit": h.get("event_unit", "pair"),
    }

  def run(self, datasets, variants):
    for dataset in datasets:
      for name, flags in variants:
        start = time.time()
        figures = self.point(dataset, name, flags)
        self.results.setdefault(dataset, {})[name] = figures
        self.save()
        print(f"{dataset:14s} {name:12s} {describe(figures)} ({time.time() - start:.0f} s)",
              flush=True)


def describe(r):
  return (f"enlargement {100 * r['enlargement_mean_relative']:+6.1f}% (ratio of means "
          f"{100 * r['enlargement_ratio_of_means']:+6.1f}%), accuracy "
          f"{r['test_accuracy_before']:.4f} -> {r['test_accuracy_after']:.4f}, hardening "
          f"{r['harden_seconds']:.0f} s, {r['generation_steps']} generation steps, "
          f"{r['rollback_directions']} rollback directions")


def table(results, datasets, variants) -> str:
  """The Markdown table of every measured point."""
  lines = ["| data set | variant | test acc. before -> after | mean distance before -> after | "
           "enlargement (mean of per-pair changes) | enlargement (ratio of means) | hardening s "
           "(generating) | generation steps | engine calls | rollback directions | fast "
           "directions |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
  for dataset in datasets:
    for name, _ in variants:
      r = results.get(dataset, {}).get(name)
      if r is None:
        continue
      lines.append(
          f"| {dataset} | {name} | {r['test_accuracy_before']:.4f} -> "
          f"{r['test_accuracy_after']:.4f} | {r['mean_distance_before']:.2f} -> "
          f"{r['mean_distance_after']:.2f} | {100 * r['enlargement_mean_relative']:+.1f}% | "
          f"{100 * r['enlargement_ratio_of_means']:+.1f}% | {r['harden_seconds']:.0f} "
          f"({r['generation_seconds']:.0f}) | {r['generation_steps']} | {r['engine_calls']} | "
          f"{r['rollback_directions']} | {r['fast_directions']} |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog="\n".join(__doc__.splitlines()[2:]))
  parser.add_argument("--datasets", default="digits,fashion_mnist",
                      help=f"comma-separated, from {', '.join(DATASETS)}")
  parser.add_argument("--variants", default=",".join(name for name, _ in VARIANTS),
                      help=f"comma-separated, from {', '.join(name for name, _ in VARIANTS)}")
  parser.add_argument("--workdir", default=os.path.join(common.DEFAULT_WORKDIR, "ablation_bench"))
  parser.add_argument("--out", default=os.path.join(common.REPO, "benchmarks", "results",
                                                    "ablation_benchmark.json"))
  parser.add_argument("--fresh", action="store_true",
                      help="delete the asked data sets' runs in --workdir and redo them (default: "
                      "reuse the finished ones; a run made with other flags needs --fresh or "
                      "another --workdir)")
  parser.add_argument("--extra_flags", default="",
                      help="space-separated flags added to every command, given with '=' (e.g. "
                      "--extra_flags='--epochs=1 --seeds=1' for a smoke run)")
  parser.add_argument("--harden_steps", type=int, default=None,
                      help="hardening budget of every point (default: the recipe's)")
  parser.add_argument("--distance_steps", type=int, default=None,
                      help="distance steps of every measurement (default: the protocol's)")
  parser.add_argument("--distance_samples", type=int, default=None,
                      help="images per direction of every measurement (default: the protocol's)")
  args = parser.parse_args()
  datasets = [d for d in args.datasets.split(",") if d]
  unknown = sorted(set(datasets) - set(DATASETS))
  if unknown:
    parser.error(f"unknown data sets {unknown}; choose from {', '.join(DATASETS)}")
  names = [v for v in args.variants.split(",") if v]
  known = dict(VARIANTS)
  unknown = sorted(set(names) - set(known))
  if unknown:
    parser.error(f"unknown variants {unknown}; choose from {', '.join(known)}")
  variants = [(name, known[name]) for name in names]
  extra_harden = [f"--harden_steps={args.harden_steps}"] if args.harden_steps else []
  extra_distance = [f"--{name}={getattr(args, name)}" for name in
                    ("distance_steps", "distance_samples") if getattr(args, name)]
  start = time.time()
  workdir = os.path.abspath(args.workdir)
  if args.fresh:
    for dataset in datasets:
      shutil.rmtree(os.path.join(workdir, dataset), ignore_errors=True)
  bench = Bench(workdir, os.path.abspath(args.out), args.extra_flags.split(), extra_harden,
                extra_distance)
  if args.fresh:
    for dataset in datasets:
      bench.results.pop(dataset, None)
  print(bench.results["machine"], flush=True)
  bench.run(datasets, variants)
  common.finish(bench, table(bench.results, datasets, variants), bench.out_path, start)


if __name__ == "__main__":
  main()
