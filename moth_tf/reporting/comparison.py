"""The comparison table of runs read back from TensorBoard logs (moth_tf.reporting.reader).

Runs are grouped by (data set, model); within a group, runs of one configuration (same method,
mode and base model; different seeds or machines) form one row, with the mean and, for two or more
runs, the sample standard deviation of every figure. Enlargement is measured against the baseline
row's distance matrix (the mean over its runs), exactly as `--compare_to` does
(moth_tf.evaluation.distance.enlargement).

Formats: Markdown for people; CSV and JSON for programs, both with every value at full precision
and read back by `rows_from_csv` / `rows_from_json`.
"""

import csv
import dataclasses
import io
import json
import math
import os
import re
from typing import Dict, List, Optional, Sequence

import numpy as np

from moth_tf.reporting import records

# (key, header, kind): the table's figures, in order. kind decides the Markdown formatting.
COLUMNS = (
    ("test_accuracy", "test acc", "acc"),
    ("accuracy_change", "acc vs baseline", "points"),
    ("robust_accuracy", "PGD robust acc", "acc"),
    ("mean_distance", "mean distance", "distance"),
    ("enlargement_mean_relative", "enlargement (mean of per-pair)", "percent"),
    ("enlargement_ratio_of_means", "enlargement (ratio of means)", "percent"),
    ("backdoor_asr", "backdoor ASR", "acc"),
    ("steps", "hardening steps", "count"),
    ("wall_seconds", "hardening wall (s)", "seconds"),
    ("time_vs_moth", "time vs MOTH", "ratio"),
)
# Shown only where some run of the group has them.
_OPTIONAL = ("backdoor_asr",)
# Text fields of a row (CSV and JSON carry them too).
_TEXT_FIELDS = ("dataset", "model", "method", "runs", "seeds", "paths", "notes")


@dataclasses.dataclass
class Group:
  """One table: the rows of one (data set, model)."""
  dataset: str
  model: str
  baseline: str
  rows: List[dict]
  class_names: List[str]
  runs: Dict[str, list]  # row label -> its reader.Run objects (for the figures)


def config_label(metadata: dict) -> str:
  """The row a run belongs to: its method, its mode and ablations where not the default, and the
  model it started from where that is not the natural run of its workdir (e.g. `moth (adv) from
  adv_train`, `moth (one_sided, random schedule)`)."""
  label = metadata.get("method") or "unknown"
  mode = metadata.get("mode")
  tags = [mode] if mode and mode != "nat" else []
  # MOTH's ablations (HardenConfig's generation, schedule, trigger_reuse) make rows of their own.
  harden = ((metadata.get("config") or {}).get("harden") or {}) if label != "natural" else {}
  if harden.get("generation", "two_sided") != "two_sided":
    tags.append(str(harden["generation"]))
  if harden.get("schedule", "karm") != "karm" and label == "moth":
    tags.append(f"{harden['schedule']} schedule")
  if harden.get("trigger_reuse", True) is False:
    tags.append("no trigger reuse")
  if tags:
    label += f" ({', '.join(tags)})"
  base = records.base_label(metadata.get("base") or "")
  prefix = f"{metadata.get('dataset')}_{metadata.get('model')}_"
  if base:
    label += " from " + (base[len(prefix):] if base.startswith(prefix) else base)
  return label


def run_figures(run, baseline_matrix: Optional[np.ndarray]) -> dict:
  """The table's figures of one run (None where its logs do not have them)."""
  from moth_tf.evaluation import distance
  figures = {
      "enlargement_mean_relative": None, "enlargement_ratio_of_means": None,
      # The latest test accuracy written: a later --phase=test replaces the one at training end.
      "test_accuracy": run.latest("test/accuracy", "harden/test_accuracy", "train/test_accuracy"),
      "robust_accuracy": run.latest("robustness/accuracy"),
      "mean_distance": run.latest("distance/mean"),
      "backdoor_asr": run.latest("backdoor/asr"),
      "steps": run.latest("harden/steps"),
      "wall_seconds": run.latest("harden/wall_seconds"),
  }
  matrix = run.latest("distance/matrix")
  if baseline_matrix is not None and isinstance(matrix, np.ndarray) and (
      matrix.shape == baseline_matrix.shape):
    comparison = distance.enlargement(baseline_matrix, matrix)
    figures["enlargement_mean_relative"] = comparison["mean_relative_change"]
    figures["enlargement_ratio_of_means"] = comparison["ratio_of_means"]
  return figures


def _method_order() -> List[str]:
  from moth_tf.hardening import methods
  return ["natural"] + list(methods.METHODS)


def _sort_key(label: str, runs: list, baseline: str):
  order = _method_order()
  method = runs[0].metadata.get("method") or label
  rank = order.index(method) if method in order else len(order)
  return (label != baseline, rank, method, label)


def mean_matrix(runs: Sequence) -> Optional[np.ndarray]:
  """The mean distance matrix of runs (NaN-aware: a pair failed in one run counts from the
  others), or None where none has one."""
  matrices = [r.latest("distance/matrix") for r in runs]
  matrices = [m for m in matrices if isinstance(m, np.ndarray)]
  if not matrices or len({m.shape for m in matrices}) > 1:
    return None
  if len(matrices) == 1:
    return matrices[0]
  with np.errstate(all="ignore"):
    import warnings
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", RuntimeWarning)  # All-NaN cells (the diagonal) stay NaN.
      return np.nanmean(np.stack(matrices), axis=0)


def _finite(values):
  return [v for v in values if v is not None and math.isfinite(v)]


def build_groups(runs: Sequence, baseline: str = "natural") -> List[Group]:
  """Groups runs by (data set, model) and computes each group's rows.

  Args:
    runs: reader.Run objects.
    baseline: the row label the accuracy change and the enlargement are measured against.

  Returns:
    Groups sorted by data set and model; rows with the baseline first, then in the method
    registry's order (methods it does not know, alphabetically, at the end).
  """
  grouped: Dict[tuple, Dict[str, list]] = {}
  for run in runs:
    meta = run.metadata
    if not meta:
      run.problems.append("no run metadata in its logs (written before moth_tf recorded it?)")
    key = (meta.get("dataset") or "unknown", meta.get("model") or "unknown")
    label = config_label(meta) if meta else os.path.basename(os.path.normpath(run.path))
    grouped.setdefault(key, {}).setdefault(label, []).append(run)
  groups = []
  for (dataset, model), by_label in sorted(grouped.items()):
    base_runs = by_label.get(baseline, [])
    base_matrix = mean_matrix(base_runs)
    labels = sorted(by_label, key=lambda l: _sort_key(l, by_label[l], baseline))
    per_label = {l: [run_figures(r, base_matrix) for r in by_label[l]] for l in labels}
    base_acc = _finite(f["test_accuracy"] for f in per_label.get(baseline, []))
    base_acc = float(np.mean(base_acc)) if base_acc else None
    moth_wall = _finite(f["wall_seconds"] for f in per_label.get("moth", []))
    moth_wall = float(np.mean(moth_wall)) if moth_wall else None
    rows = []
    for label in labels:
      figures = per_label[label]
      for f in figures:
        f["accuracy_change"] = (f["test_accuracy"] - base_acc
                                if f["test_accuracy"] is not None and base_acc is not None
                                and label != baseline else None)
        if label == baseline:  # Against itself: nothing to say.
          f["enlargement_mean_relative"] = f["enlargement_ratio_of_means"] = None
        f["time_vs_moth"] = (f["wall_seconds"] / moth_wall
                             if f["wall_seconds"] and moth_wall else None)
      runs_here = by_label[label]
      row = {"dataset": dataset, "model": model, "method": label, "runs": len(runs_here),
             "seeds": " ".join(str(r.metadata.get("seed", "?")) for r in runs_here),
             "paths": " ".join(r.path for r in runs_here),
             "notes": "; ".join(f"{r.path}: {p}" for r in runs_here for p in r.problems)}
      for key, _, _ in COLUMNS:
        values = _finite(f[key] for f in figures)
        row[key] = float(np.mean(values)) if values else None
        row[key + "_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else None
      rows.append(row)
    class_names = next((r.metadata.get("class_names") for rs in by_label.values() for r in rs
                        if r.metadata.get("class_names")), [])
    groups.append(Group(dataset, model, baseline, rows, list(class_names), by_label))
  return groups


# How each kind of column shows its values (any other kind: "{:g}").
_VALUE_FORMATS = {
    "acc": lambda v: f"{v:.4f}",
    "points": lambda v: f"{100 * v:+.2f} pts",
    "distance": lambda v: f"{v:.3f}",
    "percent": lambda v: f"{100 * v:+.1f}%",
    "count": lambda v: f"{v:.0f}",
    "seconds": lambda v: f"{v:.0f}",
    "ratio": lambda v: f"{v:.2f}x",
}


def _format_value(value, kind):
  if value is None:
    return "-"
  return _VALUE_FORMATS.get(kind, lambda v: f"{v:g}")(value)


def _cell(row, key, kind):
  text = _format_value(row.get(key), kind)
  std = row.get(key + "_std")
  if std is not None:
    # The spread in the value's own unit (points and percent scale like the value).
    spread = _format_value(std, kind).lstrip("+")
    text += f" ± {spread.replace(' pts', '')}"
  return text


def _visible_columns(rows):
  return [c for c in COLUMNS if c[0] not in _OPTIONAL or any(r.get(c[0]) is not None
                                                             for r in rows)]


def to_markdown(groups: Sequence[Group]) -> str:
  """One Markdown table per group, with the runs' problems listed under it."""
  parts = []
  for group in groups:
    columns = _visible_columns(group.rows)
    runs = sum(r["runs"] for r in group.rows)
    lines = [f"## {group.dataset} / {group.model}: {runs} run(s), baseline {group.baseline}", "",
             "| method | runs | " + " | ".join(h for _, h, _ in columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    notes = []
    for row in group.rows:
      mark = " (!)" if row["notes"] else ""
      lines.append(f"| {row['method']}{mark} | {row['runs']} | "
                   + " | ".join(_cell(row, k, kind) for k, _, kind in columns) + " |")
      if row["notes"]:
        notes.append(f"(!) {row['method']}: {row['notes']}")
    if not any(r["method"] == group.baseline for r in group.rows):
      notes.append(f"no run labelled {group.baseline!r} in this group: no accuracy change or "
                   "enlargement (choose another with --baseline)")
    if any(r["runs"] > 1 for r in group.rows):
      notes.append("several runs of one configuration: mean ± sample standard deviation")
    parts.append("\n".join(lines + ([""] + notes if notes else [])))
  return "\n\n".join(parts) + "\n"


def _fieldnames():
  names = list(_TEXT_FIELDS)
  for key, _, _ in COLUMNS:
    names += [key, key + "_std"]
  return names


def to_csv(groups: Sequence[Group]) -> str:
  """Every row of every group, one CSV line each; numbers at full precision, empty = missing."""
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=_fieldnames(), lineterminator="\n")
  writer.writeheader()
  for group in groups:
    for row in group.rows:
      writer.writerow({k: ("" if row.get(k) is None else repr(row[k])
                           if isinstance(row[k], float) else row[k]) for k in _fieldnames()})
  return buffer.getvalue()


def rows_from_csv(text: str) -> List[dict]:
  """The rows of `to_csv`'s output, as `rows` (numbers as float or int, missing as None)."""
  rows = []
  for record in csv.DictReader(io.StringIO(text)):
    row = {}
    for key, value in record.items():
      if key == "runs":
        row[key] = int(value)
      elif key in _TEXT_FIELDS:
        row[key] = value
      else:
        row[key] = float(value) if value != "" else None
    rows.append(row)
  return rows


def to_json(groups: Sequence[Group]) -> str:
  """The groups as JSON: [{dataset, model, baseline, class_names, rows: [...]}]."""
  from moth_tf import rundir
  data = [{"dataset": g.dataset, "model": g.model, "baseline": g.baseline,
           "class_names": g.class_names, "rows": g.rows} for g in groups]
  return json.dumps(rundir._to_jsonable(data), indent=1) + "\n"  # pylint: disable=protected-access


def rows_from_json(text: str) -> List[dict]:
  """The rows of `to_json`'s output, every group's in order."""
  return [row for group in json.loads(text) for row in group["rows"]]


FORMATS = {"markdown": (to_markdown, "md"), "csv": (to_csv, "csv"), "json": (to_json, "json")}


def format_groups(groups: Sequence[Group], fmt: str) -> str:
  """The groups in `fmt` (markdown, csv or json)."""
  if fmt not in FORMATS:
    raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
  return FORMATS[fmt][0](groups)


def file_stem(*parts: str) -> str:
  """A safe file name stem from labels: `moth (adv) from adv_train` -> `moth_adv_from_adv_train`."""
  return re.sub(r"[^A-Za-z0-9.-]+", "_", "_".join(parts)).strip("_")
