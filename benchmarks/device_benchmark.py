"""Benchmark: what a step costs on this device, per model, input shape, precision and XLA.

For whatever device TensorFlow finds (a GPU if there is one, else the CPU) it times, for each model
(moth_tf.models.build_model, 10 classes, untrained: the cost does not depend on the weights), input
shape, precision (float32, mixed_bfloat16, and mixed_float16 on a GPU) and XLA off/on:

* a training step: SGD with Nesterov momentum, sparse cross-entropy on logits, batch 128
  (`train_on_batch`);
* an inversion step: one step of the trigger engine (moth_tf.triggers.engine) on 90 directions of
  30 images each, the default 8 blocks: the cost of `invert` for 1 + `--steps` steps minus that
  for 1 step (the call's set-up), per step (where load makes that difference <= 0, the whole
  call per step);
* the floor: one forward+backward pass (gradient w.r.t. the input) of the same 2,700 images, the
  least an inversion step can cost.

Each figure is the median of `--reps` timed repetitions (of `--steps` steps each) after a warm-up
that traces and compiles. Then, from the resnet20 32x32x3 rows, the estimated wall time of the
default pipeline on CIFAR-10 ResNet20 on this device (moth_tf.estimate's formulas, printed).

    python benchmarks/device_benchmark.py                      # the full grid
    python benchmarks/device_benchmark.py --models=lenet --shapes=28x28x1 \\
        --precisions=float32 --xla=off --reps=1 --steps=2        # a quick check

Prints a Markdown table and writes it with the JSON (--out, default
benchmarks/results/device_benchmark.json and .md).
"""

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (benchmarks/common.py; sets TF's log level before TF is imported)

MODELS = ("lenet", "small_cnn", "resnet20")
SHAPES = ("32x32x3", "28x28x1")
DIRECTIONS, IMAGES_PER_DIRECTION, BATCH = 90, 30, 128
COLUMNS = ("model", "input", "precision", "XLA", "train step, batch 128 (ms)",
           "inversion step, 90 x 30 (ms)", "fwd+bwd floor (ms)", "inversion / floor")


def parse_shape(text):
  h, w, c = (int(v) for v in text.lower().split("x"))
  return (h, w, c)


def device_name():
  import tensorflow as tf
  gpus = tf.config.list_physical_devices("GPU")
  if gpus:
    details = tf.config.experimental.get_device_details(gpus[0])
    return "GPU", details.get("device_name", gpus[0].name)
  return "CPU", f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def median_seconds(run, reps, steps):
  """Median over `reps` of run(steps)'s seconds per step."""
  return statistics.median(run(steps) / steps for _ in range(reps))


def time_point(model_name, shape, precision, xla, reps, steps, seed=0,
               directions=DIRECTIONS, images_per_direction=IMAGES_PER_DIRECTION):
  """One row: seconds per training step, inversion step and floor pass."""
  import keras
  import numpy as np
  import tensorflow as tf
  from moth_tf import models
  from moth_tf.models import precision as precision_lib
  from moth_tf.triggers import engine

  keras.utils.set_random_seed(seed)
  with precision_lib.policy_scope(precision):
    model = models.build_model(model_name, shape, 10)
  row = {"model": model_name, "input": "x".join(map(str, shape)), "precision": precision,
         "xla": xla, "compute_dtype": model.layers[-1].compute_dtype}
  rng = np.random.default_rng(seed)

  # Training step.
  x = rng.random((BATCH, *shape), dtype=np.float32)
  y = rng.integers(0, 10, BATCH)
  model.compile(keras.optimizers.SGD(0.01, momentum=0.9, nesterov=True),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=xla)
  row["train_xla"] = bool(model.jit_compile)  # False where Keras refused XLA for the model.
  row["loss_scaling"] = isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
  for _ in range(2):
    model.train_on_batch(x, y)

  def train(n):
    start = time.perf_counter()
    for _ in range(n):
      loss = model.train_on_batch(x, y)
    np.asarray(loss)
    return time.perf_counter() - start

  row["train_step_s"] = median_seconds(train, reps, steps)

  # Inversion step: invert(1 + n) - invert(1), per step.
  images = [rng.random((images_per_direction, *shape), dtype=np.float32)
            for _ in range(directions)]
  targets = [(d + 1) % 10 for d in range(directions)]
  seeds = list(range(directions))
  inverter = engine.TriggerInverter(model, engine.InversionSettings(
      chunk_steps=steps + 1, early_stop_patience=0, jit_compile=xla))
  inverter.invert(images, targets, seeds, steps=1)  # Traces (and compiles).

  def invert(n):
    start = time.perf_counter()
    inverter.invert(images, targets, seeds, steps=1)
    one = time.perf_counter() - start
    start = time.perf_counter()
    inverter.invert(images, targets, seeds, steps=1 + n)
    more = time.perf_counter() - start
    # On a busy machine the difference can come out <= 0: then the whole call, per step.
    return more - one if more > one else more * n / (1 + n)

  row["inversion_step_s"] = median_seconds(invert, reps, steps)

  # Floor: forward+backward (input gradient) of the same images.
  batch = tf.constant(np.concatenate(images))
  labels = tf.constant(np.repeat(targets, images_per_direction).astype(np.int32))

  @tf.function(jit_compile=xla)
  def forward_backward(x):
    with tf.GradientTape() as tape:
      tape.watch(x)
      logits = tf.cast(model(x, training=False), tf.float32)
      loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
    return tape.gradient(loss, x)

  forward_backward(batch).numpy()

  def floor(n):
    start = time.perf_counter()
    for _ in range(n):
      out = forward_backward(batch)
    out.numpy()
    return time.perf_counter() - start

  row["floor_s"] = median_seconds(floor, reps, steps)
  return row


def pipeline_estimates(rows):
  """The default CIFAR-10 ResNet20 pipeline's estimate from each resnet20 32x32x3 row."""
  from moth_tf import config as config_lib
  from moth_tf import recipes
  from moth_tf import estimate
  from moth_tf import training

  recipe = training.RECIPES["cifar10"]
  num_train = 50000 - 2000  # CIFAR-10's training split minus the validation images it keeps.
  steps_per_epoch = math.ceil(num_train / recipe.batch_size)
  harden = recipes.hardening_preset("default", "cifar10", "moth")
  dist = config_lib.DistanceConfig()
  out = []
  for row in rows:
    if (row["model"], row["input"]) != ("resnet20", "32x32x3"):
      continue
    # Engine cost per image of the timed 90 x 30 step, scaled to each call's images (an
    # approximation: small calls use a device less fully, large ones may not fit at once).
    per_image = row["inversion_step_s"] / (DIRECTIONS * IMAGES_PER_DIRECTION)
    directions = 90
    distance = estimate.distance_estimate(per_image * directions * dist.samples, directions,
                                          len(dist.seeds), dist.steps)
    pair_images = 2 * harden.pairs_for(10) * harden.moth.families * harden.moth.trigger_samples
    hardening = estimate.harden_estimate("moth", harden, 10, num_train, row["train_step_s"],
                                         per_image * pair_images, pair_images)
    # Training steps scale with the recipe's batch (128, the timed one).
    total = estimate.pipeline_estimate(recipe.epochs, steps_per_epoch, row["train_step_s"],
                                       distance, hardening)
    out.append({"precision": row["precision"], "xla": row["xla"], "seconds": total.seconds,
                "parts": {name: part.seconds for name, part in total.parts.items()},
                "formula": {name: part.formula for name, part in total.parts.items()}})
  return out


def table(rows):
  lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
  for r in rows:
    xla = ("on" if r["train_xla"] else "on (training step refused)") if r["xla"] else "off"
    lines.append(f"| {r['model']} | {r['input']} | {r['precision']} | {xla} | "
                 f"{1000 * r['train_step_s']:.2f} | {1000 * r['inversion_step_s']:.2f} | "
                 f"{1000 * r['floor_s']:.2f} | {r['inversion_step_s'] / r['floor_s']:.2f} |")
  return "\n".join(lines)


def estimate_text(estimates):
  from moth_tf import estimate
  if not estimates:
    return ("Default CIFAR-10 ResNet20 pipeline: not estimated (needs the resnet20 32x32x3 rows: "
            "--models=resnet20 --shapes=32x32x3).")
  lines = ["Estimated wall time of the default CIFAR-10 ResNet20 pipeline on this device "
           "(`--phase=pipeline --dataset=cifar10`: base training 200 epochs x 375 steps of batch "
           "128; MOTH hardening 2,000 steps with trigger generation; class distance of 90 "
           "directions x 1,000 steps x 3 seeds (100 images each) before and after, every "
           "direction running all steps; engine steps scaled from the timed 90 x 30 step by "
           "images):", "",
           "| precision | XLA | base training | distance (each) | hardening | total |",
           "|---|---|---|---|---|---|"]
  for e in estimates:
    p = e["parts"]
    lines.append(f"| {e['precision']} | {'on' if e['xla'] else 'off'} | "
                 f"{estimate.format_duration(p['train'])} | "
                 f"{estimate.format_duration(p['distance_after'])} | "
                 f"{estimate.format_duration(p['harden'])} | "
                 f"{estimate.format_duration(e['seconds'])} |")
  formula = estimates[0]["formula"]
  lines += ["", "Formulas (first row): " + "; ".join(f"{k}: {v}" for k, v in formula.items())]
  return "\n".join(lines)


def git_commit():
  try:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=common.REPO,
                          capture_output=True, text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return None


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default=",".join(MODELS))
  parser.add_argument("--shapes", default=",".join(SHAPES), help="HxWxC, comma-separated")
  parser.add_argument("--precisions", default=None,
                      help="default: float32,mixed_bfloat16 (+ mixed_float16 on a GPU)")
  parser.add_argument("--xla", default="off,on", help="off, on or off,on")
  parser.add_argument("--reps", type=int, default=3, help="timed repetitions (median)")
  parser.add_argument("--steps", type=int, default=5, help="steps per repetition")
  parser.add_argument("--directions", type=int, default=DIRECTIONS,
                      help="inversion directions (the pipeline estimate needs the default 90)")
  parser.add_argument("--images_per_direction", type=int, default=IMAGES_PER_DIRECTION)
  parser.add_argument("--out", default=os.path.join(common.REPO, "benchmarks", "results",
                                                    "device_benchmark.json"))
  args = parser.parse_args(argv)
  start = time.time()
  kind, name = device_name()
  precisions = (args.precisions.split(",") if args.precisions else
                ["float32", "mixed_bfloat16"] + (["mixed_float16"] if kind == "GPU" else []))
  xla = [{"off": False, "on": True}[v] for v in args.xla.split(",")]
  print(f"device: {kind} ({name}); {common.machine_note()}", flush=True)
  rows = []
  for model_name in args.models.split(","):
    for shape in args.shapes.split(","):
      for precision in precisions:
        for jit in xla:
          row = time_point(model_name, parse_shape(shape), precision, jit, args.reps, args.steps,
                           directions=args.directions,
                           images_per_direction=args.images_per_direction)
          rows.append(row)
          print(table([row]).splitlines()[-1], flush=True)
  default_shape = (args.directions, args.images_per_direction) == (DIRECTIONS,
                                                                    IMAGES_PER_DIRECTION)
  estimates = pipeline_estimates(rows) if default_shape else []
  command = "python benchmarks/device_benchmark.py " + " ".join(
      argv if argv is not None else sys.argv[1:])
  results = {"device": {"kind": kind, "name": name}, "machine": common.machine_note(),
             "commit": git_commit(), "date": time.strftime("%Y-%m-%d"), "command": command,
             "reps": args.reps, "steps": args.steps, "rows": rows,
             "pipeline_estimates": estimates}
  text = "\n\n".join([f"Device: {kind} ({name}); {results['date']}, commit {results['commit']}; "
                      f"`{command.strip()}`; medians of {args.reps} repetitions of "
                      f"{args.steps} steps.", table(rows), estimate_text(estimates)])

  @dataclasses.dataclass
  class Bench:
    results: dict

    def save(self):
      os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
      with open(args.out, "w") as f:
        json.dump(self.results, f, indent=2)

  common.finish(Bench(results), text, args.out, start)
  return results


if __name__ == "__main__":
  main()
