"""Benchmark: the backdoor scenario, through the command line.

1. The natural base model (`--phase=train`) and a poisoned one (`--phase=poison`: a 3x3 white patch
   in the bottom-right corner on 10% of the training images, all-to-one to class 0, by default).
2. Every defence (`--phase=harden --method=M --base_run=poisoned`: moth, nc, nad, finetune,
   adv_train) from the poisoned model, each then measured with `--phase=backdoor` (C-Acc, ASR,
   R-Acc, DER against the poisoned model) and `--phase=distance --compare_to=<poisoned run>`.
3. Neural Cleanse detection (`--phase=detect`) on the natural model, the poisoned one and the
   MOTH-hardened poisoned one (after their distance, so the class-distance detection is included).

    python benchmarks/backdoor_benchmark.py --dataset=digits
    python benchmarks/backdoor_benchmark.py --dataset=fashion_mnist

Distances: digits 3 seeds at the command line's defaults; fashion_mnist flags/fashion_mnist.flags.
Steps already done are reused (JSON entries and finished run directories) unless --fresh. Tables go
to benchmarks/results/backdoor_<dataset>.{json,md}.

Augmented defences: `--defence_augment=crop` hardens every defence with that training augmentation
(`--augment`), from the natural and poisoned runs of `--base_from=<an earlier benchmark workdir>`
(copied, so both sets of rows start from the same poisoned model); the tables go to
backdoor_<dataset>_<recipe>.{json,md}. `--skip_distance` measures the backdoor metrics only.

Another model: --model=resnet20 --flagfile=flags/fashion_mnist_resnet20.flags puts the flagfile
first on every command (training and poisoning recipe with its augmentation, hardening budget,
distance protocol); tables go to backdoor_<dataset>_<model>[_<recipe>].{json,md}. The defences then
use the data set's augmentation unless --defence_augment names another recipe (none included).

    python benchmarks/backdoor_benchmark.py --dataset=fashion_mnist --model=resnet20 \
        --flagfile=flags/fashion_mnist_resnet20.flags --methods=moth,nc,nad,finetune \
        --defence_args="--nc_samples=10 --nc_steps=500"

`--defence_args` adds flags to every defence's hardening (above: Neural Cleanse on 10 images per
class and at most 500 steps, a cheaper search like the flagfile's distance setting, for machines
without a GPU). The flags are checked only when the first defence runs, after the base models.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top
from baselines_benchmark import DEFAULT_MODELS, distance_args, read_json  # pylint: disable=g-import-not-at-top

ALL_METHODS = ("moth", "nc", "nad", "finetune", "adv_train")


class Bench:
  """Runs one data set's backdoor scenario; every figure lands in `self.results`."""

  def __init__(self, dataset, workdir, fresh, out_path, poison_args, defence_args=(),
               skip_distance=False, model=None, flagfile=None):
    self.dataset, self.model, self.workdir = dataset, model or DEFAULT_MODELS[dataset], workdir
    self.flagfile = flagfile
    self.out_path, self.poison_args = out_path, poison_args
    self.defence_args, self.skip_distance = list(defence_args), skip_distance
    self.results = read_json(out_path) if os.path.exists(out_path) and not fresh else {}
    self.results.setdefault("rows", {})
    self.results.setdefault("detection", {})
    self.results["machine"] = common.machine_note()
    self.results["dataset"] = dataset
    self.results["model"] = self.model
    self.results["flagfile"] = flagfile

  def save(self):
    os.makedirs(os.path.dirname(self.out_path), exist_ok=True)
    with open(self.out_path + ".tmp", "w") as f:
      json.dump(self.results, f, indent=1)
    os.replace(self.out_path + ".tmp", self.out_path)

  def cli(self, *args):
    # The flagfile first: flags after it win (it may set --phase=pipeline).
    flagfile = [f"--flagfile={self.flagfile}"] if self.flagfile else []
    return common.run_cli(*flagfile, f"--dataset={self.dataset}", f"--model={self.model}", *args,
                          workdir=self.workdir)

  def run_dir(self, name):
    return os.path.join(self.workdir, f"{self.dataset}_{self.model}_{name}")

  def target_args(self, label):
    """The flags that select a row's model."""
    if label == "natural":
      return ["--method=natural", f"--trigger_path={self.run_dir('poisoned')}"]
    if label == "poisoned":
      return ["--method=natural", "--base_run=poisoned"]
    return [f"--method={label}", "--base_run=poisoned"]

  def dir_of(self, label):
    return self.run_dir(label if label in ("natural", "poisoned") else f"poisoned_{label}")

  def measure(self, label):
    row = self.results["rows"].setdefault(label, {})
    if "backdoor" not in row:
      # A backdoor entry already in the run's summary (an interrupted benchmark, or the phase run
      # by hand with the same flags) is reused.
      summary_path = os.path.join(self.dir_of(label), "summary.json")
      if "backdoor" not in read_json(summary_path):
        self.cli("--phase=backdoor", *self.target_args(label))
      row["backdoor"] = read_json(summary_path)["backdoor"]
      row["backdoor"].pop("original", None)
      self.save()
    if "distance" not in row and not self.skip_distance:
      compare = [] if label in ("natural", "poisoned") else [
          f"--compare_to={self.run_dir('poisoned')}"]
      path = os.path.join(self.dir_of(label), "distance.json")
      model = os.path.join(self.dir_of(label), "model.keras")
      if os.path.exists(path) and os.path.getmtime(path) > os.path.getmtime(model):
        wall = None  # A measurement of this very model file, left by an earlier or manual run.
      else:
        wall, _ = self.cli(*distance_args(self.dataset, self.flagfile), "--phase=distance",
                           *self.target_args(label), *compare)
      d = read_json(path)
      row["distance"] = {"mean": d["mean"], "failures": len(d["failures"]), "cli_seconds": wall}
      if "comparison" in d:
        row["distance"]["enlargement_mean_relative"] = d["comparison"]["mean_relative_change"]
        row["distance"]["enlargement_ratio_of_means"] = d["comparison"]["ratio_of_means"]
      self.save()
    print(f"{label}: {json.dumps(row)}", flush=True)

  def base_models(self):
    if not os.path.exists(os.path.join(self.run_dir("natural"), "model.keras")):
      self.cli("--phase=train")
    row = self.results["rows"].setdefault("poisoned", {})
    if "train_seconds" not in row:
      if not os.path.exists(os.path.join(self.run_dir("poisoned"), "model.keras")):
        self.cli("--phase=poison", *self.poison_args)
      summary = read_json(os.path.join(self.run_dir("poisoned"), "summary.json"))
      row["train_seconds"] = summary["train"]["wall_seconds"]
      row["poison"] = summary["poison"]
      self.save()
    self.measure("natural")
    self.measure("poisoned")

  def method(self, name):
    row = self.results["rows"].setdefault(name, {})
    if "harden" not in row:
      summary_path = os.path.join(self.dir_of(name), "summary.json")
      reused = os.path.exists(summary_path) and "harden" in read_json(summary_path)
      wall = None if reused else self.cli("--phase=harden", f"--method={name}",
                                          "--base_run=poisoned", *self.defence_args)[0]
      h = read_json(summary_path)["harden"]
      row["harden"] = {"wall_seconds": h["wall_seconds"], "cli_seconds": wall,
                       "steps": h["steps"], "reused_run": reused,
                       "generation_seconds": h["generation_seconds"] + h["warmup_seconds"],
                       **({"nc": {k: h["nc"][k] for k in ("flagged", "unlearned_labels", "note")}}
                          if "nc" in h else {})}
      self.save()
    self.measure(name)

  def detect(self, label):
    if label in self.results["detection"]:
      return
    wall, _ = self.cli("--phase=detect", *self.target_args(label))
    found = read_json(os.path.join(self.dir_of(label), "detection.json"))
    nc = found["neural_cleanse"]
    target = found.get("backdoor_target")
    self.results["detection"][label] = {
        "flagged": nc["flagged"], "target": target, "target_flagged": found.get("target_flagged"),
        "target_index": nc["anomaly_index"][target] if target is not None else None,
        "target_l1": nc["l1_norms"][target] if target is not None else None,
        "median_l1": nc["median_l1"],
        "clean_labels_flagged": found.get("clean_labels_flagged"),
        "class_distance_flagged": (found.get("class_distance") or {}).get("flagged"),
        "class_distance_target_index": ((found.get("class_distance") or {}).get(
            "anomaly_index") or [None] * (target + 1 if target is not None else 1))[target or 0],
        "nc_seconds": nc["wall_seconds"], "cli_seconds": wall}
    self.save()
    print(f"detect {label}: {json.dumps(self.results['detection'][label])}", flush=True)


def tables(results) -> str:
  """The defences' table, and the detection table when detection ran (not with --skip_distance)."""
  rows, lines = results["rows"], []
  lines += ["| model | C-Acc | ASR | R-Acc | DER | mean distance | enlargement vs poisoned (mean of "
            "per-pair / ratio of means) | defence wall (s) |", "|---|---|---|---|---|---|---|---|"]
  for name in ("natural", "poisoned") + ALL_METHODS:
    r = rows.get(name)
    if not r or "backdoor" not in r:
      continue
    b, d, h = r["backdoor"], r.get("distance", {}), r.get("harden", {})
    enl = (f"{100 * d['enlargement_mean_relative']:+.1f}% / "
           f"{100 * d['enlargement_ratio_of_means']:+.1f}%"
           if "enlargement_mean_relative" in d else "-")
    der = f"{b['der']:.4f}" if "der" in b else "-"
    mean = f"{d['mean']:.3f}" if "mean" in d else "-"  # "-": not measured (--skip_distance).
    wall = f"{h['wall_seconds']:.0f}" if h else "-"
    lines.append(f"| {name} | {b['c_acc']:.4f} | {b['asr']:.4f} | {b['r_acc']:.4f} | {der} | "
                 f"{mean} | {enl} | {wall} |")
  if results["detection"]:
    lines += ["", "| detection on | NC flags | target flagged | target anomaly index (L1 vs "
              "median) | clean labels flagged | class-distance flags | NC wall (s) |",
              "|---|---|---|---|---|---|---|"]
  for name, r in results["detection"].items():
    index = (f"{r['target_index']:.2f} ({r['target_l1']:.2f} vs {r['median_l1']:.2f})"
             if r.get("target_index") is not None else "-")
    lines.append(f"| {name} | {r['flagged'] or 'none'} | {r['target_flagged']} | {index} | "
                 f"{r['clean_labels_flagged'] or 'none'} | {r['class_distance_flagged']} | "
                 f"{r['nc_seconds']:.0f} |")
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
  parser.add_argument("--poison_args", default="--poison_size=3",
                      help="extra flags of --phase=poison, space separated")
  parser.add_argument("--workdir", default=None)
  parser.add_argument("--fresh", action="store_true")
  parser.add_argument("--defence_augment", default=None,
                      help="harden every defence with this --augment recipe")
  parser.add_argument("--defence_args", default="",
                      help="extra flags of every defence's --phase=harden, space separated (for "
                           "example a cheaper Neural Cleanse on a large model: --nc_samples=10)")
  parser.add_argument("--base_from", default=None,
                      help="copy the natural and poisoned runs from this benchmark workdir")
  parser.add_argument("--skip_distance", action="store_true",
                      help="measure the backdoor metrics only (no class distance)")
  args = parser.parse_args()
  model = args.model or DEFAULT_MODELS[args.dataset]
  suffix = (f"_{model}" if model != DEFAULT_MODELS[args.dataset] else "") + (
      f"_{args.defence_augment}" if args.defence_augment else "")
  workdir = args.workdir or os.path.join(common.REPO, "benchmarks", "results",
                                         f"backdoor_{args.dataset}{suffix}")
  out_path = os.path.join(common.REPO, "benchmarks", "results",
                          f"backdoor_{args.dataset}{suffix}.json")
  if args.base_from:
    import shutil
    for run in ("natural", "poisoned"):
      target = os.path.join(workdir, f"{args.dataset}_{model}_{run}")
      if not os.path.exists(target):
        shutil.copytree(os.path.join(args.base_from, f"{args.dataset}_{model}_{run}"), target)
  defence_args = args.defence_args.split() + (
      [f"--augment={args.defence_augment}"] if args.defence_augment else [])
  flagfile = os.path.abspath(args.flagfile) if args.flagfile else None
  bench = Bench(args.dataset, workdir, args.fresh, out_path, args.poison_args.split(),
                defence_args, args.skip_distance, model, flagfile)
  start = time.time()
  bench.base_models()
  if not args.skip_distance:  # Detection reads the distance matrices.
    bench.detect("natural")
    bench.detect("poisoned")
  for name in args.methods.split(","):
    if name not in ALL_METHODS:
      raise SystemExit(f"unknown method {name!r}; choose from {', '.join(ALL_METHODS)}")
    bench.method(name)
    if name == "moth" and not args.skip_distance:
      bench.detect("moth")
  common.finish(bench, tables(bench.results), out_path, start)


if __name__ == "__main__":
  main()
