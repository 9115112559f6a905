"""Harden your own Keras model with MOTH, from NumPy arrays in memory.

    python examples/harden_your_model.py [--epochs=20] [--steps=300] [--distance_steps=300]

Builds and trains a small CNN on scikit-learn's digits (1,797 8x8 grey images; no download),
measures its class distance (the smallest trigger that flips class s into class t, for all 90
ordered pairs), hardens a copy with `moth_tf.harden` and measures again. The budgets are small so
that it runs in a minute or two on a laptop CPU; the command line's defaults (2,000 hardening steps,
1,000 distance steps, three seeds) enlarge the distance more (docs/results.md).
"""

import argparse

import keras
import numpy as np
from sklearn import datasets
from sklearn import model_selection

import moth_tf


def build_cnn(num_classes: int = 10) -> keras.Model:
  """A small CNN on 8x8x1 images that outputs logits."""
  return keras.Sequential([
      keras.Input((8, 8, 1)),
      keras.layers.Conv2D(16, 3, activation="relu"),
      keras.layers.Conv2D(32, 3, activation="relu"),
      keras.layers.Flatten(),
      keras.layers.Dense(64, activation="relu"),
      keras.layers.Dense(num_classes),
  ])


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--epochs", type=int, default=20, help="training epochs of the CNN")
  parser.add_argument("--steps", type=int, default=300, help="hardening steps")
  parser.add_argument("--distance_steps", type=int, default=300,
                      help="trigger optimisation steps per class pair")
  parser.add_argument("--samples", type=int, default=20, help="images per class pair")
  args = parser.parse_args(argv)

  # Your data: float images in [0, 1], NHWC, and integer labels.
  digits = datasets.load_digits()
  x = (digits.images / 16.0).astype(np.float32)[..., None]
  y = digits.target
  x_train, x_test, y_train, y_test = model_selection.train_test_split(
      x, y, test_size=0.25, stratify=y, random_state=0)

  keras.utils.set_random_seed(0)
  model = build_cnn()
  model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"])
  model.fit(x_train, y_train, batch_size=64, epochs=args.epochs, verbose=0)

  # Validation images come out of x_train (a stratified 10%); x_test is only measured on.
  hardened, results = moth_tf.harden(model, (x_train, y_train), test=(x_test, y_test),
                                     config={"steps": args.steps}, verbose=2)

  distance = dict(samples=args.samples, steps=args.distance_steps, seeds=1, verbose=0)
  before = moth_tf.class_distance(model, x_test, y_test, **distance)
  after = moth_tf.class_distance(hardened, x_test, y_test, **distance)
  print(f"test accuracy: {results.test_accuracy_before:.4f} -> {results.test_accuracy_after:.4f}")
  print(f"mean class distance: {before.mean:.3f} -> {after.mean:.3f} "
        f"({100 * (after.mean / before.mean - 1):+.1f}%); failed pairs: {len(before.failures)} -> "
        f"{len(after.failures)}")
  print(f"hardening: {results.steps} steps in {results.wall_seconds:.1f} s")


if __name__ == "__main__":
  main()
