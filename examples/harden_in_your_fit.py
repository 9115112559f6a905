"""Harden inside your own Keras training: compile, fit, your callbacks, your tf.data pipeline.

    python examples/harden_in_your_fit.py [--epochs=20] [--harden_epochs=110] [--start_epoch=10]
                                          [--out=/tmp/moth_example]

Trains a small CNN on scikit-learn's digits (no download) from a `tf.data` pipeline, then keeps
training it with MOTH switched on from `--start_epoch` on: `moth_tf.hardening_model` wraps the
classifier, `compile` takes your optimizer, `fit` your dataset and callbacks (here a
ModelCheckpoint and an EarlyStopping). The classifier stays a plain Keras model: saved, it loads
with `keras.saving.load_model` and nothing of moth_tf.
"""

import argparse
import os
import tempfile

import keras
import numpy as np
import tensorflow as tf
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
  parser.add_argument("--epochs", type=int, default=20, help="plain training epochs")
  parser.add_argument("--harden_epochs", type=int, default=110,
                      help="epochs of the fit that hardens (the first --start_epoch are plain)")
  parser.add_argument("--start_epoch", type=int, default=10,
                      help="the first epoch of the second fit that stamps MOTH's triggers")
  parser.add_argument("--steps_per_epoch", type=int, default=20)
  parser.add_argument("--trigger_steps", type=int, default=None,
                      help="cap MOTH's trigger optimisation at this many steps per generation "
                      "(default: the recipe's 500 for the warm-up, 200 and 40 for pairs)")
  parser.add_argument("--distance_steps", type=int, default=300,
                      help="trigger optimisation steps per class pair")
  parser.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "moth_example"),
                      help="folder of the checkpoint and the hardened model")
  args = parser.parse_args(argv)

  digits = datasets.load_digits()
  x = (digits.images / 16.0).astype(np.float32)[..., None]
  y = digits.target
  x_train, x_test, y_train, y_test = model_selection.train_test_split(
      x, y, test_size=0.25, stratify=y, random_state=0)
  # Your pipeline: shuffled, batched, endless; the length of an epoch is steps_per_epoch.
  train = tf.data.Dataset.from_tensor_slices((x_train, y_train))
  batches = train.shuffle(len(x_train), seed=0).repeat().batch(64).prefetch(2)

  keras.utils.set_random_seed(0)
  classifier = build_cnn()
  classifier.compile(keras.optimizers.Adam(1e-3),
                     keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                     metrics=["accuracy"])
  classifier.fit(batches, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, verbose=0)
  before = classifier.evaluate(x_test, y_test, verbose=0)[1]
  base = keras.models.clone_model(classifier)  # Kept to measure against: MOTH trains in place.
  base.set_weights(classifier.get_weights())

  # MOTH's trigger images come from the same dataset (its first images of every class).
  config = {}
  if args.trigger_steps:
    config = {"warmup_steps": args.trigger_steps, "pair_steps": args.trigger_steps,
              "fast_steps": min(args.trigger_steps, 40)}
  hardening = moth_tf.hardening_model(classifier, samples=train, start_epoch=args.start_epoch,
                                      config=config)
  hardening.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9, nesterov=True),
                    metrics=["accuracy"])
  os.makedirs(args.out, exist_ok=True)
  checkpoint = os.path.join(args.out, "hardening.weights.h5")
  hardening.fit(batches, epochs=args.harden_epochs, steps_per_epoch=args.steps_per_epoch,
                validation_data=(x_test, y_test), verbose=2,
                callbacks=[keras.callbacks.ModelCheckpoint(checkpoint, save_weights_only=True),
                           keras.callbacks.EarlyStopping(monitor="val_loss", patience=50)])
  # The checkpoint holds the hardening model's variables: the classifier's weights and MOTH's state
  # (trigger store, scheduler), which a hardening model that loads them goes on from. The
  # classifier alone is saved as the plain Keras model it is.
  hardened_path = os.path.join(args.out, "hardened.keras")
  classifier.save(hardened_path)
  saved = keras.saving.load_model(hardened_path)  # A plain Keras model.
  after = float(np.mean(np.argmax(saved.predict(x_test, verbose=0), 1) == y_test))
  distance = dict(samples=20, steps=args.distance_steps, seeds=1, verbose=0)
  d_before = moth_tf.class_distance(base, x_test, y_test, **distance)
  d_after = moth_tf.class_distance(saved, x_test, y_test, **distance)
  print(f"test accuracy: {before:.4f} -> {after:.4f}; MOTH stamped for "
        f"{hardening.hardener.step} steps after {args.start_epoch} plain epochs")
  print(f"mean class distance: {d_before.mean:.3f} -> {d_after.mean:.3f} "
        f"({100 * (d_after.mean / d_before.mean - 1):+.1f}%)")
  print(f"checkpoint: {checkpoint}; hardened model: {hardened_path}")


if __name__ == "__main__":
  main()
