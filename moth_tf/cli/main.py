"""moth_tf command line: `python -m moth_tf.main --phase=... --dataset=...`.

Intentionally thin: flags -> a frozen RunConfig -> moth_tf.cli.phases. This is the only module that
reads FLAGS. Run with --helpfull for every flag, or --flagfile=flags/NAME.flags for a recorded
experiment.
"""

import os
import sys

# Keep TensorFlow's C++ start-up chatter (CUDA probing, CPU feature notes) out of the user's terminal.
# The log level silences what goes through TF's own logging; the filter, installed before anything
# imports TensorFlow, drops the lines that ignore it (see moth_tf.cli.stderr_filter).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if __name__ == "__main__":
  from moth_tf.cli import stderr_filter  # pylint: disable=g-import-not-at-top
  if stderr_filter.wanted(sys.argv, os.environ):
    stderr_filter.install()

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging

from moth_tf.cli import flags as cli_flags
from moth_tf import config as config_lib

FLAGS = flags.FLAGS


def config_from_flags(flag_values) -> config_lib.RunConfig:
  """Builds the frozen run configuration from parsed flags (recipe and preset values filled in)."""
  from moth_tf import training
  from moth_tf.hardening import runner

  dataset = flag_values.dataset
  values = cli_flags.config_values(flag_values)
  train = config_lib.replace(training.recipe(dataset), values.pop("train", {}))
  seeds = config_lib.REFERENCE_SEEDS + tuple(range(1, flag_values.seeds + 1))
  distance = config_lib.replace(
      config_lib.DistanceConfig(seeds=seeds[:flag_values.seeds],
                                pair=cli_flags.parse_pair(flag_values.pair)),
      values.pop("distance"))
  # The preset with the flags that were given on top, as moth_tf.harden builds it from a dict. A
  # measuring phase on a method's run (--phase=distance --method=moth) records that method's
  # settings too.
  harden = runner.hardening_config(flag_values.preset, dataset, flag_values.method or "moth",
                                   {**values.pop("harden", {}),
                                    "jit_compile": flag_values.jit_compile},
                                   seed=flag_values.seed)
  poison = config_lib.replace(config_lib.PoisonConfig(seed=flag_values.seed), values.pop("poison"))
  data = data_config(dataset, flag_values, values.pop("data"))
  return config_lib.RunConfig(
      **{**values,
         # Decided here, where the output goes: the library takes the resolved setting.
         "progress": config_lib.resolve_progress(flag_values.progress, _stdout_is_terminal())},
      # Hardening phases default to MOTH; the others act on the base model unless told.
      method=flag_values.method or (
          "moth" if flag_values.phase in ("harden", "pipeline") else "natural"),
      model=flag_values.model or _default_model(dataset),
      data=data,
      train=train,
      distance=distance,
      harden=harden,
      poison=poison,
      base_run=flag_values.base_run or (
          "poisoned" if flag_values.phase == "poison" else "natural"))


def _default_model(dataset: str) -> str:
  from moth_tf import data as data_lib
  from moth_tf.data import own
  # Own data's default is fixed: no need to open the tfds builder or the folder for it.
  return own.DEFAULT_MODEL if data_lib.is_own(dataset) else (
      data_lib.dataset_info(dataset).default_model)


def data_config(dataset: str, flag_values, values=None) -> config_lib.DataConfig:
  """The DataConfig of the flags, with the augmentation resolved to a concrete recipe (so that
  summary.json and the HParams record what ran, not "default")."""
  from moth_tf import data as data_lib
  from moth_tf.data import augment as augment_lib
  values = values if values is not None else {
      "data_dir": flag_values.data_dir, "image_size": flag_values.image_size,
      "download": flag_values.download}
  if data_lib.is_own(dataset):
    # Own data has no augmentation of its own. Only a shift whose size was not given needs the
    # image side (an eighth of it): then the tfds metadata or the folder's first image says it.
    augmentation = augment_lib.resolve(augment_lib.NONE, flag_values.augment,
                                       flag_values.augment_pad, values["image_size"] or 32)
    if augmentation.translates and flag_values.augment_pad is None and not values["image_size"]:
      side = data_lib.dataset_info(dataset, values["data_dir"]).image_shape[0]
      augmentation = augment_lib.resolve(augment_lib.NONE, flag_values.augment, None, side)
  else:
    info = data_lib.dataset_info(dataset)
    augmentation = augment_lib.resolve(info.augment, flag_values.augment, flag_values.augment_pad,
                                       values["image_size"] or info.image_shape[0])
  return config_lib.DataConfig(dataset=dataset, augment=augmentation.recipe,
                               augment_pad=augmentation.pad, **values)


def _stdout_is_terminal() -> bool:
  try:
    return sys.stdout.isatty()
  except (AttributeError, ValueError):  # Replaced by an object without isatty, or closed.
    return False


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # TF's INFO lines (SavedModel export) are noise here.
  try:
    if FLAGS.cpu_devices:
      from moth_tf import distribute
      distribute.split_cpu(FLAGS.cpu_devices)
    # Imported here so --help does not pay for importing TensorFlow.
    from moth_tf.cli import loading
    from moth_tf.cli import phases
  except ImportError as e:
    # moth_tf._compat's one line for a Keras that lacks the internals moth_tf patches: the fix is
    # an install command, so no traceback.
    if getattr(e, "keras_compat", False):
      print(f"moth_tf: error: {e}", file=sys.stderr)
      sys.exit(1)
    raise
  try:
    config = config_from_flags(FLAGS)
    if config.strategy == "multi_worker":
      # MultiWorkerMirroredStrategy configures the collectives at start-up: it must exist before
      # any other TensorFlow op (the phases get this same object from distribute.get_strategy).
      from moth_tf import distribute
      distribute.get_strategy("multi_worker")
    phases.run(config, command_line=list(argv[:1]) + _explicit_flags())
  except loading.USER_ERRORS as e:
    # Bad input is the user's to fix: one clear line, no stack trace.
    print(f"moth_tf: error: {e}", file=sys.stderr)
    sys.exit(1)


def _explicit_flags():
  """The flags the user set (command line or flagfile), as --name=value strings."""
  names = {name for name in FLAGS if FLAGS[name].present}
  return [f"--{name}={FLAGS[name].value}" for name in sorted(names)]


def parse_flags(argv):
  """Parses the command line for app.run; a flag with a bad value is one line and exit code 1.

  absl's own parser adds a second line (a pointer to --helpshort) that the message of a value
  error does not need: it already names the flag and the allowed values. Other flag errors (an
  unknown flag, say) keep absl's message.
  """
  try:
    return FLAGS(argv)
  except flags.IllegalFlagValueError as e:
    print(f"moth_tf: error: {e}", file=sys.stderr)
    sys.exit(1)
  except flags.Error:
    return app.parse_flags_with_usage(argv)


def run_main():
  cli_flags.define_flags()
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run_main()
