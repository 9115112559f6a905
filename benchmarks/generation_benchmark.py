"""Benchmark: MOTH's trigger generation, today's default beside cheaper variants.

Each variant hardens the same natural base model with `--phase=harden --method=moth` plus its flags,
in a workdir of its own, then measures `--phase=distance --compare_to=<base run>` (digits: 3 seeds;
fashion_mnist: flags/fashion_mnist.flags) and reports enlargement, accuracy, and the hardening's wall,
generation and training seconds with the generation events (generations, fast, rollbacks, reused
steps, warm fast starts).

    python benchmarks/generation_benchmark.py --dataset=digits --variants=published,default
    python benchmarks/generation_benchmark.py --dataset=fashion_mnist \
        --variants=previous_recipe,default --timing_repeats=2

`--timing_repeats=N` hardens each variant N more times in a scratch folder (the runs are
deterministic, only their times differ) and reports the median generation and training seconds.

Finished runs are reused (delete the variant's folder under benchmarks/results/generation_<dataset>/
to redo it). The table goes to benchmarks/results/generation_<dataset>.{json,md}.
"""

import argparse
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top
from baselines_benchmark import DEFAULT_MODELS, distance_args, read_json  # pylint: disable=g-import-not-at-top

# "published": the schedule as published and moth_tf's earlier default (a full generation to start
# every period, then a fast one in every step; one pair per period; 2,000 steps). "default": today's.
PUBLISHED = ("--pairs_per_period=1", "--generations_per_period=3", "--nowarm_fast_start",
             "--nofast_first_visit", "--nofixed_trigger_images", "--harden_steps=2000",
             "--period=3", "--fast_cost=0.2", "--fast_steps=40", "--pair_steps=200",
             "--warmup_steps=500")
# With the published schedule MOTH hardened with each data set's replay (digits 0.3, Fashion-MNIST
# 0); the published-schedule rows keep it.
PUBLISHED_REPLAY = {"digits": "--replay=0.3"}
VARIANTS = {
    "published": PUBLISHED,
    "default": (),
    # The digits default before replay was dropped and periods lengthened (its recipe then).
    "previous_default": ("--harden_steps=1300", "--period=3", "--replay=0.3"),
    # Fashion-MNIST's recipe before its fast cost was rescaled (the default until then).
    "previous_recipe": ("--fast_cost=0.2", "--period=3", "--warmup_steps=200"),
    "default_1600_steps": ("--harden_steps=1600",),
    "default_portion_25": ("--portion=0.25",),
    "fashion_lean_rb40": ("--fast_steps=20", "--rollback_steps=40", "--warmup_steps=200"),
    "default_no_replay": ("--replay=0",),
    "fashion_lean": ("--fast_steps=20", "--pair_steps=100", "--warmup_steps=200"),
    "one_generation": ("--generations_per_period=1",),
    "warm_fast": ("--warm_fast_start",),
    "cheap": ("--generations_per_period=1", "--warm_fast_start"),
    "two_generations_warm": ("--generations_per_period=2", "--warm_fast_start"),
    "cheap_3000_steps": ("--generations_per_period=1", "--warm_fast_start", "--harden_steps=3000"),
    "cheap_3500_steps": ("--generations_per_period=1", "--warm_fast_start", "--harden_steps=3500"),
    "warm_fast_first": ("--warm_fast_start", "--fast_first_visit"),
    "warm_fast_first_20": ("--warm_fast_start", "--fast_first_visit", "--fast_steps=20"),
    "p2_warm_first": ("--pairs_per_period=2", "--warm_fast_start", "--fast_first_visit"),
    "p2_warm_first_1200_steps": ("--pairs_per_period=2", "--warm_fast_start",
                                 "--fast_first_visit", "--harden_steps=1200"),
    "p5_first_1000_steps": ("--pairs_per_period=5", "--generations_per_period=1",
                            "--warm_fast_start", "--fast_first_visit", "--harden_steps=1000"),
    "p5_first_1300_steps": ("--pairs_per_period=5", "--generations_per_period=1",
                            "--warm_fast_start", "--fast_first_visit", "--harden_steps=1300"),
    "p5_first_fast20": ("--pairs_per_period=5", "--generations_per_period=1",
                        "--warm_fast_start", "--fast_first_visit", "--fast_steps=20"),
    "p5_first_fast10": ("--pairs_per_period=5", "--generations_per_period=1",
                        "--warm_fast_start", "--fast_first_visit", "--fast_steps=10"),
    "first_fast_fixed": ("--generations_per_period=1", "--warm_fast_start", "--fast_first_visit",
                         "--fixed_trigger_images"),
    "p5_first_fixed_1300_steps": ("--pairs_per_period=5", "--generations_per_period=1",
                                  "--warm_fast_start", "--fast_first_visit",
                                  "--fixed_trigger_images", "--harden_steps=1300"),
    "fixed_lean": ("--generations_per_period=1", "--warm_fast_start", "--fast_first_visit",
                   "--fixed_trigger_images", "--fast_steps=20", "--trigger_samples=10",
                   "--pair_steps=100"),
    "p3_first": ("--pairs_per_period=3", "--generations_per_period=1", "--warm_fast_start",
                 "--fast_first_visit"),
    "first_fast_20": ("--generations_per_period=1", "--warm_fast_start", "--fast_first_visit",
                      "--fast_steps=20"),
    "p3_cheap": ("--pairs_per_period=3", "--generations_per_period=1", "--warm_fast_start"),
    "p5_cheap": ("--pairs_per_period=5", "--generations_per_period=1", "--warm_fast_start"),
    "p5_cheap_first": ("--pairs_per_period=5", "--generations_per_period=1", "--warm_fast_start",
                       "--fast_first_visit"),
    "p5_two": ("--pairs_per_period=5", "--generations_per_period=2", "--warm_fast_start"),
    "es10": ("--generation_early_stop=10",),
    "period6": ("--period=6",),
    "es10_period6": ("--generation_early_stop=10", "--period=6"),
    "es10_period9_wu100": ("--generation_early_stop=10", "--period=9", "--warmup_steps=100"),
    "fc015": ("--fast_cost=0.015",),
    "fc015_es10": ("--fast_cost=0.015", "--generation_early_stop=10"),
    "fc015_es10_period6": ("--fast_cost=0.015", "--generation_early_stop=10", "--period=6"),
    "fc015_period6": ("--fast_cost=0.015", "--period=6"),
    "fc015_period9_wu100": ("--fast_cost=0.015", "--period=9", "--warmup_steps=100"),
    "fc015_period6_wu100": ("--fast_cost=0.015", "--period=6", "--warmup_steps=100"),
    "fc015_2000_steps": ("--fast_cost=0.015", "--harden_steps=2000"),
    "fc015_fast20_2000_steps": ("--fast_cost=0.015", "--fast_steps=20", "--harden_steps=2000"),
    "period6_2000_steps": ("--period=6", "--harden_steps=2000"),
    "period6_2600_steps": ("--period=6", "--harden_steps=2600"),
    "period12": ("--period=12",),
    "samples10": ("--trigger_samples=10",),
    "fast10": ("--fast_steps=10",),
    "p2_2000_steps": ("--pairs_per_period=2", "--harden_steps=2000"),
    "p3_1600_steps": ("--pairs_per_period=3", "--harden_steps=1600"),
    "p2_2000_steps_seed1": ("--pairs_per_period=2", "--harden_steps=2000", "--seed=1"),
    "portion25_period6_2000_steps": ("--portion=0.25", "--period=6", "--harden_steps=2000"),
    "replay0_period6_2000_steps": ("--replay=0", "--period=6", "--harden_steps=2000"),
    "replay0_period6_2000_steps_seed1": ("--replay=0", "--period=6", "--harden_steps=2000",
                                         "--seed=1"),
    # The same schedules with other hardening seeds (the base model and distance seeds unchanged):
    # how much of an accuracy or enlargement difference is run-to-run spread.
    "published_seed1": PUBLISHED + ("--seed=1",),
    "published_seed2": PUBLISHED + ("--seed=2",),
    "default_seed1": ("--seed=1",),
    "default_seed2": ("--seed=2",),
    "p5_warm_1000_steps": ("--pairs_per_period=5", "--warm_fast_start", "--harden_steps=1000"),
}


def variant_flags(name: str, dataset: str):
  """The variant's flags on the data set (the published-schedule rows get its replay then)."""
  flags = tuple(VARIANTS[name])
  if name.startswith("published") and dataset in PUBLISHED_REPLAY:
    flags += (PUBLISHED_REPLAY[dataset],)
  return flags


def _timing(harden: dict) -> dict:
  """One hardening run's wall, generation (warm-up included) and training seconds."""
  return {"wall_seconds": harden["wall_seconds"],
          "generation_seconds": harden["generation_seconds"] + harden["warmup_seconds"],
          "training_seconds": harden["training_seconds"]}


def _median(values):
  values = sorted(values)
  mid = len(values) // 2
  return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def _medians(row) -> str:
  if "median_generation_seconds" not in row:
    return "-"
  return (f"{row['median_generation_seconds']:.1f} / {row['median_training_seconds']:.1f}, "
          f"{len(row['timings'])}")


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--dataset", default="digits", choices=sorted(DEFAULT_MODELS))
  parser.add_argument("--variants", default="published,default")
  parser.add_argument("--base_dir", default=None,
                      help="a finished natural run directory to copy (default: train one)")
  parser.add_argument("--timing_repeats", type=int, default=0,
                      help="harden each variant this many more times in a scratch folder and "
                           "report the median generation and training seconds of all its runs "
                           "(this machine's timings vary by up to 2x from run to run)")
  args = parser.parse_args()
  dataset, model = args.dataset, DEFAULT_MODELS[args.dataset]
  root = os.path.join(common.REPO, "benchmarks", "results", f"generation_{dataset}")
  out_path = root + ".json"
  results = read_json(out_path) if os.path.exists(out_path) else {"rows": {}}
  results["machine"] = common.machine_note()
  natural = f"{dataset}_{model}_natural"
  start = time.time()
  for name in args.variants.split(","):
    workdir = os.path.join(root, name)
    base = os.path.join(workdir, natural)
    if not os.path.exists(os.path.join(base, "model.keras")):
      os.makedirs(workdir, exist_ok=True)
      if args.base_dir:
        shutil.copytree(args.base_dir, base, dirs_exist_ok=True)
      else:
        common.ensure_base_model(workdir, dataset, model)
    if not os.path.exists(os.path.join(base, "distance.json")):  # The base's own measurement.
      common.run_cli(f"--dataset={dataset}", f"--model={model}", *distance_args(dataset),
                     "--phase=distance", "--method=natural", workdir=workdir)
    run_dir = os.path.join(workdir, f"{dataset}_{model}_moth")
    cli = lambda *a, w=workdir: common.run_cli(f"--dataset={dataset}", f"--model={model}", *a,
                                                workdir=w)
    summary_path = os.path.join(run_dir, "summary.json")
    if not (os.path.exists(summary_path) and "harden" in read_json(summary_path)):
      cli("--phase=harden", "--method=moth", *variant_flags(name, dataset))
    if not os.path.exists(os.path.join(run_dir, "distance.json")):
      cli(*distance_args(dataset), "--phase=distance", "--method=moth", f"--compare_to={base}")
    h = read_json(summary_path)["harden"]
    d = read_json(os.path.join(run_dir, "distance.json"))
    timings = results["rows"].get(name, {}).get("timings") or [_timing(h)]
    for _ in range(args.timing_repeats):
      # The same hardening again (it is deterministic: only its times differ), then thrown away.
      scratch = os.path.join(root, "_timing", name)
      shutil.rmtree(scratch, ignore_errors=True)
      shutil.copytree(base, os.path.join(scratch, natural))
      cli("--phase=harden", "--method=moth", *variant_flags(name, dataset), w=scratch)
      timings.append(_timing(read_json(os.path.join(scratch, f"{dataset}_{model}_moth",
                                                    "summary.json"))["harden"]))
      shutil.rmtree(scratch)
    results["rows"][name] = {
        "timings": timings,
        "median_generation_seconds": _median([t["generation_seconds"] for t in timings]),
        "median_training_seconds": _median([t["training_seconds"] for t in timings]),
        "flags": list(variant_flags(name, dataset)),
        "test_accuracy_before": h["test_accuracy_before"],
        "test_accuracy_after": h["test_accuracy_after"], "wall_seconds": h["wall_seconds"],
        "generation_seconds": h["generation_seconds"] + h["warmup_seconds"],
        "training_seconds": h["training_seconds"], "steps": h["steps"],
        "events": h.get("events"), "mean_distance": d["mean"],
        "enlargement_mean_relative": d["comparison"]["mean_relative_change"],
        "enlargement_ratio_of_means": d["comparison"]["ratio_of_means"]}
    with open(out_path, "w") as f:
      json.dump(results, f, indent=1)
    print(f"{name}: {json.dumps(results['rows'][name])}", flush=True)
  rows = results["rows"]
  ref_name = "published" if "published" in rows else "default"
  ref = rows.get(ref_name, {}).get("wall_seconds")
  lines = ["| variant | flags | test acc | enlargement (mean of per-pair / ratio of means) | "
           f"wall (s) | generation (s) | training (s) | median generation / training (s), runs | "
           f"wall vs {ref_name} | engine calls | inversion steps | events |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for name, r in rows.items():
    relative = f"{r['wall_seconds'] / ref:.2f}x" if ref else "-"
    events = r["events"] or {}
    lines.append(
        f"| {name} | {' '.join(r['flags']) or '-'} | {r['test_accuracy_before']:.4f} -> "
        f"{r['test_accuracy_after']:.4f} | {100 * r['enlargement_mean_relative']:+.1f}% / "
        f"{100 * r['enlargement_ratio_of_means']:+.1f}% | {r['wall_seconds']:.0f} | "
        f"{r['generation_seconds']:.0f} | {r['training_seconds']:.0f} | "
        f"{_medians(r)} | {relative} | {events.get('engine_calls', '-')} | {events.get('inversion_steps', '-')} | "
        f"{events} |")
  text = "\n".join(lines)
  with open(root + ".md", "w") as f:
    f.write(text + "\n")
  print(text)
  print(f"benchmark wall time this invocation: {time.time() - start:.0f} s; {results['machine']}")


if __name__ == "__main__":
  main()
