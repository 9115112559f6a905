"""Trigger optimisation under tf.distribute: figures for docs/results.md, "Devices and workers".

    python benchmarks/distributed_benchmark.py --part=mirrored_distance   # 1 device vs 2 replicas
    python benchmarks/distributed_benchmark.py --part=multi_worker        # 2 workers on 127.0.0.1
    python benchmarks/distributed_benchmark.py --part=step_cost           # resnet20 step costs

mirrored_distance: the digits base model's class distance (all 90 directions, --seeds seeds) with
the default strategy and with --strategy=mirrored --cpu_devices=2; the two matrices compared
element by element, and the wall times.
multi_worker: the same distance measurement by a two-worker MultiWorkerMirroredStrategy cluster on
127.0.0.1 (two processes on this machine), against one process.
step_cost: on random 32x32x3 images, the time of one inversion step of resnet20 (the engine's
tf.while_loop, K directions x N images) against one forward+backward training step on the same
images.
"""

import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=wrong-import-position

from absl import app  # pylint: disable=wrong-import-position
from absl import flags  # pylint: disable=wrong-import-position

flags.DEFINE_enum("part", "mirrored_distance", ["mirrored_distance", "multi_worker", "step_cost"],
                  "Which measurement.")
flags.DEFINE_string("workdir", common.DEFAULT_WORKDIR, "Benchmark workdir (base model, runs).")
flags.DEFINE_integer("seeds", 3, "Distance seeds.")
flags.DEFINE_integer("distance_steps", 1000, "Distance optimisation steps.")
flags.DEFINE_integer("step_images", 100, "step_cost: images per direction.")
flags.DEFINE_integer("step_directions", 2, "step_cost: directions per step.")
flags.DEFINE_integer("step_repeats", 20, "step_cost: timed steps.")
FLAGS = flags.FLAGS


def _matrix(path):
  import numpy as np
  with open(path) as f:
    payload = json.load(f)
  return np.array([[np.nan if v is None else v for v in row] for row in payload["matrix"]],
                  np.float64), payload


def _compare(a, b):
  import numpy as np
  both = np.isfinite(a) & np.isfinite(b)
  diff = np.abs(a - b)[both]
  rel = diff / np.maximum(np.abs(a[both]), 1e-12)
  return {"same_failures": bool(np.array_equal(np.isnan(a), np.isnan(b))),
          "identical_entries": int(np.sum((a == b) & both)), "entries": int(both.sum()),
          "max_abs_diff": float(diff.max()) if diff.size else 0.0,
          "max_rel_diff": float(rel.max()) if rel.size else 0.0,
          "mean_a": float(np.nanmean(a)), "mean_b": float(np.nanmean(b))}


def _distance_args(model_path, out_workdir):
  return ["--phase=distance", "--dataset=digits", f"--model_path={model_path}",
          f"--seeds={FLAGS.seeds}", f"--distance_steps={FLAGS.distance_steps}",
          f"--workdir={out_workdir}"]


def _run(cmd, env=None):
  start = time.time()
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
  if proc.returncode != 0:
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
  return time.time() - start


def mirrored_distance():
  model = common.ensure_base_model(FLAGS.workdir)
  print(common.machine_note())
  result_file = os.path.join("digits_external_model", "distance.json")
  rows = []
  for name, extra in (("one device", []),
                      ("mirrored, 2 CPU replicas", ["--strategy=mirrored", "--cpu_devices=2"])):
    out = os.path.join(FLAGS.workdir, "distributed", name.split(",")[0].replace(" ", "_"))
    wall = _run([sys.executable, "-m", "moth_tf.main", *_distance_args(model, out), *extra])
    matrix, payload = _matrix(os.path.join(out, result_file))
    rows.append((name, wall, payload["wall_seconds"], matrix, os.getloadavg()[0]))
  cmp = _compare(rows[0][3], rows[1][3])
  print(f"\nDigits class distance, 90 directions x {FLAGS.seeds} seeds, {FLAGS.distance_steps} "
        "steps, early stop 200:")
  print("| run | process wall s | measurement s | mean distance | load avg after |")
  print("|---|---|---|---|---|")
  for name, wall, inner, matrix, load in rows:
    import numpy as np
    print(f"| {name} | {wall:.1f} | {inner:.1f} | {np.nanmean(matrix):.4f} | {load:.1f} |")
  print(f"\nmatrices: {cmp['identical_entries']}/{cmp['entries']} entries bit-identical, max "
        f"|diff| {cmp['max_abs_diff']:.3g}, max relative {cmp['max_rel_diff']:.3g}, same failures: "
        f"{cmp['same_failures']}")
  print("RESULT " + json.dumps({"walls": [r[1] for r in rows], "inner": [r[2] for r in rows],
                                "compare": cmp}))


def multi_worker():
  from moth_tf import distribute
  model = common.ensure_base_model(FLAGS.workdir)
  print(common.machine_note())
  base = os.path.join(FLAGS.workdir, "distributed")
  single_out = os.path.join(base, "single_process")
  single_wall = _run([sys.executable, "-m", "moth_tf.main", *_distance_args(model, single_out)])
  multi_out = os.path.join(base, "two_workers")
  start = time.time()
  procs = []
  for tf_config in distribute.loopback_tf_configs(2):
    env = dict(os.environ, TF_CONFIG=tf_config)
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "moth_tf.main", *_distance_args(model, multi_out),
         "--strategy=multi_worker"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True))
  for proc in procs:
    _, err = proc.communicate(timeout=3600)
    if proc.returncode != 0:
      raise RuntimeError(f"a worker failed:\n{err[-3000:]}")
  multi_wall = time.time() - start
  result_file = os.path.join("digits_external_model", "distance.json")
  single, single_payload = _matrix(os.path.join(single_out, result_file))
  multi, multi_payload = _matrix(os.path.join(multi_out, result_file))
  cmp = _compare(single, multi)
  print(f"\nDigits class distance, 90 directions x {FLAGS.seeds} seeds, {FLAGS.distance_steps} "
        "steps:")
  print("| run | wall s (both processes) | measurement s | mean distance |")
  print("|---|---|---|---|")
  print(f"| one process | {single_wall:.1f} | {single_payload['wall_seconds']:.1f} | "
        f"{cmp['mean_a']:.4f} |")
  print(f"| 2 workers on 127.0.0.1 (1 replica each) | {multi_wall:.1f} | "
        f"{multi_payload['wall_seconds']:.1f} | {cmp['mean_b']:.4f} |")
  print(f"\nmatrices: {cmp['identical_entries']}/{cmp['entries']} entries bit-identical, max "
        f"|diff| {cmp['max_abs_diff']:.3g}, max relative {cmp['max_rel_diff']:.3g}, same failures: "
        f"{cmp['same_failures']}; load average now {os.getloadavg()[0]:.1f}")
  print("RESULT " + json.dumps({"single_wall": single_wall, "multi_wall": multi_wall,
                                "compare": cmp}))


def step_cost():
  import numpy as np
  import tensorflow as tf
  from moth_tf import models
  from moth_tf.triggers import engine

  print(common.machine_note())
  k, n = FLAGS.step_directions, FLAGS.step_images
  rng = np.random.default_rng(0)
  images = [rng.random((n, 32, 32, 3), dtype=np.float32) for _ in range(k)]
  model = models.build_model("resnet20", (32, 32, 3), 10)
  x = tf.constant(np.concatenate(images))
  y = tf.constant(rng.integers(0, 10, k * n).astype(np.int32))
  variables = model.trainable_variables

  @tf.function
  def train_grad(x, y):
    # One forward+backward of a training step (gradients of every weight; no update, so repeats
    # see the same model).
    with tf.GradientTape() as tape:
      logits = model(x, training=True)
      loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y,
                                                                           logits=logits))
    return tape.gradient(loss, variables)

  @tf.function
  def forward(x):
    return model(x, training=False)

  def timed(fn, repeats):
    fn()  # Trace and warm up.
    start = time.time()
    for _ in range(repeats):
      fn()
    return (time.time() - start) / repeats

  repeats = FLAGS.step_repeats
  t_train = timed(lambda: [g.numpy() for g in train_grad(x, y)][:1], repeats)
  t_forward = timed(lambda: forward(x).numpy(), repeats)
  # Inversion: early stop off, a bound no trigger reaches on random images with a random model
  # (so every direction runs every step); `repeats` steps in one chunk, after a traced warm-up.
  settings = engine.InversionSettings(steps=repeats, chunk_steps=repeats, asr_bound=1.01)
  inverter = engine.TriggerInverter(model, settings)
  targets, seeds = [1] * k, list(range(k))
  inverter.invert(images, targets, seeds, steps=2)
  start = time.time()
  inverter.invert(images, targets, seeds)
  t_invert = (time.time() - start) / repeats
  m = k * n
  print(f"\nresnet20, {m} random 32x32x3 images ({k} directions x {n}), mean of {repeats} steps:")
  print("| step | ms per step | ms per image | x forward+backward |")
  print("|---|---|---|---|")
  for name, t in (("forward (inference)", t_forward), ("training forward+backward", t_train),
                  ("one inversion step", t_invert)):
    print(f"| {name} | {1000 * t:.1f} | {1000 * t / m:.3f} | {t / t_train:.2f} |")
  print("RESULT " + json.dumps({"images": m, "forward": t_forward, "train": t_train,
                                "invert": t_invert, "load": os.getloadavg()[0]}))


def main(argv):
  del argv
  {"mirrored_distance": mirrored_distance, "multi_worker": multi_worker,
   "step_cost": step_cost}[FLAGS.part]()


if __name__ == "__main__":
  app.run(main)
