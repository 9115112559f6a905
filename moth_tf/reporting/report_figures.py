"""The report's figures: which runs' logs feed which picture (the drawing is
moth_tf.reporting.figures).

Per (data set, model) group, into the output folder (`<dataset>_<model>_<figure>.png`):

* `distance_heatmaps`: the labelled distance matrix of every row, side by side on one scale;
* `distance_change`: each row's per-pair change (%) against the baseline's matrix;
* `training_curves`: training loss and accuracy and validation accuracy per epoch, per row;
* `trigger_sizes`: the trigger size of the scheduled pair over the hardening steps (MOTH and the
  methods that log it);
* `pair_counts`: the scheduler's pair-count matrix at the end of hardening;
* `pair_distance`: the period-average trigger sizes of a few scheduled pairs (the most and the
  least often scheduled) over the hardening steps, per method (the paper's Fig. 8);
* `previous_trigger_asr`: the ASR of the previous trigger on the images of each fast generation,
  before it, over the hardening steps and as a histogram (the paper's Fig. 9);
* `<row>_nc_anomaly_index`: Neural Cleanse's anomaly index, where a detect phase logged it.

A row of several runs (seeds) draws its mean matrix and its first run's curves.
"""

import os
import re
from typing import List, Sequence

import numpy as np

from moth_tf.reporting import comparison
from moth_tf.reporting import figures
from moth_tf import rundir
from moth_tf.reporting import records

# Pairs drawn in the pair-distance figure: the most and the least often scheduled.
MOST_SCHEDULED_PAIRS = 3
LEAST_SCHEDULED_PAIRS = 2

# Keras' TensorBoard callback logs under logs/<phase>/train and logs/<phase>/validation.
_CURVES = (("train loss", "train", "epoch_loss"), ("train accuracy", "train", "epoch_accuracy"),
           ("validation accuracy", "validation", "epoch_accuracy"))


def _series(run, tag: str, sub: str):
  points = run.points(tag, sub)
  if not points:
    return None
  # A resumed run logs its redone epoch again: the last value written for a step wins.
  by_step = {}
  for p in points:
    by_step[p.step] = p.value
  steps = np.array(sorted(by_step))
  return steps, np.array([float(by_step[s]) for s in steps])


def _fit_phase(run) -> str:
  return "harden" if "harden" in run.phases or any(
      s.startswith("harden/") for s, _ in run.series) else "train"


def _flagged(value) -> List[int]:
  if value is None:
    return []
  if isinstance(value, str):
    return [int(v) for v in re.findall(r"-?\d+", value)]
  if isinstance(value, list):
    return [int(v) for item in value for v in re.findall(r"-?\d+", str(item))]
  return [int(v) for v in np.asarray(value).ravel()]


def _off_diagonal(matrix):
  m = np.array(matrix, np.float64)
  if m.ndim == 2 and m.shape[0] == m.shape[1]:
    np.fill_diagonal(m, np.nan)  # No pair: grey, like the distance maps.
  return m


def _matrix_rows(run, tag: str):
  """(step, row) of every row of a matrix tag's points, the last written per step (a resumed run
  logs the steps it redoes again)."""
  by_step = {}
  for point in run.points(tag):
    value = np.asarray(point.value, np.float64)
    if value.ndim == 2 and value.shape[1] == 4:
      by_step[point.step] = value
  return [(step, row) for step in sorted(by_step) for row in by_step[step]]


def pair_distance_series(run):
  """A run's per-period pair distances: ({(s, t): (steps, sizes [k, 2])}, {(s, t): periods}),
  keyed by the unordered pair s < t (sizes as s->t, t->s); empty where the run logged none."""
  series = {}
  for step, (s, t, st, ts) in _matrix_rows(run, records.PERIOD_SIZES_TAG):
    s, t = int(s), int(t)
    if s > t:
      s, t, st, ts = t, s, ts, st
    series.setdefault((s, t), []).append((step, st, ts))
  out = {pair: (np.array([p[0] for p in points]), np.array([p[1:] for p in points]))
         for pair, points in series.items()}
  return out, {pair: len(points) for pair, points in series.items()}


def selected_pairs(counts, most: int = MOST_SCHEDULED_PAIRS,
                   least: int = LEAST_SCHEDULED_PAIRS):
  """The `most` most often scheduled pairs, then the `least` least often scheduled of the others
  (ties in pair order)."""
  by_most = sorted(counts, key=lambda pair: (-counts[pair], pair))
  top = by_most[:most]
  rest = sorted((pair for pair in counts if pair not in top), key=lambda pair: (counts[pair], pair))
  return top + rest[:least]


def previous_asr_series(run):
  """A run's previous-trigger ASRs: (steps [k], unordered pairs [k, 2], ASR [k]), or None."""
  rows = _matrix_rows(run, records.PREVIOUS_ASR_TAG)
  if not rows:
    return None
  steps = np.array([step for step, _ in rows])
  pairs = np.array([sorted((int(row[0]), int(row[1]))) for _, row in rows])
  return steps, pairs, np.array([row[3] for _, row in rows])


def group_figures(group: "comparison.Group", out_dir: str) -> List[str]:
  """Draws the group's figures into `out_dir`; returns the paths written."""
  stem = comparison.file_stem(group.dataset, group.model)
  written = []

  def save(name, png):
    path = os.path.join(out_dir, f"{stem}_{name}.png")
    rundir.write_bytes(path, png)
    written.append(path)

  labels = [row["method"] for row in group.rows]
  title = f"{group.dataset} / {group.model}"
  matrices = [(label, comparison.mean_matrix(group.runs[label])) for label in labels]
  matrices = [(label, m) for label, m in matrices if m is not None]
  if matrices:
    save("distance_heatmaps", figures.matrices_side_by_side_png(
        [(f"{label} (mean {np.nanmean(m):.3f})", m) for label, m in matrices],
        group.class_names, suptitle=f"{title}: class distance (source -> target)"))
  base = dict(matrices).get(group.baseline)
  if base is not None:
    changes = []
    for label, m in matrices:
      if label == group.baseline or m.shape != base.shape:
        continue
      with np.errstate(all="ignore"):
        change = np.where(base > 0, 100.0 * (m - base) / base, np.nan)
      changes.append((label, change))
    if changes:
      save("distance_change", figures.matrices_side_by_side_png(
          changes, group.class_names, cmap="RdBu", fmt="{:+.0f}", center_zero=True,
          colorbar_label=f"distance change vs {group.baseline} (%)",
          suptitle=f"{title}: per-pair change of class distance vs {group.baseline}"))
  curves = {}
  for name, sub, tag in _CURVES:
    for label in labels:
      run = group.runs[label][0]
      series = _series(run, tag, f"{_fit_phase(run)}/{sub}")
      if series is not None:
        curves.setdefault(name, {})[label] = series
  if curves:
    save("training_curves", figures.curves_png(
        curves, f"{title}: training curves (natural: base training; others: hardening)"))
  sizes = {}
  for label in labels:
    run = group.runs[label][0]
    pair = [_series(run, f"moth/trigger_size_{d}", None) for d in ("st", "ts")]
    if pair[0] is not None and pair[1] is not None and len(pair[0][0]) == len(pair[1][0]):
      sizes[label] = (pair[0][0], np.stack([pair[0][1], pair[1][1]], axis=1))
    elif _series(run, "universal/trigger_size", None) is not None:
      steps, values = _series(run, "universal/trigger_size", None)
      sizes[label] = (steps, values[:, None])
  if sizes:
    save("trigger_sizes", figures.trigger_sizes_png(
        sizes, f"{title}: trigger size of the scheduled pair over hardening"))
  counts = [(label, group.runs[label][0].latest("moth/pair_count_matrix")) for label in labels]
  # A method without pair scheduling (Universal) logs an all-zero matrix: nothing to show.
  counts = [(label, _off_diagonal(m)) for label, m in counts
            if isinstance(m, np.ndarray) and np.nansum(m) > 0]
  if counts:
    # The scheduler counts a period on a pair in both directions' cells.
    save("pair_counts", figures.matrices_side_by_side_png(
        [(f"{label} ({np.nansum(m) / 2:.0f} pair periods)", m) for label, m in counts],
        group.class_names, cmap="Blues", fmt="{:.0f}", colorbar_label="periods scheduled",
        shared_scale=False,
        suptitle=f"{title}: how often the scheduler picked each pair (source -> target)"))
  distances, distance_counts, highlighted, asrs = {}, {}, {}, {}
  for label in labels:
    run = group.runs[label][0]
    series, pair_counts = pair_distance_series(run)
    if series:
      chosen = selected_pairs(pair_counts)
      highlighted[label] = chosen
      distances[label] = {pair: series[pair] for pair in chosen}
      distance_counts[label] = pair_counts
    asr = previous_asr_series(run)
    if asr is not None:
      asrs[label] = asr
  if distances:
    save("pair_distance", figures.pair_distance_png(
        distances, distance_counts, group.class_names,
        f"{title}: class distance of the most and least scheduled pairs over hardening"))
  if asrs:
    save("previous_trigger_asr", figures.previous_asr_png(
        asrs, highlighted, group.class_names,
        f"{title}: ASR of the previous trigger on the current images, before each fast "
        "generation"))
  for label in labels:
    for run in group.runs[label]:
      index = run.latest("detect/anomaly_index")
      norms = run.latest("detect/l1_norms")
      if isinstance(index, np.ndarray) and isinstance(norms, np.ndarray):
        name = comparison.file_stem(label, os.path.basename(os.path.normpath(run.path)))
        save(f"{name}_nc_anomaly_index", figures.anomaly_index_png(
            norms, index, _flagged(run.latest("detect/flagged")), group.class_names,
            f"{title}, {label} ({run.path}): Neural Cleanse outlier test"))
  return written


def write_figures(groups: Sequence["comparison.Group"], out_dir: str) -> List[str]:
  """Every group's figures; returns the paths written."""
  written = []
  for group in groups:
    written += group_figures(group, out_dir)
  return written
