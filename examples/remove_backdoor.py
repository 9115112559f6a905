"""Detect a BadNets backdoor with Neural Cleanse and weaken it with MOTH.

    python examples/remove_backdoor.py [--epochs=20] [--nc_steps=300] [--steps=500]

Poisons 10% of the digits training images with a 3x3 white patch in the bottom-right corner,
relabelled to class 0, and trains a CNN on them: it learns the backdoor (attack success rate, ASR,
near 100%). Then `moth_tf.detect_backdoor` (Neural Cleanse) looks for a label whose reversed
trigger is unusually small, `moth_tf.harden` hardens a copy with MOTH on the clean training images
(the defender's), and `moth_tf.backdoor_metrics` measures clean accuracy (C-Acc), ASR and the
backdoor's robust accuracy (R-Acc: stamped images still classified as their own class; not PGD
robust accuracy) before and after. How far the ASR falls depends on the budget; docs/results.md,
"Backdoors", has measured runs.
"""

import argparse

import keras

import moth_tf
from moth_tf import data
from moth_tf.attacks import backdoor


def train_cnn(x, y, epochs: int) -> keras.Model:
  keras.utils.set_random_seed(2)
  model = keras.Sequential([
      keras.Input(x.shape[1:]),
      keras.layers.Conv2D(16, 3, activation="relu"),
      keras.layers.Flatten(),
      keras.layers.Dense(10),
  ])
  model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"])
  model.fit(x, y, batch_size=64, epochs=epochs, verbose=0)
  return model


def show(what: str, metrics: dict):
  print(f"{what}: C-Acc {metrics['c_acc']:.4f}, ASR {metrics['asr']:.4f}, "
        f"R-Acc {metrics['r_acc']:.4f}")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--epochs", type=int, default=20, help="training epochs of the CNN")
  parser.add_argument("--nc_steps", type=int, default=300, help="Neural Cleanse steps")
  parser.add_argument("--nc_samples", type=int, default=30,
                      help="Neural Cleanse images per class")
  parser.add_argument("--steps", type=int, default=500, help="hardening steps")
  args = parser.parse_args(argv)

  splits = data.load_dataset("digits")
  trigger = backdoor.make_trigger("patch", splits.image_shape, splits.num_classes,
                                  target=0, size=3, position="bottom_right", colour=(1.0,))
  x_poisoned, y_poisoned, chosen = backdoor.poison_training_set(
      splits.x_train, splits.y_train, trigger, splits.num_classes, rate=0.1)
  print(f"poisoned {len(chosen)} of {len(x_poisoned)} training images (target class "
        f"{trigger.target})")
  model = train_cnn(x_poisoned, y_poisoned, args.epochs)
  show("poisoned model", moth_tf.backdoor_metrics(model, splits.x_test, splits.y_test, trigger))

  found = moth_tf.detect_backdoor(model, splits.x_val, splits.y_val,
                                  config={"steps": args.nc_steps, "samples": args.nc_samples},
                                  verbose=0)
  print(f"Neural Cleanse flags: {found.flagged or 'none'} (reversed trigger sizes: "
        + ", ".join(f"{v:.1f}" for v in found.l1_norms) + ")")

  # The defender hardens on clean data, as `--phase=harden --base_run=poisoned` does.
  hardened, results = moth_tf.harden(model, (splits.x_train, splits.y_train),
                                     (splits.x_val, splits.y_val),
                                     test=(splits.x_test, splits.y_test),
                                     config={"steps": args.steps}, verbose=0)
  print(f"hardened with MOTH: {results.steps} steps in {results.wall_seconds:.1f} s")
  show("hardened model", moth_tf.backdoor_metrics(hardened, splits.x_test, splits.y_test, trigger))


if __name__ == "__main__":
  main()
