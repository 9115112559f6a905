"""The hardening model: a `keras.Model` whose `train_step` stamps the current triggers into each batch.

MOTH fine-tunes a classifier on batches in which some images carry small triggers that currently flip
their class into another one, with their TRUE labels kept, so the model learns to ignore them. The
triggers live in non-trainable variables that the host-side driver (moth_tf.hardening.moth) assigns
between steps, so the step is one traced graph for the whole run:

* pair triggers: direction 0 (s -> t) is stamped on a fraction of the batch's class-s images and
  direction 1 (t -> s) on the same fraction of its class-t images (with several pairs per period,
  every pair's two directions; the pairs share no class); with several trigger *families*
  per direction (independently initialised triggers, see moth_tf.hardening.moth), each stamped
  image carries one enabled family drawn at random;
* warm-up: the universal trigger toward class `warm_target` is stamped on `warm_ratio` of the batch's
  images of every other class.

Randomness inside the step is stateless, seeded by (optimizer step, replica id), so runs are
repeatable and a resumed run draws the same numbers. Fractions apply to each replica's own batch:
under a strategy, a train_step sees only its replica's share of the global batch.

BatchNorm: stamped (or otherwise perturbed) images share the batch with clean ones, so in training mode
they enter the batch statistics and the moving averages the model later uses at test time. The
`batchnorm` rule (BATCHNORM_MODES) decides how BatchNorm layers see them; a classifier without
BatchNorm layers always trains as "mixed" (the rules differ only in BatchNorm).

The model also carries, as non-trainable weights, the driver's state (trigger store, scheduler
matrices, step counter) so that `BackupAndRestore` checkpoints everything a resumed run needs.
"""

import keras
import numpy as np
import tensorflow as tf

from moth_tf import config as config_lib
from moth_tf.attacks import pgd
from moth_tf.hardening import callbacks
from moth_tf.triggers import params


# How BatchNorm layers see a hardening batch (HardenConfig.batchnorm):
# * mixed: the whole batch in training mode, as the reference does: perturbed images enter the batch
#   statistics and the moving averages.
# * clean_stats: the clean images in training mode (their statistics normalise them and update the
#   moving averages); the perturbed ones in inference mode (normalised by the moving averages, which
#   they do not change).
# * frozen: the whole batch in inference mode: the moving averages stay the base model's (the Keras
#   fine-tuning advice for BatchNorm models; dropout is off too). BatchNorm's scale and offset still
#   train.
# * recalibrate: as mixed during training; at the end the moving averages are re-estimated from
#   clean training images (moth_tf.hardening.fitting.recalibrate_batchnorm).
BATCHNORM_MODES = config_lib.BATCHNORM_MODES


def batchnorm_layers(model):
  """Every BatchNormalization layer of a Keras model, nested models included."""
  found = []
  for layer in getattr(model, "layers", ()):
    if isinstance(layer, keras.layers.BatchNormalization):
      found.append(layer)
    elif hasattr(layer, "layers"):
      found.extend(batchnorm_layers(layer))
  return found


def select_fraction(member, fraction, seed):
  """Boolean [B]: a random `fraction` (rounded half up) of the positions where `member` is true."""
  count = tf.reduce_sum(tf.cast(member, tf.float32))
  k = tf.cast(tf.floor(count * fraction + 0.5), tf.int32)
  keys = tf.where(member, tf.random.stateless_uniform(tf.shape(member), seed), 2.0)
  rank = tf.argsort(tf.argsort(keys))  # Rank of each position among the members, by random key.
  return tf.logical_and(member, rank < k)


def _random_true_index(usable, seed):
  """Int [B]: for each row of the boolean [B, R] `usable`, a uniformly random column that is true
  (an arbitrary one where the row has none)."""
  keys = tf.where(usable, tf.random.stateless_uniform(tf.shape(usable), seed), 2.0)
  return tf.argmin(keys, axis=1, output_type=tf.int32)


@keras.saving.register_keras_serializable(package="moth_tf")
class HardeningModel(keras.Model):
  """Wraps a classifier; `train_step` trains it on `perturb_batch(x, y)` with the true labels.

  The common step of every hardening method (moth_tf.hardening.methods): MOTH and the trigger
  baselines stamp triggers, PGD and UAP training add adversarial perturbations, fine-tuning changes
  nothing. Subclasses override `perturb_batch` (what the batch is) and, to add a loss term,
  `training_forward`, so the loss scaling under tf.distribute, the logged loss and the per-replica
  seeding are written once.

  It is also the model users `compile` and `fit` themselves (moth_tf.hardening.wrapper builds one
  for a method): `fit` runs the method's driver callbacks (`driver_callbacks`, MOTH's trigger
  generation) in front of the caller's own, and `compile` without an optimizer or loss takes the
  recipe's (`default_optimizer`, sparse cross-entropy on logits).

  Args:
    classifier: the logits model being hardened (its weights are trained in place: pass a copy).
    num_classes: n.
    tracker_name: name of the logged per-batch count of perturbed images.
    batchnorm: how BatchNorm layers see perturbed images (BATCHNORM_MODES).
    image_shape: (H, W, C) of the images; None: the classifier's input shape (a subclassed
      classifier has none: pass it).
    start_step: optimizer steps trained on clean batches before the perturbation starts (0: from
      the first step).
    start_epoch: or the first epoch that perturbs (None: `start_step` decides).
  """

  def __init__(self, classifier, num_classes, tracker_name="perturbed", batchnorm="mixed",
               image_shape=None, start_step=0, start_epoch=None, **kwargs):
    # The wrapper only runs its classifier, so it takes the classifier's dtype policy, not the
    # global one: under a mixed global policy a float32 classifier would otherwise get its images
    # rounded to the compute dtype on the way in, and compile() gives a mixed_float16 classifier
    # its LossScaleOptimizer (the `scale_loss` of train_step) only when the wrapper says so.
    kwargs.setdefault("dtype", getattr(classifier, "dtype_policy", None))
    super().__init__(**kwargs)
    if batchnorm not in BATCHNORM_MODES:
      raise ValueError(f"batchnorm must be one of {', '.join(BATCHNORM_MODES)}, got {batchnorm!r}")
    self.batchnorm = batchnorm
    self.classifier = classifier
    self.num_classes = int(num_classes)
    if image_shape is None:
      try:
        image_shape = classifier.input_shape[1:]
      except AttributeError as e:  # A subclassed model has no input shape of its own.
        raise ValueError("the classifier has no input shape (a subclassed model?); pass "
                         "image_shape=(H, W, C)") from e
    self.image_shape = tuple(int(v) for v in image_shape)
    self.tracker_name = tracker_name
    self.perturbed_tracker = keras.metrics.Mean(name=tracker_name)
    # Wall seconds of the run's earlier processes (a resumed run adds its own): checkpointed by
    # BackupAndRestore like the weights (see moth_tf.hardening.callbacks.RunClock).
    self.elapsed_seconds = self.add_weight(name="elapsed_seconds", shape=(), dtype="float32",
                                           trainable=False, initializer="zeros")
    if int(start_step) < 0 or (start_epoch is not None and int(start_epoch) < 0):
      raise ValueError(f"start_step={start_step}, start_epoch={start_epoch}: give a step or "
                       "epoch >= 0 to start perturbing at")
    self.start_step = int(start_step)
    self.start_epoch = None if start_epoch is None else int(start_epoch)
    # 1 once the perturbation has started (set by callbacks.StartPerturbing; checkpointed, so a
    # resumed run that had started goes on perturbing). Only a model with a delayed start reads it.
    self.perturbing = self.add_weight(name="perturbing", shape=(), dtype="int32",
                                      trainable=False, initializer="zeros")
    self.driver_callbacks = [callbacks.StartPerturbing()] if self.delayed_start else []
    self.default_optimizer = None

  @property
  def delayed_start(self) -> bool:
    """Whether the first steps train on clean batches (`start_step` or `start_epoch`)."""
    return self.start_step > 0 or bool(self.start_epoch)

  def compile(self, optimizer=None, loss=None, metrics=None, **kwargs):
    """`keras.Model.compile`, with the recipe's defaults for what the caller leaves out.

    optimizer None: `default_optimizer` (the method's recipe: SGD with Nesterov momentum, its
    learning-rate ramp and decay), else Keras's SGD at 0.01; loss None: sparse categorical
    cross-entropy on logits; metrics None: accuracy.
    """
    if optimizer is None:
      optimizer = self.default_optimizer or keras.optimizers.SGD(0.01, momentum=0.9,
                                                                 nesterov=True)
    if loss is None:
      loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if metrics is None:
      metrics = ["accuracy"]
    super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

  def fit(self, *args, callbacks=None, **kwargs):
    """`keras.Model.fit`, with the method's driver callbacks run before the caller's.

    The drivers decide, before every step, what it perturbs with (MOTH's trigger generation), and
    copy their state into the model's variables at every epoch end, before a checkpointing
    callback of the caller's (BackupAndRestore, ModelCheckpoint) saves them.
    """
    callbacks = list(callbacks or [])
    drivers = [c for c in self.driver_callbacks if c not in callbacks]
    data = args[0] if args else kwargs.get("x")
    if isinstance(data, tf.data.Dataset):
      # Keras ignores `shuffle` for a dataset (the pipeline shuffles) and warns when it is left at
      # its default True: say False for the caller.
      kwargs.setdefault("shuffle", False)
    return super().fit(*args, callbacks=drivers + callbacks, **kwargs)

  def call(self, inputs, training=False):
    return self.classifier(inputs, training=training)

  @property
  def metrics(self):
    return super().metrics + [self.perturbed_tracker]

  def perturb_batch(self, x, y, seed):
    """Returns (the batch to train on, bool [B]: which images were changed); identity here.

    Runs per replica on the replica's own batch; `seed` is a [2] int32 stateless seed that differs
    by optimizer step and replica.
    """
    del y, seed
    return x, tf.zeros([tf.shape(x)[0]], tf.bool)

  @property
  def batchnorm_rule(self):
    """The BatchNorm rule in force: `batchnorm`, or "mixed" for a classifier without BatchNorm."""
    return self.batchnorm if batchnorm_layers(self.classifier) else "mixed"

  def training_logits(self, x, perturbed):
    """Logits of the training forward pass under the BatchNorm rule (see BATCHNORM_MODES)."""
    rule = self.batchnorm_rule
    if rule == "frozen":
      return self(x, training=False)
    if rule != "clean_stats":
      return self(x, training=True)
    clean = tf.logical_not(perturbed)

    def split():
      clean_index = tf.cast(tf.where(clean)[:, 0], tf.int32)
      perturbed_index = tf.cast(tf.where(perturbed)[:, 0], tf.int32)
      # Perturbed first: they are normalised by the moving averages as they were before this
      # step's update (automatic control dependencies keep this order in the graph).
      perturbed_logits = self(tf.gather(x, perturbed_index), training=False)
      clean_logits = self(tf.gather(x, clean_index), training=True)
      return tf.dynamic_stitch([clean_index, perturbed_index], [clean_logits, perturbed_logits])

    # Neither part may be empty: an empty batch's mean is NaN, and TensorFlow's strided
    # convolutions mis-shape an empty batch. A batch without clean images has no statistics to take
    # (inference mode); one without perturbed images is all clean (training mode).
    return tf.cond(
        tf.reduce_all(clean), lambda: self(x, training=True),
        lambda: tf.cond(tf.reduce_any(clean), split, lambda: self(x, training=False)))

  def training_forward(self, x, y, perturbed):
    """Returns (logits of the training forward pass, extra loss); the extra loss is 0 here.

    A method that adds a term to the cross-entropy (NAD's attention distillation) overrides this
    and returns it as a mean over the (per-replica) batch: `train_step` adds it to
    `compute_loss`'s value with the same replica scaling, inside the gradient tape. Computing the
    logits here too lets such a method take them from the same forward pass as its features (one
    pass, so BatchNorm statistics update once per step).

    Args:
      x: the (perturbed) batch.
      y: its labels.
      perturbed: bool [B], the images `perturb_batch` changed.
    """
    del y
    return self.training_logits(x, perturbed), tf.constant(0.0)

  def train_step(self, data):
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    replica = tf.distribute.get_replica_context()
    replica_id = replica.replica_id_in_sync_group if replica is not None else 0
    seed = tf.stack([tf.cast(self.optimizer.iterations, tf.int32),
                     tf.cast(replica_id, tf.int32) * 7919])
    if self.delayed_start:
      x, perturbed = tf.cond(
          self.perturbing > 0, lambda: self.perturb_batch(x, y, seed),
          lambda: (x, tf.zeros([tf.shape(x)[0]], tf.bool)))
    else:  # The graph of a run that perturbs from its first step has no condition in it.
      x, perturbed = self.perturb_batch(x, y, seed)
    num_perturbed = tf.reduce_sum(tf.cast(perturbed, tf.float32))
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    with tf.GradientTape() as tape:
      y_pred, extra_loss = self.training_forward(x, y, perturbed)
      # compute_loss adds the classifier's regularisation losses and, under tf.distribute, scales
      # by the replica count (Keras >= 3.8), so gradients sum to the global-batch mean.
      loss = self.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
      # The extra term is a mean over this replica's batch, which compute_loss does not see:
      # divide it by the replica count the same way.
      loss = loss + tf.cast(extra_loss, loss.dtype) / replicas
      scaled_loss = self.optimizer.scale_loss(loss)  # No-op unless mixed precision.
    grads = tape.gradient(scaled_loss, self.trainable_variables)
    self.optimizer.apply(grads, self.trainable_variables)
    # The built-in loss tracker is not updated by compute_loss; log the unscaled loss.
    for metric in self.metrics:
      if metric.name == "loss":
        metric.update_state(loss * replicas)
    # Per-replica counts; the metric averages replicas, so scale to the global batch's count.
    self.perturbed_tracker.update_state(num_perturbed * replicas)
    return self.compute_metrics(x, y, y_pred, sample_weight)

  def test_step(self, data):
    logs = super().test_step(data)
    logs.pop(self.tracker_name, None)  # Evaluation never perturbs.
    return logs

  def get_config(self):
    config = super().get_config()
    config.update(num_classes=self.num_classes, batchnorm=self.batchnorm,
                  image_shape=list(self.image_shape), start_step=self.start_step,
                  start_epoch=self.start_epoch,
                  classifier=keras.saving.serialize_keras_object(self.classifier))
    return config

  @classmethod
  def from_config(cls, config):
    config = dict(config)
    config["classifier"] = keras.saving.deserialize_keras_object(config["classifier"])
    return cls(**config)


# Longest period whose progress a checkpoint keeps (longer ones restart their period on resume).
MAX_CHECKPOINTED_PERIOD = 64


@keras.saving.register_keras_serializable(package="moth_tf")
class StampingModel(HardeningModel):
  """Wraps a classifier; `train_step` stamps the current MOTH triggers into the batch.

  Args:
    classifier: the logits model being hardened (its weights are trained in place: pass a copy).
    num_classes: n.
    portion: fraction of each class's images in a (per-replica) batch that carry the pair triggers.
    warm_ratio: fraction of non-target images stamped with the universal trigger during warm-up.
    replay: fraction of the remaining images (not stamped with the pair or warm-up trigger) that
      carry a stored trigger of their class toward a random other class (0 = MOTH as published).
    families: independently initialised triggers kept per direction (1 = MOTH as published).
    pairs: class pairs stamped in every step, with no class in common (1 = MOTH as published).
    adversarial: PGD-perturb every batch first (MOTH on top of adversarial training).
    pgd_settings: (epsilon, steps, step_size) for adversarial mode.
  """

  def __init__(self, classifier, num_classes, portion=0.5, warm_ratio=0.5, replay=0.0,
               families=1, pairs=1, adversarial=False, pgd_settings=(0.03, 8, 0.005),
               **kwargs):
    kwargs.pop("tracker_name", None)
    super().__init__(classifier, num_classes, tracker_name="stamped", **kwargs)
    self.families = int(families)
    self.pairs = int(pairs)
    r = self.families
    # Directions stamped per step: 2 per pair (index 2 * pair + direction).
    k = 2 * self.pairs
    self.adversarial = bool(adversarial)
    self.pgd_settings = tuple(pgd_settings)
    h, w, c = self.image_shape
    n = self.num_classes

    def state(name, shape, dtype="float32"):
      return self.add_weight(name=name, shape=shape, dtype=dtype, trainable=False,
                             initializer="zeros")

    # What the step stamps (assigned by the driver between steps).
    self.pair_classes = state("pair_classes", (k,), "int32")
    self.pair_enabled = state("pair_enabled", (k, r))
    self.pair_masks = state("pair_masks", (k, r, h, w, 1))
    self.pair_patterns = state("pair_patterns", (k, r, h, w, c))
    self.warm_target = state("warm_target", (), "int32")
    self.warm_enabled = state("warm_enabled", ())
    self.warm_mask = state("warm_mask", (h, w, 1))
    self.warm_pattern = state("warm_pattern", (h, w, c))
    self.portion = state("portion", ())
    self.warm_ratio = state("warm_ratio", ())
    self.replay = state("replay", ())
    self.portion.assign(portion)
    self.warm_ratio.assign(warm_ratio)
    self.replay.assign(replay)
    # Driver state, checkpointed with the model (see moth_tf.hardening.moth).
    self.store_masks = state("store_masks", (n, n, r, h, w, 1))
    self.store_patterns = state("store_patterns", (n, n, r, h, w, c))
    self.sched_prior = state("sched_prior", (n, n))
    self.sched_size = state("sched_size", (n, n))
    self.sched_reward = state("sched_reward", (n, n))
    self.sched_count = state("sched_count", (n, n))
    self.sched_choices = state("sched_choices", (), "int32")
    self.global_step = state("global_step", (), "int32")
    self.initialized = state("initialized", (), "int32")
    # The driver's counters and the current period's progress (by field order: DriverState of
    # moth_tf.hardening.driver_state), and the trigger sizes of the period's steps so far, so that
    # a resumed run continues the period it was in and reports the counters of the whole run.
    self.driver_state = state("driver_state", (16,))
    self.period_sizes = state("period_sizes", (MAX_CHECKPOINTED_PERIOD, k))

  def stamp_batch(self, x, y, seed):
    """Returns (stamped x, bool [B]: which images carry a trigger) for one (per-replica) batch;
    labels unchanged."""
    y = tf.cast(tf.reshape(y, [-1]), tf.int32)
    stamped = tf.zeros_like(y, dtype=tf.bool)
    # Pair triggers on a fraction of each pair class's images, one random enabled family per image.
    for d in range(2 * self.pairs):
      enabled = self.pair_enabled[d] > 0
      member = tf.logical_and(tf.equal(y, self.pair_classes[d]), tf.reduce_any(enabled))
      # The first pair keeps the seeds of the one-pair step; later pairs get offsets no other
      # draw of the step uses.
      offset = d if d < 2 else 100 + 10 * d
      chosen = select_fraction(member, self.portion, seed + offset + 1)
      family = _random_true_index(
          tf.broadcast_to(enabled[None, :], [tf.shape(y)[0], self.families]), seed + offset + 7)
      x = tf.where(chosen[:, None, None, None],
                   params.stamp(x, tf.gather(self.pair_masks[d], family),
                                tf.gather(self.pair_patterns[d], family)), x)
      stamped = tf.logical_or(stamped, chosen)
    # Warm-up universal trigger on a fraction of all other classes' images.
    member = tf.logical_and(tf.not_equal(y, self.warm_target), self.warm_enabled > 0)
    chosen = select_fraction(member, self.warm_ratio, seed + 3)
    x = tf.where(chosen[:, None, None, None],
                 params.stamp(x, self.warm_mask, self.warm_pattern), x)
    stamped = tf.logical_or(stamped, chosen)
    # Replay: a stored trigger of the image's class toward a random other class, so directions
    # hardened in earlier periods are not forgotten while other pairs are trained.
    n = self.num_classes
    offset = tf.cast(tf.random.stateless_uniform(tf.shape(y), seed + 5) * (n - 1), tf.int32)
    target = (y + 1 + tf.minimum(offset, n - 2)) % n
    index = tf.stack([y, target], axis=1)
    all_masks = tf.gather_nd(self.store_masks, index)  # [B, families, H, W, 1]
    has = tf.reduce_sum(all_masks, axis=[2, 3, 4]) > 0  # [B, families]
    family = _random_true_index(has, seed + 6)  # A random stored family per image.
    masks = tf.gather(all_masks, family, batch_dims=1)
    patterns = tf.gather(tf.gather_nd(self.store_patterns, index), family, batch_dims=1)
    available = tf.reduce_any(has, axis=1)
    member = tf.logical_and(tf.logical_not(stamped), available)
    chosen = select_fraction(member, self.replay, seed + 4)
    x = tf.where(chosen[:, None, None, None],
                 params.stamp(x, masks, patterns), x)
    stamped = tf.logical_or(stamped, chosen)
    return x, stamped

  def perturb_batch(self, x, y, seed):
    if self.adversarial:
      eps, steps, step_size = self.pgd_settings
      x = pgd.pgd_attack(self.classifier, x, y, eps, steps, step_size, random_start=True,
                         seed=seed + 11, training=False)
    return self.stamp_batch(x, y, seed)

  def get_config(self):
    config = super().get_config()
    config.update(families=self.families, pairs=self.pairs, adversarial=self.adversarial,
                  pgd_settings=self.pgd_settings)
    return config

  # ----------------------------------------------------------------------------------------------
  # Host-side helpers used by the driver between steps.

  def set_pair(self, s, t, masks, patterns, enabled):
    """Makes the step stamp masks[0]/patterns[0] on class s and masks[1]/patterns[1] on class t.

    masks: [2, families, H, W(, 1)] (or [2, H, W(, 1)] with one family); patterns likewise with C
    channels; enabled: [2, families] (or [2]), 1 where that trigger may be stamped.
    """
    self.set_pairs([(s, t)], masks, patterns, enabled)

  def set_pairs(self, pairs, masks, patterns, enabled):
    """Makes the step stamp every pair (s, t) of `pairs`, as `set_pair` does one.

    masks: [P, 2, families, H, W(, 1)]; patterns [P, 2, families, H, W, C]; enabled
    [P, 2, families]; P = `self.pairs` (a one-pair model also takes set_pair's shapes).
    """
    self.pair_classes.assign(np.asarray(pairs, np.int32).reshape(self.pair_classes.shape))
    self.pair_masks.assign(np.asarray(masks, np.float32).reshape(self.pair_masks.shape))
    self.pair_patterns.assign(np.asarray(patterns, np.float32).reshape(self.pair_patterns.shape))
    self.pair_enabled.assign(np.asarray(enabled, np.float32).reshape(self.pair_enabled.shape))

  def set_warmup(self, target, mask=None, pattern=None):
    """Stamps the universal trigger toward `target` during warm-up; target None turns it off."""
    if target is None:
      self.warm_enabled.assign(0.0)
      return
    self.warm_target.assign(int(target))
    self.warm_mask.assign(np.asarray(mask, np.float32).reshape(self.warm_mask.shape))
    self.warm_pattern.assign(np.asarray(pattern, np.float32).reshape(self.warm_pattern.shape))
    self.warm_enabled.assign(1.0)
    self.pair_enabled.assign(np.zeros(self.pair_enabled.shape, np.float32))
