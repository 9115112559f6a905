"""The phases of a run, each a library call on a RunConfig: train, test, distance, harden, pipeline.

`python -m moth_tf.main` maps flags to a RunConfig and calls `run`. Every phase reads and writes the
run directory of (dataset, model, method) under the workdir (see moth_tf.rundir).
"""

import os
import time

from moth_tf import config as config_lib
from moth_tf import data as data_lib
from moth_tf import rundir
from moth_tf.models import io as model_io

# Errors that are the user's input to fix: main prints them as one line and exits 1.
USER_ERRORS = (data_lib.DatasetUnavailableError, model_io.ModelLoadError, ValueError,
               FileNotFoundError)


def load_splits(config: config_lib.RunConfig) -> data_lib.DatasetSplits:
  return data_lib.load_dataset(config.data.dataset, config.data.data_dir, config.data.image_size)


def load_run_model(config: config_lib.RunConfig, method=None):
  """The model a phase acts on: --model_path if given, else the run directory's model.keras."""
  path = config.model_path or rundir.model_path(config.run_dir(method))
  if not config.model_path and not os.path.exists(path):
    raise FileNotFoundError(
        f"no trained model at {path}; train it first with `python -m moth_tf.main --phase=train "
        f"--dataset={config.data.dataset} --model={config.model}` or pass --model_path")
  return model_io.load_model(path, unsafe_load=config.unsafe_load), path


def check_model_fits(model, splits: data_lib.DatasetSplits, path: str):
  """Raises a clear ValueError when the model's input or output does not match the data set."""
  expected = tuple(splits.image_shape)
  got = tuple(model.input_shape[1:]) if hasattr(model, "input_shape") else None
  if got is not None and got != expected:
    raise ValueError(f"model {path} takes images of shape {got} but {splits.info.name} images are "
                     f"{expected}; pass --image_size or a matching --model_path")
  outputs = model.output_shape[-1] if hasattr(model, "output_shape") else None
  if outputs is not None and outputs != splits.num_classes:
    raise ValueError(f"model {path} has {outputs} outputs but {splits.info.name} has "
                     f"{splits.num_classes} classes")


def run_train(config: config_lib.RunConfig, command_line=()):
  """Trains the natural base model and writes model, logs and summary.json."""
  from moth_tf import distribute
  from moth_tf import training

  splits = load_splits(config)
  run_dir = config.run_dir("natural")
  strategy = distribute.get_strategy(config.strategy)
  print(f"Training {config.model} on {config.data.dataset} ({len(splits.x_train)} train / "
        f"{len(splits.x_val)} val / {len(splits.x_test)} test images) into {run_dir}")
  _, results = training.train_natural(config.model, splits, config.train, run_dir, strategy,
                                      seed=config.seed)
  rundir.update_summary(
      run_dir, dataset=config.data.dataset, model=config.model, method="natural",
      test_accuracy=results["test_accuracy"], val_accuracy=results["val_accuracy"],
      train={"wall_seconds": results["train_seconds"], "epochs": results["epochs"],
             "recipe": config.train.__dict__},
      flags=list(command_line), config=config.to_dict())
  print(f"test accuracy: {results['test_accuracy']:.4f} (val {results['val_accuracy']:.4f}); "
        f"training took {results['train_seconds']:.1f} s; model saved to "
        f"{rundir.model_path(run_dir)}")
  return results


def run_test(config: config_lib.RunConfig, command_line=()):
  """Clean test accuracy of the run's model (or --model_path); recorded in summary.json."""
  from moth_tf import evaluation

  splits = load_splits(config)
  model, path = load_run_model(config)
  check_model_fits(model, splits, path)
  start = time.time()
  acc = evaluation.accuracy(model, splits.x_test, splits.y_test)
  print(f"test accuracy: {acc:.4f} ({len(splits.x_test)} images, model {path})")
  if not config.model_path:  # Never write next to a user's own model.
    rundir.update_summary(config.run_dir(), test_accuracy=acc,
                          test={"accuracy": acc, "images": len(splits.x_test),
                                "wall_seconds": time.time() - start})
  return acc


_PHASES = {
    "train": run_train,
    "test": run_test,
}


def run(config: config_lib.RunConfig, command_line=()):
  """Runs the phase named by config.phase."""
  if config.phase not in _PHASES:
    raise ValueError(f"phase {config.phase!r} is not available yet")
  return _PHASES[config.phase](config, command_line=command_line)
