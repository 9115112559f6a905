"""Hardening inside a user's own Keras setup: streaming memory and the wrapper's equivalence.

    python benchmarks/keras_fit_benchmark.py --part=memory        # a 200,000-image generator
    python benchmarks/keras_fit_benchmark.py --part=equivalence   # CLI path vs the user's fit

* memory: `moth_tf.harden` on a `tf.data.Dataset.from_generator` of `--images` random 32x32x3
  images (generated on the fly, never stored) for `--steps` steps, a small CNN (moth_tf's
  small_cnn, untrained: the cost does not depend on the weights). Prints the peak resident memory
  of the process (ru_maxrss), the wall time, how many images the run read from the generator, and
  the hardening's own steps and seconds. Run it in its own process: ru_maxrss is the process's
  peak.
* equivalence: MOTH on digits with the default recipe, once as `--phase=harden` does it
  (moth_tf.harden on the arrays) and once as a user would in their own fit
  (moth_tf.hardening_model + compile() + fit on the same seeded batches), from the same base
  model (`--phase=train`'s lenet, trained if missing); then the class distance of both with the
  command line's default distance setting, and whether the hardened weights are identical.
"""

import argparse
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (benchmarks/common.py; sets TF's log level before TF is imported)


def _peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes.


def memory(args) -> dict:
  import numpy as np
  import tensorflow as tf

  import moth_tf
  from moth_tf import models

  read = [0]

  def images():
    rng = np.random.default_rng(0)
    for i in range(args.images):
      read[0] += 1
      yield rng.random((32, 32, 3), dtype=np.float32), np.int64(i % 10)

  spec = (tf.TensorSpec((32, 32, 3), tf.float32), tf.TensorSpec((), tf.int64))
  train = tf.data.Dataset.from_generator(images, output_signature=spec)
  rng = np.random.default_rng(1)
  test = (rng.random((500, 32, 32, 3), dtype=np.float32), np.arange(500) % 10)
  model = models.build_model("small_cnn", (32, 32, 3), 10)
  model(test[0][:1])
  rss_before = _peak_rss_mb()
  start = time.time()
  _, results = moth_tf.harden(model, train, test=test, config={"steps": args.steps}, verbose=2)
  wall = time.time() - start
  return {"images": args.images, "dataset_gb_float32": args.images * 32 * 32 * 3 * 4 / 1e9,
          "steps": results.steps, "wall_seconds": wall, "harden_seconds": results.wall_seconds,
          "images_read": read[0], "peak_rss_mb": _peak_rss_mb(),
          "peak_rss_mb_before_harden": rss_before}


def equivalence(args) -> dict:
  import keras
  import numpy as np

  import moth_tf
  from moth_tf import config as config_lib
  from moth_tf import data as data_lib
  from moth_tf.models import io as model_io

  base_path = common.ensure_base_model(args.workdir)
  base = model_io.load_model(base_path)
  splits = data_lib.load_dataset("digits")
  out = {}
  start = time.time()
  hardened_api, results = moth_tf.harden(base, (splits.x_train, splits.y_train),
                                         (splits.x_val, splits.y_val), dataset="digits",
                                         verbose=0)
  out["api_seconds"] = time.time() - start
  config = results.config

  # The user's path: their copy, the recipe's optimizer (compile() without one), the same seeded
  # batches the command line trains on, their own callbacks.
  keras.utils.set_random_seed(config.seed)
  classifier = keras.models.clone_model(base)
  classifier.set_weights(base.get_weights())
  wrapped = moth_tf.hardening_model(classifier, samples=(splits.x_train, splits.y_train),
                                    dataset="digits", verbose=0)
  wrapped.compile()
  steps_per_epoch = config.steps_per_epoch_for(len(splits.x_train))
  batches = data_lib.make_pipeline(splits.x_train, splits.y_train, config.batch_size,
                                   shuffle=True, seed=config.seed, repeat=True)
  start = time.time()
  wrapped.fit(batches, epochs=config.epochs_for(len(splits.x_train)),
              steps_per_epoch=steps_per_epoch, verbose=0,
              callbacks=[keras.callbacks.TerminateOnNaN()])
  out["fit_seconds"] = time.time() - start
  out["identical_weights"] = all(
      np.array_equal(a, b) for a, b in zip(hardened_api.get_weights(), classifier.get_weights()))
  distance = config_lib.DistanceConfig()
  for name, model in (("base", base), ("api", hardened_api), ("fit", classifier)):
    found = moth_tf.class_distance(model, splits.x_test, splits.y_test,
                                   samples=distance.samples, steps=distance.steps,
                                   seeds=len(distance.seeds), verbose=0)
    accuracy = float(np.mean(np.argmax(model.predict(splits.x_test, verbose=0), 1)
                             == splits.y_test))
    out[name] = {"test_accuracy": accuracy, "mean_distance": float(found.mean)}
  for name in ("api", "fit"):
    out[name]["enlargement"] = out[name]["mean_distance"] / out["base"]["mean_distance"] - 1
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--part", choices=("memory", "equivalence"), required=True)
  parser.add_argument("--images", type=int, default=200_000)
  parser.add_argument("--steps", type=int, default=50)
  parser.add_argument("--workdir", default=common.DEFAULT_WORKDIR)
  args = parser.parse_args()
  note = common.machine_note()
  result = memory(args) if args.part == "memory" else equivalence(args)
  result["machine"] = note
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  main()
