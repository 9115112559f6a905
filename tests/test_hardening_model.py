"""Tests of the MOTH hardening model (moth_tf.hardening.model.StampingModel) on a tiny classifier.

The classifier is Flatten -> Dense(4) on 4x4 grey images. Every trigger has a mask of ones on a single
pixel (and zeros elsewhere) and a constant pattern, so a stamped image differs from the original in
exactly that pixel, which then holds the pattern value. The images are drawn from [0.2, 0.8), so the
pattern values used here (0.9, 0.05, ...) cannot occur by chance.

`_Recorder` is an identity layer that keeps a copy of the batch the classifier saw in its last
training-mode call: that is the batch `train_step` actually trained on, after stamping.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from moth_tf.hardening import model as model_lib

_N = 4  # Classes.
_SHAPE = (4, 4, 1)
# Labels of the hand-made batch: 7 of class 0, 5 of class 1, 4 of class 2, 4 of class 3, in a fixed
# shuffled order so that nothing depends on the position in the batch.
_LABELS = np.random.default_rng(3).permutation([0] * 7 + [1] * 5 + [2] * 4 + [3] * 4)
_B = len(_LABELS)
# The pair triggers: direction 0 (s -> t) on pixel (0, 0), direction 1 (t -> s) on pixel (3, 3).
_PIX = ((0, 0), (3, 3))
_PAT = (0.9, 0.05)
_WARM_PIX, _WARM_PAT = (1, 2), 0.95
_REPLAY_PIX = (2, 1)


def _images(n=_B, seed=0):
  return np.random.default_rng(seed).uniform(0.2, 0.8, (n,) + _SHAPE).astype(np.float32)


def _trigger(pixel, value):
  """A one-pixel mask [H, W, 1] and a constant pattern [H, W, C]."""
  mask = np.zeros(_SHAPE, np.float32)
  mask[pixel] = 1.0
  return mask, np.full(_SHAPE, value, np.float32)


def _pair_trigger():
  masks, patterns = zip(*(_trigger(p, v) for p, v in zip(_PIX, _PAT)))
  return np.stack(masks), np.stack(patterns)


def _round_half_up(fraction, count):
  return int(math.floor(fraction * count + 0.5))


class _Recorder(keras.layers.Layer):
  """Identity; in training mode it stores its input batch in a non-trainable weight."""

  def __init__(self, batch, **kwargs):
    super().__init__(**kwargs)
    self.seen = self.add_weight(name="seen", shape=(batch,) + _SHAPE, initializer="zeros",
                                trainable=False)

  def call(self, x, training=None):
    if training:
      self.seen.assign(x)
    return x


def _classifier(batch=_B, regularizer=None, seed=0):
  keras.utils.set_random_seed(seed)
  recorder = _Recorder(batch)
  clf = keras.Sequential([keras.Input(_SHAPE), recorder, keras.layers.Flatten(),
                          keras.layers.Dense(_N, kernel_regularizer=regularizer)])
  return clf, recorder


def _stamping(clf, **kwargs):
  model = model_lib.StampingModel(clf, _N, **kwargs)
  model.compile(optimizer=keras.optimizers.SGD(0.1),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"])
  return model


def _changed_pixels(x, xs):
  """Per image, the list of (row, col) pixels that differ."""
  return [sorted({(int(r), int(c)) for r, c, _ in np.argwhere(a != b)}) for a, b in zip(x, xs)]


def _stamp(model, x, y, seed=(5, 9)):
  xs, stamped = model.stamp_batch(tf.constant(x), tf.constant(y), tf.constant(seed, tf.int32))
  return xs.numpy(), float(stamped.numpy().sum())


def _check_pair_stamps(x, xs, y, s, t, expected_s, expected_t):
  """Exactly expected_s class-s images carry trigger 0, expected_t class-t images trigger 1, and
  nothing else changed. Returns the boolean [B] of stamped images."""
  changed = _changed_pixels(x, xs)
  stamped = np.array([bool(c) for c in changed])
  for cls, d, expected in ((s, 0, expected_s), (t, 1, expected_t)):
    members = np.flatnonzero(y == cls)
    hit = [i for i in members if changed[i]]
    assert len(hit) == expected, (cls, changed)
    for i in hit:
      assert changed[i] == [_PIX[d]]
      assert xs[i][_PIX[d]][0] == pytest.approx(_PAT[d], abs=1e-7)
  others = ~np.isin(y, [s, t])
  assert not stamped[others].any()
  return stamped


# -------------------------------------------------------------------------------------------------
# stamp_batch: pair triggers.


@pytest.mark.parametrize("portion", [0.5, 0.25, 0.75, 1.0, 0.0])
def test_pair_triggers_stamp_the_rounded_portion_of_each_class(portion):
  clf, _ = _classifier()
  model = _stamping(clf, portion=portion)
  masks, patterns = _pair_trigger()
  model.set_pair(0, 1, masks, patterns, [1.0, 1.0])
  x = _images()
  xs, count = _stamp(model, x, _LABELS)
  # Class 0 has 7 images and class 1 has 5: 0.5 -> 4 and 3 (3.5 and 2.5 round up), 0.25 -> 2 and 1,
  # 0.75 -> 5 and 4.
  es, et = _round_half_up(portion, 7), _round_half_up(portion, 5)
  stamped = _check_pair_stamps(x, xs, _LABELS, 0, 1, es, et)
  assert count == es + et == stamped.sum()


def test_pair_orientation_follows_set_pair_and_enabled():
  clf, _ = _classifier()
  model = _stamping(clf, portion=0.5)
  masks, patterns = _pair_trigger()
  x = _images()
  # (s, t) = (2, 3): the direction-0 trigger goes on class 2, the direction-1 trigger on class 3.
  model.set_pair(2, 3, masks, patterns, [1.0, 1.0])
  xs, count = _stamp(model, x, _LABELS)
  _check_pair_stamps(x, xs, _LABELS, 2, 3, 2, 2)
  assert count == 4
  # Only direction 0 enabled: class s is stamped, class t is not.
  model.set_pair(2, 3, masks, patterns, [1.0, 0.0])
  xs, count = _stamp(model, x, _LABELS)
  _check_pair_stamps(x, xs, _LABELS, 2, 3, 2, 0)
  assert count == 2
  # Neither enabled: nothing.
  model.set_pair(2, 3, masks, patterns, [0.0, 0.0])
  xs, count = _stamp(model, x, _LABELS)
  np.testing.assert_array_equal(xs, x)
  assert count == 0


def test_several_pairs_stamp_each_class_with_its_own_direction():
  clf, _ = _classifier()
  model = _stamping(clf, portion=0.5, pairs=2)
  pixels = {(2, 0): ((0, 0), 0.9), (0, 2): ((3, 3), 0.05), (1, 3): ((0, 3), 0.7),
            (3, 1): ((3, 0), 0.15)}
  pairs = [(2, 0), (1, 3)]
  masks, patterns = zip(*(_trigger(*pixels[(a, b)]) for s, t in pairs
                          for a, b in ((s, t), (t, s))))
  model.set_pairs(pairs, np.stack(masks).reshape(2, 2, 1, *_SHAPE),
                  np.stack(patterns).reshape(2, 2, 1, *_SHAPE), np.ones((2, 2, 1)))
  x = _images()
  xs, count = _stamp(model, x, _LABELS)
  changed = _changed_pixels(x, xs)
  partner = {2: 0, 0: 2, 1: 3, 3: 1}
  # Half of every class (rounded half up): 4 of the 7 class-0 images, 3 of 5, 2 of 4, 2 of 4.
  for cls, expected in ((0, 4), (1, 3), (2, 2), (3, 2)):
    hit = [i for i in np.flatnonzero(_LABELS == cls) if changed[i]]
    assert len(hit) == expected
    pixel, value = pixels[(cls, partner[cls])]
    for i in hit:
      assert changed[i] == [pixel]
      assert xs[i][pixel][0] == pytest.approx(value, abs=1e-7)
  assert count == 11


def test_selection_is_random_but_its_size_is_fixed():
  clf, _ = _classifier()
  model = _stamping(clf, portion=0.5)
  masks, patterns = _pair_trigger()
  model.set_pair(0, 1, masks, patterns, [1.0, 1.0])
  x = _images()
  selections = set()
  for seed in range(8):
    xs, count = _stamp(model, x, _LABELS, seed=(seed, 0))
    stamped = _check_pair_stamps(x, xs, _LABELS, 0, 1, 4, 3)
    assert count == 7
    selections.add(tuple(np.flatnonzero(stamped)))
    # The same seed selects the same images.
    np.testing.assert_array_equal(_stamp(model, x, _LABELS, seed=(seed, 0))[0], xs)
  assert len(selections) > 1


def test_stamping_clips_to_the_unit_interval_and_keeps_the_batch_shape():
  clf, _ = _classifier()
  model = _stamping(clf, portion=1.0)
  masks = np.full((2,) + _SHAPE, 0.5, np.float32)
  patterns = np.full((2,) + _SHAPE, 3.0, np.float32)  # Out of range on purpose.
  model.set_pair(0, 1, masks, patterns, [1.0, 1.0])
  x = _images()
  xs, _ = _stamp(model, x, _LABELS)
  assert xs.shape == x.shape
  hit = np.isin(_LABELS, [0, 1])
  np.testing.assert_allclose(xs[hit], 1.0)  # 0.5 * x + 1.5 > 1, clipped.
  np.testing.assert_array_equal(xs[~hit], x[~hit])


# -------------------------------------------------------------------------------------------------
# stamp_batch: warm-up.


def test_warmup_stamps_non_target_images_only():
  clf, _ = _classifier()
  model = _stamping(clf, portion=1.0, warm_ratio=0.5)
  masks, patterns = _pair_trigger()
  model.set_pair(0, 1, masks, patterns, [1.0, 1.0])
  mask, pattern = _trigger(_WARM_PIX, _WARM_PAT)
  x = _images()
  for target, expected in ((0, 7), (2, 8)):  # 13 non-target images -> 6.5 -> 7; 16 -> 8.
    model.set_warmup(target, mask[..., 0], pattern)  # A [H, W] mask is accepted too.
    xs, count = _stamp(model, x, _LABELS)
    changed = _changed_pixels(x, xs)
    hit = np.array([bool(c) for c in changed])
    assert count == hit.sum() == expected == _round_half_up(0.5, np.sum(_LABELS != target))
    assert not hit[_LABELS == target].any()
    for i in np.flatnonzero(hit):  # Only the universal trigger: set_warmup turned the pair off.
      assert changed[i] == [_WARM_PIX]
      assert xs[i][_WARM_PIX][0] == pytest.approx(_WARM_PAT, abs=1e-7)
    np.testing.assert_array_equal(model.pair_enabled.numpy(), [[0.0], [0.0]])


def test_warmup_off_then_pair():
  clf, _ = _classifier()
  model = _stamping(clf, portion=0.5, warm_ratio=1.0)
  mask, pattern = _trigger(_WARM_PIX, _WARM_PAT)
  x = _images()
  model.set_warmup(3, mask, pattern)
  _, count = _stamp(model, x, _LABELS)
  assert count == 16
  model.set_warmup(None)
  xs, count = _stamp(model, x, _LABELS)
  np.testing.assert_array_equal(xs, x)
  assert count == 0
  masks, patterns = _pair_trigger()
  model.set_pair(0, 1, masks, patterns, [1.0, 1.0])
  xs, count = _stamp(model, x, _LABELS)
  _check_pair_stamps(x, xs, _LABELS, 0, 1, 4, 3)  # No warm-up trigger anywhere.
  assert count == 7


def test_each_stamped_image_carries_one_random_enabled_family():
  """Two families per direction: every stamped image carries exactly one of its direction's enabled
  families (both are used over a few batches); a disabled family is never stamped; the counts are
  those of one family."""
  clf, _ = _classifier()
  model = _stamping(clf, portion=0.5, families=2)
  family_pix = (((0, 0), (0, 3)), ((3, 3), (3, 0)))  # [direction][family]
  masks = np.zeros((2, 2) + _SHAPE, np.float32)
  patterns = np.zeros((2, 2) + _SHAPE, np.float32)
  for d in range(2):
    for f in range(2):
      masks[d, f][family_pix[d][f]] = 1.0
      patterns[d, f] = 0.9 - 0.05 * (2 * d + f)
  model.set_pair(0, 1, masks, patterns, [[1.0, 1.0], [1.0, 0.0]])  # t -> s has family 0 only.
  x = _images()
  used = {0: set(), 1: set()}
  for seed in range(8):
    xs, count = _stamp(model, x, _LABELS, seed=(seed, 3))
    changed = _changed_pixels(x, xs)
    assert count == 4 + 3  # Rounded half of the 7 class-0 and of the 5 class-1 images.
    for i, pixels in enumerate(changed):
      if not pixels:
        continue
      d = {0: 0, 1: 1}[int(_LABELS[i])]
      assert len(pixels) == 1 and pixels[0] in family_pix[d], (i, pixels)
      f = family_pix[d].index(pixels[0])
      assert xs[i][pixels[0]][0] == pytest.approx(0.9 - 0.05 * (2 * d + f), abs=1e-7)
      used[d].add(f)
  assert used == {0: {0, 1}, 1: {0}}


# -------------------------------------------------------------------------------------------------
# stamp_batch: replay of stored triggers.


def _replay_value(source, target):
  return 0.02 + 0.1 * (_N * source + target) / (_N * _N)  # Distinct, below 0.2.


def _fill_store(model, sources):
  """Stores a one-pixel trigger for every direction source -> other class, plus a trap on the
  diagonal (source -> source), which replay must never use."""
  masks = np.zeros(model.store_masks.shape, np.float32)
  patterns = np.zeros(model.store_patterns.shape, np.float32)
  for s in sources:
    for t in range(_N):
      masks[s, t, 0][_REPLAY_PIX] = 1.0
      patterns[s, t, 0] = _replay_value(s, t)
  model.store_masks.assign(masks)
  model.store_patterns.assign(patterns)


def test_replay_stamps_only_classes_with_stored_triggers_and_never_restamps():
  clf, _ = _classifier()
  model = _stamping(clf, portion=0.5, replay=1.0)
  _fill_store(model, sources=(0, 1))  # Classes 2 and 3 have no stored trigger.
  masks, patterns = _pair_trigger()
  model.set_pair(0, 2, masks, patterns, [1.0, 1.0])  # 4 of the 7 class-0, 2 of the 4 class-2.
  x = _images()
  targets_seen = {0: set(), 1: set()}
  for seed in range(6):
    xs, count = _stamp(model, x, _LABELS, seed=(seed, 1))
    changed = _changed_pixels(x, xs)
    kinds = {"pair0": 0, "pair1": 0, "replay": 0}
    for i, (cls, pixels) in enumerate(zip(_LABELS, changed)):
      if pixels == [_PIX[0]]:
        assert cls == 0
        kinds["pair0"] += 1
      elif pixels == [_PIX[1]]:
        assert cls == 2
        kinds["pair1"] += 1
      elif pixels == [_REPLAY_PIX]:
        assert cls in (0, 1)
        value = xs[i][_REPLAY_PIX][0]
        target = [t for t in range(_N) if abs(value - _replay_value(cls, t)) < 1e-6]
        assert len(target) == 1 and target[0] != cls, (cls, value)
        targets_seen[cls].add(target[0])
        kinds["replay"] += 1
      else:
        assert pixels == [] and cls in (2, 3), (cls, pixels)
    # replay=1: every image not pair-stamped whose class has stored triggers: 3 of class 0, all 5
    # of class 1; never one that already carries a pair trigger.
    assert kinds == {"pair0": 4, "pair1": 2, "replay": 8}
    assert count == 14
  # The target of a replayed trigger is random among the other classes.
  assert targets_seen[0] == {1, 2, 3} and targets_seen[1] == {0, 2, 3}


def test_replay_fraction_and_empty_store():
  clf, _ = _classifier()
  model = _stamping(clf, portion=0.0, replay=0.5)
  x = _images()
  xs, count = _stamp(model, x, _LABELS)  # Empty store: nothing to replay.
  np.testing.assert_array_equal(xs, x)
  assert count == 0
  _fill_store(model, sources=(1, 3))
  xs, count = _stamp(model, x, _LABELS)
  hit = np.array([bool(c) for c in _changed_pixels(x, xs)])
  assert count == hit.sum() == _round_half_up(0.5, 9)  # 5 + 4 eligible images.
  assert hit[np.isin(_LABELS, [1, 3])].sum() == 5
  assert not hit[np.isin(_LABELS, [0, 2])].any()


def test_replay_uses_only_stored_families():
  """With two families per direction, replay stamps a stored family and never an empty one: here
  class 1 has only family 1 stored, class 3 has both."""
  clf, _ = _classifier()
  model = _stamping(clf, portion=0.0, replay=1.0, families=2)
  masks = np.zeros(model.store_masks.shape, np.float32)
  patterns = np.zeros(model.store_patterns.shape, np.float32)
  for t in range(_N):
    masks[1, t, 1][_REPLAY_PIX] = 1.0
    patterns[1, t, 1] = 0.11
    for f in range(2):
      masks[3, t, f][_REPLAY_PIX] = 1.0
      patterns[3, t, f] = 0.13 + 0.02 * f
  model.store_masks.assign(masks)
  model.store_patterns.assign(patterns)
  x = _images()
  values = {1: set(), 3: set()}
  for seed in range(6):
    xs, count = _stamp(model, x, _LABELS, seed=(seed, 2))
    changed = _changed_pixels(x, xs)
    assert count == 9  # Every class-1 and class-3 image, nothing else.
    for i, pixels in enumerate(changed):
      cls = int(_LABELS[i])
      assert bool(pixels) == (cls in (1, 3))
      if pixels:
        assert pixels == [_REPLAY_PIX]
        values[cls].add(round(float(xs[i][_REPLAY_PIX][0]), 4))
  assert values == {1: {0.11}, 3: {0.13, 0.15}}


# -------------------------------------------------------------------------------------------------
# train_step.


def _ce_and_accuracy(kernel, bias, images, labels):
  logits = images.reshape(len(images), -1).astype(np.float64) @ kernel + bias
  logits -= logits.max(axis=1, keepdims=True)
  log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
  ce = -np.mean(log_probs[np.arange(len(labels)), labels])
  return ce, np.mean(np.argmax(logits, axis=1) == labels)


def _fit_one_step(model, x, y):
  return model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0).history


def test_train_step_trains_on_the_stamped_batch_with_the_true_labels():
  clf, recorder = _classifier()
  model = _stamping(clf, portion=0.5)
  masks, patterns = _pair_trigger()
  model.set_pair(0, 1, masks, patterns, [1.0, 1.0])
  x = _images()
  kernel, bias = (w.copy() for w in clf.layers[-1].get_weights())
  history = _fit_one_step(model, x, _LABELS)
  seen = recorder.seen.numpy()
  stamped = _check_pair_stamps(x, seen, _LABELS, 0, 1, 4, 3)
  assert history["stamped"] == [7.0] == [float(stamped.sum())]
  # The reported loss and accuracy are those of the pre-step weights on the stamped batch with the
  # original labels (the loss tracker gets the unscaled loss; labels are never changed).
  ce, acc = _ce_and_accuracy(kernel, bias, seen, _LABELS)
  assert history["loss"][0] == pytest.approx(ce, rel=1e-5)
  assert history["loss"][0] > 0.1
  assert history["accuracy"][0] == pytest.approx(acc, abs=1e-6)
  # The step trained the classifier's weights (and left the trigger state alone).
  new_kernel, new_bias = clf.layers[-1].get_weights()
  assert np.abs(new_kernel - kernel).max() > 1e-4 and np.abs(new_bias - bias).max() > 1e-4
  np.testing.assert_array_equal(model.pair_masks.numpy()[:, 0], masks)
  assert int(model.optimizer.iterations.numpy()) == 1


def test_evaluate_does_not_stamp_or_report_stamped():
  clf, recorder = _classifier()
  model = _stamping(clf, portion=1.0)
  masks, patterns = _pair_trigger()
  model.set_pair(0, 1, masks, patterns, [1.0, 1.0])
  x = _images()
  assert _fit_one_step(model, x, _LABELS)["stamped"] == [12.0]
  kernel, bias = clf.layers[-1].get_weights()
  logs = model.evaluate(x, _LABELS, batch_size=_B, verbose=0, return_dict=True)
  assert "stamped" not in logs
  ce, acc = _ce_and_accuracy(kernel, bias, x, _LABELS)  # Clean images.
  assert logs["loss"] == pytest.approx(ce, rel=1e-5)
  assert logs["accuracy"] == pytest.approx(acc, abs=1e-6)


def test_loss_includes_the_classifiers_regularisation_losses():
  l2 = 0.5
  clf, recorder = _classifier(regularizer=keras.regularizers.L2(l2))
  model = _stamping(clf, portion=0.0)
  x = _images()
  kernel, bias = clf.layers[-1].get_weights()
  history = _fit_one_step(model, x, _LABELS)
  ce, _ = _ce_and_accuracy(kernel, bias, recorder.seen.numpy(), _LABELS)
  penalty = l2 * np.sum(kernel.astype(np.float64) ** 2)
  assert penalty > 0.5  # Large enough to matter.
  assert history["loss"][0] == pytest.approx(ce + penalty, rel=1e-5)
  assert history["stamped"] == [0.0]
  np.testing.assert_array_equal(recorder.seen.numpy(), x)  # portion 0: nothing stamped.


def test_stamping_is_seeded_by_the_optimizer_step():
  x = _images(32, seed=4)
  y = np.repeat([0, 1], 16)
  masks, patterns = _pair_trigger()
  init = None
  runs = []
  for run, (global_seed, start_step) in enumerate(((1, 0), (2, 0), (1, 7))):
    clf, recorder = _classifier(batch=32, seed=run)
    if init is None:
      init = clf.get_weights()
    clf.set_weights(init)
    model = _stamping(clf, portion=0.5)
    model.set_pair(0, 1, masks, patterns, [1.0, 1.0])
    model.optimizer.iterations.assign(start_step)
    keras.utils.set_random_seed(global_seed)  # The global seed must not matter.
    history = _fit_one_step(model, x, y)
    assert history["stamped"] == [16.0]
    runs.append((recorder.seen.numpy(), clf.layers[-1].get_weights()))
  (seen_a, w_a), (seen_b, w_b), (seen_c, w_c) = runs
  # Same weights, batch and optimizer step: the same images are stamped, the same update results.
  np.testing.assert_array_equal(seen_a, seen_b)
  for a, b in zip(w_a, w_b):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-7)
  # Another optimizer step draws another selection (C(16, 8)^2 choices: not a coincidence).
  assert not np.array_equal(seen_a, seen_c)
  _check_pair_stamps(x, seen_c, y, 0, 1, 8, 8)


def test_adversarial_mode_runs_pgd_before_stamping_and_stays_in_range():
  eps = 0.3
  clf, recorder = _classifier()
  model = _stamping(clf, portion=1.0, adversarial=True, pgd_settings=(eps, 3, 0.2))
  masks, patterns = _pair_trigger()
  model.set_pair(0, 1, masks, patterns, [1.0, 1.0])
  x = _images()
  x[:, :, :2] = 0.0  # Pixels at both ends of the range: PGD must clip them.
  x[:, :, 2:] = np.where(x[:, :, 2:] > 0.5, 1.0, x[:, :, 2:])
  x[:, 0, 0] = 0.5
  x[:, 3, 3] = 0.5
  history = _fit_one_step(model, x, _LABELS)
  seen = recorder.seen.numpy()
  assert seen.min() >= 0.0 and seen.max() <= 1.0
  assert history["stamped"] == [12.0]
  stamped = np.isin(_LABELS, [0, 1])
  for d, cls in enumerate((0, 1)):  # The trigger pixel holds the pattern: stamped after PGD.
    np.testing.assert_allclose(seen[_LABELS == cls][:, _PIX[d][0], _PIX[d][1]], _PAT[d],
                               atol=1e-7)
  # Elsewhere the images are PGD-perturbed, within the L-inf ball.
  keep = np.ones(_SHAPE, bool)
  for d in range(2):
    keep[_PIX[d]] = False
  delta = np.abs(seen - x)[:, keep]
  assert delta.max() <= eps + 1e-6
  assert delta[~stamped].max() > 0.05  # PGD ran on unstamped images too.
  assert np.isfinite(history["loss"][0])
