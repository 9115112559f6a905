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
one module and one line: an entry below, or, from outside the package, a call of
`register_method(name, module, summary)` before the run (`--method=name` then accepts it).
Importing this registry does not import TensorFlow.
"""

import dataclasses
import importlib
import re
import types
from typing import Union


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


def register_method(name: str, module: Union[str, types.ModuleType], summary: str):
  """Registers a hardening method (a module with `harden` and `describe`, see above).

  Args:
    name: its `--method` name: lower-case letters, digits and _.
    module: the module, or its dotted import path (imported on first use).
    summary: one line for `--help`.

  Returns:
    The registry entry.

  Raises:
    ValueError: a bad or taken name, or a module without the entry points.
  """
  if not re.fullmatch(r"[a-z][a-z0-9_]*", name) or name == "natural":
    raise ValueError(f"method name {name!r}: use lower-case letters, digits and _ (not natural)")
  if name in METHODS:
    raise ValueError(f"hardening method {name!r} is registered already")
  if isinstance(module, types.ModuleType):
    missing = [f for f in ("harden", "describe") if not callable(getattr(module, f, None))]
    if missing:
      raise ValueError(f"module {module.__name__} has no {' or '.join(missing)}; a hardening "
                       "method needs harden(...) and describe(...)")
    module = module.__name__
  entry = HardeningMethod(name, module, summary)
  METHODS[name] = entry
  return entry


def unregister_method(name: str):
  """Removes a method added by `register_method` (the built-in ones stay)."""
  if any(entry.name == name for entry in _ENTRIES):
    raise ValueError(f"{name!r} is a built-in hardening method")
  METHODS.pop(name, None)


def get_method(name: str):
  """The module of hardening method `name` (see the module docstring for its entry points)."""
  if name not in METHODS:
    raise ValueError(f"unknown hardening method {name!r}; choose one of {', '.join(METHODS)}")
  return importlib.import_module(METHODS[name].module)
