"""The flags are derived from the config dataclasses and agree with them.

`tests/testdata/flag_configs.json` holds RunConfig.to_dict() of every flagfile in flags/ and of a
few command lines, as the hand-written flag mapping built them before the flags were derived from
the configs; parsing them now must give the same configurations.
"""

import dataclasses
import json
import os

import pytest
from absl import flags

from cli_testing import define_flags_once
from cli_testing import parsed_config
from moth_tf.cli import flags as cli_flags
from moth_tf import config as config_lib

FLAGS = flags.FLAGS
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_RECORDED = os.path.join(_REPO, "tests", "testdata", "flag_configs.json")


def _config_fields(cls=config_lib.RunConfig, path=()):
  """(path, class, field) of every setting of RunConfig and its sub-configs."""
  for field in dataclasses.fields(cls):
    if dataclasses.is_dataclass(field.type):
      yield from _config_fields(field.type, path + (field.name,))
    else:
      yield path, cls, field


def test_every_field_the_cli_sets_has_exactly_one_flag():
  define_flags_once()
  names = {}
  for path, cls, field in _config_fields():
    cli = field.metadata.get("cli", True)
    if cli is False:
      continue
    name = config_lib.flag_name(cls, field)
    assert name in FLAGS, f"{'.'.join(path + (field.name,))}: no flag --{name}"
    assert name not in names, f"--{name} sets both {names[name]} and {field.name}"
    names[name] = ".".join(path + (field.name,))
  # Each derived flag comes from exactly one field.
  derived = [spec.name for spec in cli_flags.config_flags()]
  assert len(derived) == len(set(derived))
  assert set(derived) <= set(names)


def test_derived_flags_take_the_fields_defaults_help_and_bounds():
  define_flags_once()
  for spec in cli_flags.config_flags():
    flag, metadata = FLAGS[spec.name], spec.field.metadata
    if spec.preset:  # Unset keeps the preset's or the data set's recipe's value.
      assert flag.default is None, spec.name
    elif isinstance(spec.field.default, tuple):
      assert tuple(float(v) for v in flag.default) == spec.field.default, spec.name
    else:
      assert flag.default == spec.field.default, spec.name
    # absl puts an enum's choices in front of its help.
    assert metadata["help"] and flag.help.endswith(metadata["help"]), spec.name
    if "choices" in metadata:
      assert list(flag.parser.enum_values) == list(metadata["choices"]), spec.name
    kind, is_tuple = config_lib.field_type(spec.field)
    if kind in (int, float) and not is_tuple:
      # A range with an open end is checked by a validator that states it whole; absl's
      # inclusive bounds carry a closed one.
      open_range = {"above", "below"} & set(metadata)
      for bound, key in (("lower_bound", "lower"), ("upper_bound", "upper")):
        expected = None if open_range else metadata.get(key)
        assert getattr(flag.parser, bound) == expected, (spec.name, bound)


def test_preset_flags_left_unset_give_the_presets_values():
  config = parsed_config("--phase=harden", "--method=finetune")
  assert config.harden == dataclasses.replace(config_lib.hardening_preset("default", "digits",
                                                                           "finetune"))
  defaults = parsed_config()
  assert defaults.distance == config_lib.DistanceConfig()
  assert defaults.poison == config_lib.PoisonConfig()


def _recorded():
  with open(_RECORDED) as f:
    return json.load(f)


@pytest.mark.parametrize("case", sorted(_recorded()["cases"]))
def test_flagfiles_and_command_lines_parse_as_before(case):
  recorded = _recorded()
  args = [arg.replace("--flagfile=flags/", f"--flagfile={_REPO}/flags/")
          for arg in recorded["cases"][case]]
  config = parsed_config(*args).to_dict()
  expected = recorded["configs"][case]
  # Recorded without a terminal: "auto" progress became "epoch".
  config["progress"] = expected["progress"]
  assert json.loads(json.dumps(config)) == expected


def test_every_flagfile_is_recorded():
  flagfiles = {name for name in os.listdir(os.path.join(_REPO, "flags"))
               if name.endswith(".flags")}
  assert flagfiles <= set(_recorded()["cases"])


@pytest.mark.parametrize("overrides, message", [
    ({"stepz": 3}, "unknown hardening setting 'stepz' (did you mean 'steps'?)"),
    ({"portoin": 0.2}, "unknown hardening setting 'portoin' (did you mean 'portion'?)"),
    ({"nad_epoch": 2}, "unknown hardening setting 'nad_epoch' (did you mean 'nad_epochs'?)"),
    ({"nad": {"epoch": 2}}, "unknown NAD setting 'epoch' (did you mean 'epochs'?)"),
    ({"nc": {"stepz": 2}}, "unknown Neural Cleanse setting 'stepz' (did you mean 'steps'?)"),
    ({"zzz": 1}, "unknown hardening setting 'zzz'; valid settings: epochs, steps"),
])
def test_an_unknown_key_names_the_nearest_valid_one(overrides, message):
  with pytest.raises(ValueError) as error:
    config_lib.replace(config_lib.HardenConfig(), overrides)
  assert str(error.value).startswith(message)


def test_flat_and_nested_keys_set_the_same_field():
  flat = config_lib.harden_config(portion=0.2, nad_epochs=3, adv_mix=0.5, nc={"steps": 7})
  nested = config_lib.harden_config(moth={"portion": 0.2}, nad={"epochs": 3},
                                    adv_train=config_lib.AdvTrainConfig(mix=0.5), nc_steps=7)
  assert flat == nested
  assert (flat.moth.portion, flat.nad.epochs, flat.adv_train.mix, flat.nc.steps) == (0.2, 3, 0.5, 7)
  # The flat record round-trips.
  record = config_lib.flat_dict(flat)
  assert config_lib.replace(config_lib.HardenConfig(), record) == flat


def test_flat_names_do_not_collide():
  seen = {}
  for field in dataclasses.fields(config_lib.HardenConfig):
    inner = (dataclasses.fields(field.type) if dataclasses.is_dataclass(field.type) else [])
    for f in inner:
      name = config_lib.flat_name(field.type, f)
      assert name not in seen, (name, seen.get(name))
      seen[name] = field.name
  assert not set(seen) & {f.name for f in dataclasses.fields(config_lib.HardenConfig)}


def test_bounds_and_choices_come_from_the_fields():
  with pytest.raises(ValueError, match=r"^nad_power must be > 0 \(the exponent"):
    config_lib.NadConfig(power=0.0)
  with pytest.raises(ValueError, match="^lr_decay must be one of constant, cosine, got 'step'"):
    config_lib.HardenConfig(lr_decay="step")
  with pytest.raises(ValueError, match=r"^poison_rate must be in \(0, 1\), got 1"):
    config_lib.PoisonConfig(rate=1.0)
  with pytest.raises(ValueError, match=r"^poison_colour must be in \[0, 1\], got \[2.0\]"):
    config_lib.PoisonConfig(colour=(2.0,))
