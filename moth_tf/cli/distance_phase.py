"""`--phase=distance`: the class distance of a run's model, measured and recorded (distance.json,
TensorBoard, summary.json), and reused when the same model was measured with the same settings.
"""

import dataclasses
import os

from moth_tf import config as config_lib
from moth_tf.cli import console
from moth_tf import data as data_lib
from moth_tf import rundir
from moth_tf.reporting import records as tb_records
from moth_tf.cli import loading


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
      split_name=split, verbose=loading.fit_verbosity(config) if verbose else 0, strategy=strategy,
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

  splits = loading.load_splits(config)
  strategy = distribute.get_strategy(config.strategy)
  with strategy.scope():  # Every replica inverts its share of the directions on its own copy.
    model, path = loading.load_run_model(config)
  loading.check_model_fits(model, splits, path)
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
