"""One hardening run, as `--phase=harden` and `moth_tf.harden` both make it.

The command line (moth_tf.cli) and the Python API (moth_tf.api) differ in where
the model, the data and the settings come from (a run directory and flags, or objects in memory);
what happens between them is here, once:

* `hardening_config`: the configuration of a method on a data set, a preset with overrides on top
  (the flags' values, or a dict in a notebook); an unknown setting is a one-line error.
* `plan`: the method looked up in the registry (moth_tf.hardening.methods), its own checks of the
  model, the PGD budget and BatchNorm rule it will use, and the line that says what it will do;
  `Plan.run` then hardens a copy of the model.

Importing this module does not import TensorFlow.
"""

import dataclasses
from typing import Any, Callable, Mapping, Optional, Union

from moth_tf import config as config_lib

from moth_tf import recipes
from moth_tf.hardening import methods as methods_lib


def neural_cleanse_config(
    overrides: Union[None, config_lib.NeuralCleanseConfig, Mapping[str, Any]] = None,
    base: Optional[config_lib.NeuralCleanseConfig] = None) -> config_lib.NeuralCleanseConfig:
  """A Neural Cleanse configuration: `overrides` itself, or `base` (default: the defaults) with
  the dict's settings.

  Raises:
    ValueError: a dict key that is no NeuralCleanseConfig field, or a value out of range.
  """
  if isinstance(overrides, config_lib.NeuralCleanseConfig):
    return overrides
  return config_lib.replace(base or config_lib.NeuralCleanseConfig(), overrides)


def hardening_config(preset: str, dataset: str, method: str,
                     overrides: Union[None, config_lib.HardenConfig, Mapping[str, Any]] = None,
                     seed: Optional[int] = None) -> config_lib.HardenConfig:
  """The configuration of one hardening run.

  Args:
    preset: "default" or "reference" (moth_tf.recipes.hardening_preset).
    dataset: the data set's registry name; any other name (e.g. "user") gets the method's recipe
      for every data set, `METHOD_RECIPES[(method, None)]`.
    method: the hardening method.
    overrides: a HardenConfig, used as it is (its own seed included), or a dict of settings to
      set on the preset (moth_tf.config.replace): HardenConfig fields, flat names of its
      sub-configs' fields (`portion`, `nad_epochs`), or a sub-config's name with a dict of its
      fields (`"nc": {"steps": 300}`).
    seed: the run's seed (HardenConfig.seed) when `overrides` is not a HardenConfig.

  Returns:
    The frozen HardenConfig.

  Raises:
    ValueError: an unknown setting (the message names the nearest valid one and lists them all)
      or a value out of range.
  """
  if isinstance(overrides, config_lib.HardenConfig):
    return overrides
  if overrides is not None and not isinstance(overrides, Mapping):
    raise ValueError("config must be a moth_tf.config.HardenConfig or a dict of its settings, got "
                     f"{type(overrides).__name__}")
  overrides = dict(overrides or {})
  if seed is not None:
    overrides.setdefault("seed", seed)
  return config_lib.replace(recipes.hardening_preset(preset, dataset, method), overrides)


@dataclasses.dataclass(frozen=True)
class Plan:
  """A hardening run about to start: the method, its configuration and what it will use.

  Attributes:
    name: the method's registry name.
    method: its module (entry points in moth_tf.hardening.methods).
    config: the HardenConfig.
    pgd_settings: (epsilon, steps, step_size) of the data set's training PGD (adversarial modes).
    batchnorm: the BatchNorm rule, or why there is none (the model has no BatchNorm layer).
  """
  name: str
  method: Any
  config: config_lib.HardenConfig
  pgd_settings: tuple
  batchnorm: str

  def describe(self, splits) -> str:
    """The one line said before the run: the method's schedule, augmentation and BatchNorm."""
    return (self.method.describe(self.config, splits.num_train, self.pgd_settings)
            + f"; augmentation: {splits.augmentation.describe()}; BatchNorm: {self.batchnorm}")

  def run(self, classifier_factory: Callable[[], Any], splits, run_dir: str, strategy,
          verbose: int = 1):
    """Hardens a copy of the classifier that `classifier_factory` builds (inside the strategy's
    scope); logs and the resumable backup go to `run_dir`. Returns (classifier, results dict)."""
    return self.method.harden(classifier_factory, splits, self.config, run_dir, strategy=strategy,
                              pgd_settings=self.pgd_settings, verbose=verbose)


def plan(method_name: str, base_model, splits, config: config_lib.HardenConfig) -> Plan:
  """Looks the method up and lets it check the model, before anything is written.

  Args:
    method_name: a name from moth_tf.hardening.methods.METHODS.
    base_model: the model to harden (only inspected).
    splits: moth_tf.data.DatasetSplits (its data set's training PGD budget is used).
    config: the HardenConfig.

  Raises:
    ValueError: an unknown method, or a model the method cannot work on (one line).
  """
  from moth_tf.hardening import model as hardening_model

  method = methods_lib.get_method(method_name)
  if hasattr(method, "check_model"):  # A method's own demands on the model (NAD's layers).
    method.check_model(base_model, config)
  batchnorm = (config.batchnorm if hardening_model.batchnorm_layers(base_model)
               else "none (the model has no BatchNorm layer)")
  p = splits.info.train_pgd
  return Plan(method_name, method, config, (p.epsilon, p.steps, p.step_size), batchnorm)
