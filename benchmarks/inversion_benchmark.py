"""Benchmark: the full class-distance matrix of lenet on digits, batched vs one pair at a time.

Measures, on the trained base model (trained first through the CLI if missing):
1. The 10x10 distance matrix with 3 seeds, 1000 steps, up to 100 images, all 90 directions of a seed
   in one graph, with early stop (our default) and without (the reference's full length), and how
   well the two agree (mean within 5%, every pair within 15%).
2. The same measurement one direction at a time (K=1), and the batched/K=1 time ratio.
3. The cost of one batched inversion step against a forward+backward pass of the same model on the
   same number of images.

    python benchmarks/inversion_benchmark.py [--quick]

--quick uses one seed, to check the script itself; --single_early_stop also times the one-at-a-time
run with early stop.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

from moth_tf import config as config_lib  # pylint: disable=g-import-not-at-top
from moth_tf import data  # pylint: disable=g-import-not-at-top
from moth_tf.evaluation import distance  # pylint: disable=g-import-not-at-top
from moth_tf.models import io as model_io  # pylint: disable=g-import-not-at-top
from moth_tf.triggers import engine  # pylint: disable=g-import-not-at-top


def measure(model, x, y, seeds, early_stop, batch_directions, label):
  settings = engine.InversionSettings(steps=1000, early_stop_patience=early_stop)
  result = distance.measure_distance(model, x, y, 10, settings, seeds, samples=100,
                                     batch_directions=batch_directions, verbose=False)
  print(f"{label:44s} {result.wall_seconds:7.1f} s   mean {result.mean:.3f}   failures "
        f"{len(result.failures)}   mean steps/direction "
        f"{result.steps_run.sum() / (len(seeds) * len(result.pairs)):.0f}", flush=True)
  return result


def agreement(a, b):
  rel = np.abs(a.matrix - b.matrix) / b.matrix
  pairs = np.isfinite(rel)
  return abs(a.mean / b.mean - 1), float(np.nanmax(rel)), int(np.sum(rel[pairs] > 0.15))


def step_cost(model, images_per_direction, directions=90, steps=100):
  """Seconds per inversion step (K directions) vs per forward+backward pass on as many images."""
  settings = engine.InversionSettings(steps=steps, chunk_steps=steps)
  inverter = engine.TriggerInverter(model, settings)
  targets = [(d + 1) % 10 for d in range(directions)]
  inverter.invert(images_per_direction[:2], targets[:2], [0, 1], steps=5)  # Trace.
  inverter.invert(images_per_direction, targets, list(range(directions)), steps=5)
  start = time.time()
  inverter.invert(images_per_direction, targets, list(range(directions)), steps=steps)
  per_step = (time.time() - start) / steps

  batch = tf.constant(np.concatenate(images_per_direction))
  labels = tf.constant(np.asarray(sum(([t] * len(im) for t, im in
                                       zip(targets, images_per_direction)), []), np.int32))

  @tf.function
  def fwd_bwd_input(x):
    with tf.GradientTape() as tape:
      tape.watch(x)
      loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
          labels, model(x, training=False)))
    return tape.gradient(loss, x)

  @tf.function
  def fwd_bwd_weights(x):
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
          labels, model(x, training=False)))
    return tape.gradient(loss, model.trainable_variables)

  timings = {}
  for name, fn in (("input", fwd_bwd_input), ("weights", fwd_bwd_weights)):
    fn(batch)
    start = time.time()
    for _ in range(steps):
      out = fn(batch)
    _ = [o.numpy() for o in tf.nest.flatten(out)]
    timings[name] = (time.time() - start) / steps
  return per_step, timings, len(batch)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default=common.DEFAULT_WORKDIR)
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--single_early_stop", action="store_true",
                      help="also time the one-at-a-time run with early stop (about 3 more min)")
  parser.add_argument("--out", default=os.path.join(common.REPO, "benchmarks", "results",
                                                    "inversion_benchmark.json"))
  args = parser.parse_args()
  print(common.machine_note())
  path = common.ensure_base_model(args.workdir)
  model = model_io.load_model(path)
  splits = data.load_dataset("digits")
  split, note = distance.choose_split(splits, 100)
  x, y = splits.split(split)
  print(f"model {path}; {note}")
  seeds = config_lib.REFERENCE_SEEDS[:1 if args.quick else 3]
  print(f"90 directions x {len(seeds)} seeds x 1000 steps, up to 100 images per direction\n")

  batched_es = measure(model, x, y, seeds, 200, 0, "batched (K=90), early stop 200 [default]")
  batched_full = measure(model, x, y, seeds, 0, 0, "batched (K=90), full 1000 steps")
  single_full = measure(model, x, y, seeds, 0, 1, "one at a time (K=1), full 1000 steps")
  single_es = None
  if args.single_early_stop:
    single_es = measure(model, x, y, seeds, 200, 1, "one at a time (K=1), early stop 200")

  d_mean, d_max, n_off = agreement(batched_es, batched_full)
  print(f"\nearly stop vs full length: mean differs by {100 * d_mean:.2f}% (target < 5%), largest "
        f"per-pair difference {100 * d_max:.1f}% (target < 15%), pairs over 15%: {n_off}")
  s_mean, s_max, _ = agreement(batched_full, single_full)
  print(f"batched vs one-at-a-time (full length): mean differs by {100 * s_mean:.3f}%, largest "
        f"per-pair difference {100 * s_max:.2f}%")
  print(f"time, full length: batched {batched_full.wall_seconds:.1f} s vs one at a time "
        f"{single_full.wall_seconds:.1f} s -> one-at-a-time / batched = "
        f"{single_full.wall_seconds / batched_full.wall_seconds:.2f}x")
  if single_es is not None:
    print(f"time, early stop: batched {batched_es.wall_seconds:.1f} s vs one at a time "
          f"{single_es.wall_seconds:.1f} s -> {single_es.wall_seconds / batched_es.wall_seconds:.2f}x")
  print(f"headline: full matrix, 3 seeds, default settings: {batched_es.wall_seconds:.1f} s "
        f"(target < 600 s); vs the reference-style one-at-a-time full-length run: "
        f"{single_full.wall_seconds / batched_es.wall_seconds:.1f}x faster")

  per_dir = [distance.direction_images(x, y, s, t, seeds[0], 100) for s, t in
             distance.all_pairs(10)]
  per_step, fb, n_images = step_cost(model, per_dir)
  print(f"\none batched inversion step (90 directions, {n_images} images): {1000 * per_step:.1f} ms;"
        f" forward+backward of lenet on the same images: {1000 * fb['input']:.1f} ms (gradient "
        f"w.r.t. the input), {1000 * fb['weights']:.1f} ms (w.r.t. the weights) -> ratio "
        f"{per_step / fb['input']:.2f}x / {per_step / fb['weights']:.2f}x")

  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({
        "seeds": list(seeds),
        "batched_early_stop": {"seconds": batched_es.wall_seconds, "mean": batched_es.mean},
        "batched_full": {"seconds": batched_full.wall_seconds, "mean": batched_full.mean},
        "single_full": {"seconds": single_full.wall_seconds, "mean": single_full.mean},
        "single_early_stop": None if single_es is None else {
            "seconds": single_es.wall_seconds, "mean": single_es.mean},
        "early_stop_vs_full": {"mean_rel_diff": d_mean, "max_pair_rel_diff": d_max},
        "batched_vs_single": {"mean_rel_diff": s_mean, "max_pair_rel_diff": s_max},
        "step_ms": 1000 * per_step, "fwd_bwd_input_ms": 1000 * fb["input"],
        "fwd_bwd_weights_ms": 1000 * fb["weights"],
    }, f, indent=2)
  print(f"results written to {args.out}")


if __name__ == "__main__":
  main()
