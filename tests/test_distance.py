"""Tests of moth_tf.evaluation.distance: split choice, direction sampling, the pairwise measurement
(a tiny real model, and a fake inverter whose sizes are set by hand), enlargement and the text/PNG
outputs."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from moth_tf.evaluation import distance
from moth_tf.data import base
from moth_tf.triggers import engine

_INFO = base.DatasetInfo(name="fake", num_classes=3, image_shape=(2, 2, 1),
                         class_names=("a", "b", "c"))


def _splits(val_counts, test_counts):
  def split(counts):
    y = np.repeat(np.arange(len(counts)), counts).astype(np.int64)
    return np.zeros((len(y), 2, 2, 1), np.float32), y

  x_val, y_val = split(val_counts)
  x_test, y_test = split(test_counts)
  x_train, y_train = split([1, 1, 1])
  return base.DatasetSplits(_INFO, x_train, y_train, x_val, y_val, x_test, y_test)


# -------------------------------------------------------------------------------------------------
# choose_split and direction_images.


def test_choose_split_prefers_val_when_every_class_has_enough():
  split, note = distance.choose_split(_splits([5, 6, 7], [50, 50, 50]), samples=5)
  assert split == "val"
  assert "validation" in note and "5" in note


def test_choose_split_falls_back_to_test_with_a_note():
  split, note = distance.choose_split(_splits([5, 2, 7], [20, 30, 40]), samples=5)
  assert split == "test"
  # The note names the shortfall and the replacement.
  assert "only 2" in note and "test split" in note and "20" in note
  # A class missing from the validation split entirely also sends us to the test split.
  assert distance.choose_split(_splits([5, 0, 7], [3, 3, 3]), samples=5)[0] == "test"


def test_choose_split_keeps_val_when_test_is_no_better():
  # Both are short of `samples`; val's smallest class (4) is at least test's (3).
  assert distance.choose_split(_splits([4, 4, 4], [3, 9, 9]), samples=10)[0] == "val"


def test_direction_images_are_deterministic_capped_and_of_the_source_class():
  rng = np.random.default_rng(0)
  y = rng.integers(0, 3, 200)
  x = np.arange(200, dtype=np.float32).reshape(200, 1, 1, 1)  # Image i holds the value i.
  a = distance.direction_images(x, y, source=1, target=2, seed=5, samples=10)
  b = distance.direction_images(x, y, source=1, target=2, seed=5, samples=10)
  assert a.shape == (10, 1, 1, 1)
  np.testing.assert_array_equal(a, b)
  idx = a.ravel().astype(int)
  assert np.all(y[idx] == 1) and len(set(idx)) == 10 and np.all(np.diff(idx) > 0)
  # Another seed or another target draws another subset.
  assert not np.array_equal(a, distance.direction_images(x, y, 1, 2, seed=6, samples=10))
  assert not np.array_equal(a, distance.direction_images(x, y, 1, 0, seed=5, samples=10))
  # Fewer images than `samples`: all of them, in order.
  everything = distance.direction_images(x, y, 1, 2, seed=5, samples=1000)
  np.testing.assert_array_equal(everything.ravel().astype(int), np.flatnonzero(y == 1))


# -------------------------------------------------------------------------------------------------
# measure_distance with the real engine.


@pytest.fixture(scope="module")
def tiny_problem():
  """A random linear model on 4x4 images with 4 classes; class 3 can never win (bias -100)."""
  keras.utils.set_random_seed(0)
  model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(4)])
  kernel, bias = model.layers[-1].get_weights()
  bias[3] = -100.0
  model.layers[-1].set_weights([kernel, bias])
  rng = np.random.default_rng(0)
  x = rng.uniform(0, 1, (40, 4, 4, 1)).astype(np.float32)
  y = np.repeat(np.arange(4), 10)
  return model, x, y


@pytest.fixture(scope="module")
def tiny_result(tiny_problem):
  model, x, y = tiny_problem
  pairs = [(0, 1), (1, 0), (2, 1), (0, 3)]
  return distance.measure_distance(model, x, y, 4, engine.InversionSettings(steps=40),
                                   seeds=(1, 2), samples=6, pairs=pairs, verbose=False)


def test_measure_distance_fills_exactly_the_requested_pairs(tiny_result):
  r = tiny_result
  assert r.matrix.shape == (4, 4) and r.per_seed.shape == (2, 4, 4)
  measured = {(0, 1), (1, 0), (2, 1)}
  for s in range(4):
    for t in range(4):
      if (s, t) in measured:
        assert np.isfinite(r.matrix[s, t]) and r.matrix[s, t] > 0, (s, t)
        assert np.all(r.steps_run[:, s, t] == 40)
      else:  # Diagonal, unmeasured and failed pairs.
        assert np.isnan(r.matrix[s, t]) and np.all(np.isnan(r.per_seed[:, s, t])), (s, t)
        if (s, t) != (0, 3):
          assert np.all(r.steps_run[:, s, t] == 0)
  assert np.all(np.isnan(np.diag(r.matrix)))


def test_measure_distance_is_the_minimum_over_seeds_and_lists_failures(tiny_result):
  r = tiny_result
  np.testing.assert_array_equal(r.matrix, np.fmin(r.per_seed[0], r.per_seed[1]))
  # The two seeds really differ, so the minimum is not just one seed's matrix.
  assert not np.array_equal(r.per_seed[0], r.per_seed[1], equal_nan=True)
  assert r.failures == [(0, 3)]  # Class 3 is unreachable.
  np.testing.assert_allclose(r.mean, np.mean([r.matrix[0, 1], r.matrix[1, 0], r.matrix[2, 1]]))
  assert r.seeds == (1, 2) and r.split == "val"
  assert r.samples_per_class == {0: 6, 1: 6, 2: 6, 3: 6}
  assert r.settings["steps"] == 40 and r.settings["samples"] == 6
  payload = r.to_json()
  assert payload["failures"] == [[0, 3]] and payload["pairs"] == [[0, 1], [1, 0], [2, 1], [0, 3]]
  assert payload["mean"] == r.mean and payload["samples_per_class"]["0"] == 6


def test_measure_distance_rejects_bad_pairs(tiny_problem):
  model, x, y = tiny_problem
  settings = engine.InversionSettings(steps=1)
  for pair in [(1, 1), (0, 4), (-1, 2)]:
    with pytest.raises(ValueError, match="not a pair"):
      distance.measure_distance(model, x, y, 4, settings, seeds=(1,), pairs=[pair], verbose=False)
  with pytest.raises(ValueError, match="no held-out images of class 2"):
    distance.measure_distance(model, x[y != 2], y[y != 2], 4, settings, seeds=(1,),
                              pairs=[(2, 0)], verbose=False)


# -------------------------------------------------------------------------------------------------
# measure_distance with a fake inverter: sizes set by hand per (seed, pair).

_NAN = float("nan")
_SIZES = {  # seed -> {pair: size}; NaN = that seed failed.
    10: {(0, 1): 5.0, (1, 0): _NAN, (1, 2): 2.0, (2, 0): _NAN},
    20: {(0, 1): 3.0, (1, 0): 7.0, (1, 2): 4.0, (2, 0): _NAN},
}


class _FakeInverter:
  calls = []

  def __init__(self, model, settings):
    self.settings = settings

  def invert(self, images, targets, seeds, progress=None):
    table = {distance.stable_seed(seed, s, t): size
             for seed, sizes in _SIZES.items() for (s, t), size in sizes.items()}
    _FakeInverter.calls.append((list(targets), list(seeds), images))
    size = np.array([table[v] for v in seeds])
    k = len(images)
    if progress is not None:
      progress(1, k, k)
    return engine.InversionResult(
        mask=np.zeros((k, 2, 2)), pattern=np.zeros((k, 2, 2, 1)), size=size,
        success=np.isfinite(size), steps_run=np.full(k, 9), final_cost=np.zeros(k),
        loss_start=np.zeros(0), loss_end=np.zeros(0), sample_direction=np.zeros(0, int))


def test_min_over_seeds_failures_and_grouping_with_hand_set_sizes(monkeypatch):
  monkeypatch.setattr(distance.engine, "TriggerInverter", _FakeInverter)
  _FakeInverter.calls = []
  rng = np.random.default_rng(1)
  y = np.repeat(np.arange(3), 8)
  x = rng.uniform(0, 1, (24, 2, 2, 1)).astype(np.float32)
  pairs = [(0, 1), (1, 0), (1, 2), (2, 0)]
  r = distance.measure_distance(None, x, y, 3, engine.InversionSettings(steps=5), seeds=(10, 20),
                                samples=3, pairs=pairs, batch_directions=3, verbose=True)
  expected = np.full((3, 3), np.nan)
  expected[0, 1], expected[1, 0], expected[1, 2] = 3.0, 7.0, 2.0  # Per-pair min over seeds.
  np.testing.assert_array_equal(r.matrix, expected)
  assert r.failures == [(2, 0)]  # Failed for every seed: a failure, not a 0.
  assert r.mean == pytest.approx(4.0)  # (3 + 7 + 2) / 3: the failure is excluded.
  assert np.isnan(r.per_seed[0, 1, 0]) and r.per_seed[1, 1, 0] == 7.0
  assert r.steps_run[0, 0, 1] == 9 and r.steps_run[0, 2, 1] == 0
  # batch_directions=3: per seed a call of 3 directions and one of 1, each with its own images.
  assert [len(c[0]) for c in _FakeInverter.calls] == [3, 1, 3, 1]
  targets, seeds, images = _FakeInverter.calls[0]
  assert targets == [1, 0, 2]
  stable_seed = distance.stable_seed
  assert seeds == [stable_seed(10, s, t) for s, t in pairs[:3]]
  for (s, t), im in zip(pairs[:3], images):
    np.testing.assert_array_equal(im, distance.direction_images(x, y, s, t, 10, 3))


# -------------------------------------------------------------------------------------------------
# enlargement, format_matrix, heatmap_png.


def test_enlargement_hand_computed():
  nan = np.nan
  base_m = np.array([[nan, 1.0, 4.0], [2.0, nan, nan], [0.0, 5.0, nan]])
  new_m = np.array([[nan, 2.0, 4.0], [nan, nan, 3.0], [1.0, 5.0, nan]])
  out = distance.enlargement(base_m, new_m)
  # Compared: (0,1) 1 -> 2 (+100%), (0,2) 4 -> 4, (2,1) 5 -> 5. Excluded: (1,0) failed in `new`,
  # (1,2) failed in `base`, (2,0) base 0 (relative change undefined), the diagonal.
  assert out["pairs_compared"] == 3
  assert out["mean_relative_change"] == pytest.approx(1.0 / 3.0)
  assert out["ratio_of_means"] == pytest.approx((2 + 4 + 5) / (1 + 4 + 5) - 1.0)  # 0.1
  expected = np.full((3, 3), np.nan)
  expected[0, 1], expected[0, 2], expected[2, 1] = 1.0, 0.0, 0.0
  np.testing.assert_array_equal(out["per_pair"], expected)


def test_enlargement_edge_cases():
  with pytest.raises(ValueError, match="shape"):
    distance.enlargement(np.zeros((3, 3)), np.zeros((4, 4)))
  nothing = distance.enlargement(np.full((2, 2), np.nan), np.ones((2, 2)))
  assert nothing["pairs_compared"] == 0
  assert np.isnan(nothing["mean_relative_change"]) and np.isnan(nothing["ratio_of_means"])
  same = distance.enlargement(np.array([[np.nan, 2.0], [3.0, np.nan]]),
                              np.array([[np.nan, 2.0], [3.0, np.nan]]))
  assert same["mean_relative_change"] == 0.0 and same["ratio_of_means"] == 0.0


def test_format_matrix():
  m = np.array([[np.nan, 1.5, np.nan], [2.25, np.nan, 10.0], [0.0, 3.0, np.nan]])
  text = distance.format_matrix(m)
  lines = text.splitlines()
  assert len(lines) == 4
  assert lines[0].split() == ["src\\tgt", "0", "1", "2"]
  assert lines[1].split() == ["0", "-", "1.50", "."]  # Diagonal "-", missing ".".
  assert lines[2].split() == ["1", "2.25", "-", "10.00"]
  assert lines[3].split() == ["2", "0.00", "3.00", "-"]
  assert len({len(line) for line in lines}) == 1  # Columns line up.
  assert distance.format_matrix(100 * m, fmt="{:+7.1f}").splitlines()[2].split()[1] == "+225.0"


def test_heatmap_png():
  m = np.array([[np.nan, 1.0, 3.0], [2.0, np.nan, np.nan], [1.0, 3.0, np.nan]])
  png = distance.heatmap_png(m, cell=5)
  assert png[:8] == b"\x89PNG\r\n\x1a\n"
  img = tf.io.decode_png(png).numpy()
  assert img.shape == (15, 15, 3)
  cell = lambda s, t: img[5 * s + 2, 5 * t + 2].tolist()
  assert cell(0, 0) == cell(1, 1) == [128, 128, 128]  # Diagonal: grey.
  assert cell(1, 2) == [0, 0, 0]  # Missing: black.
  assert cell(0, 1) == cell(2, 0) == [68, 1, 84]  # Smallest: dark blue.
  assert cell(0, 2) == cell(2, 1) == [253, 231, 37]  # Largest: yellow.
  assert cell(1, 0) == [33, 145, 140]  # Middle: teal.
  # Every pixel of a cell has the cell's colour.
  assert np.all(img[5:10, 0:5] == np.array([33, 145, 140], np.uint8))
  # A matrix with nothing measured still gives a valid image.
  assert tf.io.decode_png(distance.heatmap_png(np.full((2, 2), np.nan), cell=3)).shape == (6, 6, 3)
