"""The phases of a run, each a library call on a RunConfig: test, robustness, harden and pipeline
here; train (moth_tf.cli.base_training); distance (moth_tf.cli.distance_phase); poison, backdoor
and detect (moth_tf.cli.backdoor_phases). What they load and check: moth_tf.cli.loading.

`python -m moth_tf.main` maps flags to a RunConfig and calls `run`. Every phase reads and writes the
run directory of (dataset, model, method) under the workdir (see moth_tf.rundir).
"""

import dataclasses
import os
import time

from moth_tf import config as config_lib
from moth_tf.cli import console
from moth_tf import rundir
from moth_tf.reporting import records as tb_records
from moth_tf.models import io as model_io
from moth_tf.models import precision as precision_lib
from moth_tf.cli import distance_phase
from moth_tf.cli import loading
from moth_tf.cli.backdoor_phases import run_backdoor, run_detect, run_poison
from moth_tf.cli.base_training import run_train
from moth_tf.cli.distance_phase import run_distance


def run_test(config: config_lib.RunConfig, command_line=()):
  """Clean test accuracy of the run's model (or --model_path); recorded in summary.json."""
  from moth_tf import evaluation

  splits = loading.load_splits(config)
  model, path = loading.load_run_model(config)
  loading.check_model_fits(model, splits, path)
  start = time.time()
  acc = evaluation.accuracy(model, splits.x_test, splits.y_test)
  print(f"test accuracy: {acc:.4f} ({len(splits.x_test)} images, model {path})")
  recorder = tb_records.Recorder(distance_phase.output_dir(config), "test", config.to_dict(),
                                 splits.info.class_names, command_line, session=False).start()
  recorder.metrics({"accuracy": acc})
  if not config.model_path:  # Never write next to a user's own model.
    rundir.update_summary(config.run_dir(), test_accuracy=acc,
                          test={"accuracy": acc, "images": len(splits.x_test),
                                "wall_seconds": time.time() - start})
  return acc


def run_robustness(config: config_lib.RunConfig, command_line=()):
  """L-inf PGD robust accuracy (reference 3.4, on logits) on up to 1,000 validation images."""
  from moth_tf.evaluation import robustness

  splits = loading.load_splits(config)
  model, path = loading.load_run_model(config)
  loading.check_model_fits(model, splits, path)
  x, y = splits.x_val[:1000], splits.y_val[:1000]
  p = splits.info.eval_pgd
  start = time.time()
  result = robustness.robust_accuracy(model, x, y, p.epsilon, p.steps, p.step_size,
                                      seed=config.seed)
  print(f"PGD robust accuracy: {result.accuracy:.4f} on {len(x)} validation images (L-inf eps "
        f"{p.epsilon:.4g}, {p.steps} steps of {p.step_size:.4g}); model {path}")
  recorder = tb_records.Recorder(distance_phase.output_dir(config), "robustness", config.to_dict(),
                                 splits.info.class_names, command_line, session=False).start()
  recorder.metrics({"accuracy": result.accuracy, "epsilon": p.epsilon, "images": len(x)})
  if not config.model_path:
    rundir.update_summary(config.run_dir(), robustness={
        "accuracy": result.accuracy, "per_class": result.per_class_accuracy,
        "epsilon": p.epsilon, "steps": p.steps, "step_size": p.step_size, "images": len(x),
        "wall_seconds": time.time() - start})
  return result




def harden_output_dir(config: config_lib.RunConfig) -> str:
  if not config.model_path:
    return config.run_dir()
  return distance_phase.output_dir(config) + f"_{config.method}"


def run_harden(config: config_lib.RunConfig, command_line=(), estimate=None):
  """Hardens the natural run's model (or --model_path) with `--method` into a new run directory.

  `estimate`: the pipeline's moth_tf.estimate.Estimate of this hardening; None: timed here.
  """
  from moth_tf import distribute
  from moth_tf import estimate as estimate_lib
  from moth_tf import evaluation
  from moth_tf.hardening import methods
  from moth_tf.hardening import runner

  if config.method not in config_lib.hardening_methods():
    raise ValueError(f"--method={config.method} is the base model, made by --phase=train; harden "
                     f"with --method set to one of {', '.join(config_lib.hardening_methods())}")
  methods.get_method(config.method)
  splits = loading.load_splits(config)
  base_config = config if config.model_path else dataclasses.replace(config, method="natural")
  base_model, base_path = loading.load_run_model(base_config)
  loading.check_model_fits(base_model, splits, base_path)
  # The method's own demands on the model, before any output (the same steps as moth_tf.harden).
  plan = runner.plan(config.method, base_model, splits, config.harden)
  strategy = distribute.get_strategy(config.strategy)
  final_dir = harden_output_dir(config)
  out_dir = distribute.worker_dir(strategy, final_dir)
  if os.path.abspath(final_dir) == os.path.abspath(os.path.dirname(base_path)):
    raise ValueError(f"the hardened model would overwrite its input {base_path}; choose another "
                     "--workdir")
  rundir.check_not_finished(out_dir, config.overwrite, "hardened", "backup_harden")
  rundir.check_writable(out_dir)
  acc_before = evaluation.accuracy(base_model, splits.x_test, splits.y_test)
  # A SavedModel without a training endpoint trains in inference mode; the method prints the
  # warning before it trains (moth_tf.hardening.fitting) and summary.json records it.
  model_input = model_io.describe_input(base_model, base_path)
  batchnorm = plan.batchnorm
  # A few timed steps on the base model (a throwaway copy from here on).
  estimate = estimate or estimate_lib.harden_probe(config, splits, base_model)
  del base_model
  console.print_harden_start(config.method, base_path, out_dir, plan.describe(splits))
  print(estimate.line(), flush=True)
  recorder = tb_records.Recorder(out_dir, "harden", config.to_dict(), splits.info.class_names,
                                 command_line).start()
  classifier, results = plan.run(
      lambda: precision_lib.with_precision(model_io.load_model(base_path, unsafe_load=config.unsafe_load),
                                      config.precision, splits.x_train[:1]),
      splits, out_dir, strategy, verbose=loading.fit_verbosity(config))
  acc_after = evaluation.accuracy(classifier, splits.x_test, splits.y_test)
  saved_path = model_io.save_model(classifier, out_dir)
  recorder.summary(
      dataset=config.data.dataset, model=config.model, method=config.method,
      base_model=base_path, hardened_model=saved_path, test_accuracy=acc_after,
      harden={**results, "method": config.method, "test_accuracy_before": acc_before,
              "test_accuracy_after": acc_after, "strategy": config.strategy,
              "replicas": strategy.num_replicas_in_sync, "model_input": model_input,
              "batchnorm": batchnorm, "precision": config.precision,
              "jit_compile": config.jit_compile, "estimate": estimate.to_json()},
      augmentation=splits.augmentation.to_json(),
      flags=list(command_line), config=config.to_dict())
  recorder.metrics({
      "test_accuracy": acc_after, "test_accuracy_before": acc_before, **{k: results[k] for k in (
          "wall_seconds", "steps", "generation_seconds", "warmup_seconds", "training_seconds")}})
  console.print_harden_end(acc_before, acc_after, results, saved_path)
  distribute.discard_worker_dir(strategy, final_dir)
  return {"test_accuracy_before": acc_before, "test_accuracy_after": acc_after, **results,
          "run_dir": final_dir}


def run_pipeline(config: config_lib.RunConfig, command_line=()):
  """The whole job: train the base model if missing, measure distance, harden with `--method`,
  measure again."""
  from moth_tf import distribute

  if config.strategy == "multi_worker":
    raise ValueError("--phase=pipeline does not run under --strategy=multi_worker; run its phases "
                     "one by one (train, distance, harden, distance --compare_to=<base run dir>)")
  strategy = distribute.get_strategy(config.strategy)
  times = {}
  # Refuse before the first stage rather than after the distance measurement.
  rundir.check_not_finished(dataclasses.replace(config, model_path=None).run_dir(),
                            config.overwrite, "hardened", "backup_harden")
  natural = dataclasses.replace(config, method="natural", model_path=None)
  base_dir = natural.run_dir()
  splits = loading.load_splits(config)
  estimate = _pipeline_estimate(config, natural, splits)
  print(estimate.line(), flush=True)
  start = time.time()
  if os.path.exists(rundir.model_path(base_dir)):
    print(f"[1/4] base model found at {rundir.model_path(base_dir)}; not retraining")
  elif config.base_run != "natural":
    loading.load_run_model(natural)  # Raises the "make it first with --phase=poison" error.
  else:
    print("[1/4] training the base model")
    run_train(natural, command_line)
  times["train"] = time.time() - start

  start = time.time()
  base_distance_file = os.path.join(base_dir, rundir.DISTANCE_FILE)
  previous = rundir.read_json(base_distance_file) if os.path.exists(base_distance_file) else {}
  if previous.get("fingerprint") == distance_phase.distance_fingerprint(natural, rundir.model_path(base_dir)):
    print(f"[2/4] class distance of the base model: reusing {base_distance_file} (same model, "
          "data and settings)")
    base_mean, base_failures = previous["mean"], len(previous["failures"])
  else:
    print(f"[2/4] class distance of the base model ({len(config.distance.seeds)} seed(s))")
    with strategy.scope():
      base_model, _ = loading.load_run_model(natural)
    base_result, _ = distance_phase.measure_and_record(base_model, splits, natural, base_dir, strategy=strategy,
                                        command_line=command_line)
    base_mean, base_failures = base_result.mean, len(base_result.failures)
    rundir.update_summary(base_dir, distance={"mean": base_mean, "failures": base_failures})
  times["distance_before"] = time.time() - start

  start = time.time()
  print(f"[3/4] {config.method} hardening")
  hardened = dataclasses.replace(config, model_path=None)
  harden_results = run_harden(hardened, command_line, estimate=estimate.parts["harden"])
  times["harden"] = time.time() - start

  start = time.time()
  print(f"[4/4] class distance of the hardened model ({len(config.distance.seeds)} seed(s))")
  hardened = dataclasses.replace(
      hardened, distance=dataclasses.replace(config.distance, compare_to=base_dir))
  with strategy.scope():
    hardened_model, _ = loading.load_run_model(hardened)
  after, payload = distance_phase.measure_and_record(hardened_model, splits, hardened, hardened.run_dir(),
                                      strategy=strategy, command_line=command_line)
  times["distance_after"] = time.time() - start
  comparison = payload["comparison"]
  rundir.update_summary(hardened.run_dir(), distance={
      "mean": after.mean, "failures": len(after.failures),
      "mean_before": base_mean,
      "enlargement_mean_relative": comparison["mean_relative_change"],
      "enlargement_ratio_of_means": comparison["ratio_of_means"]},
      stage_seconds=times, estimate=estimate.to_json())
  console.print_pipeline_summary(
      config, harden_results, comparison, (base_mean, after.mean),
      (base_failures, len(after.failures)), times, (base_dir, hardened.run_dir()))
  return {"times": times, "comparison": comparison, "harden": harden_results}


def _pipeline_estimate(config: config_lib.RunConfig, natural: config_lib.RunConfig, splits):
  """The pipeline's estimate from a few steps timed on a throwaway copy of the base model (or of
  a new one of the architecture when it is still to be trained); moth_tf.estimate."""
  from moth_tf import estimate as estimate_lib
  from moth_tf import models

  model_file = rundir.model_path(natural.run_dir())
  train_needed = not os.path.exists(model_file)
  if train_needed:
    with precision_lib.policy_scope(config.precision):
      model = models.build_model(config.model, splits.image_shape, splits.num_classes,
                                 normalization=splits.info.normalization)
    distance_before = True
  else:
    model, _ = loading.load_run_model(natural)
    previous = os.path.join(natural.run_dir(), rundir.DISTANCE_FILE)
    distance_before = not (os.path.exists(previous) and rundir.read_json(previous).get(
        "fingerprint") == distance_phase.distance_fingerprint(natural, model_file))
  return estimate_lib.pipeline_probe(config, splits, model, train_needed, distance_before)


_PHASES = {
    "train": run_train,
    "test": run_test,
    "robustness": run_robustness,
    "distance": run_distance,
    "harden": run_harden,
    "pipeline": run_pipeline,
    "poison": run_poison,
    "backdoor": run_backdoor,
    "detect": run_detect,
}


def run(config: config_lib.RunConfig, command_line=()):
  """Runs the phase named by config.phase."""
  if config.phase not in _PHASES:
    raise ValueError(f"phase {config.phase!r} is not available yet")
  return _PHASES[config.phase](config, command_line=command_line)
