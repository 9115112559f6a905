"""What users hand the Python API (moth_tf.api), checked and converted: images, labels, data,
models, strategies.

Each check raises a ValueError with one line that names the problem and the fix; the functions
return what the API works on: float32 NHWC images in [0, 1], int64 labels, a built Keras model.
Importing this module does not import TensorFlow.
"""

import os
from typing import Optional, Tuple

import numpy as np


def arrays(data, what: str) -> Tuple[np.ndarray, np.ndarray]:
  """(x, y) of an (images, labels) tuple or a tf.data.Dataset."""
  if isinstance(data, (tuple, list)):
    if len(data) != 2:
      raise ValueError(f"{what} must be an (images, labels) pair, got a {type(data).__name__} of "
                       f"{len(data)} items")
    return np.asarray(data[0]), np.asarray(data[1])
  import tensorflow as tf
  if isinstance(data, tf.data.Dataset):
    from moth_tf.data import stream
    return stream.read_all(data, what)
  raise ValueError(f"{what} must be an (images, labels) tuple of arrays or a tf.data.Dataset of "
                   f"(image, label), got {type(data).__name__}")


def check_images(x, what: str) -> np.ndarray:
  """`x` as float32 [N, H, W, C] in [0, 1], or a one-line ValueError."""
  x = np.asarray(x)
  if x.dtype == np.uint8:
    raise ValueError(f"{what} images are uint8 (0..255); pass floats in [0, 1], e.g. x / 255.0")
  if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
    raise ValueError(f"{what} images are {x.dtype}, not numbers; pass a float array in [0, 1]")
  if x.ndim != 4:
    hint = " (grey images: add a channel axis, x[..., None])" if x.ndim == 3 else ""
    raise ValueError(f"{what} images have shape {x.shape}, not 4-d [N, H, W, C]{hint}")
  if not len(x):
    raise ValueError(f"{what} holds no images")
  x = x.astype(np.float32, copy=False)
  low, high = x.min(), x.max()
  if not (np.isfinite(low) and np.isfinite(high)):
    raise ValueError(f"{what} images hold {int(np.count_nonzero(~np.isfinite(x)))} non-finite "
                     "values (NaN or inf); clean or drop those images")
  if low < 0.0 or high > 1.0:
    raise ValueError(f"{what} image values span [{low:.4g}, {high:.4g}], outside [0, 1]; scale "
                     "them to [0, 1] (e.g. x / 255.0) and move any normalisation into the model")
  return x


def check_labels(y, count: int, num_classes: int, what: str) -> np.ndarray:
  """`y` as int64 [N] class indices in 0..num_classes-1, or a one-line ValueError."""
  y = np.asarray(y)
  if y.ndim == 2 and y.shape[1] == 1:
    y = y[:, 0]
  if y.ndim == 2:
    raise ValueError(f"{what} labels have shape {y.shape} (one-hot?); pass integer class indices "
                     "[N], e.g. y.argmax(axis=1)")
  if y.ndim != 1 or len(y) != count:
    raise ValueError(f"{what} has {count} images but labels of shape {y.shape}; give one integer "
                     "label per image")
  if np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0):
    y = y.astype(np.int64)  # Whole numbers stored as floats.
  if not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f"{what} labels are {y.dtype}, not integer class indices; pass y.astype(int)")
  if y.min() < 0 or y.max() >= num_classes:
    raise ValueError(f"{what} labels span {y.min()}..{y.max()}, outside the model's classes "
                     f"0..{num_classes - 1}")
  return y.astype(np.int64, copy=False)


def data(data, what: str, model, num_classes: int) -> Tuple[np.ndarray, np.ndarray]:
  """Checked images and labels of `data` for `model`."""
  x, y = arrays(data, what)
  return images_and_labels(x, y, what, model, num_classes)


def images_and_labels(x, y, what, model, num_classes):
  x = check_images(x, what)
  expected = input_shape(model)
  if expected is None:  # A subclassed model: the images decide (it fails on a wrong shape).
    return x, check_labels(y, len(x), num_classes, what)
  if any(e is not None and e != g for e, g in zip(expected, x.shape[1:])):
    raise ValueError(f"{what} images are {x.shape[1:]} (H, W, C) but the model takes {expected}; "
                     "resize the images or pass a model built for them")
  return x, check_labels(y, len(x), num_classes, what)


def load(model, unsafe_load: bool = False):
  """(keras model, its path or None) of a Keras model or a path to one."""
  import keras
  from moth_tf.models import io as model_io

  if isinstance(model, (str, os.PathLike)):
    path = os.fspath(model)
    return model_io.load_model(path, unsafe_load=unsafe_load), path
  if not isinstance(model, keras.Model):
    raise ValueError("model must be a keras.Model or the path of a .keras file or SavedModel "
                     f"directory, got {type(model).__name__}")
  if not model.built:
    raise ValueError("the model has no weights yet (never built, called or trained); train it, "
                     "or call it once on a batch of images, before hardening or measuring it")
  return model, None


def input_shape(model) -> Optional[Tuple[int, ...]]:
  """(H, W, C) the model declares, or None (a subclassed model declares none: the data decides)."""
  try:
    shape = tuple(model.input_shape)
  except (AttributeError, TypeError, ValueError):
    return None
  return shape[1:] if len(shape) == 4 else None


def is_graph_model(model) -> bool:
  """Whether `model` is a functional or Sequential model (a graph of layers that
  keras.models.clone_model can rebuild layer by layer), not a subclassed one."""
  try:
    return bool(model.inputs)
  except (AttributeError, ValueError):
    return False


def class_count(model, num_classes: Optional[int], sample=None) -> int:
  """The model's number of outputs, checked against `num_classes` when given (a model without an
  output shape, a subclassed one, is called on `sample` to see it)."""
  try:
    shape = tuple(model.output_shape)
  except (AttributeError, TypeError, ValueError):
    shape = None
  if shape is None and sample is not None:
    shape = tuple(model(np.asarray(sample[:1], np.float32)).shape)
  outputs = shape[-1] if isinstance(shape, tuple) and len(shape) == 2 else None
  if outputs is None and num_classes is None:
    raise ValueError(f"the model's output shape is {shape}, not [batch, classes]; give it one "
                     "score per class, or pass num_classes")
  if num_classes is not None and outputs is not None and num_classes != outputs:
    raise ValueError(f"num_classes={num_classes} but the model has {outputs} outputs; leave "
                     "num_classes out or pass the model that has them")
  n = num_classes or outputs
  if n < 2:
    raise ValueError(f"the model has {n} output(s); class distance needs 2 or more classes")
  return int(n)


def strategy(strategy):
  """A tf.distribute strategy: the current one for None, a named one for a string."""
  import tensorflow as tf
  if strategy is None:
    return tf.distribute.get_strategy()
  if isinstance(strategy, str):
    from moth_tf import distribute
    return distribute.get_strategy(strategy)
  if not isinstance(strategy, tf.distribute.Strategy):
    raise ValueError("strategy must be None, a tf.distribute.Strategy or one of default, "
                     f"mirrored, multi_worker; got {type(strategy).__name__}")
  return strategy


def model_and_data(model, x, y, num_classes: Optional[int] = None, unsafe_load: bool = False):
  """The checked (model, its path or None, images, labels, number of classes) of a measuring call
  (class_distance, detect_backdoor, backdoor_metrics): `model` loaded if it is a path, `x` float32
  NHWC in [0, 1] of the model's input shape, `y` its integer labels, n checked against the
  model's outputs."""
  base, path = load(model, unsafe_load)
  x = check_images(x, "x")
  n = class_count(base, num_classes, x)
  x, y = images_and_labels(x, y, "x", base, n)
  return base, path, x, y, n

