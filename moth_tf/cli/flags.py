"""Every command-line flag of `python -m moth_tf.main`, derived from the config dataclasses.

A setting's name, type, default, bounds, choices and help are declared once, on its config field
(moth_tf.config.setting); `define_flags` turns each field into its absl flag and `config_values`
reads the parsed flags back into the same structure. Only the flags whose value is resolved rather
than copied into a field (the data set and its defaults, the preset, the seed list, ...) are
written out here.

`--helpfull` shows every flag's default. absl prints a fixed one itself. For a flag whose value,
left unset, comes from the preset or the data set's recipe (its absl default is None, meaning
"unset"), or is None with a meaning, the help ends with a "(default: ...)" line made here from the
configs, e.g. "(default: 3, moth 6, moth on fashion_mnist 9, --preset=reference 3)": a bare value
wherever no clause applies, then clauses "SCOPE VALUE" where SCOPE is a hardening method, a data
set, "METHOD on DATA SET", "other" (the data sets not named) or "--preset=reference"; the most
specific one applies (the precedence of moth_tf.recipes.hardening_preset).

Defined inside `define_flags()` (not at import time) so that importing library modules or tests never
registers flags; only `main.py` calls it and reads FLAGS.
"""

import collections
import dataclasses

from absl import flags

from moth_tf import config as config_lib

from moth_tf import recipes

from moth_tf import settings
from moth_tf import data as data_lib
from moth_tf.data import augment as augment_lib
from moth_tf import models
from moth_tf.data import own as own_data
from moth_tf.hardening import methods as hardening_methods


@dataclasses.dataclass(frozen=True)
class ConfigFlag:
  """One flag derived from a config field.

  Attributes:
    name: the flag's name.
    path: the sub-config fields leading from RunConfig to the field's config, e.g. ("harden",
      "nad") for --nad_epochs.
    owner: the config class that declares the field.
    field: the dataclasses.Field.
    preset: the flag defaults to None and an unset flag keeps the preset's (or recipe's) value.
  """
  name: str
  path: tuple
  owner: type
  field: dataclasses.Field
  preset: bool


def config_flags(cls=config_lib.RunConfig, path=()):
  """Every field of `cls` and its sub-configs with a derived flag (`cli=True`), in field order."""
  found = []
  for field in dataclasses.fields(cls):
    if dataclasses.is_dataclass(field.type):
      found += config_flags(field.type, path + (field.name,))
    elif field.metadata.get("cli", True) is True:
      found.append(ConfigFlag(settings.flag_name(cls, field), path, cls, field,
                              cls.PRESET_FLAGS))
  return found


def _define(spec: ConfigFlag):
  """Defines the absl flag of one config field."""
  metadata, field = spec.field.metadata, spec.field
  kind, is_tuple = settings.field_type(field)
  default = None if spec.preset else field.default
  text = settings.range_text(metadata)
  # absl's bounds are inclusive; a range with an open end gets one validator that states the
  # whole range in one message instead.
  open_range = "above" in metadata or "below" in metadata
  bounds = {} if open_range or is_tuple else {
      key: metadata[name] for key, name in (("lower_bound", "lower"), ("upper_bound", "upper"))
      if name in metadata}
  help_text = metadata.get("help", "")
  if default is None:
    help_text = with_default(help_text, default_text(spec))
  if is_tuple:
    flags.DEFINE_list(spec.name, None if default is None else [str(v) for v in default],
                      help_text)
    if kind in (int, float):
      flags.register_validator(spec.name, _numbers_checker(spec.name, kind, metadata))
  elif kind is bool:
    flags.DEFINE_bool(spec.name, default, help_text)
  elif "choices" in metadata:
    flags.DEFINE_enum(spec.name, default, list(metadata["choices"]), help_text)
  elif kind is int:
    flags.DEFINE_integer(spec.name, default, help_text, **bounds)
  elif kind is float:
    flags.DEFINE_float(spec.name, default, help_text, **bounds)
  else:
    flags.DEFINE_string(spec.name, default, help_text)
  if open_range and not is_tuple:
    why = f" ({metadata['why']})" if "why" in metadata else ""
    flags.register_validator(
        spec.name, lambda v, m=metadata: v is None or settings.in_range(v, m),
        message=f"--{spec.name} must be {text}{why}")


def with_default(help_text: str, default: str) -> str:
  """A help text with its default on the next line, as absl prints a fixed default."""
  return f"{help_text}\n(default: {default})"


def value_text(value, field: dataclasses.Field) -> str:
  """A field's value as the help states it; None by the field's `none` meaning."""
  if value is None:
    if "none" not in field.metadata:
      raise ValueError(f"setting {field.name} can be None but does not say what None means "
                       "(moth_tf.config.setting's `none`)")
    return field.metadata["none"]
  if isinstance(value, bool):
    return str(value).lower()
  if isinstance(value, float):
    return f"{value:g}"
  if isinstance(value, tuple):
    return ", ".join(value_text(v, field) for v in value)
  return str(value)


def default_text(spec: ConfigFlag) -> str:
  """What `--helpfull` states as the default of a flag whose absl default is None: the field's
  None meaning, the data set's training recipe, or the hardening presets' rule (see the module
  docstring)."""
  if not spec.preset:
    return value_text(spec.field.default, spec.field)
  if spec.path == ("train",):
    return _recipe_rule(spec.field)
  return _preset_rule(spec)


def _recipe_rule(field):
  """"from the data set's recipe: cifar10 200, ..., other 30": the data sets whose recipe differs
  from own data's (tfds:, folder:), then that one."""
  other = getattr(recipes.OWN_DATA_TRAIN_RECIPE, field.name)
  differ = [f"{name} {value_text(getattr(recipe, field.name), field)}"
            for name, recipe in recipes.TRAIN_RECIPES.items()
            if getattr(recipe, field.name) != other]
  if not differ:
    return value_text(other, field)
  return "from the data set's recipe: " + ", ".join(differ + [f"other {value_text(other, field)}"])


# A data set without a hardening recipe of its own (own data).
_NO_RECIPE_DATA = "tfds:"


def _presets():
  """{(preset, dataset, method): HardenConfig} of every preset, data set and hardening method."""
  if not _PRESETS:
    for dataset in data_lib.DATASETS + (_NO_RECIPE_DATA,):
      for method in config_lib.hardening_methods():
        _PRESETS["default", dataset, method] = recipes.hardening_preset(
            "default", dataset, method)
    _PRESETS["reference"] = recipes.hardening_preset("reference", _NO_RECIPE_DATA)
  return _PRESETS


_PRESETS = {}


def _preset_rule(spec):
  """The rule of a hardening flag's default over the methods, data sets and presets."""
  def value(key):
    config = _presets()[key]
    for name in spec.path[1:]:  # The path starts at RunConfig.harden.
      config = getattr(config, name)
    return getattr(config, spec.field.name)

  methods = config_lib.hardening_methods()
  base = {m: value(("default", _NO_RECIPE_DATA, m)) for m in methods}
  common = collections.Counter(base.values()).most_common(1)[0][0]
  clauses = [(m, v) for m, v in base.items() if v != common]
  every = list(base.values())
  for dataset in data_lib.DATASETS:
    values = {m: value(("default", dataset, m)) for m in methods}
    every += values.values()
    if values == base:
      continue
    shared = set(values.values())
    expected = base
    if len(shared) == 1:
      clauses.append((dataset, values[methods[0]]))
      expected = dict.fromkeys(methods, values[methods[0]])
    clauses += [(f"{m} on {dataset}", v) for m, v in values.items() if v != expected[m]]
  reference = value("reference")
  if any(v != reference for v in every):
    clauses.append(("--preset=reference", reference))
  texts = [value_text(common, spec.field)] + [f"{scope} {value_text(v, spec.field)}"
                                               for scope, v in clauses]
  return ("; " if any(", " in t for t in texts) else ", ").join(texts)


def _parse_numbers(items, kind, metadata):
  """A list flag's items as a tuple of numbers within the field's bounds, or None."""
  try:
    values = tuple(kind(item) for item in items)
  except ValueError:
    return None
  return values if all(settings.in_range(v, metadata) for v in values) else None


def _numbers_checker(name, kind, metadata):
  text = settings.range_text(metadata)

  def check(items):
    if items is not None and _parse_numbers(items, kind, metadata) is None:
      raise flags.ValidationError(f"--{name}={','.join(items)}: give comma-separated numbers"
                                  + (f" {text}" if text else ""))
    return True
  return check


def define_flags():
  """Defines the flags of the main binary. Safe to call once per process."""
  for spec in config_flags():
    _define(spec)

  # The flags whose value is resolved, not copied into a config field.
  # A string checked in one line rather than an enum: besides the registered names it takes
  # users' own data, tfds:NAME and folder:PATH (moth_tf.data.own).
  flags.DEFINE_string(
      "dataset", "digits",
      f"<{'|'.join(data_lib.DATASETS)}|tfds:NAME|folder:PATH>: Data set. Your own data is "
      "streamed (never read into memory whole): tfds:NAME is any tensorflow_datasets "
      "image-classification set (train from its train split, test from test, validation from "
      "validation or else the first 4% of train, at most 5,000; downloaded as for cifar10); "
      "folder:PATH is a folder of class sub-folders of images (PATH/train/ and PATH/test/, plus "
      "PATH/val/ or 10% of train, when present; else a stratified, seeded 80/10/10 split by "
      "file), resized to --image_size or to the first image's size. Default model for both: "
      "small_cnn.")
  flags.register_validator("dataset", _check_dataset)
  flags.DEFINE_enum("model", None, list(models.MODELS),
                    with_default("Architecture.", _default_models()))
  # A string checked against the live registry, so that methods registered after the flags were
  # defined are accepted too.
  flags.DEFINE_string("method", None,
                      with_default(
                          f"<{'|'.join(config_lib.methods())}>: Which run to act on (test, "
                          "robustness, distance; natural is the base model) or which hardening "
                          "method to run (harden, pipeline): "
                          + "; ".join(f"{name}: {entry.summary}" for name, entry in
                                      hardening_methods.METHODS.items()) + ".",
                          "natural; --phase=harden or pipeline: moth"))
  flags.register_validator("method", _check_method)
  flags.DEFINE_enum("augment", "default", ["default"] + list(augment_lib.RECIPES),
                    "Training augmentation of every fit (base training, poisoning, hardening): "
                    "default (the data set's: cifar10 shift_flip 4 px, fashion_mnist crop_flip "
                    "2 px, the others none), none, flip, crop (zero padding + random crop), "
                    "crop_flip, shift (continuous, bilinear), shift_flip.")
  flags.DEFINE_integer("augment_pad", None,
                       with_default("Largest shift in pixels of the crop and shift recipes.",
                                    "the data set's, else an eighth of the image side"),
                       lower_bound=1)
  flags.DEFINE_integer("cpu_devices", None,
                       with_default("Split the CPU into this many logical devices (to run "
                                    "--strategy=mirrored without GPUs, for tests and demos).",
                                    "no split"), lower_bound=1)
  flags.DEFINE_integer("seeds", 3, "Number of seeds (the reference's values first); the "
                       "distance is the element-wise minimum over seeds.", lower_bound=1)
  flags.DEFINE_string("pair", None, with_default("Measure only the direction s-t, e.g. --pair=3-5.",
                                                "every direction"))
  flags.register_validator(
      "pair", lambda v: v is None or _parse_pair(v) is not None,
      message="--pair must look like s-t with two different class indices, e.g. --pair=3-5")
  flags.DEFINE_enum("preset", "default", ["default", "reference"],
                    "Hardening preset: ours (hardens; see benchmarks/hardening_benchmark.py) or the "
                    "authors' (2 epochs, 10% of min(#s,#t) stamped) for comparison.")
  flags.DEFINE_string("base_run", None,
                      with_default(
                          "The base model's run: natural (made by --phase=train) or a poisoned "
                          "run made by --phase=poison. Phases act on "
                          "{dataset}_{model}_{base_run} and write what --method makes of it to "
                          "{dataset}_{model}_{base_run}_{method}.",
                          "natural; --phase=poison: poisoned"))


def _default_models():
  """"the data set's: digits lenet, ..., other small_cnn": each data set's default model."""
  other = own_data.DEFAULT_MODEL
  differ = [f"{name} {data_lib.dataset_info(name).default_model}" for name in data_lib.DATASETS
            if data_lib.dataset_info(name).default_model != other]
  return "the data set's: " + ", ".join(differ + [f"other {other}"])


def _check_dataset(name):
  if name is None or name in data_lib.DATASETS:
    return True
  if not data_lib.is_own(name):
    # Worded as absl words an enum's error (the other name flags' errors).
    raise flags.ValidationError(
        f"value should be one of <{'|'.join(data_lib.DATASETS)}|tfds:NAME|folder:PATH>")
  error = data_lib.check_dataset_name(name)
  if error:
    raise flags.ValidationError(error)
  return True


def _check_method(name):
  valid = config_lib.methods()
  if name is not None and name not in valid:
    raise flags.ValidationError(f"value should be one of <{'|'.join(valid)}>")
  return True


def config_values(flag_values) -> dict:
  """The derived flags' values, nested as the configs are: {"phase": ..., "harden": {"steps": ...,
  "moth": {"portion": ...}}, ...}. A preset config's flag that was not given is left out, so that
  the preset's (or recipe's) value stays; list flags become tuples."""
  values = {}
  for spec in config_flags():
    value = getattr(flag_values, spec.name)
    if value is None and spec.preset:
      continue
    kind, is_tuple = settings.field_type(spec.field)
    if is_tuple and value is not None:
      value = (_parse_numbers(value, kind, spec.field.metadata) if kind in (int, float)
               else tuple(value))
    target = values
    for name in spec.path:
      target = target.setdefault(name, {})
    target[spec.field.name] = value
  return values


def _parse_pair(text):
  parts = text.split("-")
  if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
    return None
  s, t = int(parts[0]), int(parts[1])
  return None if s == t else (s, t)


def parse_pair(text):
  """'3-5' -> (3, 5); None stays None."""
  return None if text is None else _parse_pair(text)
