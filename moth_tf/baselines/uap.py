"""`--method=uap`: universal adversarial training (Shafahi et al., AAAI 2020).

One L-inf bounded perturbation `delta` [H, W, C] is shared by every image. Each training step first
moves it by one signed-gradient ascent step on the batch's summed cross-entropy (computed on the
current model, in inference mode) and projects it back onto the ball; the model then trains on
clip(x + delta, 0, 1) for the whole batch, labels kept. The perturbation is a non-trainable variable
of the training model, so `BackupAndRestore` checkpoints it and a resumed run continues from it.

Under MirroredStrategy every replica computes its batch's gradient, the gradients are summed across
replicas and each replica applies the same step, so `delta` stays one tensor (the variable is
written from the first replica only).

Radius and step: `--uap_epsilon` / `--uap_step_size`, by default the data set's training PGD budget
(the radius and per-step size `adv_train` uses), so the two L-inf methods are compared at the same
radius.
"""

import keras
import tensorflow as tf

from moth_tf import config as config_lib
from moth_tf.hardening import fitting
from moth_tf.hardening import model as model_lib


@keras.saving.register_keras_serializable(package="moth_tf")
class UniversalPerturbationModel(model_lib.HardeningModel):
  """Trains its classifier on batches carrying one shared, adversarially updated perturbation.

  Args:
    classifier: the logits model (trained in place: pass a copy).
    num_classes: n.
    epsilon: L-inf radius of the perturbation.
    step_size: its signed-gradient ascent step per training step.
  """

  def __init__(self, classifier, num_classes, epsilon=0.03, step_size=0.005, **kwargs):
    kwargs.pop("tracker_name", None)
    super().__init__(classifier, num_classes, tracker_name="perturbed", **kwargs)
    self.epsilon = float(epsilon)
    self.step_size = float(step_size)
    # Every replica assigns the same value (its gradient is all-reduced first); keep the first.
    self.delta = self.add_weight(name="uap_delta", shape=self.image_shape, initializer="zeros",
                                 trainable=False, aggregation="only_first_replica")

  def perturb_batch(self, x, y, seed):
    del seed
    y = tf.cast(tf.reshape(y, [-1]), tf.int32)
    delta = tf.convert_to_tensor(self.delta)
    with tf.GradientTape() as tape:
      tape.watch(delta)
      logits = self.classifier(tf.clip_by_value(x + delta, 0.0, 1.0), training=False)
      loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(
          labels=y, logits=tf.cast(logits, tf.float32)))
    grad = tape.gradient(loss, delta)
    replica = tf.distribute.get_replica_context()
    if replica is not None and tf.distribute.has_strategy():
      grad = replica.all_reduce(tf.distribute.ReduceOp.SUM, grad)
    delta = tf.clip_by_value(delta + self.step_size * tf.sign(grad), -self.epsilon, self.epsilon)
    self.delta.assign(delta)
    return tf.clip_by_value(x + delta, 0.0, 1.0), tf.ones([tf.shape(x)[0]], tf.bool)

  def get_config(self):
    config = super().get_config()
    config.update(epsilon=self.epsilon, step_size=self.step_size)
    return config


def budget(config: config_lib.HardenConfig, pgd_settings):
  """(epsilon, step size) of the perturbation: the flags, else the training PGD's."""
  eps, _, step = pgd_settings
  return (config.uap.epsilon if config.uap.epsilon is not None else float(eps),
          config.uap.step_size if config.uap.step_size is not None else float(step))


def describe(config: config_lib.HardenConfig, num_train: int, pgd_settings) -> str:
  eps, step = budget(config, pgd_settings)
  return (f"universal adversarial training (one shared perturbation, L-inf eps {eps:g}, ascent "
          f"step {step:g} per batch): {fitting.describe_schedule(config, num_train)}")


def wrap(classifier, num_classes: int, config: config_lib.HardenConfig, samples=None,
         pgd_settings=(0.03, 8, 0.005), **model_kwargs):
  """A UniversalPerturbationModel around `classifier` (its budget: `budget`)."""
  del samples
  eps, step = budget(config, pgd_settings)
  return UniversalPerturbationModel(classifier, num_classes, eps, step, **model_kwargs)


def harden(classifier_factory, splits, config: config_lib.HardenConfig, run_dir: str,
           strategy=None, verbose: int = 1, pgd_settings=None):
  """UAP-trains a copy of the classifier; returns (classifier, results)."""
  # The data set's PGDSettings dataclass does not unpack as a tuple: spell it out (harden() without
  # pgd_settings used to raise TypeError; the CLI always passes a tuple).
  p = splits.info.train_pgd
  settings = pgd_settings or (p.epsilon, p.steps, p.step_size)
  eps, step = budget(config, settings)
  model, results = fitting.run_plain_method(
      lambda: wrap(classifier_factory(), splits.num_classes, config, pgd_settings=settings,
                   image_shape=splits.image_shape),
      splits, config, run_dir, strategy, verbose)
  delta = model.delta.numpy()
  results["uap"] = {"epsilon": eps, "step_size": step,
                    "final_linf": float(abs(delta).max()),
                    "final_mean_abs": float(abs(delta).mean())}
  return model.classifier, results
