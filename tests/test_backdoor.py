"""The backdoor scenario's library parts: poisoning, trigger files, backdoor metrics, Neural Cleanse's
anomaly index and the class-distance detection, and NC's unlearning step."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from moth_tf.evaluation import detection
from moth_tf.attacks import backdoor
from moth_tf.baselines import nc
from moth_tf.evaluation import backdoor as backdoor_eval

# -------------------------------------------------------------------------------------------------
# Anomaly index.


def test_anomaly_index_matches_the_hand_computed_values():
  norms = [1.0, 10.0, 10.0, 11.0, 9.0, 10.0, 12.0, 8.0, 10.0, 10.0]
  # median 10; |deviations| 9,0,0,1,1,0,2,2,0,0 -> their median 0.5; scale 1.4826 * 0.5.
  scale = 1.4826 * 0.5
  expected = [(10 - v) / scale for v in norms]
  np.testing.assert_allclose(detection.anomaly_index(norms), expected, rtol=1e-12)
  assert detection.anomaly_index(norms)[0] == pytest.approx(12.1408, abs=1e-4)
  # 8 is 2 / 0.7413 = 2.70 scaled MADs below the median: flagged as well; 9 (1.35) is not.
  assert detection.flag_small_outliers(norms, 2.0) == [0, 7]
  assert detection.flag_small_outliers(norms, 3.0) == [0]


def test_uniform_norms_flag_nothing_and_a_large_outlier_is_not_flagged():
  assert detection.flag_small_outliers([5.0] * 10) == []
  np.testing.assert_array_equal(detection.anomaly_index([5.0] * 10), np.zeros(10))
  # A label with a much LARGER trigger is not a backdoor target.
  norms = [10, 11, 9, 10, 10, 11, 9, 10, 10, 60.0]
  assert detection.anomaly_index(norms)[-1] < -2
  assert detection.flag_small_outliers(norms) == []


def test_threshold_and_failed_labels():
  norms = [7.0, 10.0, 11.0, 9.0, 10.0, np.nan]
  index = detection.anomaly_index(norms)
  # Without the NaN: median 10, |dev| 3,0,1,1,0 -> MAD 1.
  assert index[0] == pytest.approx(3 / 1.4826)
  assert np.isnan(index[-1])
  assert detection.flag_small_outliers(norms, 2.0) == [0]
  assert detection.flag_small_outliers(norms, 2.1) == []


def test_distance_detection_flags_the_column_every_class_is_close_to():
  rng = np.random.default_rng(0)
  matrix = rng.uniform(9, 11, (6, 6))
  matrix[:, 4] = rng.uniform(1, 2, 6)  # Every class is close to class 4.
  np.fill_diagonal(matrix, np.nan)
  found = detection.distance_detection(matrix)
  assert found["flagged"] == [4]
  assert found["column_mean"][4] == pytest.approx(np.nanmean(np.delete(matrix[:, 4], 4)))
  assert detection.distance_detection(np.full((5, 5), 3.0))["flagged"] == []


# -------------------------------------------------------------------------------------------------
# Triggers and poisoning.


def test_patch_trigger_is_a_square_of_its_colour_at_its_corner():
  t = backdoor.make_trigger("patch", (8, 8, 3), 10, size=2, position="bottom_right",
                            colour=(1.0, 0.0, 0.5))
  assert t.mask.shape == (8, 8, 1) and t.mask.sum() == 4
  assert t.mask[6:, 6:].min() == 1
  x = np.full((1, 8, 8, 3), 0.25, np.float32)
  stamped = t.stamp(x)
  np.testing.assert_allclose(stamped[0, 7, 7], [1.0, 0.0, 0.5])
  np.testing.assert_allclose(stamped[0, :6], 0.25)
  t = backdoor.make_trigger("patch", (8, 8, 1), 10, size=3, position="1,2")
  assert t.mask[1:4, 2:5].sum() == 9 and t.mask.sum() == 9


def test_blend_trigger_mixes_a_fixed_pattern_with_weight_alpha():
  a = backdoor.make_trigger("blend", (6, 6, 1), 10, alpha=0.2, seed=3)
  b = backdoor.make_trigger("blend", (6, 6, 1), 10, alpha=0.2, seed=3)
  np.testing.assert_array_equal(a.pattern, b.pattern)
  x = np.zeros((2, 6, 6, 1), np.float32)
  np.testing.assert_allclose(a.stamp(x), 0.2 * a.pattern[None].repeat(2, 0), rtol=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    (dict(kind="patch", size=9), "does not fit"),
    (dict(kind="patch", position="7,7"), "leaves the"),
    (dict(kind="patch", position="middle"), "--poison_position"),
    (dict(kind="patch", colour=(1.0, 0.0)), "--poison_colour"),
    (dict(kind="patch", target=10), "--poison_target=10"),
    (dict(kind="blend", alpha=0.0), "--poison_alpha"),
])
def test_bad_trigger_settings_are_clear_errors(kwargs, message):
  with pytest.raises(ValueError, match=message):
    backdoor.make_trigger(image_shape=(8, 8, 3), num_classes=10, **kwargs)


def _toy_set(n=200, classes=10):
  y = np.arange(n) % classes
  x = np.random.default_rng(1).uniform(0, 0.5, (n, 8, 8, 1)).astype(np.float32)
  return x, y


def test_poisoning_all_to_one_stamps_exactly_the_share_from_non_target_classes():
  x, y = _toy_set()
  t = backdoor.make_trigger("patch", (8, 8, 1), 10, target=3, size=2)
  xp, yp, idx = backdoor.poison_training_set(x, y, t, 10, rate=0.1, seed=0)
  assert len(idx) == 20 and len(set(idx.tolist())) == 20
  assert not np.any(y[idx] == 3)  # Drawn from the other classes.
  assert np.all(yp[idx] == 3)
  np.testing.assert_array_equal(xp[idx], t.stamp(x[idx]))
  rest = np.setdiff1d(np.arange(len(x)), idx)
  np.testing.assert_array_equal(xp[rest], x[rest])
  np.testing.assert_array_equal(yp[rest], y[rest])
  # Seeded: the same seed poisons the same images.
  assert np.array_equal(backdoor.poison_training_set(x, y, t, 10, 0.1, seed=0)[2], idx)
  assert not np.array_equal(backdoor.poison_training_set(x, y, t, 10, 0.1, seed=1)[2], idx)


def test_poisoning_all_to_all_sends_every_class_to_the_next():
  x, y = _toy_set()
  t = backdoor.make_trigger("patch", (8, 8, 1), 10, mode="all_to_all")
  _, yp, idx = backdoor.poison_training_set(x, y, t, 10, rate=0.25, seed=0)
  assert len(idx) == 50
  np.testing.assert_array_equal(yp[idx], (y[idx] + 1) % 10)


def test_poisoning_rates_that_cannot_be_met_are_clear_errors():
  x, y = _toy_set(n=20)
  t = backdoor.make_trigger("patch", (8, 8, 1), 10)
  with pytest.raises(ValueError, match="poisons none"):
    backdoor.poison_training_set(x, y, t, 10, rate=0.01)
  with pytest.raises(ValueError, match="only 18 training images"):
    backdoor.poison_training_set(x, y, t, 10, rate=0.95)


def test_trigger_files_round_trip_and_a_missing_trigger_is_a_clear_error(tmp_path):
  t = backdoor.make_trigger("patch", (8, 8, 3), 10, target=7, size=3, colour=(0.5,))
  backdoor.save_trigger(t, str(tmp_path), rate=0.1)
  back = backdoor.load_trigger(str(tmp_path / "trigger.json"), (8, 8, 3))
  np.testing.assert_array_equal(back.mask, t.mask)
  np.testing.assert_array_equal(back.pattern, t.pattern)
  assert (back.mode, back.target, back.spec["size"]) == ("all_to_one", 7, 3)
  with pytest.raises(ValueError, match="is for"):
    backdoor.load_trigger(str(tmp_path), (28, 28, 1))
  with pytest.raises(FileNotFoundError, match="--phase=poison"):
    backdoor.load_trigger(str(tmp_path / "nowhere"))


# -------------------------------------------------------------------------------------------------
# Metrics.


def _constant_model(label, n=10, shape=(8, 8, 1)):
  """A model whose logits always favour `label`."""
  inputs = keras.Input(shape)
  flat = keras.layers.Flatten()(inputs)
  bias = np.zeros(n, np.float32)
  bias[label] = 5.0
  outputs = keras.layers.Dense(n, kernel_initializer="zeros",
                               bias_initializer=keras.initializers.Constant(bias))(flat)
  return keras.Model(inputs, outputs)


def test_asr_of_a_model_that_always_answers_the_target_is_one_and_never_zero():
  x, y = _toy_set(n=100)
  t = backdoor.make_trigger("patch", (8, 8, 1), 10, target=2)
  always = backdoor_eval.backdoor_metrics(_constant_model(2), x, y, t, 10)
  assert always["asr"] == 1.0 and always["r_acc"] == 0.0
  assert always["c_acc"] == pytest.approx(0.1)
  assert always["stamped_images"] == 90  # Class 2's images are not counted.
  never = backdoor_eval.backdoor_metrics(_constant_model(5), x, y, t, 10)
  assert never["asr"] == 0.0
  assert never["r_acc"] == pytest.approx(10 / 90)  # Only class 5's stamped images stay right.


def test_defence_effectiveness_rating():
  poisoned = {"c_acc": 0.98, "asr": 1.0}
  assert backdoor_eval.defence_effectiveness(poisoned, {"c_acc": 0.98, "asr": 0.0}) == 1.0
  assert backdoor_eval.defence_effectiveness(poisoned, poisoned) == 0.5
  # ASR down 0.6, accuracy down 0.04: (0.6 - 0.04 + 1) / 2.
  assert backdoor_eval.defence_effectiveness(
      poisoned, {"c_acc": 0.94, "asr": 0.4}) == pytest.approx(0.78)
  # Gains count as zero drops: ASR up and accuracy up.
  assert backdoor_eval.defence_effectiveness(
      poisoned, {"c_acc": 0.99, "asr": 1.0}) == pytest.approx(0.5)


# -------------------------------------------------------------------------------------------------
# Neural Cleanse unlearning.


def test_unlearning_step_stamps_the_share_with_one_of_the_triggers_and_keeps_labels():
  n, b = 10, 40
  masks = np.zeros((2, 8, 8), np.float32)
  masks[0, :2, :2] = 1.0
  masks[1, -2:, -2:] = 1.0
  patterns = np.ones((2, 8, 8, 1), np.float32)
  model = nc.TriggerUnlearningModel(_constant_model(0), n, masks, patterns, share=0.25)
  x = tf.zeros([b, 8, 8, 1])
  out, chosen = model.perturb_batch(x, tf.zeros([b], tf.int64), tf.constant([3, 4]))
  out = out.numpy()
  assert chosen.numpy().sum() == 10
  changed = np.flatnonzero(out.reshape(b, -1).max(axis=1) > 0)
  assert len(changed) == 10
  for i in changed:  # Each stamped image carries exactly one of the two triggers.
    assert (out[i, :2, :2].min() == 1 and out[i].sum() == 4) or (
        out[i, -2:, -2:].min() == 1 and out[i].sum() == 4)
  corners = {int(out[i, 0, 0, 0]) for i in changed}
  assert corners == {0, 1}  # Both triggers are used over 10 images (seeded).


def test_label_images_of_nc_come_from_every_other_class():
  x, y = _toy_set(n=200)
  images = detection.label_images(x, y, target=4, num_classes=10, samples=5, seed=0)
  assert len(images) == 45
  chosen = {int(np.flatnonzero((x == im).all(axis=(1, 2, 3)))[0]) for im in images}
  assert not any(y[i] == 4 for i in chosen)
