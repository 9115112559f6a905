"""The registry of hardening methods: `--method=NAME` for `--phase=harden` and `--phase=pipeline`.

Every method is one module with the same two entry points:

* `harden(classifier_factory, splits, config, run_dir, strategy=None, verbose=1,
  pgd_settings=None) -> (hardened classifier, results dict)`: trains a copy of the classifier
  (built by `classifier_factory` inside the strategy's scope) for the configured budget, writing
  TensorBoard logs under `run_dir/logs/` and a resumable backup; `results` has at least the keys of
  `moth_tf.hardening.fitting.common_results` (wall, generation and training seconds, steps, ...).
* `describe(config, num_train, pgd_settings) -> str`: the one line printed before the run starts.
* optional `check_model(classifier, config)`: raises a one-line ValueError when the method cannot
  work on this model (NAD without its attention layers), before the run writes anything.

`moth_tf.cli.phases` looks the method up here and does everything else (loading the base model,
accuracy before and after, saving, summary.json) the same way for all of them. Adding a method is
one module and one line below. Importing this registry does not import TensorFlow.
"""

import dataclasses
import importlib


@dataclasses.dataclass(frozen=True)
class HardeningMethod:
  """A registry entry: the method's module (imported on first use) and what it is."""
  name: str
  module: str
  summary: str


_ENTRIES = (
    HardeningMethod("moth", "moth_tf.hardening.moth",
                    "MOTH (Tao et al. 2022): K-arm-scheduled pair triggers stamped into batches"),
    HardeningMethod("finetune", "moth_tf.baselines.finetune",
                    "clean fine-tuning with MOTH's optimiser and schedule (the control)"),
    HardeningMethod("adv_train", "moth_tf.baselines.adv_train",
                    "PGD adversarial training (Madry et al. 2018)"),
    HardeningMethod("uap", "moth_tf.baselines.uap",
                    "universal adversarial training (Shafahi et al. 2020): one shared "
                    "L-inf perturbation"),
    HardeningMethod("universal", "moth_tf.baselines.universal",
                    "MOTH's universal triggers for the whole budget, one target per period"),
    HardeningMethod("pairwise", "moth_tf.baselines.pairwise",
                    "MOTH's pair triggers for every pair in turn, each until it stops growing"),
    HardeningMethod("nc", "moth_tf.baselines.nc",
                    "Neural Cleanse (Wang et al. 2019): reverse-engineer a trigger per label, "
                    "unlearn the flagged ones"),
    HardeningMethod("nad", "moth_tf.baselines.nad",
                    "Neural Attention Distillation (Li et al. 2021): a teacher fine-tuned on a "
                    "small clean subset, its attention maps distilled into the model"),
)

METHODS = {entry.name: entry for entry in _ENTRIES}


def get_method(name: str):
  """The module of hardening method `name` (see the module docstring for its entry points)."""
  if name not in METHODS:
    raise ValueError(f"unknown hardening method {name!r}; choose one of {', '.join(METHODS)}")
  return importlib.import_module(METHODS[name].module)
