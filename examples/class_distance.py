"""Measure the class distance of a Keras model and print its matrix.

    python examples/class_distance.py [--model=PATH] [--steps=300] [--samples=20] [--seeds=1]

The class distance from s to t is the L1 size of the smallest trigger (mask and pattern) that makes
90% of class-s images be classified as t; a small one is an easy backdoor or patch. Without
--model a small CNN is trained on the digits first; with it, PATH is a .keras file or a SavedModel
directory taking 8x8x1 digits images.
"""

import argparse

import keras
import numpy as np

import moth_tf
from moth_tf import data
from moth_tf.evaluation import distance


def train_cnn(x, y, epochs: int) -> keras.Model:
  """A small CNN ending in a softmax (moth_tf takes it off for the measurement)."""
  keras.utils.set_random_seed(0)
  model = keras.Sequential([
      keras.Input(x.shape[1:]),
      keras.layers.Conv2D(16, 3, activation="relu"),
      keras.layers.Flatten(),
      keras.layers.Dense(10, activation="softmax"),
  ])
  model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
  model.fit(x, y, batch_size=64, epochs=epochs, verbose=0)
  return model


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", help=".keras file or SavedModel directory (default: train one)")
  parser.add_argument("--epochs", type=int, default=20, help="training epochs without --model")
  parser.add_argument("--steps", type=int, default=300, help="optimisation steps per pair")
  parser.add_argument("--samples", type=int, default=20, help="images per pair")
  parser.add_argument("--seeds", type=int, default=1, help="seeds; the distance is their minimum")
  args = parser.parse_args(argv)

  splits = data.load_dataset("digits")
  model = args.model or train_cnn(splits.x_train, splits.y_train, args.epochs)
  result = moth_tf.class_distance(model, splits.x_val, splits.y_val, samples=args.samples,
                                  steps=args.steps, seeds=args.seeds, verbose=0)
  print("class distance (rows: source class, columns: target class)")
  print(distance.format_matrix(result.matrix))
  closest = np.unravel_index(np.nanargmin(result.matrix), result.matrix.shape)
  print(f"mean distance: {result.mean:.3f} over {len(result.pairs) - len(result.failures)} pairs; "
        f"failures: {len(result.failures)}; closest pair: {closest[0]} -> {closest[1]} "
        f"({np.nanmin(result.matrix):.2f}); {result.wall_seconds:.1f} s")


if __name__ == "__main__":
  main()
