"""What a phase loads and checks before it works: the data set's splits, the run's model, and that
they fit each other; the command that makes a missing model; the errors that are the user's to fix.
"""

import dataclasses
import os
import shlex

from moth_tf import config as config_lib
from moth_tf import data as data_lib
from moth_tf import progress as progress_lib
from moth_tf import rundir
from moth_tf import training
from moth_tf.models import io as model_io
from moth_tf.models import precision as precision_lib


# Errors that are the user's input to fix: main prints them as one line and exits 1.
USER_ERRORS = (data_lib.DatasetUnavailableError, model_io.ModelLoadError, ValueError,
               FileNotFoundError, training.NonFiniteTrainingError)


def fit_verbosity(config: config_lib.RunConfig) -> int:
  """The Keras-style `verbose` of the library calls: 0 none, 1 live bar, 2 plain lines."""
  return progress_lib.keras_verbose(config.progress)


def load_splits(config: config_lib.RunConfig) -> data_lib.DatasetSplits:
  """The run's data set; a streamed one keeps config.harden.trigger_pool images per class."""
  return data_lib.load_dataset(config.data.dataset, config.data.data_dir, config.data.image_size,
                               augment=config.data.augment, augment_pad=config.data.augment_pad,
                               download=config.data.download,
                               trigger_pool=config.harden.trigger_pool)


def make_run_command(config: config_lib.RunConfig, phase: str) -> str:
  """The command line that runs `phase` into this configuration's run directories.

  It carries every flag that decides where the model lands or what it is built for (data set,
  model, workdir, data_dir, image_size, strategy), so that following a "make it first with ..."
  hint writes the very file that was looked for.
  """
  args = [f"--phase={phase}", f"--dataset={config.data.dataset}", f"--model={config.model}"]
  if phase == "harden" and config.method not in ("natural", "moth"):
    args.append(f"--method={config.method}")
  if config.base_run != "natural" and not (phase == "poison" and config.base_run == "poisoned"):
    args.append(f"--base_run={config.base_run}")
  if config.workdir != config_lib.DEFAULT_WORKDIR:
    args.append(f"--workdir={config.workdir}")
  if config.data.data_dir:
    args.append(f"--data_dir={config.data.data_dir}")
  if config.data.image_size:
    args.append(f"--image_size={config.data.image_size}")
  if config.strategy != "default":
    args.append(f"--strategy={config.strategy}")
  return " ".join(["python", "-m", "moth_tf.main"] + [shlex.quote(a) for a in args])


def load_run_model(config: config_lib.RunConfig, method=None):
  """The model a phase acts on: --model_path if given, else the run directory's model (model.keras,
  or saved_model/ for a run that hardened a SavedModel input), computing under --precision (a
  float32 model rebuilt under the policy: moth_tf.models.precision.with_precision)."""
  path = config.model_path or rundir.find_model(config.run_dir(method))
  if not config.model_path and not os.path.exists(path):
    method = method or config.method
    phase = "harden" if method != "natural" else (
        "train" if config.base_run == "natural" else "poison")
    config = dataclasses.replace(config, method=method)
    what = {"train": "trained", "poison": "poisoned", "harden": "hardened"}[phase]
    raise FileNotFoundError(
        f"no {what} model at {path}; make it first with "
        f"`{make_run_command(config, phase)}` or pass --model_path")
  return precision_lib.with_precision(model_io.load_model(path, unsafe_load=config.unsafe_load),
                                 config.precision), path


def check_model_fits(model, splits: data_lib.DatasetSplits, path: str):
  """Raises a clear ValueError when the model's input or output does not match the data set."""
  expected = tuple(splits.image_shape)
  got = tuple(model.input_shape[1:]) if hasattr(model, "input_shape") else None
  if got is not None and got != expected:
    raise ValueError(f"model {path} takes images of shape {got} but {splits.info.name} images are "
                     f"{expected}; pass --image_size or a matching --model_path")
  outputs = model.output_shape[-1] if hasattr(model, "output_shape") else None
  if outputs is not None and outputs != splits.num_classes:
    raise ValueError(f"model {path} has {outputs} outputs but {splits.info.name} has "
                     f"{splits.num_classes} classes")
