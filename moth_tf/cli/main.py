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
  """Builds the frozen run configuration from parsed flags (recipe defaults filled in)."""
  from moth_tf import data as data_lib
  from moth_tf import training
  from moth_tf.hardening import runner

  dataset = flag_values.dataset
  recipe = training.RECIPES[dataset]
  train = config_lib.TrainConfig(
      epochs=flag_values.epochs or recipe.epochs,
      batch_size=flag_values.batch_size or recipe.batch_size,
      optimizer=flag_values.optimizer or recipe.optimizer,
      learning_rate=flag_values.learning_rate or recipe.learning_rate,
      momentum=recipe.momentum,
      schedule=recipe.schedule)
  seeds = config_lib.REFERENCE_SEEDS + tuple(range(1, flag_values.seeds + 1))
  distance = config_lib.DistanceConfig(
      samples=flag_values.distance_samples,
      steps=flag_values.distance_steps,
      seeds=seeds[:flag_values.seeds],
      asr_bound=flag_values.asr_bound,
      pair=cli_flags.parse_pair(flag_values.pair),
      early_stop_patience=flag_values.early_stop_patience,
      batch_directions=flag_values.batch_directions,
      direction_blocks=flag_values.direction_blocks,
      compare_to=flag_values.compare_to)
  overrides = {field: getattr(flag_values, flag) for field, flag in (
      ("mode", "mode"), ("epochs", "harden_epochs"), ("steps", "harden_steps"),
      ("batch_size", "harden_batch_size"),
      ("learning_rate", "harden_learning_rate"), ("portion", "portion"),
      ("warm_ratio", "warm_ratio"), ("replay", "replay"), ("trigger_samples", "trigger_samples"),
      ("warmup_steps", "warmup_steps"), ("warmup_samples", "warmup_samples"),
      ("pair_steps", "pair_steps"), ("fast_steps", "fast_steps"),
      ("fast_cost", "fast_cost"),
      ("families", "trigger_families"), ("generations_per_period", "generations_per_period"),
      ("warm_fast_start", "warm_fast_start"), ("fast_first_visit", "fast_first_visit"),
      ("pairs_per_period", "pairs_per_period"), ("fixed_trigger_images", "fixed_trigger_images"),
      ("rollback_steps", "rollback_steps"), ("period", "period"),
      ("generation_early_stop", "generation_early_stop"),
      ("lr_warmup_steps", "lr_warmup_steps"),
      ("lr_decay", "lr_decay"), ("batchnorm", "batchnorm"), ("adv_mix", "adv_mix"), ("uap_epsilon", "uap_epsilon"),
      ("uap_step_size", "uap_step_size"), ("pairwise_tol", "pairwise_tol"),
      ("pairwise_patience", "pairwise_patience"),
      ("pairwise_max_periods", "pairwise_max_periods"),
      # Ablations.
      ("generation", "generation"), ("schedule", "schedule"), ("epsilon", "schedule_epsilon"),
      ("alpha_steps", "alpha_steps"), ("trigger_reuse", "trigger_reuse"))
               if getattr(flag_values, flag) is not None}
  nc_overrides = {field: getattr(flag_values, f"nc_{field}") for field in (
      "steps", "samples", "asr_bound", "threshold", "unlearn_all", "stamp_share")
                  if getattr(flag_values, f"nc_{field}") is not None}
  overrides["nc"] = nc_overrides
  # nad: the layer and weight lists become tuples (the config is frozen and hashable).
  overrides.update({field: getattr(flag_values, flag) for field, flag in (
      ("nad_clean_share", "nad_clean_share"), ("nad_teacher_epochs", "nad_teacher_epochs"),
      ("nad_epochs", "nad_epochs"), ("nad_power", "nad_power"))
                    if getattr(flag_values, flag) is not None})
  if flag_values.nad_layers is not None:
    overrides["nad_layers"] = tuple(flag_values.nad_layers)
  if flag_values.nad_betas is not None:
    overrides["nad_betas"] = cli_flags.parse_betas(flag_values.nad_betas)
  # The preset with the flags that were given on top, as moth_tf.harden builds it from a dict. A
  # measuring phase on a method's run (--phase=distance --method=moth) records that method's
  # settings too.
  harden = runner.hardening_config(flag_values.preset, dataset, flag_values.method or "moth",
                                   overrides, seed=flag_values.seed)
  try:
    colour = tuple(float(v) for v in flag_values.poison_colour)
  except ValueError:
    raise ValueError(f"--poison_colour={','.join(flag_values.poison_colour)}: give numbers in "
                     "[0, 1]") from None
  poison = config_lib.PoisonConfig(
      kind=flag_values.poison_kind, mode=flag_values.poison_mode,
      target=flag_values.poison_target, rate=flag_values.poison_rate,
      size=flag_values.poison_size, position=flag_values.poison_position, colour=colour,
      alpha=flag_values.poison_alpha, seed=flag_values.seed)
  return config_lib.RunConfig(
      phase=flag_values.phase,
      # Hardening phases default to MOTH; the others act on the base model unless told.
      method=flag_values.method or (
          "moth" if flag_values.phase in ("harden", "pipeline") else "natural"),
      model=flag_values.model or data_lib.dataset_info(dataset).default_model,
      workdir=flag_values.workdir,
      model_path=flag_values.model_path,
      unsafe_load=flag_values.unsafe_load,
      overwrite=flag_values.overwrite,
      strategy=flag_values.strategy,
      seed=flag_values.seed,
      # Decided here, where the output goes: the library takes the resolved setting.
      progress=config_lib.resolve_progress(flag_values.progress, _stdout_is_terminal()),
      data=data_config(dataset, flag_values),
      train=train,
      distance=distance,
      harden=harden,
      poison=poison,
      base_run=flag_values.base_run or (
          "poisoned" if flag_values.phase == "poison" else "natural"),
      trigger_path=flag_values.trigger_path)


def data_config(dataset: str, flag_values) -> config_lib.DataConfig:
  """The DataConfig of the flags, with the augmentation resolved to a concrete recipe (so that
  summary.json and the HParams record what ran, not "default")."""
  from moth_tf import data as data_lib
  from moth_tf.data import augment as augment_lib
  info = data_lib.dataset_info(dataset)
  augmentation = augment_lib.resolve(info.augment, flag_values.augment, flag_values.augment_pad,
                                     flag_values.image_size or info.image_shape[0])
  return config_lib.DataConfig(dataset=dataset, data_dir=flag_values.data_dir,
                               image_size=flag_values.image_size, augment=augmentation.recipe,
                               augment_pad=augmentation.pad, download=flag_values.download)


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
    from moth_tf.cli import phases  # Imported here so --help does not pay for importing TensorFlow.
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
  except phases.USER_ERRORS as e:
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
