"""Declaring and checking settings: the machinery of moth_tf.config's frozen configs.

Each setting is declared once, as a dataclass field made by `setting`: its name, type, default,
bounds, choices and help live in the field's metadata. The command line's flags are derived from
these fields (moth_tf.cli.flags: `flag_name`, `field_type`, `range_text`), a config checks its own
bounds and choices in `__post_init__` (`Checked`), and `replace` sets fields from a dict (the
Python API's `config={...}`, a JSON file) with a one-line error that names the nearest setting for
a key that is none. `flat_dict` is how summary.json records a config.
Importing this module does not import TensorFlow.
"""

import dataclasses
import difflib
import typing
from typing import Any, ClassVar, Mapping, Optional


def setting(default, help: str = "", *, flag: Optional[str] = None, choices=None, lower=None,
            upper=None, above=None, below=None, why: Optional[str] = None,
            none: Optional[str] = None, cli=True):
  """A config field with everything its flag and its checks need.

  Args:
    default: the field's default (for a preset config, the value when no preset sets it).
    help: the flag's help text, without the default: moth_tf.cli.flags adds that, from the field
      (and for a preset config from the presets and recipes).
    flag: the flag's name when it is not the flat name (class PREFIX + field name).
    choices: the allowed values (a tuple).
    lower, upper: inclusive bounds; `above`, `below`: exclusive ones. For a tuple of numbers they
      bound every item.
    why: what the setting is, added to a range error (e.g. "the share of ... images").
    none: what the value None stands for, shown as the flag's default (e.g. "every step"); needed
      by every field whose value can be None.
    cli: True: the flag is derived from this field; "custom": moth_tf.cli_flags defines the flag by
      hand (its value is resolved, not copied); False: no flag (a library-only setting).
  """
  metadata = dict(help=help, flag=flag, choices=choices, lower=lower, upper=upper, above=above,
                  below=below, why=why, none=none, cli=cli)
  return dataclasses.field(default=default,
                           metadata={k: v for k, v in metadata.items() if v is not None})


def range_text(metadata: Mapping[str, Any]) -> Optional[str]:
  """A field's bounds in words: "in (0, 1]", ">= 1", "> 0"; None without bounds."""
  low = metadata.get("lower", metadata.get("above"))
  high = metadata.get("upper", metadata.get("below"))
  if low is not None and high is not None:
    return (f"in {'(' if 'above' in metadata else '['}{low:g}, {high:g}"
            f"{')' if 'below' in metadata else ']'}")
  if low is not None:
    return f"{'>' if 'above' in metadata else '>='} {low:g}"
  if high is not None:
    return f"{'<' if 'below' in metadata else '<='} {high:g}"
  return None


def in_range(value, metadata: Mapping[str, Any]) -> bool:
  """Whether a number is within a field's bounds."""
  return not (("lower" in metadata and not value >= metadata["lower"]) or
              ("upper" in metadata and not value <= metadata["upper"]) or
              ("above" in metadata and not value > metadata["above"]) or
              ("below" in metadata and not value < metadata["below"]))


def flat_name(cls, field: dataclasses.Field) -> str:
  """A field's flat name: its class's PREFIX and its own name (nad_epochs, pairwise_tol)."""
  return getattr(cls, "PREFIX", "") + field.name


def flag_name(cls, field: dataclasses.Field) -> str:
  """The command-line flag of a field: its own `flag`, else its flat name."""
  return field.metadata.get("flag") or flat_name(cls, field)


def _check_fields(config):
  """Checks every field's choices and bounds (declared with `setting`); None is always allowed."""
  for field in dataclasses.fields(config):
    value, metadata = getattr(config, field.name), field.metadata
    if value is None:
      continue
    name = flat_name(type(config), field)
    choices = metadata.get("choices")
    if choices is not None and value not in choices:
      raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    text = range_text(metadata)
    if text is None:
      continue
    items = value if isinstance(value, tuple) else (value,)
    bad = [item for item in items if not in_range(item, metadata)]
    if bad:
      shown = list(value) if isinstance(value, tuple) else f"{value:g}"
      why = f" ({metadata['why']});" if "why" in metadata else ","
      raise ValueError(f"{name} must be {text}{why} got {shown}")


def check(condition: bool, message: str):
  if not condition:
    raise ValueError(message)


class Checked:
  """Mixin: `__post_init__` checks the declared bounds and choices, then the class's own rules."""

  PREFIX: ClassVar[str] = ""
  # True: the flags of this config default to None, and an unset flag keeps the value of the
  # preset (hardening) or the data set's recipe (base training).
  PRESET_FLAGS: ClassVar[bool] = False

  def __post_init__(self):
    _check_fields(self)
    self.check()

  def check(self):
    """Rules that involve more than one field (none by default)."""


def sub_configs(cls):
  """The fields of a config class that are configs themselves."""
  return [f for f in dataclasses.fields(cls) if dataclasses.is_dataclass(f.type)]


def _flat_keys(cls) -> dict:
  """Flat name -> (sub-config field name or None, field name) of every setting a dict may set."""
  keys = {}
  for field in dataclasses.fields(cls):
    keys[field.name] = (None, field.name)
    if dataclasses.is_dataclass(field.type):
      for inner in dataclasses.fields(field.type):
        if not dataclasses.is_dataclass(inner.type):
          keys.setdefault(flat_name(field.type, inner), (field.name, inner.name))
  return keys


def _as_value(value):
  # Lists become tuples: the configs are frozen, hashable and compared field by field.
  return tuple(value) if isinstance(value, list) else value


def replace(base, overrides: Optional[Mapping[str, Any]] = None, what: Optional[str] = None):
  """`base` (a frozen config) with the settings of `overrides`.

  A key is a field's name, or the flat name of a sub-config's field (`{"nad_epochs": 5}` is
  `{"nad": {"epochs": 5}}`); a sub-config's entry may be a dict of its own settings or a config.

  Raises:
    ValueError: a key that is no setting (naming it and the nearest valid one), or a value out of
      range.
  """
  what = what or getattr(type(base), "WHAT", type(base).__name__)
  if overrides is None:
    return base
  if not isinstance(overrides, Mapping):
    raise ValueError(f"the {what} config must be a {type(base).__name__} or a dict of its "
                     f"settings, got {type(overrides).__name__}")
  keys = _flat_keys(type(base))
  direct, nested = {}, {}
  for key, value in overrides.items():
    if key not in keys:
      near = difflib.get_close_matches(str(key), list(keys), n=1, cutoff=0.6)
      hint = f" (did you mean {near[0]!r}?)" if near else ""
      raise ValueError(f"unknown {what} setting {key!r}{hint}; valid settings: "
                       f"{', '.join(keys)}")
    outer, inner = keys[key]
    if outer is None:
      direct[inner] = value
    else:
      nested.setdefault(outer, {})[inner] = value
  values = {}
  for name, value in direct.items():
    current = getattr(base, name)
    if dataclasses.is_dataclass(current) and not dataclasses.is_dataclass(value):
      value = replace(current, value, getattr(type(current), "WHAT", name))
    values[name] = _as_value(value)
  for name, inner in nested.items():
    current = values.get(name, getattr(base, name))
    values[name] = replace(current, inner, getattr(type(current), "WHAT", name))
  return dataclasses.replace(base, **values)


def flat_dict(config) -> dict:
  """The config as a dict with each sub-config marked `flatten` laid out under its flat names (how
  run records store the hardening settings); the others stay nested."""
  out = {}
  for field in dataclasses.fields(config):
    value = getattr(config, field.name)
    if dataclasses.is_dataclass(value) and field.metadata.get("flatten"):
      out.update({flat_name(type(value), f): _plain(getattr(value, f.name))
                  for f in dataclasses.fields(value)})
    else:
      out[field.name] = _plain(value)
  return out


def _plain(value):
  if dataclasses.is_dataclass(value):
    return flat_dict(value)
  return value


def sub_config(cls, flatten: bool = True):
  """A field holding a sub-config (its defaults); `flatten`: stored under its flat names."""
  return dataclasses.field(default=cls(), metadata={"flatten": flatten})


def field_type(field: dataclasses.Field):
  """(base type, is a tuple of it) of a field's annotation, Optional taken off."""
  tp = field.type
  if typing.get_origin(tp) is typing.Union:
    tp = next(arg for arg in typing.get_args(tp) if arg is not type(None))
  if typing.get_origin(tp) is tuple:
    return typing.get_args(tp)[0], True
  return tp, False
