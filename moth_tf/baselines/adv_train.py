"""`--method=adv_train`: PGD adversarial training (Madry et al., ICLR 2018).

Each training step replaces `adv_mix` (default all) of the batch's images by their untargeted
L-inf PGD examples against the current model (random start, the data set's training budget:
`DatasetInfo.train_pgd`, the reference's section 2.1 values; digits and Fashion-MNIST use 0.1, 8
steps of 0.02), labels kept. The attack is an in-graph `tf.while_loop` inside `train_step`, so it
runs per replica under MirroredStrategy like MOTH's stamping.
"""

import keras
import tensorflow as tf

from moth_tf import config as config_lib
from moth_tf.attacks import pgd
from moth_tf.hardening import fitting
from moth_tf.hardening import model as model_lib


@keras.saving.register_keras_serializable(package="moth_tf")
class AdversarialTrainingModel(model_lib.HardeningModel):
  """Trains its classifier on PGD examples of (a share of) every batch.

  Args:
    classifier: the logits model (trained in place: pass a copy).
    num_classes: n.
    pgd_settings: (epsilon, steps, step_size) of the training attack.
    mix: share of each (per-replica) batch replaced by PGD examples, in (0, 1].
  """

  def __init__(self, classifier, num_classes, pgd_settings=(0.03, 8, 0.005), mix=1.0, **kwargs):
    kwargs.pop("tracker_name", None)
    super().__init__(classifier, num_classes, tracker_name="adversarial", **kwargs)
    self.pgd_settings = tuple(float(v) for v in pgd_settings)
    self.mix = float(mix)

  def perturb_batch(self, x, y, seed):
    eps, steps, step_size = self.pgd_settings
    x_adv = pgd.pgd_attack(self.classifier, x, y, eps, int(steps), step_size, random_start=True,
                           seed=seed + 11, training=False)
    everyone = tf.ones([tf.shape(x)[0]], tf.bool)
    if self.mix >= 1.0:
      return x_adv, everyone
    chosen = model_lib.select_fraction(everyone, self.mix, seed + 1)
    return tf.where(chosen[:, None, None, None], x_adv, x), chosen

  def get_config(self):
    config = super().get_config()
    config.update(pgd_settings=self.pgd_settings, mix=self.mix)
    return config


def describe(config: config_lib.HardenConfig, num_train: int, pgd_settings) -> str:
  eps, steps, step_size = pgd_settings
  mix = config.adv_train.mix
  share = "every image" if mix >= 1 else f"{mix:.0%} of each batch"
  return (f"PGD adversarial training ({share} replaced by its L-inf PGD example: eps {eps:g}, "
          f"{steps} steps of {step_size:g}): {fitting.describe_schedule(config, num_train)}")


def wrap(classifier, num_classes: int, config: config_lib.HardenConfig, samples=None,
         pgd_settings=(0.03, 8, 0.005), **model_kwargs):
  """An AdversarialTrainingModel around `classifier` (pgd_settings: the training attack)."""
  del samples
  return AdversarialTrainingModel(classifier, num_classes, tuple(pgd_settings),
                                  config.adv_train.mix, **model_kwargs)


def harden(classifier_factory, splits, config: config_lib.HardenConfig, run_dir: str,
           strategy=None, verbose: int = 1, pgd_settings=None):
  """Adversarially trains a copy of the classifier; returns (classifier, results)."""
  # DatasetInfo.train_pgd is a PGDSettings dataclass, which tuple() cannot unpack: spell it out
  # (harden() without pgd_settings used to raise TypeError; the CLI always passes a tuple).
  p = splits.info.train_pgd
  settings = tuple(pgd_settings or (p.epsilon, p.steps, p.step_size))
  model, results = fitting.run_plain_method(
      lambda: wrap(classifier_factory(), splits.num_classes, config, pgd_settings=settings,
                   image_shape=splits.image_shape),
      splits, config, run_dir, strategy, verbose,
      pgd={"epsilon": settings[0], "steps": int(settings[1]), "step_size": settings[2],
           "mix": config.adv_train.mix})
  return model.classifier, results
