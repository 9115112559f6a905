"""The flags are derived from the config dataclasses and agree with them.

`tests/testdata/flag_configs.json` holds RunConfig.to_dict() of every flagfile in flags/ and of a
few command lines, as the hand-written flag mapping built them before the flags were derived from
the configs; parsing them now must give the same configurations.
"""

import ast
import dataclasses
import glob
import json
import os
import re

import pytest
from absl import flags

from cli_testing import define_flags_once
from cli_testing import parsed_config
from moth_tf.cli import main as main_lib
from moth_tf import data as data_lib
from moth_tf.cli import flags as cli_flags
from moth_tf import config as config_lib
from moth_tf import recipes
from moth_tf import settings

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
    name = settings.flag_name(cls, field)
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
    # absl puts an enum's choices in front of its help; a default it does not show follows it.
    assert metadata["help"] and metadata["help"] in flag.help, spec.name
    if "choices" in metadata:
      assert list(flag.parser.enum_values) == list(metadata["choices"]), spec.name
    kind, is_tuple = settings.field_type(spec.field)
    if kind in (int, float) and not is_tuple:
      # A range with an open end is checked by a validator that states it whole; absl's
      # inclusive bounds carry a closed one.
      open_range = {"above", "below"} & set(metadata)
      for bound, key in (("lower_bound", "lower"), ("upper_bound", "upper")):
        expected = None if open_range else metadata.get(key)
        assert getattr(flag.parser, bound) == expected, (spec.name, bound)


def test_preset_flags_left_unset_give_the_presets_values():
  config = parsed_config("--phase=harden", "--method=finetune")
  assert config.harden == dataclasses.replace(recipes.hardening_preset("default", "digits",
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
      name = settings.flat_name(field.type, f)
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


# --- Help texts tell the truth ---------------------------------------------------------------
#
# `--helpfull` ends every flag's help with its default: absl's own "(default: '0.9')" for a flag
# with a fixed default, and for one whose value comes from the preset, the data set's recipe or a
# None with a meaning, a generated "(default: RULE)" line. A RULE is clauses "SCOPE VALUE"
# after an optional first bare VALUE (the value wherever no clause applies); a SCOPE is a data set,
# a hardening method, "METHOD on DATA SET", "other" (the data sets not named) or
# "--preset=reference", and the most specific one applies: the preset, then method on data set,
# then data set, then method (the precedence of recipes.hardening_preset).

# Own data (tfds:NAME, folder:PATH): no recipe of its own; parsing it opens nothing.
_OTHER_DATA = "tfds:mnist"
_PRESETS = ("default", "reference")
# absl's own flags, and flags of the commands a message tells users to run.
_OTHER_COMMANDS_FLAGS = {
    "help", "helpfull", "helpshort", "helpxml", "flagfile", "undefok", "verbosity", "v",
    "logdir",  # tensorboard --logdir
    "reinstall",  # apt-get install --reinstall
    "source",  # python -m moth_tf.prepare --source
}


def _contexts():
  for preset in _PRESETS:
    for dataset in data_lib.DATASETS + (_OTHER_DATA,):
      for method in config_lib.hardening_methods():
        yield preset, dataset, method


_CONFIGS = {}


def _value(spec, context):
  """The value a flag's field takes when the flag is not given, in (preset, dataset, method)."""
  if context not in _CONFIGS:
    preset, dataset, method = context
    _CONFIGS[context] = parsed_config("--phase=harden", f"--preset={preset}",
                                      f"--dataset={dataset}", f"--method={method}")
  config = _CONFIGS[context]
  for name in spec.path:
    config = getattr(config, name)
  return getattr(config, spec.field.name)


def _shows(text, value, field):
  """Whether `text` (a default as a help text states it) is `value`, a value of `field`."""
  text = text.strip().strip("'").rstrip(".")
  if value is None:
    return text == field.metadata.get("none")
  if isinstance(value, bool):
    return text == str(value).lower()
  if isinstance(value, tuple):
    items = [item.strip() for item in text.split(",")]
    try:
      return len(items) == len(value) and all(float(a) == float(b)
                                              for a, b in zip(items, value))
    except ValueError:
      return items == [str(v) for v in value]
  if isinstance(value, (int, float)):
    try:
      return float(text) == float(value)
    except ValueError:
      return False
  return text == value


def _scope_words():
  return ("--preset=reference", "other") + data_lib.DATASETS + config_lib.methods()


def _parse_rule(rule):
  """A generated "(default: RULE)"'s clauses: {scope (str or (method, dataset)) or None: value}."""
  rule = re.sub(r"^(from )?the data set's( recipe)?: ", "", rule)
  words = "|".join(re.escape(w) for w in _scope_words())
  clauses = {}
  for part in re.split(rf"[;,] (?=(?:{words})\b)", rule):
    match = re.fullmatch(rf"({words})(?: on ({words}))? (.+)", part)
    if match is None:
      clauses[None] = part
    elif match.group(2):
      clauses[(match.group(1), match.group(2))] = match.group(3)
    else:
      clauses[match.group(1)] = match.group(3)
  return clauses


def _rule_value(clauses, context):
  preset, dataset, method = context
  for scope in (preset == "reference" and "--preset=reference", (method, dataset), dataset, method,
                "other", None):
    if scope and scope in clauses or scope is None and None in clauses:
      return clauses[scope]
  return None


_CLAIM = re.compile(r"(?:(\S+) )?\(default\b|\b[Dd]efault:? |\((-?\d+(?:\.\d+)?)\)")


def _hand_written_claims(text, field):
  """(claimed default, is a phrase) of each default a hand-written help text states: "default X",
  "default: X", "CHOICE (default", "(default)" of a bool, a bare "(NUMBER)"."""
  kind, _ = settings.field_type(field)
  choices = field.metadata.get("choices") or ()
  for match in _CLAIM.finditer(text):
    word, number = match.group(1), match.group(2)
    if number is not None:
      yield number, False
    elif match.group(0).endswith("(default"):
      if word and word.strip("(") in choices:
        yield word.strip("("), False
      elif kind is bool and text[match.end():].startswith(")"):
        yield "true", False
      else:  # "... (default: X" states X.
        rest = re.match(r":? ?([^;,:)]+)", text[match.end():])
        if rest and rest.group(1).strip():
          yield _claimed(rest.group(1))
    else:
      rest = re.match(r"([^\s(;,:)][^;,:)]*)", text[match.end():])
      if rest:
        yield _claimed(rest.group(1))


def _claimed(text):
  text = text.strip().rstrip(".")
  literal = re.fullmatch(r"-?\d+(?:\.\d+)?|true|false|[a-z_0-9]+", text)
  return text, literal is None


def _rendered_help(flag):
  """A flag's help as --helpfull prints it: the text, then absl's "(default: ...)" line."""
  return flag.help + (f"\n(default: {flag.default_as_str})" if flag.default_as_str else "")


def _main_flags():
  define_flags_once()
  return [flag for flag in FLAGS.get_key_flags_for_module(cli_flags)]


def test_help_shows_every_flags_default():
  missing = [f"--{flag.name}" for flag in _main_flags()
             if not re.search(r"\(default: .+\)$", _rendered_help(flag))]
  assert not missing, f"--helpfull shows no default for {', '.join(missing)}"


def test_stated_defaults_are_the_configs():
  define_flags_once()
  contexts = list(_contexts())
  wrong = []
  for spec in cli_flags.config_flags():
    flag, field = FLAGS[spec.name], spec.field
    values = {c: _value(spec, c) if spec.preset else field.default for c in contexts}
    defaults = [v for c, v in values.items() if c[0] == "default"]
    # What the hand-written text says.
    for text, phrase in _hand_written_claims(field.metadata.get("help", ""), field):
      if phrase:
        # A phrase names the rule ("the data set's recipe") or says what None means.
        ok = (all(v is None for v in defaults) or
              spec.preset and re.search(r"recipe|preset", text) is not None)
      else:
        ok = all(_shows(text, v, field) for v in defaults)
      if not ok:
        shown = sorted({repr(v) for v in defaults})
        wrong.append(f"--{spec.name}: help says default {text!r}; the config's: "
                     f"{', '.join(shown)}")
    # What the generated line says, in every context.
    generated = re.search(r"\n\(default: (.+)\)$", flag.help)
    if generated:
      clauses = _parse_rule(generated.group(1))
      bad = [c for c, v in values.items() if not _shows(_rule_value(clauses, c) or "", v, field)]
      if bad:
        wrong.append(f"--{spec.name}: (default: {generated.group(1)}) is wrong for "
                     f"{bad[0]}: the config has {values[bad[0]]!r}")
    elif flag.default_as_str:
      if not _shows(flag.default_as_str, field.default, field):
        wrong.append(f"--{spec.name}: absl shows default {flag.default_as_str}")
  assert not wrong, "\n".join(wrong)


def test_model_default_is_each_data_sets():
  define_flags_once()
  generated = re.search(r"\n\(default: (.+)\)$", FLAGS["model"].help)
  assert generated, FLAGS["model"].help
  clauses = _parse_rule(generated.group(1))
  for dataset in data_lib.DATASETS + (_OTHER_DATA,):
    expected = main_lib._default_model(dataset)  # pylint: disable=protected-access
    assert _rule_value(clauses, ("default", dataset, "moth")) == expected, dataset


_FLAG_MENTION = re.compile(r"(?<![\w-])--(?:no)?([a-z][a-z0-9_]*)")


def _mentioned_flags(text):
  """The flag names a text mentions as --NAME or --noNAME (the name is given both ways)."""
  for match in _FLAG_MENTION.finditer(text):
    yield match.group(0)[2:], match.group(1)


def test_help_texts_name_only_existing_flags():
  unknown = []
  for flag in _main_flags():
    for written, name in _mentioned_flags(_rendered_help(flag)):
      if written not in FLAGS and name not in FLAGS:
        unknown.append(f"--{flag.name}'s help names --{written}")
  assert not unknown, "\n".join(unknown)


def _string_constants(path):
  """(line, text) of every string constant of a module but its docstrings."""
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read())
  docstrings = set()
  for node in ast.walk(tree):
    body = getattr(node, "body", None)
    if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)):
      docstrings.add(id(body[0].value))
  for node in ast.walk(tree):
    if (isinstance(node, ast.Constant) and isinstance(node.value, str)
        and id(node) not in docstrings):
      yield node.lineno, node.value


def test_messages_name_only_existing_flags():
  """The main binary's messages (the strings of moth_tf but the other commands' modules:
  moth_tf.report's and moth_tf.prepare's) name only its flags, absl's, or the flags of another
  command they tell users to run."""
  define_flags_once()
  package = os.path.join(_REPO, "moth_tf")
  unknown = []
  for path in sorted(glob.glob(os.path.join(package, "**", "*.py"), recursive=True)):
    relative = os.path.relpath(path, package)
    if relative.startswith("reporting" + os.sep) or relative == os.path.join("data", "prepare.py"):
      continue
    for line, text in _string_constants(path):
      for written, name in _mentioned_flags(text):
        if (written not in FLAGS and name not in FLAGS
            and name not in _OTHER_COMMANDS_FLAGS):
          unknown.append(f"{os.path.relpath(path, _REPO)}:{line}: --{written}")
  assert not unknown, "\n".join(unknown)
