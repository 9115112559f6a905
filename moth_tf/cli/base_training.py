"""`--phase=train`: a base model trained from scratch and recorded; `train_base` also trains the
poisoned base of `--phase=poison` (moth_tf.cli.backdoor_phases).
"""


from moth_tf import config as config_lib
from moth_tf.cli import loading
from moth_tf import rundir
from moth_tf.reporting import records as tb_records
from moth_tf import training


def train_base(config: config_lib.RunConfig, splits, run_dir: str, strategy, label: str,
                command_line=(), train_splits=None):
  """Trains a base model (natural, or poisoned on `train_splits`) into `run_dir` and records it:
  the metadata under the run's label, summary.json, the final training metrics.

  Returns (model, training results, recorder).
  """
  recorder = tb_records.Recorder(
      run_dir, "train", {**config.to_dict(), "method": label,
                         **({"base_run": None} if label != "natural" else {})},
      splits.info.class_names, command_line).start()
  model, results = training.train_natural(config.model, train_splits or splits, config.train,
                                          run_dir, strategy, seed=config.seed,
                                          verbose=loading.fit_verbosity(config),
                                          precision=config.precision,
                                          jit_compile=config.jit_compile)
  recorder.summary(
      dataset=config.data.dataset, model=config.model, method="natural",
      val_accuracy=results["val_accuracy"],
      train={"wall_seconds": results["train_seconds"], "epochs": results["epochs"],
             "recipe": config.train.__dict__},
      augmentation=splits.augmentation.to_json(),
      flags=list(command_line), config=config.to_dict())
  recorder.metrics({k: results[k] for k in ("test_accuracy", "val_accuracy", "epochs")}
                   | {"wall_seconds": results["train_seconds"]})
  return model, results, recorder


def run_train(config: config_lib.RunConfig, command_line=()):
  """Trains the natural base model and writes model, logs and summary.json."""
  from moth_tf import distribute

  if config.base_run != "natural":
    raise ValueError(f"--phase=train makes the natural base model; --base_run={config.base_run} "
                     "is made by --phase=poison")
  splits = loading.load_splits(config)
  strategy = distribute.get_strategy(config.strategy)
  # A non-chief worker of a multi-worker run writes into a temporary folder of the run directory.
  run_dir = distribute.worker_dir(strategy, config.run_dir("natural"))
  rundir.check_not_finished(run_dir, config.overwrite, "trained", training.BACKUP_DIR)
  rundir.check_writable(run_dir)
  train_size = "?" if splits.num_train is None else str(splits.num_train)
  if splits.streaming:
    train_size += " streamed"  # Only a sample is in memory (x_train).
  print(f"Training {config.model} on {config.data.dataset} ({train_size} train / "
        f"{len(splits.x_val)} val / {len(splits.x_test)} test images; augmentation: "
        f"{splits.augmentation.describe()}) into {run_dir}")
  _, results, recorder = train_base(config, splits, run_dir, strategy, "natural", command_line)
  recorder.summary(test_accuracy=results["test_accuracy"])
  print(f"test accuracy: {results['test_accuracy']:.4f} (val {results['val_accuracy']:.4f}); "
        f"training took {results['train_seconds']:.1f} s; model saved to "
        f"{rundir.model_path(run_dir)}")
  distribute.discard_worker_dir(strategy, config.run_dir("natural"))
  return results
