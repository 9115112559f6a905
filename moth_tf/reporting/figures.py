"""Figures a person can read: labelled heat maps, training curves, trigger sizes, the distance of
scheduled pairs and the previous trigger's ASR over hardening, NC anomaly index.

Drawn with matplotlib (a core dependency) on the Agg backend, so no display is needed. Every
function returns PNG bytes; callers write them atomically (moth_tf.rundir.write_bytes). matplotlib is imported inside the functions: importing this module is
free, and `python -m moth_tf.report --help` stays fast.
"""

import io
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

# Above this many classes the values no longer fit in the cells; the colour bar still reads them.
_MAX_ANNOTATED_CLASSES = 20


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")  # No display; must precede the pyplot import.
  import matplotlib.pyplot as plt
  return plt


def _png(fig) -> bytes:
  plt = _pyplot()
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
  plt.close(fig)
  return buffer.getvalue()


def _labels(class_names: Optional[Sequence[str]], n: int) -> List[str]:
  if class_names and len(class_names) == n:
    return [str(c) for c in class_names]
  return [str(i) for i in range(n)]


def _draw_matrix(ax, matrix, class_names, title, cmap="viridis", vmin=None, vmax=None,
                 fmt="{:.1f}", colorbar_label="", center_zero=False):
  """One labelled heat map on `ax`: rows = source, columns = target, values in the cells, grey
  diagonal, hatched cells where the value is missing (failed or not measured)."""
  plt = _pyplot()
  m = np.asarray(matrix, np.float64)
  n = m.shape[0]
  finite = np.isfinite(m)
  if vmin is None or vmax is None:
    lo, hi = (float(m[finite].min()), float(m[finite].max())) if finite.any() else (0.0, 1.0)
    if center_zero:
      bound = max(abs(lo), abs(hi)) or 1.0
      lo, hi = -bound, bound
    vmin = lo if vmin is None else vmin
    vmax = hi if vmax is None else vmax
  cmap_obj = plt.get_cmap(cmap).with_extremes(bad="#d9d9d9")  # Diagonal and missing cells.
  image = ax.imshow(np.ma.masked_invalid(m), cmap=cmap_obj, vmin=vmin, vmax=vmax)
  labels = _labels(class_names, n)
  ax.set_xticks(range(n), labels, rotation=90 if max(map(len, labels)) > 3 else 0)
  ax.set_yticks(range(n), labels)
  ax.set_xlabel("target class")
  ax.set_ylabel("source class")
  ax.set_title(title)
  if n <= _MAX_ANNOTATED_CLASSES:
    size = 8 if n <= 10 else 6
    for s in range(n):
      for t in range(n):
        if s == t:
          continue
        if not finite[s, t]:
          ax.text(t, s, "x", ha="center", va="center", fontsize=size, color="black")
          continue
        # Dark text on light cells, light text on dark ones.
        shade = (m[s, t] - vmin) / (vmax - vmin) if vmax > vmin else 0.5
        r, g, b, _ = cmap_obj(float(np.clip(shade, 0, 1)))
        light = 0.299 * r + 0.587 * g + 0.114 * b > 0.5
        ax.text(t, s, fmt.format(m[s, t]), ha="center", va="center", fontsize=size,
                color="black" if light else "white")
  colorbar = ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
  if colorbar_label:
    colorbar.set_label(colorbar_label)
  return image


def distance_heatmap_png(matrix, class_names: Optional[Sequence[str]] = None,
                         title: str = "class distance") -> bytes:
  """The labelled heat map of one distance matrix: class names on the axes, each pair's distance in
  its cell, a colour bar (trigger size, L1 norm of the mask); grey diagonal, "x" for failures."""
  plt = _pyplot()
  n = np.asarray(matrix).shape[0]
  side = max(4.5, 0.5 * n + 2)
  fig, ax = plt.subplots(figsize=(side + 1, side))
  _draw_matrix(ax, matrix, class_names, title, colorbar_label="trigger size (L1 of mask)")
  return _png(fig)


def matrices_side_by_side_png(matrices: Sequence[Tuple[str, np.ndarray]],
                              class_names: Optional[Sequence[str]] = None,
                              suptitle: str = "", colorbar_label: str = "trigger size (L1 of mask)",
                              cmap: str = "viridis", fmt: str = "{:.1f}",
                              center_zero: bool = False, shared_scale: bool = True) -> bytes:
  """Several labelled heat maps in one figure, one per (title, matrix), on one colour scale (so the
  colours compare across panels)."""
  plt = _pyplot()
  if not matrices:
    raise ValueError("no matrices to draw")
  vmin = vmax = None
  if shared_scale:
    values = np.concatenate([np.asarray(m, np.float64).ravel() for _, m in matrices])
    values = values[np.isfinite(values)]
    if values.size:
      vmin, vmax = float(values.min()), float(values.max())
      if center_zero:
        bound = max(abs(vmin), abs(vmax)) or 1.0
        vmin, vmax = -bound, bound
  n = np.asarray(matrices[0][1]).shape[0]
  side = max(4.5, 0.5 * n + 2)
  cols = min(len(matrices), 4)
  rows = -(-len(matrices) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=((side + 1) * cols, side * rows), squeeze=False)
  for ax, (title, matrix) in zip(axes.ravel(), matrices):
    _draw_matrix(ax, matrix, class_names, title, cmap=cmap, vmin=vmin, vmax=vmax, fmt=fmt,
                 colorbar_label=colorbar_label, center_zero=center_zero)
  for ax in axes.ravel()[len(matrices):]:
    ax.axis("off")
  if suptitle:
    fig.suptitle(suptitle)
  return _png(fig)


def curves_png(curves: Dict[str, Dict[str, Tuple[np.ndarray, np.ndarray]]], title: str,
               xlabel: str = "epoch") -> bytes:
  """One panel per metric, one line per series: `curves[metric][series] = (steps, values)`."""
  plt = _pyplot()
  if not curves:
    raise ValueError("no curves to draw")
  metrics = list(curves)
  fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4), squeeze=False)
  for ax, metric in zip(axes[0], metrics):
    for name, (steps, values) in curves[metric].items():
      marker = "o" if len(steps) < 15 else None
      ax.plot(steps, values, label=name, marker=marker, markersize=3)
    ax.set_title(metric)
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)
  # One legend beside the panels: inside them it hides the curves.
  handles, names = {}, []
  for ax in axes[0]:
    for handle, name in zip(*ax.get_legend_handles_labels()):
      if name not in handles:
        handles[name] = handle
        names.append(name)
  fig.legend([handles[n] for n in names], names, loc="center left", bbox_to_anchor=(1.0, 0.5),
             fontsize=9)
  fig.suptitle(title)
  return _png(fig)


def trigger_sizes_png(series: Dict[str, Tuple[np.ndarray, np.ndarray]], title: str) -> bytes:
  """Trigger size of the scheduled pair's two directions over hardening steps, one panel per
  method: `series[method] = (steps, sizes [k, 2] as (s->t, t->s))`."""
  plt = _pyplot()
  if not series:
    raise ValueError("no trigger sizes to draw")
  fig, axes = plt.subplots(1, len(series), figsize=(6 * len(series), 4), squeeze=False)
  for ax, (name, (steps, sizes)) in zip(axes[0], series.items()):
    sizes = np.asarray(sizes, np.float64).reshape(len(steps), -1)
    # One column: a universal trigger (every other class -> the period's target).
    ax.plot(steps, sizes[:, 0], ".", markersize=2, alpha=0.5,
            label="source -> target" if sizes.shape[1] > 1 else "all -> target (universal)")
    if sizes.shape[1] > 1:
      ax.plot(steps, sizes[:, 1], ".", markersize=2, alpha=0.5, label="target -> source")
    # A running mean over ~2% of the steps shows the trend through the per-pair scatter.
    window = max(1, len(steps) // 50)
    if len(steps) > window > 1:
      kernel = np.ones(window) / window
      mean = np.convolve(np.nanmean(sizes, axis=1), kernel, mode="valid")
      ax.plot(steps[window - 1:], mean, "k-", linewidth=1.5, label=f"mean of both, {window}-step "
              "running mean")
    ax.set_title(name)
    ax.set_xlabel("hardening step")
    ax.set_ylabel("trigger size (L1 of mask)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, markerscale=4)
  fig.suptitle(title)
  return _png(fig)


def _pair_label(pair, class_names):
  s, t = pair
  if class_names and max(pair) < len(class_names):
    return f"{class_names[s]} / {class_names[t]}"
  return f"{s} / {t}"


def pair_distance_png(series: Dict[str, Dict[Tuple[int, int], Tuple[np.ndarray, np.ndarray]]],
                      counts: Dict[str, Dict[Tuple[int, int], int]],
                      class_names: Optional[Sequence[str]] = None, title: str = "") -> bytes:
  """The class distance of a few pairs over hardening (the paper's Fig. 8), one panel per method.

  Args:
    series: series[method][(s, t)] = (steps, sizes [k, 2]) with s < t: the period-average trigger
      sizes of s->t and t->s at the end of each period on the pair.
    counts: counts[method][(s, t)] = periods the pair was scheduled (shown in the legend).
    class_names: names for the legend.
    title: the figure's title.
  """
  plt = _pyplot()
  if not series:
    raise ValueError("no pair distances to draw")
  fig, axes = plt.subplots(1, len(series), figsize=(6.5 * len(series), 4.5), squeeze=False)
  colours = plt.get_cmap("tab10")
  for ax, (name, pairs) in zip(axes[0], series.items()):
    for i, (pair, (steps, sizes)) in enumerate(pairs.items()):
      sizes = np.asarray(sizes, np.float64).reshape(len(steps), 2)
      label = f"{_pair_label(pair, class_names)} ({counts.get(name, {}).get(pair, len(steps))} " \
              "periods)"
      colour = colours(i % 10)
      ax.plot(steps, sizes[:, 0], "-o", color=colour, markersize=3, label=f"{label}: s->t")
      ax.plot(steps, sizes[:, 1], "--s", color=colour, markersize=3, label=f"{label}: t->s")
    ax.set_title(name)
    ax.set_xlabel("hardening step")
    ax.set_ylabel("trigger size (L1 of mask), period average")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle(title)
  return _png(fig)


def previous_asr_png(series: Dict[str, Tuple[np.ndarray, np.ndarray, np.ndarray]],
                     highlighted: Dict[str, Sequence[Tuple[int, int]]],
                     class_names: Optional[Sequence[str]] = None, title: str = "") -> bytes:
  """The ASR of the previous trigger on the images of each fast generation, before it starts (the
  paper's Fig. 9): over hardening steps (left) and as a histogram (right), one row per method.

  Args:
    series: series[method] = (steps [k], pairs [k, 2] as unordered (s < t), ASR [k]): one entry
      per fast direction and family.
    highlighted: per method, the pairs drawn in colour over the others' grey points.
    class_names: names for the legend.
    title: the figure's title.
  """
  plt = _pyplot()
  if not series:
    raise ValueError("no previous-trigger ASR to draw")
  fig, axes = plt.subplots(len(series), 2, figsize=(12, 4 * len(series)), squeeze=False)
  colours = plt.get_cmap("tab10")
  for (left, right), (name, (steps, pairs, asr)) in zip(axes, series.items()):
    steps, asr = np.asarray(steps), np.asarray(asr, np.float64)
    pairs = np.asarray(pairs).reshape(len(steps), 2)
    left.plot(steps, asr, ".", color="0.7", markersize=3, label="every pair")
    for i, pair in enumerate(highlighted.get(name, ())):
      sel = (pairs[:, 0] == pair[0]) & (pairs[:, 1] == pair[1])
      if sel.any():
        # The mean over the pair's directions (and families) at each step.
        at = np.unique(steps[sel])
        mean = [asr[sel & (steps == k)].mean() for k in at]
        left.plot(at, mean, "-o", color=colours(i % 10), markersize=3,
                  label=_pair_label(pair, class_names))
    left.set_ylim(-0.02, 1.02)
    left.set_xlabel("hardening step")
    left.set_ylabel("ASR of the previous trigger")
    left.set_title(f"{name}: per pair, before each fast generation")
    left.grid(alpha=0.3)
    left.legend(fontsize=7)
    right.hist(asr, bins=np.linspace(0.0, 1.0, 21), color="tab:blue", edgecolor="white")
    right.axvline(float(np.median(asr)), color="k", linestyle="--",
                  label=f"median {np.median(asr):.2f} ({len(asr)} generations)")
    right.set_xlabel("ASR of the previous trigger")
    right.set_ylabel("fast generations (directions)")
    right.set_title(f"{name}: histogram")
    right.grid(alpha=0.3, axis="y")
    right.legend(fontsize=8)
  fig.suptitle(title)
  return _png(fig)


def anomaly_index_png(norms, anomaly_index, flagged: Sequence[int],
                      class_names: Optional[Sequence[str]] = None, title: str = "",
                      threshold: float = 2.0) -> bytes:
  """Neural Cleanse's outlier test: per-label trigger L1 norm (left) and anomaly index (right),
  flagged labels in red, the threshold as a dashed line."""
  plt = _pyplot()
  norms = np.asarray(norms, np.float64).ravel()
  index = np.asarray(anomaly_index, np.float64).ravel()
  labels = _labels(class_names, len(norms))
  colours = ["tab:red" if i in set(int(f) for f in flagged) else "tab:blue"
             for i in range(len(norms))]
  fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
  left.bar(range(len(norms)), norms, color=colours)
  left.set_xticks(range(len(norms)), labels)
  left.set_xlabel("target label")
  left.set_ylabel("reversed trigger L1 norm")
  left.set_title("trigger size per label")
  right.bar(range(len(index)), index, color=colours)
  right.axhline(threshold, color="k", linestyle="--", label=f"threshold {threshold:g}")
  right.set_xticks(range(len(index)), labels)
  right.set_xlabel("target label")
  right.set_ylabel("anomaly index (MAD units)")
  right.set_title("anomaly index (red: flagged)")
  right.legend(fontsize=8)
  for ax in (left, right):
    ax.grid(alpha=0.3, axis="y")
  fig.suptitle(title)
  return _png(fig)


def png_to_array(png: bytes) -> np.ndarray:
  """A PNG as a uint8 [H, W, 3] array (for tf.summary.image)."""
  import tensorflow as tf
  return tf.io.decode_png(png, channels=3).numpy()
