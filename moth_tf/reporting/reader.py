"""Reads runs back from TensorBoard event files, with TensorBoard's own reading API.

`read_runs(logdir)` walks `logdir` for event files (TensorBoard's EventMultiplexer finds them and
its EventAccumulator reads them; nothing here parses the record format) and gathers them into runs:
a run is a run directory, the folder that holds `logs/` (see moth_tf.reporting.records for what each
phase writes there). Who a run is (data set, model, method, mode, seed, base model) comes from the
metadata the phases wrote, never from the folder's name.

A truncated or corrupt event file (a run killed while writing, an incomplete copy) is read up to
the damage and named in the run's `problems`; a phase that wrote its metadata but not its final
metrics is reported as unfinished.
"""

import contextlib
import dataclasses
import json
import logging
import os
from typing import Dict, List, Optional, Tuple


from moth_tf.reporting import records

# The phases that make a run (the others measure a model that exists).
MAKER_PHASES = ("harden", "train")
# Tensor summaries read back: scalars, text (metadata), matrices, and ones without a plugin.
_READ_PLUGINS = ("scalars", "text", records.PLUGIN_NAME, "")


@dataclasses.dataclass
class Point:
  """One value of a tag: its step, when it was written, and the value (a float or an array)."""
  step: int
  wall_time: float
  value: object


@dataclasses.dataclass
class Run:
  """Everything the event files of one run directory hold.

  Attributes:
    path: the run directory, relative to the log directory read.
    series: (subfolder of logs/, tag) -> points in the order written; scalars as floats, other
      tensors as NumPy arrays, text as str.
    phases: phase (subfolder of logs/) -> the metadata that phase wrote (moth_tf.reporting.records).
    problems: what is wrong with the logs (truncated files, unfinished phases).
    merged_from: other run directories whose measurements of this run's model were merged in.
  """
  path: str
  series: Dict[Tuple[str, str], List[Point]] = dataclasses.field(default_factory=dict)
  phases: Dict[str, dict] = dataclasses.field(default_factory=dict)
  problems: List[str] = dataclasses.field(default_factory=list)
  merged_from: List[str] = dataclasses.field(default_factory=list)

  @property
  def metadata(self) -> dict:
    """The run's identity: the metadata of the phase that made it (harden, train), else of the
    first phase that measured it; {} when the logs carry none."""
    for phase in MAKER_PHASES:
      if phase in self.phases:
        return self.phases[phase]
    return self.phases[sorted(self.phases)[0]] if self.phases else {}

  @property
  def made_here(self) -> bool:
    return any(p in self.phases for p in MAKER_PHASES)

  def points(self, tag: str, sub: Optional[str] = None) -> List[Point]:
    """Every point of `tag` (in any subfolder, or in `sub`), oldest written first."""
    found = [p for (s, t), pts in self.series.items() if t == tag and (sub is None or s == sub)
             for p in pts]
    return sorted(found, key=lambda p: p.wall_time)

  def latest(self, *tags: str):
    """The most recently written value among `tags` (a re-measurement replaces an older one), or
    None."""
    found = [p for tag in tags for p in self.points(tag)]
    return max(found, key=lambda p: p.wall_time).value if found else None

  def has(self, tag: str) -> bool:
    return any(t == tag for _, t in self.series)


class _TruncationLog(logging.Handler):
  """Collects TensorBoard's own notice of a truncated or corrupt record.

  TensorBoard's event file loader stops at a damaged record and says so only in a debug message
  ("Truncated record in PATH"), since a file still being written ends in a partial record; the
  report must name such files instead of silently showing less.
  """

  def __init__(self):
    super().__init__(logging.DEBUG)
    self.paths = set()

  def emit(self, record):
    if str(record.msg).startswith("Truncated record in") and record.args:
      self.paths.add(os.path.normpath(str(record.args[0])))


@contextlib.contextmanager
def _catch_truncation():
  from tensorboard.util import tb_logging
  logger = tb_logging.get_logger()
  handler = _TruncationLog()
  level, propagate = logger.level, logger.propagate
  logger.addHandler(handler)
  logger.setLevel(logging.DEBUG)
  logger.propagate = False  # TensorBoard's debug chatter stays out of the user's terminal.
  try:
    yield handler
  finally:
    logger.removeHandler(handler)
    logger.setLevel(level)
    logger.propagate = propagate


def _split_run_path(run: str) -> Tuple[str, str]:
  """(run directory, subfolder of logs/) of an event folder, relative to the log directory.

  `digits_lenet_moth/logs/harden/train` -> (`digits_lenet_moth`, `harden/train`). A folder outside
  any `logs/` is a run of its own parent: `a/b` -> (`a`, `b`).
  """
  parts = [] if run in (".", "") else os.path.normpath(run).split(os.sep)
  if "logs" in parts:
    i = len(parts) - 1 - parts[::-1].index("logs")
    return os.path.join(*parts[:i]) if i else ".", "/".join(parts[i + 1:])
  if len(parts) <= 1:
    return ".", parts[0] if parts else ""
  return os.path.join(*parts[:-1]), parts[-1]


def _decode(tensor_event):
  from tensorboard.util import tensor_util
  value = tensor_util.make_ndarray(tensor_event.tensor_proto)
  if value.dtype == object:  # Text.
    flat = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in value.ravel()]
    return flat[0] if value.ndim == 0 else flat
  if value.ndim == 0:
    return float(value)
  return value


def _parse_metadata(text: str) -> Optional[dict]:
  text = text.strip()
  if text.startswith("```"):
    text = text.strip("`").strip()
  try:
    record = json.loads(text)
  except ValueError:
    return None
  return record if isinstance(record, dict) else None


def load_multiplexer(logdir: str):
  """TensorBoard's EventMultiplexer over every event folder under `logdir`, fully loaded.

  Scalars and tensor summaries are kept in full (no down-sampling: matrices and final metrics are
  read back exactly); images and histograms only their latest value, which the report does not
  need.
  """
  from tensorboard.backend.event_processing import event_accumulator as ea
  from tensorboard.backend.event_processing import plugin_event_multiplexer as pem
  multiplexer = pem.EventMultiplexer(
      size_guidance={ea.TENSORS: 0, ea.SCALARS: 0, ea.IMAGES: 1, ea.HISTOGRAMS: 1,
                     ea.COMPRESSED_HISTOGRAMS: 1, ea.AUDIO: 1},
      tensor_size_guidance={"images": 1, "histograms": 1, "audio": 1},
      purge_orphaned_data=False)
  multiplexer.AddRunsFromDirectory(logdir)
  multiplexer.Reload()
  return multiplexer


def read_runs(logdir: str) -> List[Run]:
  """Every run under `logdir` (a directory of run directories, or one run directory).

  Raises:
    FileNotFoundError: `logdir` does not exist or holds no event files.
  """
  if not os.path.isdir(logdir):
    raise FileNotFoundError(f"--logdir={logdir} is not a directory")
  with _catch_truncation() as truncation:
    multiplexer = load_multiplexer(logdir)
  event_dirs = multiplexer.Runs()
  if not event_dirs:
    raise FileNotFoundError(f"no TensorBoard event files under {logdir}: nothing to report (point "
                            "--logdir at a --workdir of python -m moth_tf.main, or at a folder of "
                            "copied run directories)")
  runs: Dict[str, Run] = {}
  for name in sorted(event_dirs):
    run_path, sub = _split_run_path(name)
    run = runs.setdefault(run_path, Run(path=run_path))
    accumulator = multiplexer.GetAccumulator(name)
    for tag in accumulator.Tags().get("tensors", []):
      metadata = accumulator.summary_metadata.get(tag)  # None for a summary without metadata.
      plugin = metadata.plugin_data.plugin_name if metadata is not None else ""
      if plugin not in _READ_PLUGINS:
        continue  # Images, histograms, graphs: the table and figures do not read them.
      points = [Point(e.step, e.wall_time, _decode(e)) for e in accumulator.Tensors(tag)]
      run.series.setdefault((sub, tag), []).extend(points)
      if tag == records.METADATA_TAG:
        for point in points:
          record = _parse_metadata(point.value) if isinstance(point.value, str) else None
          if record is not None:
            # The latest start of a phase wins: a re-run replaces the earlier one.
            phase = record.get("phase") or sub
            known = run.phases.get(phase)
            if known is None or point.wall_time >= known.get("_written", 0):
              run.phases[phase] = dict(record, _written=point.wall_time, _sub=sub)
    # Logs of TensorFlow 1 style summaries (simple_value) land in scalars, not tensors.
    for tag in accumulator.Tags().get("scalars", []):
      run.series.setdefault((sub, tag), []).extend(
          Point(e.step, e.wall_time, float(e.value)) for e in accumulator.Scalars(tag))
    for file_path in truncation.paths:
      if os.path.dirname(file_path) == os.path.normpath(os.path.join(logdir, name)):
        shown = os.path.join(name, os.path.basename(file_path))
        run.problems.append(f"truncated or corrupt event file {shown} (read up to the damage)")
  for run in runs.values():
    _check_finished(run)
  return _merge_measurements(list(runs.values()))


def _check_finished(run: Run):
  """Marks the phases that started (wrote their metadata) but never wrote a final metric."""
  for phase, record in sorted(run.phases.items()):
    prefix = phase + "/"
    finals = [p for (s, t), pts in run.series.items() if t.startswith(prefix) for p in pts
              if p.wall_time >= record["_written"]]
    if not finals:
      run.problems.append(f"{phase} unfinished (still running, or killed): no final metrics")


def _merge_measurements(runs: List[Run]) -> List[Run]:
  """Folds a measuring-only run (distance, robustness of a --model_path model) into the run that
  made that model, where that run is among `runs` (same folder name, the same parent preferred)."""
  by_name: Dict[str, List[Run]] = {}
  for run in runs:
    if run.made_here:
      by_name.setdefault(os.path.basename(os.path.normpath(run.path)), []).append(run)
  kept = []
  for run in runs:
    base = run.metadata.get("base") or ""
    target = None
    if not run.made_here and base:
      candidates = by_name.get(records.base_label(base), [])
      same_parent = [c for c in candidates
                     if os.path.dirname(c.path) == os.path.dirname(run.path)]
      target = (same_parent or candidates or [None])[0]
    if target is None:
      kept.append(run)
      continue
    for key, points in run.series.items():
      target.series.setdefault(key, []).extend(points)
    for phase, record in run.phases.items():
      if phase not in target.phases:
        target.phases[phase] = record
    target.problems.extend(run.problems)
    target.merged_from.append(run.path)
  return kept
