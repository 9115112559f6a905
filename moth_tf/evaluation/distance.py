"""Pairwise class distance (reference sections 3.1-3.2), all pairs in one graph.

The distance from class s to class t is the size of the smallest trigger that makes at least
`asr_bound` (90%) of up to `samples` held-out class-s images be classified as t; size is the L1 norm
of the mask broadcast over the image's channels (the reference's "3-ch L1" on RGB images). Each seed
measures every ordered pair; the reported distance is the element-wise minimum over seeds, ignoring
failures. Failed directions stay failures (NaN in matrices, listed in `failures`): they are never
averaged in as 0, which the reference does.
"""

import dataclasses
import time
import zlib
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from moth_tf.triggers import distributed
from moth_tf.triggers import engine


@dataclasses.dataclass
class DistanceResult:
  """Distances of one model. Matrices are [n, n], [source, target], NaN on the diagonal and where
  every seed failed."""
  matrix: np.ndarray
  per_seed: np.ndarray  # [S, n, n]
  seeds: Tuple[int, ...]
  pairs: List[Tuple[int, int]]
  steps_run: np.ndarray  # [S, n, n] steps each direction ran (early stop), 0 where not measured.
  wall_seconds: float
  split: str
  samples_per_class: Dict[int, int]
  settings: dict

  @property
  def failures(self) -> List[Tuple[int, int]]:
    """Directions that no seed could flip at the ASR bound."""
    return [(s, t) for s, t in self.pairs if not np.isfinite(self.matrix[s, t])]

  @property
  def mean(self) -> float:
    """Mean distance over the measured directions that succeeded."""
    values = [self.matrix[s, t] for s, t in self.pairs if np.isfinite(self.matrix[s, t])]
    return float(np.mean(values)) if values else float("nan")

  def to_json(self) -> dict:
    return {
        "matrix": self.matrix, "per_seed": self.per_seed, "mean": self.mean,
        "failures": [list(p) for p in self.failures], "pairs": [list(p) for p in self.pairs],
        "seeds": list(self.seeds), "steps_run": self.steps_run,
        "wall_seconds": self.wall_seconds, "split": self.split,
        "samples_per_class": {str(k): v for k, v in self.samples_per_class.items()},
        "settings": self.settings,
        "units": "L1 norm of the mask over H x W x C (the reference's 3-ch L1 on RGB images)",
    }


def choose_split(splits, samples: int) -> Tuple[str, str]:
  """Picks the held-out split for distance images.

  The validation split is used when every class has at least `samples` images there (as the
  reference). Otherwise the split whose smallest class is larger is used. Returns (split, note).
  """
  def smallest(y):
    return int(np.bincount(y, minlength=splits.num_classes).min()) if len(y) else 0

  val_min, test_min = smallest(splits.y_val), smallest(splits.y_test)
  if val_min >= samples or val_min >= test_min:
    return "val", f"using the validation split ({val_min}+ images per class)"
  return "test", (f"the validation split has only {val_min} images of its smallest class (< "
                  f"{samples}); using the test split instead ({test_min}+ per class)")


def stable_seed(*values) -> int:
  """A 31-bit integer that depends only on `values` (not on Python's hash randomisation)."""
  return zlib.crc32(np.asarray(values, np.int64).tobytes()) & 0x7FFFFFFF


def direction_images(x, y, source: int, target: int, seed: int, samples: int) -> np.ndarray:
  """Up to `samples` random images of class `source`, drawn for (seed, source, target)."""
  idx = np.flatnonzero(y == source)
  if len(idx) > samples:
    rng = np.random.default_rng(stable_seed(seed, source, target))
    idx = np.sort(rng.choice(idx, samples, replace=False))
  return x[idx]


def all_pairs(num_classes: int) -> List[Tuple[int, int]]:
  return [(s, t) for s in range(num_classes) for t in range(num_classes) if s != t]


def inversion_settings(dist, jit_compile: bool = False) -> engine.InversionSettings:
  """The engine settings of a distance configuration (moth_tf.config.DistanceConfig); with
  `jit_compile`, the engine's step loop is compiled with XLA."""
  return engine.InversionSettings(steps=dist.steps, asr_bound=dist.asr_bound,
                                  init_cost=dist.init_cost,
                                  early_stop_patience=dist.early_stop_patience,
                                  early_stop_tol=dist.early_stop_tol,
                                  direction_blocks=dist.direction_blocks,
                                  jit_compile=jit_compile)


def measure_distance(model, x: np.ndarray, y: np.ndarray, num_classes: int,
                     settings: engine.InversionSettings, seeds: Sequence[int],
                     samples: int = 100, pairs: Optional[Sequence[Tuple[int, int]]] = None,
                     batch_directions: int = 0, split_name: str = "val",
                     verbose: int = 1, strategy=None, estimate=None) -> DistanceResult:
  """Measures the class distance of every requested ordered pair.

  Args:
    model: logits classifier on [0,1] images (called in inference mode).
    x, y: held-out images and labels to draw each direction's images from.
    num_classes: n.
    settings: inversion settings (steps, ASR bound, early stop...).
    seeds: one full measurement per seed; the result is the element-wise minimum.
    samples: images per direction (up to).
    pairs: ordered (s, t) pairs; default all n(n-1).
    batch_directions: directions per graph call; 0 = all pairs of a seed at once.
    split_name: recorded in the result.
    verbose: 0/False: no progress; 1/True: a live progress bar (directions done, ETA); 2: one
      line when all directions are done (for logs, where a bar's carriage returns pile up).
    strategy: a tf.distribute strategy whose replicas share every group's directions (build the
      model under its scope); None: one device.
    estimate: optional callback(seconds per engine step), called before the measurement with
      the cost of a step of its first group, timed with the measurement's own inverter (whose
      traced graph the measurement then reuses; moth_tf.estimate.time_inverter_step).

  Returns:
    DistanceResult.
  """
  import keras  # Progress bar only.

  pairs = list(pairs) if pairs is not None else all_pairs(num_classes)
  for s, t in pairs:
    if not (0 <= s < num_classes and 0 <= t < num_classes) or s == t:
      raise ValueError(f"pair {s}-{t} is not a pair of two different classes in 0..{num_classes-1}")
    if not np.any(y == s):
      raise ValueError(f"no held-out images of class {s}; cannot measure {s}-{t}")
  inverter = distributed.make_inverter(model, settings, strategy)
  group = batch_directions or len(pairs)
  per_seed = np.full((len(seeds), num_classes, num_classes), np.nan)
  steps_run = np.zeros((len(seeds), num_classes, num_classes), np.int64)
  total = len(pairs) * len(seeds)
  bar = (keras.utils.Progbar(total, unit_name="direction", verbose=int(verbose)) if verbose
         else None)
  finished = 0
  if estimate is not None:
    from moth_tf import estimate as estimate_lib
    chunk = pairs[:group]
    estimate(estimate_lib.time_inverter_step(
        inverter, [direction_images(x, y, s, t, seeds[0], samples) for s, t in chunk],
        [t for _, t in chunk], [stable_seed(seeds[0], s, t) for s, t in chunk]))
  start = time.time()
  for si, seed in enumerate(seeds):
    for g in range(0, len(pairs), group):
      chunk = pairs[g:g + group]
      images = [direction_images(x, y, s, t, seed, samples) for s, t in chunk]

      def progress(step, done, k, base=finished):
        if bar is not None:
          bar.update(base + done, values=[("step", step)], finalize=False)

      result = inverter.invert(images, [t for _, t in chunk],
                               [stable_seed(seed, s, t) for s, t in chunk], progress=progress)
      for k, (s, t) in enumerate(chunk):
        per_seed[si, s, t] = result.size[k]
        steps_run[si, s, t] = result.steps_run[k]
      finished += len(chunk)
      if bar is not None:
        bar.update(finished, finalize=finished == total)
  with np.errstate(all="ignore"):
    matrix = np.fmin.reduce(per_seed, axis=0)  # fmin ignores NaN (failed seeds).
  counts = {c: int(min(samples, np.sum(y == c))) for c in range(num_classes)}
  return DistanceResult(
      matrix=matrix, per_seed=per_seed, seeds=tuple(int(s) for s in seeds), pairs=pairs,
      steps_run=steps_run, wall_seconds=time.time() - start, split=split_name,
      samples_per_class=counts,
      settings=dict(dataclasses.asdict(settings), samples=samples,
                    batch_directions=batch_directions))


def enlargement(base: np.ndarray, new: np.ndarray) -> dict:
  """How much larger the class distances of `new` are than those of `base`.

  Returns:
    A dict with `mean_relative_change` (mean over pairs of (new - base) / base: the authors'
    number), `ratio_of_means` (mean(new) / mean(base) - 1), `per_pair` (the [n,n] matrix of
    relative changes, NaN where either side failed or was not measured) and `pairs_compared`.
  """
  base = np.asarray(base, np.float64)
  new = np.asarray(new, np.float64)
  if base.shape != new.shape:
    raise ValueError(f"distance matrices differ in shape: {base.shape} vs {new.shape}")
  ok = np.isfinite(base) & np.isfinite(new) & (base > 0)
  per_pair = np.full(base.shape, np.nan)
  per_pair[ok] = (new[ok] - base[ok]) / base[ok]
  if not ok.any():
    return {"mean_relative_change": float("nan"), "ratio_of_means": float("nan"),
            "per_pair": per_pair, "pairs_compared": 0}
  return {
      "mean_relative_change": float(np.mean(per_pair[ok])),
      "ratio_of_means": float(np.mean(new[ok]) / np.mean(base[ok]) - 1.0),
      "per_pair": per_pair,
      "pairs_compared": int(ok.sum()),
  }


def format_matrix(matrix: np.ndarray, fmt: str = "{:7.2f}") -> str:
  """The matrix as text, rows = source, "-" on the diagonal, "." where failed or not measured."""
  n = matrix.shape[0]
  width = len(fmt.format(0.0))
  lines = ["src\\tgt " + "".join(f"{t:>{width}}" for t in range(n))]
  for s in range(n):
    cells = []
    for t in range(n):
      if s == t:
        cells.append(f"{'-':>{width}}")
      elif np.isfinite(matrix[s, t]):
        cells.append(fmt.format(matrix[s, t]))
      else:
        cells.append(f"{'.':>{width}}")
    lines.append(f"{s:>7} " + "".join(cells))
  return "\n".join(lines)


def readable_heatmap_png(matrix: np.ndarray, class_names=None,
                         title: str = "class distance") -> bytes:
  """The labelled heat map (class names, values in the cells, colour bar; drawn by
  moth_tf.reporting.figures)."""
  from moth_tf.reporting import figures
  return figures.distance_heatmap_png(matrix, class_names, title)


def heatmap_png(matrix: np.ndarray, cell: int = 24) -> bytes:
  """A PNG heat map of the matrix (dark blue = small, yellow = large; grey diagonal, black = failed
  or not measured), one `cell`-pixel square per entry."""
  import tensorflow as tf
  return tf.io.encode_png(heatmap_image(matrix, cell)).numpy()


def heatmap_image(matrix: np.ndarray, cell: int = 24) -> np.ndarray:
  """The heat map as a uint8 [H, W, 3] array (see heatmap_png)."""
  m = np.asarray(matrix, np.float64)
  finite = np.isfinite(m)
  lo, hi = (m[finite].min(), m[finite].max()) if finite.any() else (0.0, 1.0)
  u = np.zeros_like(m)
  u[finite] = (m[finite] - lo) / (hi - lo) if hi > lo else 0.5
  # A three-stop blue -> teal -> yellow ramp (perceptually ordered, readable in grey-scale).
  stops = np.array([[68, 1, 84], [33, 145, 140], [253, 231, 37]], np.float64)
  pos = u * 2
  k = np.clip(np.floor(pos).astype(int), 0, 1)
  frac = (pos - k)[..., None]
  rgb = stops[k] * (1 - frac) + stops[k + 1] * frac
  rgb[~finite] = 0
  np.fill_diagonal(rgb[..., 0], 128)
  np.fill_diagonal(rgb[..., 1], 128)
  np.fill_diagonal(rgb[..., 2], 128)
  img = np.repeat(np.repeat(rgb, cell, axis=0), cell, axis=1)
  return img.astype(np.uint8)
