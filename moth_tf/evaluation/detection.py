"""Backdoor detection: Neural Cleanse (Wang et al., IEEE S&P 2019) and its class-distance variant.

Neural Cleanse reverse-engineers, for every label t, the smallest trigger (mask L1) that sends images
of the other classes to t. A label with a backdoor needs a much smaller trigger than the others, so
the norms are tested for outliers with the median absolute deviation (MAD):

    anomaly index(t) = |norm(t) - median| / (1.4826 * MAD),   MAD = median(|norm - median|)

(1.4826 makes the MAD a consistent estimator of the standard deviation under normality); labels on
the small side with an index above 2 are flagged. All labels are optimised together in one call of
the batched inversion engine (moth_tf.triggers.engine): label t is one direction whose images are up
to `samples` images of each other class, with NC's ASR bound of 0.99.

MOTH's class-distance matrix gives a second detector for free: a backdoor target is close to every
class, so its column of the matrix (the distances from each class to it) has an outlying small mean.
`distance_detection` applies the same MAD test to the column means.
"""

import dataclasses
import time
from typing import List

import numpy as np

# Makes the MAD a consistent estimator of the standard deviation for normal data.
MAD_CONSISTENCY = 1.4826


def anomaly_index(values) -> np.ndarray:
  """Signed MAD anomaly index: (median - v) / (1.4826 * MAD), positive on the small side.

  NaN values (labels whose trigger never reached the bound) are left out of the median and MAD and
  get a NaN index. When the MAD is 0, values equal to the median get 0 and the others +-inf.
  """
  values = np.asarray(values, np.float64)
  finite = np.isfinite(values)
  out = np.full(values.shape, np.nan)
  if not finite.any():
    return out
  median = np.median(values[finite])
  mad = np.median(np.abs(values[finite] - median))
  deviation = median - values[finite]
  with np.errstate(divide="ignore", invalid="ignore"):
    scaled = np.where(deviation == 0, 0.0, deviation / (MAD_CONSISTENCY * mad))
  out[finite] = scaled
  return out


def flag_small_outliers(values, threshold: float = 2.0) -> List[int]:
  """Indices whose value is on the small side with an anomaly index above `threshold`."""
  index = anomaly_index(values)
  return [int(i) for i in np.flatnonzero(np.nan_to_num(index, nan=-np.inf) > threshold)]


@dataclasses.dataclass
class DetectionResult:
  """Neural Cleanse's outcome for one model.

  Attributes:
    l1_norms: [n] L1 norm of each label's reversed mask (NaN where the ASR bound was never reached).
    anomaly_index: [n] signed anomaly index (positive: smaller than the median).
    flagged: labels flagged as backdoor targets.
    masks, patterns: [n, H, W] and [n, H, W, C] reversed triggers (zeros where failed).
    success, steps_run: per label.
    images_per_label: how many images each label's trigger was optimised on.
    wall_seconds, settings: cost and configuration.
  """
  l1_norms: np.ndarray
  anomaly_index: np.ndarray
  flagged: List[int]
  masks: np.ndarray
  patterns: np.ndarray
  success: np.ndarray
  steps_run: np.ndarray
  images_per_label: List[int]
  wall_seconds: float
  settings: dict

  def to_json(self) -> dict:
    return {
        "method": "neural_cleanse",
        "l1_norms": self.l1_norms.tolist(),
        "anomaly_index": self.anomaly_index.tolist(),
        "flagged": list(self.flagged),
        "success": self.success.tolist(),
        "steps_run": self.steps_run.tolist(),
        "images_per_label": list(self.images_per_label),
        "median_l1": float(np.nanmedian(self.l1_norms)) if np.isfinite(self.l1_norms).any()
                     else None,
        "wall_seconds": self.wall_seconds,
        "settings": self.settings,
    }


def label_images(x: np.ndarray, y: np.ndarray, target: int, num_classes: int, samples: int,
                 seed: int) -> np.ndarray:
  """Up to `samples` seeded images of every class but `target`: the images label t's trigger flips."""
  from moth_tf.evaluation import distance
  parts = [distance.direction_images(x, y, s, target, seed, samples)
           for s in range(num_classes) if s != target]
  return np.concatenate([p for p in parts if len(p)])


def neural_cleanse(model, x: np.ndarray, y: np.ndarray, num_classes: int, config,
                   verbose: int = 1, strategy=None, jit_compile: bool = False) -> DetectionResult:
  """Reverse-engineers one trigger per label (all in one engine call) and flags outlier labels.

  Args:
    model: logits classifier on [0, 1] images (called in inference mode).
    x, y: held-out clean images to stamp.
    num_classes: n.
    config: moth_tf.config.NeuralCleanseConfig.
    verbose: 0/False: no progress; 1/True: a live progress bar over the labels; 2: one line
      when all labels are done.
    strategy: a tf.distribute strategy whose replicas share the labels (build the model under its
      scope); None: one device.
    jit_compile: compile the engine's step loop with XLA.
  """
  import keras  # Progress bar only.
  from moth_tf.evaluation import distance
  from moth_tf.triggers import distributed
  from moth_tf.triggers import engine

  settings = engine.InversionSettings(steps=config.steps, asr_bound=config.asr_bound,
                                      init_cost=config.init_cost,
                                      early_stop_patience=config.early_stop_patience,
                                      jit_compile=jit_compile)
  images = [label_images(x, y, t, num_classes, config.samples, config.seed)
            for t in range(num_classes)]
  bar = (keras.utils.Progbar(num_classes, unit_name="label", verbose=int(verbose)) if verbose
         else None)

  def progress(step, done, k):
    if bar is not None:
      bar.update(done, values=[("step", step)], finalize=False)

  start = time.time()
  result = distributed.make_inverter(model, settings, strategy).invert(
      images, list(range(num_classes)),
      [distance.stable_seed(config.seed, t, 7) for t in range(num_classes)], progress=progress)
  if bar is not None:
    bar.update(num_classes, finalize=True)
  # NC's norm is the plain L1 of the 2-D mask, whatever the channel count.
  norms = np.where(result.success, result.mask.sum(axis=(1, 2)), np.nan)
  return DetectionResult(
      l1_norms=norms, anomaly_index=anomaly_index(norms),
      flagged=flag_small_outliers(norms, config.threshold), masks=result.mask,
      patterns=result.pattern, success=result.success, steps_run=result.steps_run,
      images_per_label=[len(im) for im in images], wall_seconds=time.time() - start,
      settings=dataclasses.asdict(config))


def format_detection(found: DetectionResult, class_names=None) -> str:
  """Neural Cleanse's outcome as a table: every label's norm and anomaly index, and the flagged."""
  lines = [f"{'label':>14}  {'L1 norm':>8}  {'anomaly index':>13}"]
  for t, (norm, index) in enumerate(zip(found.l1_norms, found.anomaly_index)):
    name = f"{t} {class_names[t]}"[:14] if class_names and class_names[t] != str(t) else str(t)
    mark = "  <- flagged" if t in found.flagged else ""
    norm_text = f"{norm:8.2f}" if np.isfinite(norm) else "  failed"
    index_text = f"{index:13.2f}" if np.isfinite(index) else f"{'-':>13}"
    lines.append(f"{name:>14}  {norm_text}  {index_text}{mark}")
  flagged = ", ".join(str(t) for t in found.flagged) or "none"
  lines.append(f"Neural Cleanse flags: {flagged} (anomaly index > {found.settings['threshold']:g} "
               f"on the small side); {found.wall_seconds:.1f} s")
  return "\n".join(lines)


def distance_detection(matrix, threshold: float = 2.0) -> dict:
  """Backdoor-target detection from a class-distance matrix [n, n] (row source, column target).

  Each target's score is the mean distance from the other classes to it (its column, NaN-aware);
  targets whose mean is a small-side MAD outlier are flagged.
  """
  matrix = np.array(matrix, np.float64)
  np.fill_diagonal(matrix, np.nan)
  with np.errstate(all="ignore"):
    column_mean = np.nanmean(matrix, axis=0)
  return {"method": "class_distance_columns", "column_mean": column_mean.tolist(),
          "anomaly_index": anomaly_index(column_mean).tolist(),
          "flagged": flag_small_outliers(column_mean, threshold), "threshold": threshold}
