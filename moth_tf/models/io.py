"""Loading and saving classifiers: native `.keras` files and TF SavedModels.

A SavedModel is wrapped with `SavedModelLayer` (a `keras.layers.TFSMLayer`) into a `keras.Model`
that outputs logits; its variables stay trainable, so it can be fine-tuned and saved as a new model.
Whether `training=True` runs it in training mode (BatchNorm moving statistics updated, dropout on)
depends on what the export kept:

* Keras 3 `model.export(dir)`: `serve` only, so inference mode (BatchNorm statistics frozen,
  dropout off) also for training=True.
* Keras 3 `tf.saved_model.save(model, dir)`: `serving_default` only, so inference mode too.
* `keras.export.ExportArchive` with a `call_training` endpoint (as moth_tf's own `saved_model/`
  exports): `serve`, and `call_training` for training=True (statistics updated, dropout on).
* Keras 2 (tf.keras before TF 2.16, or tf_keras) `model.save(dir)` or `tf.saved_model.save(model,
  dir)`: `serving_default`, and for training=True the restored model's `__call__(x, training=True)`,
  which Keras 2 traced for both modes (statistics updated, dropout on).
* a `tf.Module` whose `__call__(x, training)` was traced for training=True (or with a boolean
  tensor `training`): `serving_default` (else `__call__(x, training=False)`), and
  `__call__(x, training=True)` for training=True: whatever the module does in training mode.
* a `tf.Module` with only `serving_default`, or a `__call__(x)` without `training`: inference mode.

A `call_training` endpoint (TRAINING_ENDPOINT) wins over `__call__`. Where neither runs in
training mode, `inference_mode_warning` says so before any step. Under a tf.distribute strategy the
model is loaded in the strategy's scope like any other (see `SavedModelLayer`). Input models are
never written to: every save goes to a new path, atomically.
"""

import os
import re
import shutil
import tempfile
import zipfile
import zlib
from typing import NamedTuple, Optional

import keras
import tensorflow as tf

from moth_tf import _compat
from moth_tf import rundir


# The endpoint that runs a SavedModel in training mode: the name Keras' TFSMLayer documents, and the
# one moth_tf's own exports carry (export_savedmodel).
TRAINING_ENDPOINT = "call_training"

# A restored object's own `__call__`, which Keras 2 SavedModels and tf.Module exports carry: run
# with `training=True` where it was traced for that (see `_restored_call`).
CALL_ENDPOINT = "__call__"


class ModelLoadError(ValueError):
  """The model path is missing or not a model we can load; the message says what to do."""


# What reading a damaged zip archive or SavedModel raises (a bad CRC, a member cut short, an
# unparsable protobuf, a variables file that does not restore).
_DAMAGE_ERRORS = (zipfile.BadZipFile, EOFError, zlib.error, OSError, KeyError, tf.errors.OpError)


def short_reason(error: Exception, limit: int = 120) -> str:
  """The first line of an exception's message, cut to `limit` characters: it goes into one line."""
  lines = str(error).strip().strip('"').splitlines()
  text = lines[0] if lines else type(error).__name__
  return text if len(text) <= limit else text[:limit - 3] + "..."


def _damaged(path: str, what: str, reason: str) -> ModelLoadError:
  return ModelLoadError(f"{path} is not a readable {what} (truncated or corrupt: {reason}); "
                        "re-save or re-copy it")


def _check_keras_archive(path: str):
  """Raises ModelLoadError when `path` is not a complete, intact `.keras` zip archive.

  Keras itself reports every such file as "File not found", even when it exists, and a bad member
  surfaces as a bare zipfile error; this names the actual problem.
  """
  try:
    with open(path, "rb") as f:
      head = f.read(4)
  except OSError as e:
    raise ModelLoadError(f"cannot read {path} ({e.strerror}); check the file's permissions") from e
  if not zipfile.is_zipfile(path):
    if not head:
      reason = "the file is empty"
    elif head == b"PK\x03\x04":  # Zip entries, but no end-of-archive directory.
      reason = "the zip archive has no end record, as when cut short"
    else:
      reason = "not a zip archive"
    raise _damaged(path, "Keras model file", reason)
  try:
    with zipfile.ZipFile(path) as archive:
      bad_member = archive.testzip()  # Reads every member and checks its CRC.
      names = set(archive.namelist())
  except _DAMAGE_ERRORS as e:
    raise _damaged(path, "Keras model file", short_reason(e)) from e
  if bad_member is not None:
    raise _damaged(path, "Keras model file", f"{bad_member} fails its CRC check")
  if "config.json" not in names:
    raise _damaged(path, "Keras model file", "the archive has no config.json")


class _Endpoints(NamedTuple):
  """What `_wrap_savedmodel` calls in a restored SavedModel, as `SavedModelLayer` arguments."""
  inference: str  # The endpoint (attribute or signature) run for training=False.
  spec: tf.TensorSpec  # Its image input.
  output_key: Optional[str]  # The logits' key when it returns a dict.
  inference_kwargs: dict  # Extra arguments of the inference call ({"training": False} or {}).
  training: Optional[str]  # The endpoint run for training=True, or None (inference mode only).
  training_kwargs: dict  # Extra arguments of the training call ({"training": True} or {}).


def _savedmodel_endpoints(path: str) -> _Endpoints:
  """Finds the inference and training functions of the SavedModel at `path` (see the module
  docstring for the kinds of export and what each offers)."""
  try:
    loaded = tf.saved_model.load(path)
  except _DAMAGE_ERRORS + (ValueError,) as e:
    raise _damaged(path, "TF SavedModel", _savedmodel_damage(path, e)) from e
  call = _restored_call(loaded)
  # `model.export` writes a `serve` endpoint returning a tensor; legacy models have the
  # `serving_default` signature, which returns a dict; a bare tf.Module may have only `__call__`.
  signature = loaded.signatures.get("serving_default")
  signature_inputs = (list(signature.structured_input_signature[1].values())
                      if signature is not None else [])
  if hasattr(loaded, "serve") and getattr(loaded.serve, "input_signature", None):
    name, fn, spec, kwargs = "serve", loaded.serve, loaded.serve.input_signature[0], {}
  elif len(signature_inputs) == 1:
    name, fn, spec, kwargs = "serving_default", signature, signature_inputs[0], {}
  elif call is not None and call.inference is not None:
    # Also where `serving_default` takes `training` as a second input (a tf.Module whose
    # `__call__(x, training)` has a boolean tensor argument).
    name, fn, spec, kwargs = CALL_ENDPOINT, call.inference, call.inference_spec, (
        call.inference_kwargs)
  elif signature is not None:
    raise ModelLoadError(f"SavedModel {path} takes {len(signature_inputs)} inputs; moth_tf needs "
                         "exactly one image input")
  else:
    raise ModelLoadError(
        f"SavedModel {path} has neither a 'serve' endpoint, a 'serving_default' signature nor a "
        "__call__ taking one image tensor; export it with model.export(path) or "
        "tf.saved_model.save(..., signatures=...)")
  output_key = None
  outputs = _outputs_of(fn)
  if isinstance(outputs, dict):
    if len(outputs) != 1:
      raise ModelLoadError(f"SavedModel {path} returns {len(outputs)} outputs ({sorted(outputs)}); "
                           "moth_tf needs exactly one logits output")
    output_key = sorted(outputs)[0]
  training, training_kwargs = _training_endpoint(loaded, path, fn), {}
  if training is None and call is not None and call.training is not None and _accepts(
      call.training_spec, spec):
    training, training_kwargs = CALL_ENDPOINT, call.training_kwargs
  return _Endpoints(name, spec, output_key, kwargs, training, training_kwargs)


def _outputs_of(fn):
  """The output structure of a restored endpoint (a function or a signature), or None if unknown."""
  if hasattr(fn, "structured_outputs"):
    return fn.structured_outputs
  concrete = getattr(fn, "concrete_functions", None)
  return concrete[0].structured_outputs if concrete else None


def _training_endpoint(loaded, path: str, inference_fn):
  """TRAINING_ENDPOINT if the SavedModel has it (as an endpoint or a signature), else None."""
  fn = getattr(loaded, TRAINING_ENDPOINT, None) or loaded.signatures.get(TRAINING_ENDPOINT)
  if fn is None:
    return None
  # The wrapped model picks its output out of the endpoint's result, built from the inference
  # endpoint: the training endpoint must return the same structure (a tensor, or the same dict).
  try:
    tf.nest.assert_same_structure(_outputs_of(fn), _outputs_of(inference_fn))
  except (ValueError, TypeError) as e:
    raise ModelLoadError(
        f"SavedModel {path}: its '{TRAINING_ENDPOINT}' endpoint returns a different structure from "
        "its inference endpoint; export both from the same model call "
        "(docs/user-guide.md#savedmodel-inputs)") from e
  return TRAINING_ENDPOINT


class _RestoredCall(NamedTuple):
  """How a restored `__call__` with a `training` argument runs in each mode (None: it does not)."""
  inference: Optional[object]  # The restored function, if it runs with training=False.
  inference_spec: Optional[tf.TensorSpec]
  inference_kwargs: dict
  training: Optional[object]  # The restored function, if it runs with training=True.
  training_spec: Optional[tf.TensorSpec]
  training_kwargs: dict


def _restored_call(loaded) -> Optional[_RestoredCall]:
  """What the restored object's own `__call__` offers, or None when it has none.

  A Keras 2 model saved as a SavedModel (`model.save(dir)` or `tf.saved_model.save(model)`) keeps
  its `__call__(inputs, training, mask)` traced for training=True and for training=False; a
  `tf.Module` may keep `__call__(x, training)` traced for either Python value or for a boolean
  tensor. Only traces that take one image tensor and return one tensor (or a one-entry dict) count.
  """
  fn = getattr(loaded, "__call__", None)
  if fn is None or not hasattr(fn, "concrete_functions"):
    return None
  found = {}  # training value (True, False, or None: no training argument) -> input spec.
  for concrete in fn.concrete_functions:
    parameters = list(concrete.function_type.parameters.values())
    if not parameters or not isinstance(parameters[0].type_constraint, tf.TensorSpec):
      continue
    if not _one_tensor(concrete.structured_outputs):
      continue
    modes = _training_modes(parameters[1:])
    for mode in modes:
      found.setdefault(mode, parameters[0].type_constraint)
  if not found:
    return None

  def mode(value):
    if value in found:
      return fn, found[value], {"training": value}
    return None, None, {}

  if None in found:  # A __call__(x) without a training argument runs in inference mode only.
    return _RestoredCall(fn, found[None], {}, None, None, {})
  return _RestoredCall(*mode(False), *mode(True))


_NO_VALUE = object()


def _one_tensor(outputs) -> bool:
  """Whether a function's outputs are one tensor, or a dict of one tensor."""
  if isinstance(outputs, dict) and len(outputs) == 1:
    outputs = list(outputs.values())[0]
  return isinstance(outputs, tf.TensorSpec)


def _training_modes(parameters) -> tuple:
  """The `training` values a trace of `__call__` runs with, from its parameters after the image:
  (True,) or (False,) for a Python bool, (True, False) for a boolean tensor, (None,) for a call
  without a training argument, () for a call that takes anything else (another tensor, say)."""
  modes = (None,)
  for parameter in parameters:
    constraint = parameter.type_constraint
    value = getattr(constraint, "value", _NO_VALUE)  # Set for a Python value the trace fixed.
    if parameter.name == "training":
      if isinstance(constraint, tf.TensorSpec) and constraint.dtype == tf.bool and (
          constraint.shape.rank == 0):
        modes = (True, False)
      elif value is True or value is False:
        modes = (value,)
      else:
        return ()
    elif value is not None:  # Only arguments left at None (Keras 2's `mask`) may follow.
      return ()
  return modes


def _accepts(general: tf.TensorSpec, specific: tf.TensorSpec) -> bool:
  """Whether a function traced for `general` takes every input `specific` describes."""
  if general.dtype != specific.dtype or general.shape.rank != specific.shape.rank:
    return False
  return all(g is None or g == s for g, s in zip(general.shape.as_list(),
                                                 specific.shape.as_list()))


def _savedmodel_damage(path: str, error: Exception) -> str:
  """A short reason why tf.saved_model.load failed on `path`."""
  from tensorflow.core.protobuf import saved_model_pb2  # pylint: disable=g-import-not-at-top
  from google.protobuf import message  # pylint: disable=g-import-not-at-top
  # TF's own message for an unparsable saved_model.pb repeats the path; say it in a few words.
  try:
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
      saved_model_pb2.SavedModel().ParseFromString(f.read())
  except (OSError, message.DecodeError):
    return "saved_model.pb does not parse as a SavedModel"
  return short_reason(error)


@keras.saving.register_keras_serializable(package="moth_tf")
class SavedModelLayer(keras.layers.TFSMLayer):
  """A `TFSMLayer` that also runs a restored `__call__` and outputs the logits tensor.

  Besides TFSMLayer's named endpoints it takes the restored object's `__call__` (CALL_ENDPOINT)
  with extra arguments per mode (`training=True`/`False`), picks the logits out of an endpoint
  that returns a one-entry dict, and runs under a tf.distribute strategy when called eagerly in its
  cross-replica context (as when a model is built inside `strategy.scope()`).

  Args:
    filepath: the SavedModel directory.
    call_endpoint: the endpoint (attribute or signature) run for training=False.
    call_training_endpoint: the endpoint run for training=True, or None to run `call_endpoint`.
    output_key: the logits' key when an endpoint returns a dict.
    call_kwargs: extra keyword arguments of the inference call.
    training_kwargs: extra keyword arguments of the training call.
    **kwargs: TFSMLayer's other arguments (trainable, name, dtype).
  """

  def __init__(self, filepath, call_endpoint="serve", call_training_endpoint=None,
               output_key=None, call_kwargs=None, training_kwargs=None, **kwargs):
    super().__init__(filepath, call_endpoint=call_endpoint,
                     call_training_endpoint=call_training_endpoint, **kwargs)
    self.output_key = output_key
    self.call_kwargs = dict(call_kwargs or {})
    self.training_kwargs = dict(training_kwargs or {})

  def call(self, inputs, training=False):
    # Loaded inside a strategy's scope, the restored functions read distributed variables, which
    # TF resolves only in a replica context: an eager call in the cross-replica context (building
    # the hardening model with one batch inside the scope) runs a placeholder that fails on purpose.
    # Run it on every replica instead: they hold the same values and get the same input, so any
    # replica's result is the answer.
    if tf.executing_eagerly() and tf.distribute.in_cross_replica_context():
      strategy = tf.distribute.get_strategy()
      results = strategy.run(self._run, args=(inputs, bool(training)))
      return strategy.experimental_local_results(results)[0]
    return self._run(inputs, training)

  def _run(self, inputs, training):
    if training and self.call_training_endpoint:
      outputs = self.call_training_endpoint_fn(inputs, **self.training_kwargs)
    else:
      outputs = self.call_endpoint_fn(inputs, **self.call_kwargs)
    if isinstance(outputs, dict):
      outputs = outputs[self.output_key] if self.output_key in outputs else (
          list(outputs.values())[0])
    return outputs

  def get_config(self):
    return {**super().get_config(), "output_key": self.output_key,
            "call_kwargs": self.call_kwargs, "training_kwargs": self.training_kwargs}


def _wrap_savedmodel(path: str) -> keras.Model:
  endpoints = _savedmodel_endpoints(path)
  spec = endpoints.spec
  shape = tuple(spec.shape[1:])
  if any(d is None for d in shape):
    raise ModelLoadError(f"SavedModel {path} has an input of unknown shape {spec.shape}; "
                         "re-export it with a fixed image shape")
  inputs = keras.Input(shape=shape, name="image")
  layer = SavedModelLayer(path, call_endpoint=endpoints.inference,
                          call_training_endpoint=endpoints.training,
                          output_key=endpoints.output_key,
                          call_kwargs=endpoints.inference_kwargs,
                          training_kwargs=endpoints.training_kwargs, trainable=True,
                          name="savedmodel")
  # SavedModel variables keep TF1-style names ("conv1_kernel:0"), which Keras's optimizer cannot
  # use as slot names when the model is fine-tuned: use the sanitised name as the path.
  for variable in layer.variables:
    if ":" in getattr(variable, "path", ""):
      _compat.set_variable_path(variable, variable.path.replace(":", "_"))
  return keras.Model(inputs, layer(inputs), name="savedmodel_classifier")


def load_model(path: str, unsafe_load: bool = False) -> keras.Model:
  """Loads a classifier from a `.keras` file or a SavedModel directory.

  Args:
    path: a `.keras` file, a directory holding `saved_model.pb`, or a run directory (its
      model.keras, or its saved_model/ where it has no model.keras: see `save_model`).
    unsafe_load: allow `.keras` files that need `safe_mode=False` (for example ones that contain
      Lambda layers or a TFSMLayer). Only for files you trust.

  Returns:
    A `keras.Model` mapping [0,1] NHWC images to logits.

  Raises:
    ModelLoadError: with a one-line explanation and fix, also for a file or SavedModel that exists
      but is truncated or corrupt.
  """
  if not os.path.exists(path):
    raise ModelLoadError(f"model path {path} does not exist; train one with --phase=train or pass "
                         "--model_path=FILE.keras|SAVEDMODEL_DIR")
  if os.path.isdir(path) and not os.path.exists(os.path.join(path, "saved_model.pb")):
    run_model = rundir.find_model(path)
    if os.path.exists(run_model):
      path = run_model
  if os.path.isdir(path):
    if not os.path.exists(os.path.join(path, "saved_model.pb")):
      raise ModelLoadError(f"{path} is a directory without saved_model.pb; pass a .keras file or a "
                           "TF SavedModel directory")
    return _wrap_savedmodel(path)
  if not path.endswith(".keras"):
    raise ModelLoadError(f"{path} is not a .keras file or SavedModel directory; convert legacy "
                         ".h5 models with keras.models.load_model(h5).save('model.keras')")
  _check_keras_archive(path)
  try:
    return keras.saving.load_model(path, compile=False, safe_mode=not unsafe_load)
  except _DAMAGE_ERRORS as e:  # For example a weights file inside the archive that h5py rejects.
    raise _damaged(path, "Keras model file", short_reason(e)) from e
  except ValueError as e:
    if "safe_mode" in str(e) or "unsafe" in str(e).lower():
      # Keras's first sentence says what is unsafe; the rest is advice the hint below replaces.
      reason = re.split(r"(?<=\.)\s", " ".join(str(e).split()), maxsplit=1)[0]
      raise ModelLoadError(f"{path} needs safe_mode=False to load ({reason}); "
                           "pass --unsafe_load if you trust the file") from e
    raise


def savedmodel_layers(model: keras.Model) -> list:
  """The TFSMLayers inside `model` (nested models included): the SavedModels it runs."""
  found = []
  for layer in getattr(model, "layers", []):
    if isinstance(layer, keras.layers.TFSMLayer):
      found.append(layer)
    else:
      found.extend(savedmodel_layers(layer))
  return found


def inference_mode_warning(model: keras.Model):
  """The warning for a model that trains in inference mode (a SavedModel without a training
  function: see the module docstring), or None when `training=True` really runs it in training
  mode."""
  frozen = [layer.filepath for layer in savedmodel_layers(model)
            if not layer.call_training_endpoint]
  if not frozen:
    return None
  return (f"{', '.join(map(str, frozen))} is a SavedModel without a '{TRAINING_ENDPOINT}' "
          "endpoint or a __call__ traced with training=True, so it is fine-tuned in inference "
          "mode: BatchNorm moving statistics stay frozen and dropout is off while its weights "
          "train; to fine-tune in training mode pass a .keras file, or export the model with a "
          f"'{TRAINING_ENDPOINT}' endpoint (docs/user-guide.md#savedmodel-inputs)")


def describe_input(model: keras.Model, path: str) -> dict:
  """What summary.json records about an input model: its format and whether it trains in training
  mode (`warning` only when it does not)."""
  layers = savedmodel_layers(model)
  info = {"format": "saved_model" if os.path.isdir(path) and layers else "keras"}
  if layers:
    endpoints = [layer.call_training_endpoint for layer in layers]
    info["training_endpoint"] = endpoints[0] if len(endpoints) == 1 else endpoints
  warning = inference_mode_warning(model)
  info["inference_mode_only"] = warning is not None
  if warning:
    info["warning"] = warning
  return info


def save_model(model: keras.Model, run_dir: str, export: bool = True) -> str:
  """Saves `model` into `run_dir` as model.keras and (optionally) an exported SavedModel.

  A model of a mixed-precision run (--precision) is saved as its float32 copy (moth_tf.models.precision.float32_copy):
  the same weights, float32 dtype policies, so it loads as a plain float32 model.

  A model that runs a SavedModel (a TFSMLayer, as `load_model` makes of one) is saved as the
  exported saved_model/ only, whatever `export` says: its `.keras` file would hold no weights but
  the path of the input SavedModel, load only with safe_mode off and break once that directory
  moves. A model.keras left from an earlier save is removed, so the run has one model.

  Both writes are atomic: the new files replace the old ones only once complete.

  Returns:
    The path of the saved model: the `.keras` file, or saved_model/ when there is none.
  """
  os.makedirs(run_dir, exist_ok=True)
  from moth_tf.models import precision  # pylint: disable=g-import-not-at-top (imports this)
  model = precision.float32_for_saving(model)
  keras_path = rundir.model_path(run_dir)
  saved_model_path = os.path.join(run_dir, rundir.SAVED_MODEL_DIR)
  if savedmodel_layers(model):
    export_savedmodel(model, saved_model_path)
    if os.path.exists(keras_path):
      os.remove(keras_path)
    return saved_model_path
  with rundir.atomic_path(keras_path, suffix=".keras") as tmp:
    model.save(tmp)
  if export:
    export_savedmodel(model, saved_model_path)
  return keras_path


def export_savedmodel(model: keras.Model, path: str):
  """Exports a TF SavedModel to `path`, atomically.

  It has the `serve` endpoint and signatures of `model.export` and, unless the model runs a
  SavedModel without one, a TRAINING_ENDPOINT (`model(x, training=True)`), so that it can be
  fine-tuned again in training mode.
  """
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix="." + os.path.basename(path) + ".", dir=parent)
  os.rmdir(tmp)  # write_out wants to create the directory itself.
  try:
    # What model.export does, plus the training endpoint; the signature is model.export's, so the
    # `serve` endpoint and `serving_default` signature (its input names) stay the same.
    signature = _compat.export_input_signature(model)
    archive = keras.export.ExportArchive()
    archive.track_and_add_endpoint("serve", model, signature)
    if inference_mode_warning(model) is None:
      archive.add_endpoint(TRAINING_ENDPOINT, lambda x: model(x, training=True),
                           input_signature=signature)
    archive.write_out(tmp, verbose=False)
    rundir.replace_dir(tmp, path)
  finally:
    if os.path.exists(tmp):
      shutil.rmtree(tmp, ignore_errors=True)
