"""The backdoor phases: `poison` (train a model on poisoned data), `backdoor` (a defence against a
poisoned model, its C-Acc, ASR and R-Acc before and after) and `detect` (Neural Cleanse).
"""

import dataclasses
import os
import time

from moth_tf import config as config_lib
from moth_tf.cli import console
from moth_tf import rundir
from moth_tf.reporting import records as tb_records
from moth_tf import training
from moth_tf.models import io as model_io
from moth_tf.cli import base_training
from moth_tf.cli import distance_phase
from moth_tf.cli import loading


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
  splits = loading.load_splits(config)
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
  model, results, recorder = base_training.train_base(config, splits, run_dir, strategy, "poisoned",
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

  splits = loading.load_splits(config)
  model, path = loading.load_run_model(config)
  loading.check_model_fits(model, splits, path)
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
  recorder = tb_records.Recorder(distance_phase.output_dir(config), "backdoor", config.to_dict(),
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

  splits = loading.load_splits(config)
  strategy = distribute.get_strategy(config.strategy)
  with strategy.scope():  # Every replica inverts its share of the labels on its own copy.
    model, path = loading.load_run_model(config)
  loading.check_model_fits(model, splits, path)
  nc = config.harden.nc
  out_dir = distribute.worker_dir(strategy, distance_phase.output_dir(config))
  rundir.check_writable(out_dir)
  split, note = distance.choose_split(splits, nc.samples)
  x, y = splits.split(split)
  print(f"Neural Cleanse: {splits.num_classes} labels, up to {nc.samples} images of each other "
        f"class ({note}), {nc.steps} steps, ASR {nc.asr_bound:g}; model {path}")
  found = detection.neural_cleanse(model, x, y, splits.num_classes, nc, strategy=strategy,
                                   jit_compile=config.jit_compile,
                                   verbose=loading.fit_verbosity(config))
  console.print_detection(found, splits.info.class_names)
  payload = {"model_path": path, "split": split, "neural_cleanse": found.to_json()}
  distance_file = os.path.join(distance_phase.output_dir(config), rundir.DISTANCE_FILE)
  if os.path.exists(distance_file):
    by_distance = detection.distance_detection(distance_phase._matrix(rundir.read_json(distance_file)["matrix"]),
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
  distribute.discard_worker_dir(strategy, distance_phase.output_dir(config))
  return payload
