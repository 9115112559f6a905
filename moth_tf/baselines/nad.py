"""`--method=nad`: Neural Attention Distillation (Li et al., ICLR 2021).

NAD erases backdoors with a little clean data and two short trainings:

1. The clean subset: a stratified, seeded `nad_clean_share` (default 5%) of the training images.
   Per class, `moth_tf.data.base.stratified_split`'s rule: round(share x the class's images), NumPy
   rounding, so the total is within half an image per class of share x N.
2. The teacher: a copy of the classifier fine-tuned on the subset with plain cross-entropy for
   `nad_teacher_epochs` (default 10), with the shared optimiser and schedule (the finetune step).
3. The student: a fresh copy of the classifier trained on the subset for `nad_epochs` (default 20)
   with CE + sum_l beta_l * AT_l, where AT_l is the mean squared difference between the student's
   and the frozen teacher's attention maps at layer l (`attention_loss`). The attention map of an
   activation A [B, H, W, C] is the channel mean of |A|^p (p = `nad_power`, default 2), flattened
   per image and L2-normalised (`attention_map`).

The student is a `HardeningModel` whose `training_forward` returns the distillation term with the
logits of the same forward pass; the shared `train_step` adds it to the cross-entropy with the same
replica scaling, so MirroredStrategy runs it like the other methods. Both fits go through the shared
`fit_hardening` (SGD Nesterov, learning-rate ramp and decay over each fit's own length,
TensorBoard, BackupAndRestore, NaN checks), the teacher's under the name `harden_teacher` (logs in
`logs/harden_teacher`, backup in `backup_harden_teacher/`). The finished teacher's weights are kept
in `nad_teacher.weights.h5` until the student finishes, so a run interrupted during the student's
fit resumes it without retraining the teacher.

Layers: `nad_layers`, by default the architecture's (`DEFAULT_LAYERS`; the builders of
moth_tf.models name every layer and the model after its architecture). Betas: `nad_betas`, by
default NAD's scaled to the size of each map (`default_betas`).
"""

import dataclasses
import os
import time
from typing import Optional, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf

from moth_tf import config as config_lib
from moth_tf.hardening import fitting
from moth_tf.hardening import model as model_lib

TEACHER_WEIGHTS = "nad_teacher.weights.h5"
TEACHER_RECORD = "nad_teacher.json"
TEACHER_FIT_NAME = "harden_teacher"

# The layers whose attention is distilled, per architecture (moth_tf.models). NAD distils the
# outputs of WRN-16-1's three residual groups; each entry takes the same places: the feature maps
# that end the network's last two or three stages, at the resolution of their stage (before it is
# pooled away), and never a 1x1 map (its normalised attention is always 1, so its loss is 0).
#   lenet: both convolutions (8x8 and 4x4 on 8x8 digits).
#   small_cnn, cnn: the three convolutions (small_cnn: 28, 14, 7 on Fashion-MNIST; cnn: 16, 6, 2
#     on 32x32 LISA).
#   nin: the last 1x1 conv of blocks 1 and 2 (before their pools) and block 3's 192-channel 1x1 conv
#     (its last conv has only num_classes maps): 32, 16, 8 on 32x32 images, as WRN's groups.
#   vgg19: the last ReLU of blocks 3-5 (8, 4, 2 on 32x32 images; blocks 1-2 are shallow edges).
#   resnet*: the residual sum ending each of the three stages (32, 16, 8 on 32x32 images), which is
#     where NAD taps WRN (its groups are pre-activation too).
DEFAULT_LAYERS = {
    "lenet": ("conv1", "conv2"),
    "small_cnn": ("conv1", "conv2", "conv3"),
    "cnn": ("conv1", "conv2", "conv3"),
    "nin": ("block1_mlp2", "block2_mlp2", "block3_mlp1"),
    "vgg19": ("block3_relu4", "block4_relu4", "block5_relu4"),
}

# NAD's betas for WRN-16-1 on CIFAR-10 and the number of positions of the maps they weigh (32x32,
# 16x16, 8x8).
_NAD_BETAS = (500.0, 1000.0, 1000.0)
_NAD_POSITIONS = (32 * 32, 16 * 16, 8 * 8)


def default_layers(model_name: str) -> Optional[Tuple[str, ...]]:
  """The attention layers of architecture `model_name` (a moth_tf.models name), or None."""
  if model_name in DEFAULT_LAYERS:
    return DEFAULT_LAYERS[model_name]
  if model_name.startswith("resnet") and model_name[len("resnet"):].isdigit():
    depth = int(model_name[len("resnet"):])
    if depth >= 8 and (depth - 2) % 6 == 0:
      blocks = (depth - 2) // 6
      return tuple(f"stage{stage}_block{blocks}_add" for stage in (1, 2, 3))
  return None


def default_betas(positions: Sequence[int]) -> Tuple[float, ...]:
  """NAD's betas, scaled to maps of `positions` (H x W) each, shallowest first.

  A map's attention is a unit vector over its P positions, so the AT loss (a mean over positions)
  of two maps is at most 2 / P and shrinks as the map grows: what a beta weighs is beta / P per
  unit of squared distance between the maps. The last k layers keep the per-position weight of
  NAD's last k groups (500/1024, 1000/256, 1000/64): a layer at WRN's resolution on CIFAR gets
  NAD's beta (ResNets on 32x32 images: 500, 1000, 1000), a smaller map a proportionally smaller
  one (lenet on 8x8 digits: 250, 250). Layers beyond three take the first group's weight.
  """
  per_position = [b / p for b, p in zip(_NAD_BETAS, _NAD_POSITIONS)]
  k = len(positions)
  weights = [per_position[0]] * max(k - len(per_position), 0) + per_position[-k:]
  return tuple(float(w * p) for w, p in zip(weights, positions))


def attention_map(activation, power=2.0):
  """NAD's attention map: [B, H, W, C] -> [B, H*W], the channel mean of |A|^power, L2-normalised.

  Args:
    activation: a 4-D feature map [B, H, W, C].
    power: the exponent p (> 0).

  Returns:
    float32 [B, H*W], each row of unit L2 norm (all zeros for an all-zero map).
  """
  magnitude = tf.abs(tf.cast(activation, tf.float32))
  # Zeros (every ReLU's) map to exactly 0; the inner where keeps pow's gradient finite there for
  # p < 1, where |A|^(p-1) would be infinite (and 0 x inf is NaN).
  nonzero = magnitude > 0
  powered = tf.where(nonzero, tf.pow(tf.where(nonzero, magnitude, 1.0), power), 0.0)
  am = tf.reduce_mean(powered, axis=-1)
  am = tf.reshape(am, [tf.shape(am)[0], -1])
  return tf.math.l2_normalize(am, axis=1, epsilon=1e-12)


def attention_loss(student, teacher, power=2.0):
  """NAD's AT loss: the mean over batch and positions of the squared difference of the two maps.

  Args:
    student: the student's activation [B, H, W, C].
    teacher: the teacher's activation of the same shape (no gradient flows into it).
    power: the attention map's exponent.

  Returns:
    A float32 scalar, 0 for identical activations.
  """
  diff = attention_map(student, power) - tf.stop_gradient(attention_map(teacher, power))
  return tf.reduce_mean(tf.square(diff))


def _four_d_layers(classifier):
  names = []
  for layer in classifier.layers:
    if isinstance(layer, keras.layers.InputLayer):  # The image itself is no feature map.
      continue
    try:
      shape = layer.output.shape
    except (AttributeError, ValueError):  # A layer called more than once, or never built.
      continue
    if len(shape) == 4:
      names.append(layer.name)
  return names


def _some(names, count=8):
  if not names:
    return "none"
  shown = names[-count:]  # The deepest: those NAD would distil.
  return ", ".join(shown) + (f" (and {len(names) - count} earlier)" if len(names) > count else "")


def check_model(classifier, config: config_lib.HardenConfig):
  """Raises the one-line ValueError of resolve_layers before the run writes anything."""
  resolve_layers(classifier, config.nad.layers, config.nad.betas)


def resolve_layers(classifier, layers: Optional[Sequence[str]] = None,
                   betas: Optional[Sequence[float]] = None):
  """The attention layers and their betas for `classifier`.

  Args:
    classifier: the Keras classifier (a functional model of moth_tf.models or one like it).
    layers: layer names, or None for the architecture's defaults (`DEFAULT_LAYERS`, found by the
      model's name, else by the first architecture whose default layers it has).
    betas: one weight per layer, or None for `default_betas` of the layers' map sizes.

  Returns:
    (layers, betas) as tuples.

  Raises:
    ValueError: in one line, naming some of the model's 4-D layers and --nad_layers, when there
      are no default layers for the model, a layer is missing or not 4-D [B, H, W, C], or the
      number of betas is not the number of layers.
  """
  names = [layer.name for layer in classifier.layers]
  if layers is None:
    layers = default_layers(classifier.name)
    if layers is None or not all(name in names for name in layers):
      layers = next((candidate for candidate in DEFAULT_LAYERS.values()
                     if all(name in names for name in candidate)), None)
    if layers is None:
      raise ValueError(
          f"nad has no default attention layers for model {classifier.name!r} (not one of "
          f"moth_tf.models' architectures, or a SavedModel without named layers); pass "
          f"--nad_layers=NAME,... naming its feature maps; its 4-D layers: "
          f"{_some(_four_d_layers(classifier))}")
  layers = tuple(layers)
  missing = [name for name in layers if name not in names]
  if missing:
    raise ValueError(f"--nad_layers: model {classifier.name!r} has no layer "
                     f"{', '.join(map(repr, missing))}; its 4-D layers: "
                     f"{_some(_four_d_layers(classifier))}")
  positions = []
  for name in layers:
    shape = classifier.get_layer(name).output.shape
    if len(shape) != 4:
      raise ValueError(f"--nad_layers: layer {name!r} of model {classifier.name!r} outputs "
                       f"shape {tuple(shape)}, not a 4-D feature map [B, H, W, C]; its 4-D "
                       f"layers: {_some(_four_d_layers(classifier))}")
    positions.append(int(shape[1]) * int(shape[2]))
  if betas is None:
    betas = default_betas(positions)
  if len(betas) != len(layers):
    raise ValueError(f"--nad_betas has {len(betas)} weight(s) for the {len(layers)} attention "
                     f"layer(s) {', '.join(layers)}; give one per layer")
  return layers, tuple(float(b) for b in betas)


def feature_model(classifier, layers: Sequence[str], with_logits: bool = False):
  """A functional model sharing `classifier`'s layers that outputs the named layers' activations
  (and, with `with_logits`, the classifier's logits last), always as a list."""
  outputs = [classifier.get_layer(name).output for name in layers]
  if with_logits:
    outputs.append(classifier.output)
  return keras.Model(classifier.input, outputs, name=f"{classifier.name}_nad_features")


@keras.saving.register_keras_serializable(package="moth_tf")
class NADModel(model_lib.HardeningModel):
  """The NAD student: trains its classifier with CE + sum_l beta_l * AT loss against a teacher.

  Args:
    classifier: the student (trained in place: pass a copy of the model to harden).
    num_classes: n.
    teacher: the fine-tuned teacher, same architecture; frozen here (run in inference mode).
    nad_layers: names of the layers whose attention maps are distilled.
    betas: one weight per layer.
    power: the attention map's exponent p.
  """

  def __init__(self, classifier, num_classes, teacher, nad_layers, betas, power=2.0, **kwargs):
    kwargs.pop("tracker_name", None)
    super().__init__(classifier, num_classes, **kwargs)
    self.nad_layers = tuple(nad_layers)
    self.betas = tuple(float(b) for b in betas)
    self.power = float(power)
    if len(self.betas) != len(self.nad_layers):
      raise ValueError(f"{len(self.betas)} betas for {len(self.nad_layers)} layers")
    teacher.trainable = False
    self.teacher = teacher
    # Views of the two classifiers (their layers, no new weights): the student's also returns the
    # logits, so one forward pass gives both loss terms.
    self.student_features = feature_model(classifier, self.nad_layers, with_logits=True)
    self.teacher_features = feature_model(teacher, self.nad_layers)
    self.attention_tracker = keras.metrics.Mean(name="attention_loss")

  @property
  def metrics(self):
    return super().metrics + [self.attention_tracker]

  def distillation_loss(self, student_maps, teacher_maps):
    """sum_l beta_l * attention_loss(student_l, teacher_l): a mean over the (per-replica) batch."""
    terms = [beta * attention_loss(s, t, self.power)
             for beta, s, t in zip(self.betas, student_maps, teacher_maps)]
    return tf.add_n(terms)

  def training_forward(self, x, y, perturbed):
    del y, perturbed  # NAD trains on clean images only.
    # The frozen BatchNorm rule holds here too; the others equal mixed on clean batches.
    *student_maps, y_pred = self.student_features(x, training=self.batchnorm_rule != "frozen")
    teacher_maps = tf.nest.flatten(self.teacher_features(x, training=False))
    loss = self.distillation_loss(student_maps, teacher_maps)
    # A per-replica mean of means; the metric averages replicas, which is the global mean.
    self.attention_tracker.update_state(loss)
    return y_pred, loss

  def test_step(self, data):
    logs = super().test_step(data)
    logs.pop(self.attention_tracker.name, None)  # Validation is plain CE.
    return logs

  def get_config(self):
    config = super().get_config()
    config.update(teacher=keras.saving.serialize_keras_object(self.teacher),
                  nad_layers=list(self.nad_layers), betas=list(self.betas), power=self.power)
    return config

  @classmethod
  def from_config(cls, config):
    config = dict(config)
    config["teacher"] = keras.saving.deserialize_keras_object(config["teacher"])
    return super().from_config(config)


def clean_subset(splits, share: float, seed: int):
  """The splits with `x_train`/`y_train` cut to a stratified, seeded `share` of the images.

  Per class, round(share x the class's count) images (moth_tf.data.base.stratified_split); the
  validation and test splits are kept whole.

  Raises:
    ValueError: the share leaves no image.
  """
  import dataclasses
  from moth_tf.data import base as data_base

  index = data_base.stratified_split(np.asarray(splits.y_train), [share, 1.0 - share], seed)[0]
  if not len(index):
    raise ValueError(f"--nad_clean_share={share:g} of {len(splits.y_train)} training images leaves "
                     "no image in any class; raise it")
  # From a stream, the subset is a share of its in-memory sample, trained on as arrays.
  return dataclasses.replace(splits, x_train=splits.x_train[index], y_train=splits.y_train[index],
                             train_stream=None, train_count=None)


def describe(config: config_lib.HardenConfig, num_train: int, pgd_settings=None) -> str:
  del pgd_settings
  layers = ",".join(config.nad.layers) if config.nad.layers else "the architecture's defaults"
  betas = (",".join(f"{b:g}" for b in config.nad.betas) if config.nad.betas
           else "NAD's, scaled to each map's size")
  # A stream's subset is taken from its in-memory sample, whose size the line does not know.
  subset = (f"~{round(config.nad.clean_share * num_train)} of {num_train} images" if num_train
            else "of the stream's in-memory sample")
  return (f"NAD on a {config.nad.clean_share:.0%} clean subset ({subset}, stratified): teacher "
          f"fine-tuned {config.nad.teacher_epochs} epochs, student distilled "
          f"{config.nad.epochs} epochs (layers {layers}; betas {betas}; attention p="
          f"{config.nad.power:g}); batch {config.batch_size}, SGD lr {config.learning_rate}")


def _schedule(config, num_train, epochs):
  # No learning-rate ramp: it exists for MOTH's first batches, whose universal triggers flip nearly
  # every stamped image; NAD trains on clean images only, and its short fits on a 5% subset (on
  # digits one step per epoch) would spend most of their steps ramping (NAD itself has no ramp).
  return fitting.learning_rate_schedule(dataclasses.replace(config, lr_warmup_steps=0), num_train,
                                        total_steps=epochs * config.steps_per_epoch_for(num_train))


def _teacher_key(config, num_clean, augmentation):
  # What the teacher depends on: a record with another key (an earlier run with other settings in
  # the same directory) is not reused.
  return {"clean_share": config.nad.clean_share, "clean_images": num_clean,
          "augmentation": augmentation.to_json(),
          "teacher_epochs": config.nad.teacher_epochs, "seed": config.seed,
          "batch_size": config.batch_size, "learning_rate": config.learning_rate,
          "lr_warmup_steps": config.lr_warmup_steps, "lr_decay": config.lr_decay,
          "momentum": config.momentum}


def _trained_teacher(classifier_factory, clean, config, run_dir, strategy, verbose, start):
  """Fine-tunes the teacher (or finds the one a killed run finished); returns (seconds, steps)."""
  from moth_tf import rundir

  num_clean = len(clean.x_train)
  key = _teacher_key(config, num_clean, clean.augmentation)
  weights = os.path.join(run_dir, TEACHER_WEIGHTS)
  record_path = os.path.join(run_dir, TEACHER_RECORD)
  if os.path.exists(weights) and os.path.exists(record_path):
    try:
      record = rundir.read_json(record_path)
    except (OSError, ValueError):
      record = {}
    if record.get("key") == key:
      if verbose:
        print(f"NAD teacher: reusing {weights} (finished by an earlier process)")
      return float(record["seconds"]), int(record["steps"])
  keras.utils.set_random_seed(config.seed)
  model = fitting.build_hardening_model(
      strategy, lambda: model_lib.HardeningModel(classifier_factory(), clean.num_classes,
                                              image_shape=clean.image_shape), config,
      num_clean, clean.x_train[:1],
      learning_rate=_schedule(config, num_clean, config.nad.teacher_epochs))
  _, seconds = fitting.fit_hardening(model, clean, config, run_dir,
                                     epochs=config.nad.teacher_epochs, verbose=verbose,
                                     what="NAD teacher fine-tuning", start=start,
                                     name=TEACHER_FIT_NAME)
  steps = int(model.optimizer.iterations.numpy())
  with rundir.atomic_path(weights, suffix=".weights.h5") as tmp:
    model.classifier.save_weights(tmp)
  rundir.write_json(record_path, {"key": key, "seconds": seconds, "steps": steps})
  return seconds, steps


def harden(classifier_factory, splits, config: config_lib.HardenConfig, run_dir: str,
           strategy=None, verbose: int = 1, pgd_settings=None):
  """Fine-tunes a teacher on a clean subset, then distils its attention into a fresh copy of the
  classifier; returns (student classifier, results).

  Args:
    classifier_factory: returns a new copy of the classifier to harden (called in the scope).
    splits: moth_tf.data.DatasetSplits; the clean subset is cut from its training split.
    config: the hardening configuration (`nad_*` fields, optimiser, batch size, seed).
    run_dir: the run directory (logs/harden_teacher, logs/harden, the backups, the teacher's
      weights until the student finishes).
    strategy: the tf.distribute strategy (default: the current one).
    verbose: progress output: 0 none, 1 a live bar, 2 plain lines (moth_tf.progress).
    pgd_settings: unused.

  Returns:
    (classifier, results): `common_results` of the student's fit, with the teacher's seconds in
    `wall_seconds`, and a `nad` entry.

  Raises:
    ValueError: the attention layers cannot be used (see resolve_layers), or the share leaves no
      image.
  """
  del pgd_settings
  strategy = strategy or tf.distribute.get_strategy()
  start = time.time()
  clean = clean_subset(splits, config.nad.clean_share, config.seed)
  num_clean = len(clean.x_train)
  # Layers are checked before the teacher trains, so a wrong --nad_layers fails at once.
  layers, betas = resolve_layers(classifier_factory(), config.nad.layers, config.nad.betas)
  os.makedirs(run_dir, exist_ok=True)
  teacher_seconds, teacher_steps = _trained_teacher(classifier_factory, clean, config, run_dir,
                                                    strategy, verbose, start)
  teacher_weights = os.path.join(run_dir, TEACHER_WEIGHTS)

  def make_student():
    teacher = classifier_factory()
    teacher.load_weights(teacher_weights)
    return NADModel(classifier_factory(), clean.num_classes, teacher, layers, betas,
                    config.nad.power, image_shape=clean.image_shape)

  keras.utils.set_random_seed(config.seed)
  student_start = time.time()
  model = fitting.build_hardening_model(
      strategy, make_student, config, num_clean, clean.x_train[:1],
      learning_rate=_schedule(config, num_clean, config.nad.epochs))
  history, student_seconds = fitting.fit_hardening(
      model, clean, config, run_dir, epochs=config.nad.epochs, verbose=verbose,
      what="NAD student distillation", start=student_start)
  steps = int(model.optimizer.iterations.numpy())
  results = fitting.common_results(
      history, teacher_seconds + student_seconds, steps, config, num_clean,
      epochs=config.nad.epochs,
      nad={"clean_images": num_clean, "layers": list(layers), "betas": list(betas),
           "power": config.nad.power, "teacher_epochs": config.nad.teacher_epochs,
           "epochs": config.nad.epochs, "teacher_seconds": teacher_seconds,
           "teacher_steps": teacher_steps,
           "final_attention_loss": _last(history, "attention_loss")})
  # The student finished: the teacher was resumable state, like backup_harden/.
  for name in (TEACHER_WEIGHTS, TEACHER_RECORD):
    path = os.path.join(run_dir, name)
    if os.path.exists(path):
      os.remove(path)
  return model.classifier, results


def _last(history, key):
  values = history.history.get(key)
  return float(values[-1]) if values else None
