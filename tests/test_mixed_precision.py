"""Tests of models under a Keras mixed-precision policy (mixed_bfloat16; mixed_float16 where cheap).

Such a classifier keeps float32 weights and computes, so returns its logits, in bfloat16. The
triggers, masks, patterns, their L1 and every loss that sizes a trigger stay float32: the engine,
PGD and the hardening step cast the model's outputs, not the other way round.

Every model here is tiny (a 4-filter convolution on 8x8x1 images, 4 classes, 48 images). The global
policy is set inside the tests that need it and always put back to float32 (the `policy` fixture),
so no other test sees it.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import moth_tf
from moth_tf.attacks import pgd
from moth_tf.hardening import model as model_lib
from moth_tf.triggers import blocks
from moth_tf.triggers import engine

_CLASSES = 4
_PER_CLASS = 12
# Just enough hardening to run every phase of MOTH (warm-up, pair generation, fast generation).
_TINY = dict(steps=4, warmup_steps=4, pair_steps=4, fast_steps=2, trigger_samples=4)


def _data():
  """Class c: dim noise with rows 2c and 2c + 1 bright."""
  rng = np.random.default_rng(0)
  y = np.repeat(np.arange(_CLASSES), _PER_CLASS)
  x = rng.uniform(0.0, 0.3, (len(y), 8, 8, 1)).astype(np.float32)
  for c in range(_CLASSES):
    x[y == c, 2 * c:2 * c + 2] += 0.6
  return x, y


def _classifier():
  """A functional logits model, built under whatever the global policy is."""
  inputs = keras.Input((8, 8, 1))
  h = keras.layers.Conv2D(4, 3, activation="relu", name="conv1")(inputs)
  h = keras.layers.Flatten()(h)
  return keras.Model(inputs, keras.layers.Dense(_CLASSES)(h), name="tiny")


def _trained_classifier(x, y):
  keras.utils.set_random_seed(0)
  model = _classifier()
  model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"])
  model.fit(x, y, batch_size=16, epochs=30, verbose=0)
  return model


@pytest.fixture(scope="module")
def data():
  return _data()


@pytest.fixture(scope="module")
def mixed_model(data):
  """A classifier built and trained under mixed_bfloat16 (its layers keep the policy after)."""
  keras.mixed_precision.set_global_policy("mixed_bfloat16")
  try:
    return _trained_classifier(*data)
  finally:
    keras.mixed_precision.set_global_policy("float32")


@pytest.fixture
def policy():
  """Sets the global dtype policy for a test (policy("mixed_bfloat16")); float32 again after it."""
  try:
    yield keras.mixed_precision.set_global_policy
  finally:
    keras.mixed_precision.set_global_policy("float32")


def _assert_mixed_bfloat16(model):
  assert model.layers[-1].compute_dtype == "bfloat16"
  assert model.layers[-1].variable_dtype == "float32"
  assert model.trainable_weights and all(w.dtype == "float32" for w in model.trainable_weights)


def test_harden_a_mixed_bfloat16_model(policy, data, mixed_model):
  x, y = data
  policy("mixed_bfloat16")  # As a user who set it would call harden.
  _assert_mixed_bfloat16(mixed_model)
  before = [w.copy() for w in mixed_model.get_weights()]
  hardened, results = moth_tf.harden(mixed_model, (x, y), config=_TINY, verbose=0)
  _assert_mixed_bfloat16(hardened)
  assert hardened(x[:2]).dtype == tf.bfloat16
  # The stamping step trained the copy (bfloat16 logits into the float32 loss and metrics).
  assert not all(np.array_equal(a, b) for a, b in zip(before, hardened.get_weights()))
  assert results.steps == 4
  for accuracy in (results.test_accuracy_before, results.test_accuracy_after):
    assert isinstance(accuracy, float) and 0.0 <= accuracy <= 1.0
  assert results.test_accuracy_before > 0.9  # The data set is easy: 30 epochs learn it.


def test_class_distance_of_a_mixed_model_is_close_to_its_float32_copy(policy, data,
                                                                     mixed_model):
  x, y = data
  pairs = [(0, 1), (3, 2)]
  measure = lambda m: moth_tf.class_distance(m, x, y, samples=8, steps=200, seeds=1, pairs=pairs,
                                             verbose=0)
  policy("mixed_bfloat16")
  _assert_mixed_bfloat16(mixed_model)
  mixed = measure(mixed_model)
  policy("float32")
  exact_model = _classifier()
  exact_model.set_weights(mixed_model.get_weights())
  assert exact_model.layers[-1].compute_dtype == "float32"
  exact = measure(exact_model)

  for result in (mixed, exact):
    assert not result.failures
    assert all(np.isfinite(result.matrix[s, t]) and result.matrix[s, t] > 0 for s, t in pairs)
  # Same weights, same seeds: only bfloat16's rounding separates the two. Measured: means 3.4736
  # (bfloat16) and 3.4721 (float32), 0.04% apart; 5% leaves room for other CPUs' kernels.
  assert mixed.mean == pytest.approx(exact.mean, rel=0.05)
  assert not np.array_equal(mixed.matrix, exact.matrix)  # The mixed model did compute in bfloat16.


def test_the_engine_keeps_triggers_in_float32(policy, data):
  policy("mixed_bfloat16")
  x, y = data
  model = _classifier()
  _assert_mixed_bfloat16(model)
  inverter = engine.TriggerInverter(model, engine.InversionSettings(steps=5, chunk_steps=5))
  images = [x[y == 0][:6], x[y == 1][:6]]
  parts = blocks.split_directions(images, [1, 0], [3, 4], 1e-3, None, None, 8)
  states = [inverter.initial_state(b) for b in parts]
  inputs = [inverter.block_inputs(b) for b in parts]
  _, states = inverter._run_chunk(tf.constant(0), states, inputs, tf.constant(0.0),  # pylint: disable=protected-access
                                  tf.constant(5), tf.constant(5), tf.constant(0))
  for state in states:
    assert int(state["steps_run"][0]) == 5
    for key in ("mask_var", "pattern_var", "m_mask", "v_mask", "best_mask", "best_pattern",
                "best_reg", "cost", "loss_start", "loss_end", "asr_start"):
      assert state[key].dtype == tf.float32, key
  result = inverter.invert(images, [1, 0], [3, 4], steps=5, asr_bound=0.0)
  assert result.success.all()  # A bound of 0: the first step is a new best.
  for value in (result.mask, result.pattern, result.size, result.loss_start):
    assert value.dtype == np.float32
  assert np.all((result.mask >= 0) & (result.mask <= 1))


def test_pgd_on_a_mixed_model_stays_float32_in_the_ball(policy, data):
  policy("mixed_bfloat16")
  x, y = data
  model = _classifier()
  _assert_mixed_bfloat16(model)
  epsilon = 0.05
  x_adv = pgd.pgd_attack(model, x, y, epsilon, steps=3, step_size=0.02, random_start=False)
  assert x_adv.dtype == tf.float32
  moved = np.abs(x_adv.numpy() - x)
  assert moved.max() <= epsilon + 1e-6
  assert moved.max() > epsilon / 2  # The gradient made it back through the bfloat16 model.
  assert x_adv.numpy().min() >= 0.0 and x_adv.numpy().max() <= 1.0


def test_the_hardening_wrapper_takes_its_classifiers_policy(policy, data):
  x, y = data
  # A float32 classifier under a mixed global policy: the wrapper leaves its images in float32.
  exact = _classifier()
  policy("mixed_bfloat16")
  wrapper = model_lib.HardeningModel(exact, _CLASSES)
  assert wrapper.compute_dtype == "float32"
  np.testing.assert_array_equal(wrapper(x).numpy(), exact(x).numpy())
  # A mixed_float16 classifier under float32: compile gives it the LossScaleOptimizer whose
  # scale_loss the step calls.
  policy("mixed_float16")
  half = _classifier()
  policy("float32")
  wrapper = model_lib.HardeningModel(half, _CLASSES)
  wrapper.compile(keras.optimizers.SGD(0.01),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
  assert isinstance(wrapper.optimizer, keras.optimizers.LossScaleOptimizer)
  history = wrapper.fit(x, y, batch_size=16, epochs=1, verbose=0)
  assert np.isfinite(history.history["loss"][0])
  assert all(w.dtype == "float32" for w in half.trainable_weights)


def test_a_mixed_bfloat16_model_hardens_in_the_users_own_fit(data, mixed_model):
  x, y = data
  classifier = keras.models.clone_model(mixed_model)
  classifier.set_weights(mixed_model.get_weights())
  _assert_mixed_bfloat16(classifier)
  wrapped = moth_tf.hardening_model(classifier, samples=(x, y), config=_TINY, verbose=0)
  wrapped.compile(optimizer=keras.optimizers.SGD(0.01))
  wrapped.fit(tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(16), epochs=2,
              steps_per_epoch=4, verbose=0)  # 4 warm-up steps (one per class), then 4 of pairs.
  assert wrapped.hardener.events["generations"] > 0
  assert wrapped.pair_masks.dtype == "float32" and wrapped.store_masks.dtype == "float32"
  assert all(w.dtype == "float32" for w in classifier.trainable_weights)
  _assert_mixed_bfloat16(classifier)
