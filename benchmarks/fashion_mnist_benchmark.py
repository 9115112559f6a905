"""Benchmark: Fashion-MNIST (28x28) as the second measuring stick, through the command line.

Needs the Fashion-MNIST IDX files (`apt-get install dataset-fashion-mnist`, or --data_dir).

Parts (all but `sweep` by default; pick with --parts=a,b,...; results of earlier runs are kept in
the JSON file):
  base      `--phase=train --dataset=fashion_mnist` in a fresh workdir: test accuracy and training
            wall time (target: >= 91% in <= 5 minutes on the project's 2-core CPU).
  cost      seconds per inversion step of all 90 directions (x 100 and x 30 images) for the default
            model (small_cnn) and lenet at 28x28, next to one forward+backward pass of the same
            images.
  fidelity  the CPU setting of flags/fashion_mnist.flags against the reference protocol (100
            images, 1000 steps, 3 seeds, no early stop) on FIXED_PAIRS of the base model: per-pair
            distances, their relative differences, and the wall time of each.
  moth      `--phase=pipeline --flagfile=flags/fashion_mnist.flags` on the base model: test accuracy
            before/after, mean distance before/after, enlargement (mean of per-pair changes and
            ratio of means) and the wall time of every stage.
  fidelity_moth  part fidelity on the model hardened by part moth, and the enlargement on the
            fixed pairs as the reference protocol and the CPU setting each measure it.
  sweep     hardening settings around the recipe (--sweep), each hardened from the same base model
            and measured with the flagfile's distance settings: the enlargement-vs-accuracy table.

    python benchmarks/fashion_mnist_benchmark.py [--parts=base,moth] [--workdir=DIR]

Another model: --model=resnet20 --flagfile=flags/fashion_mnist_resnet20.flags (the flagfile's
training, augmentation and distance settings are used throughout). A sweep point may name another
method (`--method=finetune`) or BatchNorm rule (`--batchnorm=frozen`) among its flags.

Costs on the project's 2-core CPU: base ~2 min, cost ~2 min, fidelity ~6 min, moth ~13 min,
fidelity_moth ~6 min, sweep ~4 min per epoch of hardening per point (~30 min for the default grid).
"""

import argparse
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top

PARTS = ("base", "cost", "fidelity", "moth", "fidelity_moth", "sweep")
DATASET = "fashion_mnist"
MODEL = "small_cnn"
FLAGFILE = os.path.join(common.REPO, "flags", "fashion_mnist.flags")
# Ordered pairs for the fidelity comparison: the close clothing pairs (T-shirt/top 0, Pullover 2,
# Coat 4, Shirt 6; Sandal 5, Sneaker 7, Ankle boot 9) in both directions, and far ones.
# How many of them part fidelity measures, and with how many of the reference's seeds (--fixed_pairs,
# --reference_seeds: the reference protocol on a larger model may not fit the machine).
FIXED_PAIR_COUNT = 16
REFERENCE_SEED_COUNT = 3
# Images per direction of part cost (--cost_images).
COST_IMAGES = (100, 30)
FIXED_PAIRS = ((0, 6), (6, 0), (2, 4), (4, 2), (2, 6), (4, 6), (5, 7), (7, 9), (9, 7), (5, 9),
               (1, 3), (3, 1), (8, 0), (1, 8), (9, 2), (7, 4))
# Each entry: (label, extra flags after the flagfile, which hardens with the data set's recipe:
# portion 0.1, replay 0, the default budget of 2,150 steps). Screening runs behind the results'
# trade-off table (docs/results.md, "Fashion-MNIST: the hardening recipe"); part moth measures the
# recipe itself.
DEFAULT_SWEEP = (
    ("digits defaults, 1 epoch", ("--portion=0.5", "--replay=0.3", "--harden_steps=430")),
    ("portion 0.2, 1 epoch", ("--portion=0.2", "--harden_steps=430")),
    ("portion 0.1, 1 epoch", ("--harden_steps=430",)),
    ("portion 0.1, 2 epochs", ("--harden_steps=860",)),
    ("portion 0.05, 2 epochs", ("--portion=0.05", "--harden_steps=860")),
)


def save(results, path):
  """Writes the results so far (after every part, so a failure later keeps them)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(results, f, indent=2)


def load_json(workdir, run, name="summary.json"):
  return json.load(open(os.path.join(workdir, run, name)))


def flagfile_distance_args():
  """The distance flags of flags/fashion_mnist.flags, as (samples, steps, patience, seeds)."""
  values = {}
  for line in open(FLAGFILE):
    line = line.strip()
    if line.startswith("--") and "=" in line:
      name, value = line[2:].split("=", 1)
      values[name] = value
  return (int(values["distance_samples"]), int(values["distance_steps"]),
          int(values["early_stop_patience"]), int(values["seeds"]))


def part_base(workdir):
  shutil.rmtree(workdir, ignore_errors=True)
  wall, _ = common.run_cli(f"--flagfile={FLAGFILE}", "--phase=train", f"--model={MODEL}",
                           workdir=workdir)
  s = load_json(workdir, f"{DATASET}_{MODEL}_natural")
  r = {"test_accuracy": s["test_accuracy"], "val_accuracy": s["val_accuracy"],
       "train_seconds": s["train"]["wall_seconds"], "command_seconds": wall}
  # The targets the models were chosen for: small_cnn is the cheap CPU model, resnet20 the paper's
  # architecture (its accuracy matters, its training time is what it is).
  target, ok = {
      "small_cnn": (">= 91%, <= 5 min", r["test_accuracy"] >= 0.91 and r["train_seconds"] <= 300),
      "resnet20": (">= 93%", r["test_accuracy"] >= 0.93),
  }.get(MODEL, (None, None))
  verdict = f"; target ({target}) {'met' if ok else 'NOT met'}" if target else ""
  print(f"base {MODEL}: test accuracy {r['test_accuracy']:.4f} (val {r['val_accuracy']:.4f}), "
        f"model.fit {r['train_seconds']:.1f} s, whole command {wall:.1f} s{verdict}", flush=True)
  return r


def part_cost(base_model_path):
  import numpy as np
  import tensorflow as tf
  from moth_tf import data
  from moth_tf import models
  from moth_tf.models import io as model_io
  from moth_tf.triggers import engine

  splits = data.load_dataset(DATASET)
  out = {}
  for name in (MODEL, "lenet"):
    model = (model_io.load_model(base_model_path) if name == MODEL else
             models.build_model(name, splits.image_shape, splits.num_classes))
    if name == MODEL:
      out[f"{name}_train_step_seconds"] = train_step_seconds(model, splits)
      print(f"{name:10s} one training step of 128 images: "
            f"{out[f'{name}_train_step_seconds']:.3f} s", flush=True)
    for per_direction in COST_IMAGES:
      images = [splits.x_val[splits.y_val == d % 10][:per_direction] for d in range(90)]
      targets = [(d % 10 + 1 + d // 10 % 9) % 10 for d in range(90)]
      inverter = engine.TriggerInverter(model, engine.InversionSettings(steps=20, chunk_steps=20))
      inverter.invert(images, targets, list(range(90)), steps=2)  # Trace and warm up.
      start = time.time()
      inverter.invert(images, targets, list(range(90)), steps=20)
      step = (time.time() - start) / 20
      x = tf.constant(np.concatenate(images))
      y = tf.constant(np.array(targets).repeat(per_direction))

      @tf.function
      def forward_backward(x, y, model=model):
        with tf.GradientTape() as tape:
          tape.watch(x)
          loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(
              y, model(x, training=False), from_logits=True))
        return tape.gradient(loss, x)

      forward_backward(x, y)
      start = time.time()
      for _ in range(10):
        forward_backward(x, y).numpy()
      fb = (time.time() - start) / 10
      out[f"{name}_{per_direction}"] = {"inversion_step_seconds": step,
                                        "forward_backward_seconds": fb,
                                        "params": model.count_params()}
      print(f"{name:10s} 90 directions x {per_direction:3d} images: inversion step {step:.3f} s, "
            f"forward+backward of the same {90 * per_direction} images {fb:.3f} s "
            f"({model.count_params():,} parameters)", flush=True)
  return out


def train_step_seconds(model, splits, batch=128, steps=10):
  """Seconds of one SGD training step of `batch` images (compiled, after a warm-up step)."""
  import keras
  import tensorflow as tf
  from moth_tf.models import io as model_io
  model = model_io.load_model(model) if isinstance(model, str) else keras.models.clone_model(model)
  model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  x, y = tf.constant(splits.x_train[:batch]), tf.constant(splits.y_train[:batch])
  model.train_on_batch(x, y)
  start = time.time()
  for _ in range(steps):
    model.train_on_batch(x, y)
  return (time.time() - start) / steps


def part_fidelity(base_model_path, label="base model"):
  import numpy as np
  from moth_tf import config as config_lib
  from moth_tf import data
  from moth_tf.evaluation import distance
  from moth_tf.models import io as model_io
  from moth_tf.triggers import engine

  splits = data.load_dataset(DATASET)
  model = model_io.load_model(base_model_path)
  samples, steps, patience, seeds = flagfile_distance_args()
  settings = {
      "reference": (100, engine.InversionSettings(steps=1000),
                    config_lib.REFERENCE_SEEDS[:REFERENCE_SEED_COUNT]),
      "cpu": (samples, engine.InversionSettings(steps=steps, early_stop_patience=patience),
              config_lib.REFERENCE_SEEDS[:seeds]),
  }
  results = {}
  for protocol, (n, inv, seed_values) in settings.items():
    r = distance.measure_distance(model, splits.x_val, splits.y_val, splits.num_classes, inv,
                                  seed_values, samples=n, pairs=fixed_pairs(), verbose=False)
    results[protocol] = {"distances": [float(r.matrix[s, t]) for s, t in fixed_pairs()],
                      "wall_seconds": r.wall_seconds, "samples": n, "steps": inv.steps,
                      "early_stop_patience": inv.early_stop_patience, "seeds": len(seed_values)}
  ref = np.array(results["reference"]["distances"])
  cpu = np.array(results["cpu"]["distances"])
  rel = (cpu - ref) / ref
  names = splits.info.class_names
  print(f"{'pair':28s} {'reference':>10s} {'cpu':>8s} {'change':>8s}")
  for (s, t), a, b, d in zip(fixed_pairs(), ref, cpu, rel):
    print(f"{names[s] + ' -> ' + names[t]:28s} {a:10.2f} {b:8.2f} {100 * d:+7.1f}%")
  summary = {
      "pairs": [list(p) for p in fixed_pairs()],
      "mean_reference": float(np.nanmean(ref)), "mean_cpu": float(np.nanmean(cpu)),
      "mean_relative_difference": float(np.nanmean(rel)),
      "mean_absolute_relative_difference": float(np.nanmean(np.abs(rel))),
      "max_absolute_relative_difference": float(np.nanmax(np.abs(rel))),
      "rank_correlation": float(_spearman(ref, cpu)),
  }
  print(f"{label}: mean distance: reference {summary['mean_reference']:.2f} "
        f"({results['reference']['wall_seconds']:.0f} s), cpu setting {summary['mean_cpu']:.2f} "
        f"({results['cpu']['wall_seconds']:.0f} s); per pair the cpu setting is "
        f"{100 * summary['mean_relative_difference']:+.1f}% on average (mean |difference| "
        f"{100 * summary['mean_absolute_relative_difference']:.1f}%, max "
        f"{100 * summary['max_absolute_relative_difference']:.1f}%), rank correlation "
        f"{summary['rank_correlation']:.2f}", flush=True)
  return {**results, **summary}


def fixed_pair_enlargement(before, after):
  """Enlargement of the hardened model on FIXED_PAIRS under each protocol (fidelity results)."""
  import numpy as np
  out = {}
  for protocol in ("reference", "cpu"):
    a = np.array(before[protocol]["distances"])
    b = np.array(after[protocol]["distances"])
    out[protocol] = {"mean_relative_change": float(np.nanmean((b - a) / a)),
                     "ratio_of_means": float(np.nanmean(b) / np.nanmean(a) - 1)}
    print(f"enlargement on the {len(a)} fixed pairs, {protocol} protocol: "
          f"{100 * out[protocol]['mean_relative_change']:+.1f}% (mean of per-pair changes), "
          f"{100 * out[protocol]['ratio_of_means']:+.1f}% (ratio of means)", flush=True)
  return out


def _spearman(a, b):
  import numpy as np
  ok = np.isfinite(a) & np.isfinite(b)
  ra = np.argsort(np.argsort(a[ok]))
  rb = np.argsort(np.argsort(b[ok]))
  return np.corrcoef(ra, rb)[0, 1]


def fixed_pairs():
  return FIXED_PAIRS[:FIXED_PAIR_COUNT]


def copy_base(base_workdir, workdir):
  shutil.rmtree(workdir, ignore_errors=True)
  os.makedirs(workdir)
  shutil.copytree(os.path.join(base_workdir, f"{DATASET}_{MODEL}_natural"),
                  os.path.join(workdir, f"{DATASET}_{MODEL}_natural"))


def moth_figures(workdir):
  """The figures of a finished hardening + distance in `workdir`."""
  s = load_json(workdir, f"{DATASET}_{MODEL}_moth")
  h, d = s["harden"], s["distance"]
  return {
      "acc_before": h["test_accuracy_before"], "acc_after": h["test_accuracy_after"],
      "distance_before": d["mean_before"], "distance_after": d["mean"],
      "enlargement": d["enlargement_mean_relative"],
      "ratio_of_means": d["enlargement_ratio_of_means"],
      "harden_seconds": h["wall_seconds"],
      "generation_seconds": h["warmup_seconds"] + h["generation_seconds"],
      "training_seconds": h["training_seconds"], "steps": h["steps"],
      "stage_seconds": s.get("stage_seconds"),
  }


def describe(label, r):
  return (f"{label:40s} enlargement {100 * r['enlargement']:+7.1f}% (ratio of means "
          f"{100 * r['ratio_of_means']:+6.1f}%)  accuracy {r['acc_before']:.4f} -> "
          f"{r['acc_after']:.4f} ({100 * (r['acc_after'] - r['acc_before']):+.2f} pts)  "
          f"hardening {r['harden_seconds']:.0f} s ({r['generation_seconds']:.0f} s generating "
          f"triggers, {r['training_seconds']:.0f} s training, {r['steps']} steps)")


def part_moth(base_workdir, workdir):
  copy_base(base_workdir, workdir)
  wall, out = common.run_cli(f"--flagfile={FLAGFILE}", "--phase=pipeline", f"--model={MODEL}",
                             workdir=workdir)
  r = moth_figures(workdir)
  r["command_seconds"] = wall
  print(out[out.find("per-pair distance change"):].strip() if "per-pair" in out else out[-2000:])
  print(describe("MOTH, flags/fashion_mnist.flags", r), flush=True)
  print("stage times: " + ", ".join(f"{k} {v:.0f} s" for k, v in r["stage_seconds"].items()),
        flush=True)
  return r


def part_sweep(base_workdir, workdir, sweep):
  """Each point: harden the base model with the flagfile + its flags, distance as the flagfile."""
  base_distance = os.path.join(base_workdir, f"{DATASET}_{MODEL}_natural", "distance.json")
  if not os.path.exists(base_distance):
    common.run_cli(f"--flagfile={FLAGFILE}", "--phase=distance", f"--model={MODEL}",
                   "--method=natural", workdir=base_workdir)
  results = []
  for i, (label, flags) in enumerate(sweep):
    point = os.path.join(workdir, f"point_{i}")
    copy_base(base_workdir, point)
    method = next((f.split("=", 1)[1] for f in flags if f.startswith("--method=")), "moth")
    common.run_cli(f"--flagfile={FLAGFILE}", "--phase=harden", f"--model={MODEL}", *flags,
                   workdir=point)
    common.run_cli(f"--flagfile={FLAGFILE}", "--phase=distance", f"--model={MODEL}",
                   f"--method={method}",
                   f"--compare_to={os.path.join(point, f'{DATASET}_{MODEL}_natural')}",
                   workdir=point)
    s = load_json(point, f"{DATASET}_{MODEL}_{method}")
    d = load_json(point, f"{DATASET}_{MODEL}_{method}", "distance.json")
    h = s["harden"]
    r = {"label": label, "flags": list(flags), "acc_before": h["test_accuracy_before"],
         "acc_after": h["test_accuracy_after"], "distance_after": d["mean"],
         "enlargement": d["comparison"]["mean_relative_change"],
         "ratio_of_means": d["comparison"]["ratio_of_means"], "harden_seconds": h["wall_seconds"],
         "generation_seconds": h["warmup_seconds"] + h["generation_seconds"],
         "training_seconds": h["training_seconds"], "steps": h["steps"]}
    results.append(r)
    print(describe(f"{label} {' '.join(flags)}", r), flush=True)
  return results


def parse_sweep(text):
  """'label:--a=1 --b=2;label2:--c=3' -> ((label, (flags...)), ...)."""
  points = []
  for item in filter(None, text.split(";")):
    label, _, flags = item.partition(":")
    points.append((label.strip(), tuple(flags.split())))
  return tuple(points)


def main():
  # The settings below are module constants that the parts read.
  global MODEL, FLAGFILE, FIXED_PAIR_COUNT, REFERENCE_SEED_COUNT, COST_IMAGES  # pylint: disable=global-statement
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default=os.path.join(common.DEFAULT_WORKDIR, "fashion_bench"))
  parser.add_argument("--parts", default="base,cost,fidelity,moth,fidelity_moth")
  parser.add_argument("--model", default=MODEL, help="the architecture (default small_cnn)")
  parser.add_argument("--flagfile", default=FLAGFILE,
                      help="the pipeline's flagfile (training, augmentation, distance settings)")
  parser.add_argument("--fixed_pairs", type=int, default=len(FIXED_PAIRS),
                      help="how many of FIXED_PAIRS part fidelity measures (from the first)")
  parser.add_argument("--reference_seeds", type=int, default=3,
                      help="seeds of the reference protocol in part fidelity (it takes 3)")
  parser.add_argument("--cost_images", default="100,30",
                      help="images per direction measured by part cost")
  parser.add_argument("--sweep", default=None,
                      help="points as 'label:--flag=v --flag=v;label2:...' (default: the recipe)")
  parser.add_argument("--out", default=os.path.join(common.REPO, "benchmarks", "results",
                                                    "fashion_mnist_benchmark.json"))
  args = parser.parse_args()
  MODEL, FLAGFILE = args.model, os.path.abspath(args.flagfile)
  FIXED_PAIR_COUNT, REFERENCE_SEED_COUNT = args.fixed_pairs, args.reference_seeds
  COST_IMAGES = tuple(int(v) for v in args.cost_images.split(","))
  parts = args.parts.split(",")
  unknown = set(parts) - set(PARTS)
  if unknown:
    parser.error(f"unknown parts {sorted(unknown)}; choose from {', '.join(PARTS)}")
  print(common.machine_note(), flush=True)
  results = json.load(open(args.out)) if os.path.exists(args.out) else {}
  base = os.path.join(args.workdir, "base")
  base_model = os.path.join(base, f"{DATASET}_{MODEL}_natural", "model.keras")
  if "base" in parts or not os.path.exists(base_model):
    results["base"] = part_base(base)
    save(results, args.out)
  if "cost" in parts:
    results["cost"] = part_cost(base_model)
    save(results, args.out)
  if "fidelity" in parts:
    results["fidelity"] = part_fidelity(base_model)
    save(results, args.out)
  if "moth" in parts:
    results["moth"] = part_moth(base, os.path.join(args.workdir, "moth"))
    save(results, args.out)
  if "fidelity_moth" in parts:
    # The fidelity comparison again on the model hardened by part moth, and the enlargement on the
    # fixed pairs as each protocol measures it.
    hardened = os.path.join(args.workdir, "moth", f"{DATASET}_{MODEL}_moth", "model.keras")
    results["fidelity_moth"] = part_fidelity(hardened, "hardened model")
    if "fidelity" in results:
      results["fixed_pair_enlargement"] = fixed_pair_enlargement(results["fidelity"],
                                                                 results["fidelity_moth"])
    save(results, args.out)
  if "sweep" in parts:
    sweep = parse_sweep(args.sweep) if args.sweep else DEFAULT_SWEEP
    results["sweep"] = part_sweep(base, os.path.join(args.workdir, "sweep"), sweep)
    save(results, args.out)
  print(f"results written to {args.out}")


if __name__ == "__main__":
  main()
