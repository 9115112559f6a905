"""The phases of a run, each a library call on a RunConfig: train, test, distance, harden, pipeline.

`python -m moth_tf.main` maps flags to a RunConfig and calls `run`. Every phase reads and writes the
run directory of (dataset, model, method) under the workdir (see moth_tf.rundir).
"""

import dataclasses
import os
import shlex
import time

from moth_tf import config as config_lib
from moth_tf.cli import console
from moth_tf import data as data_lib
from moth_tf import progress as progress_lib
from moth_tf import rundir
from moth_tf.reporting import records as tb_records
from moth_tf import training
from moth_tf.models import io as model_io

# Errors that are the user's input to fix: main prints them as one line and exits 1.
USER_ERRORS = (data_lib.DatasetUnavailableError, model_io.ModelLoadError, ValueError,
               FileNotFoundError, training.NonFiniteTrainingError)


def fit_verbosity(config: config_lib.RunConfig) -> int:
  """The Keras-style `verbose` of the library calls: 0 none, 1 live bar, 2 plain lines."""
  return progress_lib.keras_verbose(config.progress)


def load_splits(config: config_lib.RunConfig) -> data_lib.DatasetSplits:
  """The run's data set; a streamed one keeps config.harden.trigger_pool images per class."""
  return data_lib.load_dataset(config.data.dataset, config.data.data_dir, config.data.image_size,
                               augment=config.data.augment, augment_pad=config.data.augment_pad,
                               download=config.data.download,
                               trigger_pool=config.harden.trigger_pool)


def make_run_command(config: config_lib.RunConfig, phase: str) -> str:
  """The command line that runs `phase` into this configuration's run directories.

  It carries every flag that decides where the model lands or what it is built for (data set,
  model, workdir, data_dir, image_size, strategy), so that following a "make it first with ..."
  hint writes the very file that was looked for.
  """
  args = [f"--phase={phase}", f"--dataset={config.data.dataset}", f"--model={config.model}"]
  if phase == "harden" and config.method not in ("natural", "moth"):
    args.append(f"--method={config.method}")
  if config.base_run != "natural" and not (phase == "poison" and config.base_run == "poisoned"):
    args.append(f"--base_run={config.base_run}")
  if config.workdir != config_lib.DEFAULT_WORKDIR:
    args.append(f"--workdir={config.workdir}")
  if config.data.data_dir:
    args.append(f"--data_dir={config.data.data_dir}")
  if config.data.image_size:
    args.append(f"--image_size={config.data.image_size}")
  if config.strategy != "default":
    args.append(f"--strategy={config.strategy}")
  return " ".join(["python", "-m", "moth_tf.main"] + [shlex.quote(a) for a in args])


def load_run_model(config: config_lib.RunConfig, method=None):
  """The model a phase acts on: --model_path if given, else the run directory's model (model.keras,
  or saved_model/ for a run that hardened a SavedModel input), computing under --precision (a
  float32 model rebuilt under the policy: moth_tf.models.io.with_precision)."""
  path = config.model_path or rundir.find_model(config.run_dir(method))
  if not config.model_path and not os.path.exists(path):
    method = method or config.method
    phase = "harden" if method != "natural" else (
        "train" if config.base_run == "natural" else "poison")
    config = dataclasses.replace(config, method=method)
    what = {"train": "trained", "poison": "poisoned", "harden": "hardened"}[phase]
    raise FileNotFoundError(
        f"no {what} model at {path}; make it first with "
        f"`{make_run_command(config, phase)}` or pass --model_path")
  return model_io.with_precision(model_io.load_model(path, unsafe_load=config.unsafe_load),
                                 config.precision), path


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


def _train_base(config: config_lib.RunConfig, splits, run_dir: str, strategy, label: str,
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
                                          verbose=fit_verbosity(config),
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
  splits = load_splits(config)
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
  _, results, recorder = _train_base(config, splits, run_dir, strategy, "natural", command_line)
  recorder.summary(test_accuracy=results["test_accuracy"])
  print(f"test accuracy: {results['test_accuracy']:.4f} (val {results['val_accuracy']:.4f}); "
        f"training took {results['train_seconds']:.1f} s; model saved to "
        f"{rundir.model_path(run_dir)}")
  distribute.discard_worker_dir(strategy, config.run_dir("natural"))
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
  recorder = tb_records.Recorder(output_dir(config), "test", config.to_dict(),
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

  splits = load_splits(config)
  model, path = load_run_model(config)
  check_model_fits(model, splits, path)
  x, y = splits.x_val[:1000], splits.y_val[:1000]
  p = splits.info.eval_pgd
  start = time.time()
  result = robustness.robust_accuracy(model, x, y, p.epsilon, p.steps, p.step_size,
                                      seed=config.seed)
  print(f"PGD robust accuracy: {result.accuracy:.4f} on {len(x)} validation images (L-inf eps "
        f"{p.epsilon:.4g}, {p.steps} steps of {p.step_size:.4g}); model {path}")
  recorder = tb_records.Recorder(output_dir(config), "robustness", config.to_dict(),
                                 splits.info.class_names, command_line, session=False).start()
  recorder.metrics({"accuracy": result.accuracy, "epsilon": p.epsilon, "images": len(x)})
  if not config.model_path:
    rundir.update_summary(config.run_dir(), robustness={
        "accuracy": result.accuracy, "per_class": result.per_class_accuracy,
        "epsilon": p.epsilon, "steps": p.steps, "step_size": p.step_size, "images": len(x),
        "wall_seconds": time.time() - start})
  return result


def output_dir(config: config_lib.RunConfig) -> str:
  """Where a phase writes results: the run directory, or for --model_path a directory of its own
  (nothing is ever written next to a user's model)."""
  if not config.model_path:
    return config.run_dir()
  stem = os.path.splitext(os.path.basename(os.path.normpath(config.model_path)))[0]
  return os.path.join(config.workdir,
                      f"{data_lib.dataset_dir_name(config.data.dataset)}_external_{stem}")


def load_distance_json(path: str) -> dict:
  """A distance.json, given the file or the run directory holding it."""
  if os.path.isdir(path):
    path = os.path.join(path, rundir.DISTANCE_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"no distance results at {path}; run --phase=distance on that run "
                            "first")
  return rundir.read_json(path)


def _matrix(values):
  import numpy as np
  return np.array([[np.nan if v is None else v for v in row] for row in values], np.float64)


def distance_fingerprint(config: config_lib.RunConfig, model_file: str) -> dict:
  """What a distance measurement depends on: the model's bytes, the data and the settings.

  Stored in distance.json; the pipeline reuses a base-model measurement whose fingerprint matches.
  """
  import json
  settings = dataclasses.asdict(config.distance)
  settings.pop("compare_to")
  fingerprint = {"model_sha256": rundir.file_sha256(model_file), "dataset": config.data.dataset,
                 "image_size": config.data.image_size, "distance": settings}
  # Only where not the defaults, so that earlier float32 measurements keep their fingerprint.
  if config.precision != "float32":
    fingerprint["precision"] = config.precision
  if config.jit_compile:
    fingerprint["jit_compile"] = True
  return json.loads(json.dumps(fingerprint))  # Tuples become lists, as when read back.


def measure_and_record(model, splits, config: config_lib.RunConfig, out_dir: str, seeds=None,
                       tag: str = "distance", verbose: bool = True, strategy=None,
                       command_line=()):
  """Measures class distance and writes distance.json, the heat map PNG and TensorBoard logs.

  Under `strategy` (the model built in its scope) the directions are split across its replicas.

  Returns (DistanceResult, the JSON dict written).
  """
  from moth_tf import estimate as estimate_lib
  from moth_tf.evaluation import distance

  dist = config.distance
  split, note = distance.choose_split(splits, dist.samples)
  x, y = splits.split(split)
  seeds = tuple(seeds or dist.seeds)
  pairs = [dist.pair] if dist.pair else None
  if dist.pair and max(dist.pair) >= splits.num_classes:
    raise ValueError(f"--pair={dist.pair[0]}-{dist.pair[1]}: {splits.info.name} has classes "
                     f"0..{splits.num_classes - 1}")
  n_dirs = len(pairs) if pairs else splits.num_classes * (splits.num_classes - 1)
  if verbose:
    print(f"Class distance: {n_dirs} directions x {len(seeds)} seed(s), {dist.steps} steps, up to "
          f"{dist.samples} images each; {note}; early stop "
          + (f"after {dist.early_stop_patience} steps without a 1% gain" if
             dist.early_stop_patience else "off"))
  # At the start, so that a killed measurement shows in the report as unfinished.
  recorder = tb_records.Recorder(out_dir, tag, config.to_dict(), splits.info.class_names,
                                 command_line, session=False).start()
  estimates = []

  def on_estimate(engine_step):  # Printed before the measurement, recorded beside its time.
    estimates.append(estimate_lib.distance_estimate(
        engine_step, n_dirs, len(seeds), dist.steps,
        estimate_lib.distance_groups(n_dirs, dist.batch_directions)))
    if verbose:
      print(estimates[0].line(), flush=True)

  result = distance.measure_distance(
      model, x, y, splits.num_classes, distance.inversion_settings(dist, config.jit_compile),
      seeds, samples=dist.samples, pairs=pairs, batch_directions=dist.batch_directions,
      split_name=split, verbose=fit_verbosity(config) if verbose else 0, strategy=strategy,
      estimate=on_estimate)
  payload = result.to_json()
  payload["estimate"] = estimates[0].to_json() if estimates else None
  model_file = config.model_path or rundir.find_model(config.run_dir())
  payload.update(dataset=config.data.dataset, model=config.model, model_path=model_file)
  if os.path.isfile(model_file):
    payload["fingerprint"] = distance_fingerprint(config, model_file)
  if dist.compare_to:
    base = load_distance_json(dist.compare_to)
    comparison = distance.enlargement(_matrix(base["matrix"]), result.matrix)
    comparison["baseline"] = dist.compare_to
    payload["comparison"] = comparison
  name = rundir.DISTANCE_FILE if not dist.pair else f"distance_pair_{dist.pair[0]}-{dist.pair[1]}.json"
  os.makedirs(out_dir, exist_ok=True)
  rundir.write_json(os.path.join(out_dir, name), payload)
  heatmap = None if dist.pair else distance.readable_heatmap_png(
      result.matrix, splits.info.class_names,
      f"class distance: {os.path.basename(os.path.normpath(out_dir))} (mean {result.mean:.3f})")
  if heatmap:
    rundir.write_bytes(os.path.join(out_dir, tag + "_heatmap.png"), heatmap)
  recorder.distance(result, heatmap, payload.get("comparison"))
  return result, payload


def run_distance(config: config_lib.RunConfig, command_line=()):
  """Pairwise class distance of the run's model (or --model_path); writes distance.json etc."""
  from moth_tf import distribute

  splits = load_splits(config)
  strategy = distribute.get_strategy(config.strategy)
  with strategy.scope():  # Every replica inverts its share of the directions on its own copy.
    model, path = load_run_model(config)
  check_model_fits(model, splits, path)
  out_dir = distribute.worker_dir(strategy, output_dir(config))
  result, payload = measure_and_record(model, splits, config, out_dir, strategy=strategy,
                                       command_line=command_line)
  console.print_distance(result, payload)
  if not config.distance.pair:
    rundir.update_summary(out_dir, distance={"mean": result.mean, "failures": len(result.failures),
                                             "seeds": list(result.seeds),
                                             "wall_seconds": result.wall_seconds,
                                             "estimate": payload["estimate"],
                                             "strategy": config.strategy,
                                             "replicas": strategy.num_replicas_in_sync})
  print(f"results written to {out_dir}")
  distribute.discard_worker_dir(strategy, output_dir(config))
  return result


def harden_output_dir(config: config_lib.RunConfig) -> str:
  if not config.model_path:
    return config.run_dir()
  return output_dir(config) + f"_{config.method}"


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
  splits = load_splits(config)
  base_config = config if config.model_path else dataclasses.replace(config, method="natural")
  base_model, base_path = load_run_model(base_config)
  check_model_fits(base_model, splits, base_path)
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
      lambda: model_io.with_precision(model_io.load_model(base_path, unsafe_load=config.unsafe_load),
                                      config.precision, splits.x_train[:1]),
      splits, out_dir, strategy, verbose=fit_verbosity(config))
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
  splits = load_splits(config)
  estimate = _pipeline_estimate(config, natural, splits)
  print(estimate.line(), flush=True)
  start = time.time()
  if os.path.exists(rundir.model_path(base_dir)):
    print(f"[1/4] base model found at {rundir.model_path(base_dir)}; not retraining")
  elif config.base_run != "natural":
    load_run_model(natural)  # Raises the "make it first with --phase=poison" error.
  else:
    print("[1/4] training the base model")
    run_train(natural, command_line)
  times["train"] = time.time() - start

  start = time.time()
  base_distance_file = os.path.join(base_dir, rundir.DISTANCE_FILE)
  previous = rundir.read_json(base_distance_file) if os.path.exists(base_distance_file) else {}
  if previous.get("fingerprint") == distance_fingerprint(natural, rundir.model_path(base_dir)):
    print(f"[2/4] class distance of the base model: reusing {base_distance_file} (same model, "
          "data and settings)")
    base_mean, base_failures = previous["mean"], len(previous["failures"])
  else:
    print(f"[2/4] class distance of the base model ({len(config.distance.seeds)} seed(s))")
    with strategy.scope():
      base_model, _ = load_run_model(natural)
    base_result, _ = measure_and_record(base_model, splits, natural, base_dir, strategy=strategy,
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
    hardened_model, _ = load_run_model(hardened)
  after, payload = measure_and_record(hardened_model, splits, hardened, hardened.run_dir(),
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
    with model_io.policy_scope(config.precision):
      model = models.build_model(config.model, splits.image_shape, splits.num_classes,
                                 normalization=splits.info.normalization)
    distance_before = True
  else:
    model, _ = load_run_model(natural)
    previous = os.path.join(natural.run_dir(), rundir.DISTANCE_FILE)
    distance_before = not (os.path.exists(previous) and rundir.read_json(previous).get(
        "fingerprint") == distance_fingerprint(natural, model_file))
  return estimate_lib.pipeline_probe(config, splits, model, train_needed, distance_before)


def trigger_dir(config: config_lib.RunConfig) -> str:
  """Where the backdoor trigger of a backdoor phase is: --trigger_path, else the base run's."""
  if config.trigger_path:
    return config.trigger_path
  if config.base_run == "natural":
    raise ValueError("this phase needs a backdoor trigger: pass --base_run=<the poisoned run, e.g. "
                     "poisoned> or --trigger_path=<a poisoned run directory>")
  return config.run_dir("natural")


def run_poison(config: config_lib.RunConfig, command_line=()):
  """Trains a backdoored model: the trigger stamped on --poison_rate of the training images,
  relabelled; saves the trigger beside the model and measures C-Acc and ASR."""
  from moth_tf import distribute
  from moth_tf.attacks import backdoor
  from moth_tf.evaluation import backdoor as backdoor_eval

  if config.base_run == "natural":
    raise ValueError("--phase=poison writes a poisoned base run, not the natural one; pass "
                     "--base_run=NAME (default: poisoned)")
  splits = load_splits(config)
  if splits.streaming:
    # Poisoning stamps a share of the training images in memory; a streamed set never is.
    raise ValueError(f"--phase=poison needs the training set in memory, but "
                     f"{config.data.dataset} is streamed; poison a registered data set, or stamp "
                     "your own copy of the images and load that folder")
  run_dir = config.run_dir("natural")
  p = config.poison
  trigger = backdoor.make_trigger(p.kind, splits.image_shape, splits.num_classes, p.mode, p.target,
                                  p.size, p.position, p.colour, p.alpha, p.seed)
  x_train, y_train, chosen = backdoor.poison_training_set(
      splits.x_train, splits.y_train, trigger, splits.num_classes, p.rate, p.seed)
  rundir.check_not_finished(run_dir, config.overwrite, "poisoned", training.BACKUP_DIR)
  rundir.check_writable(run_dir)
  poisoned = dataclasses.replace(splits, x_train=x_train, y_train=y_train)
  backdoor.save_trigger(trigger, run_dir, rate=p.rate, poisoned_images=len(chosen),
                        dataset=config.data.dataset)
  target = (f"class {p.target}" if p.mode == "all_to_one" else "label + 1 (all-to-all)")
  print(f"Poisoning {config.model} on {config.data.dataset}: a {console.describe_trigger(trigger)} "
        f"stamped on {len(chosen)} of {len(x_train)} training images ({p.rate:.1%}), relabelled "
        f"to {target}; into {run_dir}")
  strategy = distribute.get_strategy(config.strategy)
  # The report names the run by its method: "poisoned" (a base run, like "natural").
  model, results, recorder = _train_base(config, splits, run_dir, strategy, "poisoned",
                                         command_line, train_splits=poisoned)
  metrics = backdoor_eval.backdoor_metrics(model, splits.x_test, splits.y_test, trigger,
                                           splits.num_classes)
  natural_summary = os.path.join(dataclasses.replace(config, base_run="natural").run_dir("natural"),
                                 rundir.SUMMARY_FILE)
  natural_acc = (rundir.read_json(natural_summary).get("test_accuracy")
                 if os.path.exists(natural_summary) else None)
  recorder.summary(base_run=config.base_run, test_accuracy=metrics["c_acc"], backdoor=metrics,
                   poison={**dataclasses.asdict(p), "poisoned_images": len(chosen),
                           "natural_test_accuracy": natural_acc})
  recorder.metrics({k: metrics[k] for k in ("c_acc", "asr", "r_acc")}, phase="backdoor")
  console.print_backdoor(metrics, "poisoned model")
  if natural_acc is not None:
    print(f"clean accuracy vs the natural model: {natural_acc:.4f} -> {metrics['c_acc']:.4f} "
          f"({100 * (metrics['c_acc'] - natural_acc):+.2f} points)")
  print(f"training took {results['train_seconds']:.1f} s; model and trigger saved in {run_dir}")
  return metrics


def run_backdoor(config: config_lib.RunConfig, command_line=()):
  """C-Acc, ASR and R-Acc of the run's model (or --model_path) under a saved backdoor trigger, and
  DER against the poisoned model the trigger belongs to."""
  from moth_tf.attacks import backdoor
  from moth_tf.evaluation import backdoor as backdoor_eval

  splits = load_splits(config)
  model, path = load_run_model(config)
  check_model_fits(model, splits, path)
  source = trigger_dir(config)
  trigger = backdoor.load_trigger(source, splits.image_shape)
  start = time.time()
  metrics = backdoor_eval.backdoor_metrics(model, splits.x_test, splits.y_test, trigger,
                                           splits.num_classes)
  original_path = rundir.find_model(backdoor.trigger_location(source))
  original = None
  # DER rates a defence: a model made from the poisoned one (a method's run, or a user's model),
  # not the poisoned model itself or the natural one.
  defended = config.model_path is not None or config.method != "natural"
  if defended and os.path.exists(original_path) and (
      os.path.abspath(original_path) != os.path.abspath(path)):
    original = backdoor_eval.backdoor_metrics(
        model_io.load_model(original_path, unsafe_load=config.unsafe_load), splits.x_test,
        splits.y_test, trigger, splits.num_classes)
    metrics["der"] = backdoor_eval.defence_effectiveness(original, metrics)
  metrics["wall_seconds"] = time.time() - start
  recorder = tb_records.Recorder(output_dir(config), "backdoor", config.to_dict(),
                                 splits.info.class_names, command_line, session=False).start()
  recorder.summary(backdoor={
      **metrics, "trigger": os.path.abspath(backdoor.trigger_location(source)),
      "original": None if original is None else {"model": original_path, **original}})
  recorder.metrics({k: metrics.get(k) for k in ("c_acc", "asr", "r_acc", "der")})
  console.print_backdoor(metrics, f"model {path}", original)
  return metrics


def run_detect(config: config_lib.RunConfig, command_line=()):
  """Neural Cleanse detection on the run's model (or --model_path), plus the detection from its
  class-distance matrix when distance.json is there; writes detection.json and nc_norms.png."""
  import numpy as np
  from moth_tf.evaluation import detection
  from moth_tf.evaluation import distance
  from moth_tf import distribute
  from moth_tf.attacks import backdoor

  splits = load_splits(config)
  strategy = distribute.get_strategy(config.strategy)
  with strategy.scope():  # Every replica inverts its share of the labels on its own copy.
    model, path = load_run_model(config)
  check_model_fits(model, splits, path)
  nc = config.harden.nc
  out_dir = distribute.worker_dir(strategy, output_dir(config))
  rundir.check_writable(out_dir)
  split, note = distance.choose_split(splits, nc.samples)
  x, y = splits.split(split)
  print(f"Neural Cleanse: {splits.num_classes} labels, up to {nc.samples} images of each other "
        f"class ({note}), {nc.steps} steps, ASR {nc.asr_bound:g}; model {path}")
  found = detection.neural_cleanse(model, x, y, splits.num_classes, nc, strategy=strategy,
                                   jit_compile=config.jit_compile,
                                   verbose=fit_verbosity(config))
  console.print_detection(found, splits.info.class_names)
  payload = {"model_path": path, "split": split, "neural_cleanse": found.to_json()}
  distance_file = os.path.join(output_dir(config), rundir.DISTANCE_FILE)
  if os.path.exists(distance_file):
    by_distance = detection.distance_detection(_matrix(rundir.read_json(distance_file)["matrix"]),
                                               nc.threshold)
    payload["class_distance"] = by_distance
    print("class-distance detection (column means of distance.json): flags "
          + (", ".join(map(str, by_distance["flagged"])) or "none"))
  else:
    payload["class_distance"] = None
    print(f"class-distance detection skipped: no {distance_file}; run --phase=distance on this "
          "model first to get it")
  if config.trigger_path or config.base_run != "natural":
    trigger = backdoor.load_trigger(trigger_dir(config), splits.image_shape)
    if trigger.mode == "all_to_one":
      hit = trigger.target in found.flagged
      payload["backdoor_target"] = trigger.target
      payload["target_flagged"] = hit
      payload["clean_labels_flagged"] = [t for t in found.flagged if t != trigger.target]
      print(f"the backdoor's target {trigger.target} is {'flagged' if hit else 'NOT flagged'}; "
            f"clean labels flagged: {payload['clean_labels_flagged'] or 'none'}")
  rundir.write_json(os.path.join(out_dir, "detection.json"), payload)
  from moth_tf.reporting import figures
  figure = figures.anomaly_index_png(
      np.nan_to_num(found.l1_norms), np.nan_to_num(found.anomaly_index, posinf=10, neginf=-10),
      found.flagged, splits.info.class_names, title=f"Neural Cleanse on {path}",
      threshold=nc.threshold)
  rundir.write_bytes(os.path.join(out_dir, "nc_norms.png"), figure)
  recorder = tb_records.Recorder(out_dir, "detect", config.to_dict(), splits.info.class_names,
                                 command_line, session=False).start()
  recorder.detection(found)
  recorder.summary(detect={
      "flagged": found.flagged, "wall_seconds": found.wall_seconds,
      "class_distance_flagged": (payload["class_distance"] or {}).get("flagged"),
      "target_flagged": payload.get("target_flagged")})
  print(f"results written to {out_dir}")
  distribute.discard_worker_dir(strategy, output_dir(config))
  return payload


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
