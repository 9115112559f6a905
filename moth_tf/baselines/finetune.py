"""`--method=finetune`: further training on clean data only, MOTH's optimiser and schedule.

The control of the comparison table: the same SGD, learning-rate ramp and decay, batches and budget
as MOTH, with nothing stamped or perturbed, so it shows how much of any method's change in
accuracy or class distance comes from training longer.
"""

from moth_tf import config as config_lib
from moth_tf.hardening import fitting
from moth_tf.hardening import model as model_lib


def describe(config: config_lib.HardenConfig, num_train: int, pgd_settings=None) -> str:
  del pgd_settings
  return f"clean fine-tuning: {fitting.describe_schedule(config, num_train)}"


def wrap(classifier, num_classes: int, config: config_lib.HardenConfig, samples=None,
         pgd_settings=None, **model_kwargs):
  """A HardeningModel that trains `classifier` on clean batches (nothing perturbed)."""
  del config, samples, pgd_settings
  return model_lib.HardeningModel(classifier, num_classes, **model_kwargs)


def harden(classifier_factory, splits, config: config_lib.HardenConfig, run_dir: str,
           strategy=None, verbose: int = 1, pgd_settings=None):
  """Fine-tunes a copy of the classifier on clean batches; returns (classifier, results)."""
  model, results = fitting.run_plain_method(
      lambda: wrap(classifier_factory(), splits.num_classes, config, pgd_settings=pgd_settings,
                   image_shape=splits.image_shape), splits, config, run_dir, strategy, verbose)
  return model.classifier, results
