"""What every phase writes into TensorBoard for `python -m moth_tf.report` to read back.

Results also live in summary.json and distance.json, but the report reads only the event files, so
that runs made on other machines can be compared from their copied `logs/` folders alone. Layout of
a run directory's `logs/` (tags in brackets):

    logs/                    the run's HParams session: data set, model, method, mode, seed
                             (written by the phase that made the run: train, harden; by a
                             measuring phase only where nothing made the run here)
    logs/<phase>/            [run/metadata] JSON text: data set, model, method, mode, phase, seed,
                             base model, class names, the explicit flags and the whole config;
                             [run/flags] the command line as text;
                             [<phase>/<name>] final metrics as scalars (train/test_accuracy,
                             harden/wall_seconds, robustness/accuracy, distance/mean, ...)
    logs/distance/           [distance/matrix] [n, n], [distance/per_seed] [S, n, n],
                             [distance/seeds] [S]: tensor summaries, NaN where a direction failed
    logs/harden_moth/        [moth/pair_count_matrix] [n, n] per epoch: the scheduler's pair counts;
                             [moth/period_trigger_sizes] [P, 4] at the last step of every period:
                             (source, target, size s->t, size t->s) of each of its P pairs, the
                             period-average trigger sizes the scheduler's reward is updated from;
                             [moth/previous_trigger_asr] [D, 4] at every step with fast
                             generations: (source, target, family, ASR) of each fast direction's
                             starting trigger (the previous one) on the generation's images

A phase writes its metadata when it starts and its final metrics when it ends, so a run that was
killed shows up with metadata and without final metrics.
"""

import json
import os
import time
from typing import Dict, Optional, Sequence

import numpy as np

from moth_tf import rundir

METADATA_TAG = "run/metadata"
FLAGS_TAG = "run/flags"
# Tensor summaries carry this plugin name, so that readers (and TensorBoard) can tell them from
# the scalars; the content names the kind of value.
PLUGIN_NAME = "moth_tf"
MATRIX_CONTENT = b"matrix"
# MOTH's per-period pair distances and the previous trigger's ASR before each fast generation
# (matrices, one row per pair or direction; the columns are in the summaries' descriptions).
PERIOD_SIZES_TAG = "moth/period_trigger_sizes"
PERIOD_SIZES_COLUMNS = "source, target, size source->target, size target->source"
PREVIOUS_ASR_TAG = "moth/previous_trigger_asr"
PREVIOUS_ASR_COLUMNS = "source, target, family, ASR of the previous trigger"

# Config fields that become HParams (TensorBoard's HParams dashboard compares runs on them). The
# whole config is in the metadata text; these are the ones that tell runs apart at a glance.
_HPARAM_FIELDS = (
    ("seed", ("seed",)),
    ("data.augment", ("data", "augment")),
    ("data.augment_pad", ("data", "augment_pad")),
    ("harden.mode", ("harden", "mode")),
    ("harden.learning_rate", ("harden", "learning_rate")),
    ("harden.steps", ("harden", "steps")),
    ("harden.portion", ("harden", "portion")),
    ("harden.replay", ("harden", "replay")),
    ("harden.families", ("harden", "families")),
    ("train.epochs", ("train", "epochs")),
)


def _writer(log_dir: str):
  import tensorflow as tf
  return tf.summary.create_file_writer(log_dir)


def _lookup(config: dict, path: Sequence[str]):
  value = config
  for key in path:
    if not isinstance(value, dict) or key not in value:
      return None
    value = value[key]
  return value


def run_identity(config: dict, phase: str, class_names: Sequence[str] = (),
                 command_line: Sequence[str] = ()) -> dict:
  """The metadata record of a phase: who the run is (data set, model, method, mode, seed, base)
  and how it was made (phase, flags, the whole config)."""
  data = config.get("data") or {}
  method = config.get("method")
  if phase not in ("train", "harden") and config.get("model_path"):
    # A measuring phase on a user's model file: --method (default natural) says nothing about it.
    method = "external"
  # The model a run started from, where it is not the natural run of its workdir: another run
  # (`base_run`) or a user's file (`model_path`).
  base_run = config.get("base_run")
  base = (base_run if base_run not in (None, "natural") else "") or config.get("model_path") or ""
  return {
      "dataset": data.get("dataset"),
      "model": config.get("model"),
      "method": method,
      "mode": _lookup(config, ("harden", "mode")) if method != "natural" else None,
      "seed": config.get("seed"),
      "base": base,
      "phase": phase,
      "class_names": list(class_names),
      "flags": list(command_line),
      "started": time.time(),
      "config": config,
  }


def write_run_metadata(run_dir: str, phase: str, config: dict, class_names: Sequence[str] = (),
                       command_line: Sequence[str] = (), session: bool = True):
  """Writes the phase's metadata as text into `logs/<phase>/` and, with `session`, the run's HParams
  into `logs/`.

  Args:
    run_dir: the run directory.
    phase: the phase's log folder name (train, harden, test, robustness, distance, ...).
    config: the RunConfig as a dict (RunConfig.to_dict()).
    class_names: the data set's class names (figure axes).
    command_line: the program and its explicit flags.
    session: write the HParams session (the phases that make a run: train, harden). A measuring
      phase passes False, and the session is then written only where the run has none yet (a
      user's model measured here).
  """
  import tensorflow as tf
  from tensorboard.plugins.hparams import api as hp

  identity = run_identity(config, phase, class_names, command_line)
  record = rundir._to_jsonable(identity)  # pylint: disable=protected-access
  text = json.dumps(record, indent=1, sort_keys=True)
  with _writer(os.path.join(run_dir, "logs", phase)).as_default() as writer:
    # Markdown code blocks keep the JSON readable in TensorBoard's Text dashboard.
    tf.summary.text(METADATA_TAG, "```\n" + text + "\n```", step=0)
    tf.summary.text(FLAGS_TAG, " ".join(command_line) or "(no flags)", step=0)
    writer.flush()
  session_dir = os.path.join(run_dir, "logs")
  if not session and _has_events(session_dir):
    return
  hparams = {"dataset": record["dataset"] or "", "model": record["model"] or "",
             "method": record["method"] or "", "base": base_label(record["base"]),
             "run": os.path.basename(os.path.normpath(run_dir))}
  for name, path in _HPARAM_FIELDS:
    value = _lookup(config, path)
    if isinstance(value, (bool, int, float, str)):
      hparams[name] = value
  with _writer(session_dir).as_default() as writer:
    # The HParams table's "Trial ID": sessions with one id form one row (their metrics averaged),
    # so the seed is part of it: seeds get rows of their own, true repeats (a copy of the same run
    # and seed from another machine) share one.
    hp.hparams(hparams, trial_id=f"{hparams['run']} seed {record['seed']}")
    writer.flush()


def base_label(base: str) -> str:
  """A short name for the model a run started from: its run directory's name for a run's
  model.keras or saved_model/, else the file's name without extension; "" for none."""
  if not base:
    return ""
  path = os.path.normpath(base)
  name = os.path.basename(path)
  if name in ("model.keras", "saved_model"):
    return os.path.basename(os.path.dirname(path))
  return os.path.splitext(name)[0]


def _has_events(directory: str) -> bool:
  return os.path.isdir(directory) and any(
      name.startswith("events.out.tfevents.") for name in os.listdir(directory))


def write_final_metrics(run_dir: str, phase: str, metrics: Dict[str, Optional[float]],
                        step: int = 0):
  """Writes each metric as the scalar `<phase>/<name>` into `logs/<phase>/`; None is skipped."""
  import tensorflow as tf
  with _writer(os.path.join(run_dir, "logs", phase)).as_default() as writer:
    for name, value in metrics.items():
      if value is not None:
        tf.summary.scalar(f"{phase}/{name}", float(value), step=step)
    writer.flush()


def write_matrix(tag: str, matrix, step: int = 0, description: str = ""):
  """Writes an array as a tensor summary on the current default writer (float64, exactly; NaN
  kept), to be read back with moth_tf.reporting.reader."""
  import tensorflow as tf
  from tensorboard.compat.proto import summary_pb2
  metadata = summary_pb2.SummaryMetadata(
      summary_description=description,
      plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=PLUGIN_NAME,
                                                         content=MATRIX_CONTENT))
  tf.summary.write(tag, tf.constant(np.asarray(matrix, np.float64)), step=step,
                   metadata=metadata)


def write_matrices(run_dir: str, phase: str, matrices: Dict[str, np.ndarray], step: int = 0):
  """Writes each array as the tensor summary `<phase>/<name>` into `logs/<phase>/`."""
  with _writer(os.path.join(run_dir, "logs", phase)).as_default() as writer:
    for name, matrix in matrices.items():
      write_matrix(f"{phase}/{name}", matrix, step)
    writer.flush()


def write_distance(run_dir: str, tag: str, result, heatmap_png: Optional[bytes] = None,
                   comparison: Optional[dict] = None):
  """Writes a class-distance measurement into `logs/<tag>/`: the mean per seed, the mean,
  failures and wall time; with a heat map, the image and the matrices; with a comparison, the
  enlargement."""
  import tensorflow as tf
  with _writer(rundir.logs_dir(run_dir, tag)).as_default() as writer:
    for i in range(len(result.seeds)):
      with np.errstate(all="ignore"):
        tf.summary.scalar(f"{tag}/mean_seed", float(np.nanmean(result.per_seed[i])), step=i)
    tf.summary.scalar(f"{tag}/mean", result.mean, step=0)
    tf.summary.scalar(f"{tag}/failures", len(result.failures), step=0)
    tf.summary.scalar(f"{tag}/wall_seconds", result.wall_seconds, step=0)
    if heatmap_png is not None:
      tf.summary.image(f"{tag}/heatmap", tf.io.decode_png(heatmap_png, channels=3)[None], step=0)
      write_matrix(f"{tag}/matrix", result.matrix)
      write_matrix(f"{tag}/per_seed", result.per_seed)
      write_matrix(f"{tag}/seeds", result.seeds)
    if comparison is not None:
      tf.summary.scalar(f"{tag}/enlargement_mean_relative", comparison["mean_relative_change"],
                        step=0)
      tf.summary.scalar(f"{tag}/enlargement_ratio_of_means", comparison["ratio_of_means"], step=0)
    writer.flush()


def write_detection(run_dir: str, found, tag: str = "detect"):
  """Writes a Neural Cleanse detection into `logs/<tag>/`: the L1 norms, anomaly indices and
  flagged labels as tensors, and the wall time."""
  import tensorflow as tf
  with _writer(rundir.logs_dir(run_dir, tag)).as_default() as writer:
    tf.summary.write(f"{tag}/l1_norms", tf.constant(found.l1_norms, tf.float32), step=0)
    tf.summary.write(f"{tag}/anomaly_index", tf.constant(found.anomaly_index, tf.float32), step=0)
    tf.summary.write(f"{tag}/flagged", tf.constant(found.flagged, tf.int32,
                                                   shape=[len(found.flagged)]), step=0)
    tf.summary.scalar(f"{tag}/wall_seconds", found.wall_seconds, step=0)
    writer.flush()


class Recorder:
  """What one phase records in a run directory, in one place: its metadata when it starts, then
  summary.json entries, final metrics and result events (TensorBoard) as it goes.

  Args:
    run_dir: the directory written (a run's, or a measurement's own for a user's model).
    phase: the phase's log folder name (train, harden, distance, ...).
    config: the RunConfig as a dict.
    class_names: the data set's class names.
    command_line: the program and its explicit flags.
    session: whether the phase makes the run (train, harden: writes the HParams session).
  """

  def __init__(self, run_dir: str, phase: str, config: dict, class_names: Sequence[str] = (),
               command_line: Sequence[str] = (), session: bool = True):
    self.run_dir, self.phase, self.config = run_dir, phase, config
    self.class_names, self.command_line, self.session = class_names, command_line, session

  def start(self):
    """The phase's metadata; written first, so that a killed phase shows as unfinished."""
    write_run_metadata(self.run_dir, self.phase, self.config, self.class_names,
                       self.command_line, session=self.session)
    return self

  def summary(self, **entries):
    """Merges entries into the run's summary.json."""
    rundir.update_summary(self.run_dir, **entries)

  def metrics(self, metrics: Dict[str, Optional[float]], phase: Optional[str] = None):
    """Final scalars `<phase>/<name>` (the recorder's phase unless given)."""
    write_final_metrics(self.run_dir, phase or self.phase, metrics)

  def distance(self, result, heatmap_png: Optional[bytes] = None,
               comparison: Optional[dict] = None):
    write_distance(self.run_dir, self.phase, result, heatmap_png, comparison)

  def detection(self, found):
    write_detection(self.run_dir, found, self.phase)
