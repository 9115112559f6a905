"""Property tests for moth_tf.attacks.pgd (and moth_tf.evaluation.robustness, which attacks with
it) on tiny models with known gradients."""

import os
import subprocess
import sys
import textwrap

from absl.testing import parameterized
import keras
import numpy as np
import tensorflow as tf

from moth_tf.attacks import pgd
from moth_tf.evaluation import robustness

_SHAPE = (4, 4, 1)

# Weights of a linear model on the 16 pixels. The signs are mixed and sum to 0, so a uniform grey
# image is on the decision boundary; two pixels have zero weight and so zero gradient.
_W = np.array([1, -1, 2, -2, 0.5, -0.5, 1, -1, 0, 0, 3, -3, 1, -1, 2, -2], np.float32)
_SIGN = np.sign(_W).reshape(_SHAPE)


def _linear_model(num_classes=2):
  """Logits z0 = x.w, z1 = -x.w (and z2 = 0 when num_classes is 3), no bias.

  For true class 0 the input gradient of the cross-entropy is -(1 - p0 + p1) * w, whose sign is
  -sign(w); for class 1 it is (1 + p0 - p1) * w, with sign +sign(w).
  """
  model = keras.Sequential([
      keras.Input(_SHAPE),
      keras.layers.Flatten(),
      keras.layers.Dense(num_classes, use_bias=False),
  ])
  kernel = np.zeros((16, num_classes), np.float32)
  kernel[:, 0] = _W
  kernel[:, 1] = -_W
  model.layers[-1].set_weights([kernel])
  return model


def _random_model(seed=0):
  keras.utils.set_random_seed(seed)
  return keras.Sequential([
      keras.Input(_SHAPE),
      keras.layers.Flatten(),
      keras.layers.Dense(8, activation="tanh"),
      keras.layers.Dense(3),
  ])


def _random_batch(n=32, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.uniform(size=(n,) + _SHAPE).astype(np.float32)
  # Pixels on the border of [0, 1] check that the projection onto the box is applied.
  x[0] = 0.0
  x[1] = 1.0
  y = rng.integers(0, 3, size=n)
  return x, y


def _mean_loss(model, x, y):
  logits = model(x, training=False)
  return float(tf.reduce_mean(
      tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)))


def _margin_data(num_0, num_1, margin_0, margin_1):
  """Class-0 images 0.5 + margin_0 * sign(w), class-1 images 0.5 - margin_1 * sign(w)."""
  x = np.concatenate([
      np.repeat((0.5 + margin_0 * _SIGN)[np.newaxis], num_0, axis=0),
      np.repeat((0.5 - margin_1 * _SIGN)[np.newaxis], num_1, axis=0),
  ]).astype(np.float32)
  y = np.array([0] * num_0 + [1] * num_1)
  return x, y


class PGDAttackTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.parameters(True, False)
  def test_stays_in_ball_and_box(self, random_start):
    model = _random_model()
    x, y = _random_batch()
    for epsilon in (0.03, 0.1, 0.5):
      x_adv = pgd.pgd_attack(model, x, y, epsilon, steps=5, step_size=epsilon / 2,
                             random_start=random_start, seed=1).numpy()
      self.assertLessEqual(np.max(np.abs(x_adv - x)), epsilon + 1e-6)
      self.assertGreaterEqual(x_adv.min(), 0.0)
      self.assertLessEqual(x_adv.max(), 1.0)
      self.assertEqual(x_adv.dtype, np.float32)

  @parameterized.parameters(True, False)
  def test_zero_epsilon_is_identity(self, random_start):
    model = _random_model()
    x, y = _random_batch()
    x_adv = pgd.pgd_attack(model, x, y, 0.0, steps=3, step_size=0.1, random_start=random_start)
    self.assertAllEqual(x_adv, x)

  def test_random_start_alone(self):
    model = _random_model()
    x, y = _random_batch()
    x_adv = pgd.pgd_attack(model, x, y, 0.1, steps=0, step_size=0.1, seed=5).numpy()
    delta = x_adv - x
    self.assertLessEqual(np.max(np.abs(delta)), 0.1 + 1e-6)
    self.assertGreater(np.mean(np.abs(delta) > 0), 0.5)
    # Uniform in [-eps, eps] before clipping: both signs occur.
    self.assertGreater(np.mean(delta[2:] > 0), 0.3)
    self.assertGreater(np.mean(delta[2:] < 0), 0.3)

  def test_seeded_start_is_reproducible(self):
    model = _random_model()
    x, y = _random_batch()
    run = lambda seed: pgd.pgd_attack(model, x, y, 0.1, steps=0, step_size=0.1, seed=seed)
    self.assertAllEqual(run(3), run(3))
    self.assertNotAllClose(run(3), run(4))
    self.assertAllEqual(run(3), run(tf.constant([3, 0])))

  @parameterized.parameters((0, -1.0), (1, 1.0))
  def test_single_step_follows_gradient_sign(self, label, direction):
    model = _linear_model()
    x = np.full((2,) + _SHAPE, 0.5, np.float32)
    y = np.array([label, label])
    x_adv = pgd.pgd_attack(model, x, y, 0.2, steps=1, step_size=0.1, random_start=False)
    # Class 0 moves against w, class 1 along it; zero-weight pixels have zero gradient and stay.
    expected = 0.5 + direction * 0.1 * _SIGN
    self.assertAllClose(x_adv, np.broadcast_to(expected, x.shape), atol=1e-7)

  def test_single_step_is_projected(self):
    model = _linear_model()
    # The step is larger than epsilon: every moving pixel ends exactly on the ball's surface.
    x = np.full((1,) + _SHAPE, 0.5, np.float32)
    x_adv = pgd.pgd_attack(model, x, [0], 0.03, steps=1, step_size=0.1, random_start=False)
    self.assertAllClose(x_adv[0], 0.5 - 0.03 * _SIGN, atol=1e-7)
    # Near 0 the box wins: pixels pushed down stop at 0.
    x = np.full((1,) + _SHAPE, 0.05, np.float32)
    x_adv = pgd.pgd_attack(model, x, [0], 0.2, steps=1, step_size=0.1, random_start=False)
    self.assertAllClose(x_adv[0], np.clip(0.05 - 0.1 * _SIGN, 0.0, 1.0), atol=1e-7)

  def test_attack_lowers_accuracy_and_raises_loss(self):
    model = _linear_model()
    x, y = _margin_data(6, 6, 0.05, 0.05)
    clean_pred = np.argmax(model(x), axis=-1)
    self.assertAllEqual(clean_pred, y)
    x_adv = pgd.pgd_attack(model, x, y, 0.1, steps=3, step_size=0.1, seed=0)
    # The gradient sign is constant, so the attack ends at x -/+ 0.1 * sign(w): mirrored margins.
    self.assertAllEqual(np.argmax(model(x_adv), axis=-1), 1 - y)
    self.assertGreater(_mean_loss(model, x_adv, y), _mean_loss(model, x, y))

  def test_attack_raises_loss_of_nonlinear_model(self):
    model = _random_model()
    x, y = _random_batch(64)
    x_adv = pgd.pgd_attack(model, x, y, 0.1, steps=10, step_size=0.02, seed=0)
    self.assertGreater(_mean_loss(model, x_adv, y), _mean_loss(model, x, y) + 0.05)

  def test_tf_function_matches_eager_and_does_not_retrace(self):
    model = _random_model()
    x, y = _random_batch()

    @tf.function
    def attack(x, y, steps, seed):
      return pgd.pgd_attack(model, x, y, 0.1, steps, 0.02, seed=seed)

    seed = tf.constant([7, 0], tf.int64)
    graph = attack(tf.constant(x), tf.constant(y), tf.constant(4), seed)
    eager = pgd.pgd_attack(model, x, y, 0.1, 4, 0.02, seed=seed)
    self.assertAllClose(graph, eager, atol=1e-6)
    x2, y2 = _random_batch(seed=1)
    attack(tf.constant(x2), tf.constant(y2), tf.constant(9), tf.constant([8, 1], tf.int64))
    self.assertEqual(attack.experimental_get_tracing_count(), 1)
    # The steps are one while loop in the graph, not an unrolled sequence of model calls.
    op_types = {op.type for op in attack.get_concrete_function(
        tf.constant(x), tf.constant(y), tf.constant(4), seed).graph.get_operations()}
    self.assertTrue(op_types & {"While", "StatelessWhile"}, op_types)

  def test_inside_keras_train_step(self):
    epsilon = 0.1

    class AdversarialModel(keras.Model):
      """Trains on PGD images, the shape of adv-mode hardening."""

      def train_step(self, data):
        x, y = data
        x_adv = pgd.pgd_attack(self, x, y, epsilon, 3, 0.05)
        with tf.GradientTape() as tape:
          y_pred = self(x_adv, training=True)
          loss = self.compute_loss(x=x_adv, y=y, y_pred=y_pred, training=True)
        grads = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply(grads, self.trainable_variables)
        return {"loss": loss, "max_delta": tf.reduce_max(tf.abs(x_adv - x))}

    keras.utils.set_random_seed(0)
    inputs = keras.Input(_SHAPE)
    outputs = keras.layers.Dense(3)(keras.layers.Flatten()(inputs))
    model = AdversarialModel(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(0.1),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = [w.copy() for w in model.get_weights()]
    x, y = _random_batch(32)
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    max_delta = history.history["max_delta"][-1]
    self.assertGreater(max_delta, 0.0)
    self.assertLessEqual(max_delta, epsilon + 1e-6)
    self.assertNotAllClose(before[0], model.get_weights()[0])

  def test_inside_train_step_under_mirrored_strategy(self):
    # Logical devices must be configured before TF initialises, so this runs in a fresh process.
    script = textwrap.dedent("""
        import numpy as np
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        import keras
        from moth_tf.attacks import pgd

        class AdversarialModel(keras.Model):
          def train_step(self, data):
            x, y = data
            x_adv = pgd.pgd_attack(self, x, y, 0.1, 3, 0.05)
            with tf.GradientTape() as tape:
              loss = self.compute_loss(x=x_adv, y=y, y_pred=self(x_adv, training=True),
                                       training=True)
            grads = tape.gradient(loss, self.trainable_variables)
            self.optimizer.apply(grads, self.trainable_variables)
            return {"max_delta": tf.reduce_max(tf.abs(x_adv - x))}

        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        assert strategy.num_replicas_in_sync == 2
        with strategy.scope():
          inputs = keras.Input((4, 4, 1))
          model = AdversarialModel(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(inputs)))
          model.compile(optimizer="sgd",
                        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        rng = np.random.default_rng(0)
        x = rng.uniform(size=(32, 4, 4, 1)).astype("float32")
        y = rng.integers(0, 3, size=32)
        history = model.fit(x, y, batch_size=16, epochs=1, verbose=0)
        max_delta = history.history["max_delta"][-1]
        assert 0.0 < max_delta <= 0.1 + 1e-6, max_delta
        print("OK", max_delta)
    """)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120, env=env, check=False)
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    self.assertIn("OK", result.stdout)

  def test_rejects_one_hot_labels(self):
    model = _random_model()
    x, y = _random_batch(4)
    with self.assertRaises(ValueError):
      pgd.pgd_attack(model, x, np.eye(3)[y], 0.1, 1, 0.1)


class RobustAccuracyTest(tf.test.TestCase):

  def test_known_linear_model(self):
    model = _linear_model(num_classes=3)
    # Class 0 has margin 0.2 > epsilon and survives; class 1 has margin 0.05 < epsilon and is
    # pushed to 0.5 + 0.05 * sign(w), i.e. class 0. Class 2 has no images. Batches of 5, 5, 2.
    x, y = _margin_data(7, 5, 0.2, 0.05)
    result = robustness.robust_accuracy(model, x, y, epsilon=0.1, steps=3, step_size=0.1,
                                        batch_size=5)
    self.assertAllEqual(result.confusion, [[7, 0, 0], [5, 0, 0], [0, 0, 0]])
    self.assertAlmostEqual(result.accuracy, 7 / 12)
    self.assertAlmostEqual(float(result), 7 / 12)
    self.assertEqual(result.num_examples, 12)
    self.assertAllEqual(result.per_class_accuracy[:2], [1.0, 0.0])
    self.assertTrue(np.isnan(result.per_class_accuracy[2]))

  def test_small_epsilon_keeps_everything(self):
    model = _linear_model()
    x, y = _margin_data(4, 3, 0.2, 0.05)
    result = robustness.robust_accuracy(model, x, y, epsilon=0.02, steps=3, step_size=0.02)
    self.assertEqual(result.accuracy, 1.0)
    self.assertAllEqual(result.confusion, [[4, 0], [0, 3]])

  def test_attack_function_traces_once_for_all_batch_sizes(self):
    model = _random_model()
    attack = robustness._make_attack_fn(model, _SHAPE, 0.1, 2, 0.05)  # pylint: disable=protected-access
    for n, k in ((5, 0), (5, 1), (2, 2)):
      x, y = _random_batch(n, seed=k)
      attack(tf.constant(x), tf.constant(y, tf.int64), tf.constant([0, k], tf.int64))
    self.assertEqual(attack.experimental_get_tracing_count(), 1)

  def test_is_reproducible(self):
    model = _random_model()
    x, y = _random_batch(40)
    first = robustness.robust_accuracy(model, x, y, 0.1, 3, 0.03, batch_size=16, seed=4)
    second = robustness.robust_accuracy(model, x, y, 0.1, 3, 0.03, batch_size=16, seed=4)
    self.assertAllEqual(first.confusion, second.confusion)
    self.assertEqual(first.confusion.sum(), 40)

  def test_rejects_bad_labels(self):
    model = _random_model()
    x, _ = _random_batch(4)
    with self.assertRaises(ValueError):
      robustness.robust_accuracy(model, x, [0, 1, 2, 3], 0.1, 1, 0.1)
    with self.assertRaises(ValueError):
      robustness.robust_accuracy(model, x, [0, 1], 0.1, 1, 0.1)


if __name__ == "__main__":
  tf.test.main()
