"""`--method=nc`: Neural Cleanse unlearning (Wang et al., IEEE S&P 2019).

First Neural Cleanse's detection (moth_tf.evaluation.detection: one reversed trigger per label, all
labels in one engine call, MAD outlier test) on held-out clean images of the model being defended;
then fine-tuning in which `nc.stamp_share` (default 20%, as the paper) of every batch carries the
reversed trigger of a flagged label (each stamped image one of them, at random), with its correct
label, so the model unlearns the shortcut. `--nc_unlearn_all` unlearns every label's trigger instead
of the flagged ones only. The optimiser, schedule and budget are the shared ones (`finetune`'s), so
the comparison with `finetune` isolates the unlearning.

When nothing is flagged (and not --nc_unlearn_all) there is nothing to unlearn: the run says so in
a WARNING line, records it in summary.json (`harden.nc.note`) and fine-tunes on clean batches.
"""

import keras
import numpy as np
import tensorflow as tf

from moth_tf import config as config_lib
from moth_tf import progress
from moth_tf.hardening import fitting
from moth_tf.hardening import model as model_lib


@keras.saving.register_keras_serializable(package="moth_tf")
class TriggerUnlearningModel(model_lib.HardeningModel):
  """Stamps one of K fixed triggers on `share` of each batch, labels kept.

  Args:
    classifier: the logits model (trained in place: pass a copy).
    num_classes: n.
    masks: [K, H, W] or [K, H, W, 1] trigger masks in [0, 1] (K >= 1).
    patterns: [K, H, W, C] patterns in [0, 1].
    share: share of each (per-replica) batch that is stamped.
  """

  def __init__(self, classifier, num_classes, masks, patterns, share=0.2, **kwargs):
    kwargs.pop("tracker_name", None)
    super().__init__(classifier, num_classes, tracker_name="unlearned", **kwargs)
    masks = np.asarray(masks, np.float32)
    if masks.ndim == 3:
      masks = masks[..., None]
    patterns = np.asarray(patterns, np.float32)
    self.share = float(share)
    self.num_triggers = int(masks.shape[0])
    self.masks = self.add_weight(name="unlearn_masks", shape=masks.shape, trainable=False,
                                 initializer=keras.initializers.Constant(masks))
    self.patterns = self.add_weight(name="unlearn_patterns", shape=patterns.shape,
                                    trainable=False,
                                    initializer=keras.initializers.Constant(patterns))

  def perturb_batch(self, x, y, seed):
    del y
    everyone = tf.ones([tf.shape(x)[0]], tf.bool)
    chosen = model_lib.select_fraction(everyone, self.share, seed)
    which = tf.random.stateless_uniform([tf.shape(x)[0]], seed + 3, 0, self.num_triggers,
                                        dtype=tf.int32)
    mask = tf.gather(self.masks, which)
    stamped = tf.clip_by_value((1.0 - mask) * x + mask * tf.gather(self.patterns, which), 0.0, 1.0)
    return tf.where(chosen[:, None, None, None], stamped, x), chosen

  def get_config(self):
    config = super().get_config()
    config.update(masks=self.masks.numpy().tolist(), patterns=self.patterns.numpy().tolist(),
                  share=self.share)
    return config


def describe(config: config_lib.HardenConfig, num_train: int, pgd_settings=None) -> str:
  del pgd_settings
  nc = config.nc
  which = "every label's" if nc.unlearn_all else "the flagged labels'"
  return (f"Neural Cleanse: one trigger per label ({nc.steps} steps, ASR {nc.asr_bound:g}, "
          f"{nc.samples} images per other class), MAD flag > {nc.threshold:g}; then "
          f"{which} reversed triggers on {nc.stamp_share:.0%} of each batch, true labels: "
          f"{fitting.describe_schedule(config, num_train)}")


def harden(classifier_factory, splits, config: config_lib.HardenConfig, run_dir: str,
           strategy=None, verbose: int = 1, pgd_settings=None):
  """Detects with Neural Cleanse, then unlearns the reversed triggers; returns (classifier, results).

  The detection (norms, anomaly indices, flagged and unlearned labels) goes into the results
  (summary.json's `harden.nc`). A resumed run detects again (deterministic: the same triggers) and
  continues the fine-tuning.
  """
  del pgd_settings
  from moth_tf.evaluation import detection
  from moth_tf.evaluation import distance

  nc = config.nc
  split, _ = distance.choose_split(splits, nc.samples)
  x, y = splits.split(split)
  if verbose:
    print(f"Neural Cleanse detection on the {split} split: {splits.num_classes} labels")
  found = detection.neural_cleanse(classifier_factory(), x, y, splits.num_classes, nc,
                                   verbose=verbose, jit_compile=config.jit_compile)
  # The detection is a result, printed like the other methods' result lines at any verbosity.
  print(detection.format_detection(found, splits.info.class_names))
  labels = list(range(splits.num_classes)) if nc.unlearn_all else list(found.flagged)
  labels = [t for t in labels if found.success[t]]  # A failed label has no trigger to unlearn.
  note = None
  if labels:
    masks, patterns = found.masks[labels], found.patterns[labels]
    make_model = lambda: TriggerUnlearningModel(classifier_factory(), splits.num_classes, masks,
                                                patterns, share=nc.stamp_share,
                                                image_shape=splits.image_shape)
  else:
    note = ("Neural Cleanse flagged no label, so there is no trigger to unlearn: this run only "
            "fine-tuned on clean batches (like --method=finetune); pass --nc_unlearn_all to "
            "unlearn every label's reversed trigger")
    progress.warn(note)
    make_model = lambda: model_lib.HardeningModel(classifier_factory(), splits.num_classes,
                                                  image_shape=splits.image_shape)
  model, results = fitting.run_plain_method(make_model, splits, config, run_dir, strategy, verbose)
  results["wall_seconds"] += found.wall_seconds
  results["generation_seconds"] = found.wall_seconds
  results["nc"] = {"flagged": found.flagged, "unlearned_labels": labels,
                   "l1_norms": found.l1_norms.tolist(),
                   "anomaly_index": found.anomaly_index.tolist(),
                   "detection_seconds": found.wall_seconds, "note": note}
  return model.classifier, results
