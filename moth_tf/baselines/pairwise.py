"""`--method=pairwise`: MOTH's pair hardening for every class pair in turn (the paper's "Pairwise").

No warm-up and no K-arm scheduler: the n(n-1)/2 unordered pairs are visited once each, in a fixed
order shuffled with `--seed`. A pair is hardened in periods of `period` steps exactly as a MOTH
period (both directions' triggers regenerated every step, warm-started from their latest successful
ones, `pair_steps` at `pair_cost` first and after a failure, `fast_steps` at `fast_cost` while both
succeed; stamped on `portion` of each class's batch images; replay as configured).

When a pair is done (the criterion): after every period, the pair's size -- the sum of its two
directions' period-average trigger sizes -- is compared with the largest size the pair reached in
an earlier period. The pair is done when, for `pairwise_patience` (10) periods in a row, it did
not exceed that by more than `pairwise_tol` (5%) -- its two triggers stopped growing -- or after
`pairwise_max_periods` (100) periods. Then the next pair starts; the run ends after the last pair.
The sum, not each direction: on digits the two directions of a pair trade size back and forth
from period to period (one grows while the other shrinks) while their sum keeps rising for tens of
periods, and a per-direction test ends most pairs after a few periods of that noise.

The budget is therefore whatever the sweep needs (`--harden_steps` does not apply); the learning
rate ramps up as in MOTH and then stays constant, since the run's length is not known in advance.
"""


import numpy as np

from moth_tf import config as config_lib
from moth_tf.hardening import moth


class SweepScheduler:
  """Visits every unordered class pair once, in a seeded random order, each until it plateaus.

  It has PairScheduler's interface (choose / update / state_dict / load_state_dict / count /
  reward), so MothHardener drives it unchanged, plus `finished`, which ends the fit. Its state fits
  PairScheduler's arrays (so the same model variables checkpoint it): `size` holds the two
  directions' period-average sizes in the period where the pair's sum was largest, `count` the
  periods each pair got, and `reward` (unused by the sweep) the current pair's position in the
  order, its periods and its periods without growth: on the diagonal, or with n = 2 (a 2 x 2
  matrix) in [0, 0], [1, 1] and [0, 1].
  """

  def __init__(self, num_classes: int, tol: float = 0.05, patience: int = 10,
               max_periods: int = 100, seed: int = 0):
    self.num_classes = n = int(num_classes)
    self.tol, self.patience, self.max_periods = float(tol), int(patience), int(max_periods)
    self.seed = int(seed)
    pairs = [(s, t) for s in range(n) for t in range(s + 1, n)]
    self.order = [pairs[i] for i in np.random.default_rng(self.seed).permutation(len(pairs))]
    self.size = np.zeros((n, n), np.float64)
    self.count = np.zeros((n, n), np.float64)
    self.reward = np.zeros((n, n), np.float64)  # Unused by the sweep; kept for the logs.
    self.prior = np.zeros((n, n), np.float64)
    self.num_choices = 0
    self.position = 0
    self.periods = 0
    self.stale = 0
    self.finished = False

  @property
  def num_pairs(self) -> int:
    return len(self.order)

  def choose(self, step: int):
    """The pair of the next period: the current one of the sweep."""
    del step
    self.num_choices += 1
    return self.order[min(self.position, len(self.order) - 1)]

  def update(self, s: int, t: int, size_st: float, size_ts: float) -> None:
    """Records a period of (s, t); moves to the next pair when this one stopped growing."""
    self.count[s, t] += 1
    self.count[t, s] += 1
    self.periods += 1
    best = self.size[s, t] + self.size[t, s]
    if size_st + size_ts > best:  # `size` keeps the period with the largest pair size.
      self.size[s, t], self.size[t, s] = size_st, size_ts
    grew = size_st + size_ts > best * (1.0 + self.tol)
    self.stale = 0 if grew else self.stale + 1
    if self.stale >= self.patience or self.periods >= self.max_periods:
      self.position += 1
      self.periods = self.stale = 0
      self.finished = self.position >= len(self.order)

  def _state_slots(self):
    """Where `reward` holds (position, periods, stale) in the checkpointed state.

    n = 2 used to keep none of the three and to restore the position as 1 (finished) once the only
    pair had a period: a two-class run interrupted in the middle of its pair resumed as finished
    and ended after one step. A 2 x 2 `reward` has room for all three off the diagonal too.
    """
    return ((0, 0), (1, 1), (2, 2)) if self.num_classes >= 3 else ((0, 0), (1, 1), (0, 1))

  def state_dict(self):
    reward = self.reward.copy()
    for slot, value in zip(self._state_slots(), (self.position, self.periods, self.stale)):
      reward[slot] = value
    return {"prior": self.prior.copy(), "size": self.size.copy(), "reward": reward,
            "count": self.count.copy(), "num_choices": np.array(self.num_choices, np.int64),
            "seed": np.array(self.seed, np.int64)}

  def load_state_dict(self, state):
    self.size = np.array(state["size"], np.float64)
    self.count = np.array(state["count"], np.float64)
    reward = np.array(state["reward"], np.float64)
    self.position, self.periods, self.stale = (int(reward[slot]) for slot in self._state_slots())
    self.num_choices = int(state["num_choices"])
    self.finished = self.position >= len(self.order)

  def cap_steps(self, period: int) -> int:
    """The most training steps the sweep can take (every pair at `max_periods`)."""
    return len(self.order) * self.max_periods * period


def describe(config: config_lib.HardenConfig, num_train: int, pgd_settings=None) -> str:
  del pgd_settings, num_train
  return (f"Pairwise: every class pair once, in a shuffled order, periods of {config.moth.period} "
          f"steps until its two trigger sizes together grow by no more than "
          f"{config.pairwise.tol:.0%} for {config.pairwise.patience} periods (at most "
          f"{config.pairwise.max_periods}); batch "
          f"{config.batch_size}, SGD lr {config.learning_rate} (ramp {config.lr_warmup_steps} "
          f"steps, then constant), {100 * config.moth.portion:g}% of each pair class stamped, "
          f"replay {config.moth.replay:.0%}")


def wrap(classifier, num_classes: int, config: config_lib.HardenConfig, samples, **kwargs):
  """A StampingModel whose `fit` runs the Pairwise sweep (moth_tf.hardening.moth.wrap); the sweep
  ends the fit itself once every pair has stopped growing (give `fit` epochs enough)."""
  config = config_lib.replace(config, {"pairs_per_period": 1})
  sweep = SweepScheduler(num_classes, config.pairwise.tol, config.pairwise.patience,
                         config.pairwise.max_periods, seed=config.seed)
  return moth.wrap(classifier, num_classes, config, samples,
                   hardener_kwargs={"scheduler": sweep, "warmup": False}, **kwargs)


def harden(classifier_factory, splits, config: config_lib.HardenConfig, run_dir: str,
           strategy=None, verbose: int = 1, pgd_settings=None):
  """Hardens a copy of the classifier pair by pair; returns (classifier, results).

  Pairwise hardens one pair at a time by definition: `pairs_per_period` is taken as 1.
  """
  config = config_lib.replace(config, {"pairs_per_period": 1})
  sweep = SweepScheduler(splits.num_classes, config.pairwise.tol, config.pairwise.patience,
                         config.pairwise.max_periods, seed=config.seed)
  steps_per_epoch = config.steps_per_epoch_for(splits.num_train)
  epochs = -(-sweep.cap_steps(config.moth.period) // steps_per_epoch)
  classifier, results = moth.harden(
      classifier_factory, splits, config, run_dir, strategy=strategy, verbose=verbose,
      pgd_settings=pgd_settings, hardener_kwargs={"scheduler": sweep, "warmup": False},
      epochs=epochs, lr_decay="constant", log_name="harden_pairwise")
  periods = sweep.count[np.triu_indices(splits.num_classes, 1)]
  results["pairwise"] = {
      "pairs": sweep.num_pairs, "pairs_finished": min(sweep.position, sweep.num_pairs),
      "finished": bool(sweep.finished), "order": [list(p) for p in sweep.order],
      "periods_per_pair_mean": float(periods.mean()), "periods_per_pair_max": int(periods.max()),
      "periods_per_pair_min": int(periods.min()),
      "stopped_at_max_periods": int((periods >= config.pairwise.max_periods).sum()),
      "criterion": {"tol": config.pairwise.tol, "patience": config.pairwise.patience,
                    "max_periods": config.pairwise.max_periods}}
  return classifier, results
