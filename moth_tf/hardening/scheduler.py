"""Epsilon-greedy K-arm bandit that picks the class pair MOTH hardens next.

MOTH (Tao et al., IEEE S&P 2022) spends each three-batch "period" after the warm-up on one pair of
classes. The arms are the n(n-1)/2 unordered pairs. The scheduler blends two per-direction
matrices (reference spec sections 2.3 and 2.4.2 step 3):

* `prior` (U): from the warm-up, how quickly a universal trigger toward each target moved each
  source class (mean relative loss decrease). It is only a prior, and it fades out as training goes
  on.
* `reward` (V): an exponentially decayed (factor 1/2) relative growth of the average trigger size
  per direction. A pair whose class distance grew fast in its last period is worth hardening again.

The greedy score of the pair {s, t} is `(1 - alpha) * (U + U^T) + alpha * (V + V^T)`, where
alpha = min(step / alpha_steps, 1) ramps linearly from the prior to the reward. With probability
epsilon the scheduler explores instead and returns a uniformly random ordered pair.

Deviations from the authors' code, all deliberate bug fixes:

* `size` and `reward` are separate arrays; nothing is aliased.
* A failed universal trigger (size 0 or NaN) gets a prior of 0 rather than the maximal
  "speed" 1, its direction is treated as "size unknown" and no division by zero can happen. When
  every universal trigger failed, the initial reward stays all zeros instead of becoming NaN.
* The diagonal is masked out before the argmax, so s != t always.

Ablations (HardenConfig.schedule, `make_scheduler`): PriorOnlyScheduler (U alone, alpha = 0),
RewardOnlyScheduler (V alone, alpha = 1), both still exploring with probability epsilon;
RandomPairScheduler (uniformly random pairs: the exploration branch at every choice) and
RoundRobinScheduler (the pairs of a round-robin tournament in turn, cycling). All keep this class's
interface and state, including `choose`'s `exclude` (the pairs of one period share no class).

The scheduler is pure NumPy. Its state (`state_dict`) is a dict of NumPy arrays, so it can be kept
in `tf.Variable`s or an `.npz` file and restored exactly, including the random stream.
"""

import math
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

_ARRAY_KEYS = ("prior", "size", "reward", "count")


def _is_valid_size(value) -> bool:
  """True if `value` is a usable (finite, strictly positive) trigger size."""
  if value is None:
    return False
  value = float(value)
  return math.isfinite(value) and value > 0.0


class PairScheduler:
  """Epsilon-greedy K-arm bandit over the unordered class pairs of an n-class model.

  Typical use by the hardening driver:

    scheduler = PairScheduler(num_classes)
    scheduler.set_prior(U, universal_sizes)          # once, after the warm-up
    for period in ...:
      s, t = scheduler.choose(step)                  # step: post-warm-up training step
      ...                                            # harden (s, t) for one period
      scheduler.update(s, t, avg_size_st, avg_size_ts)

  Attributes:
    num_classes: number of classes n.
    epsilon: probability of picking a random pair instead of the greedy one.
    alpha_steps: number of post-warm-up steps over which the score moves from U to V.
    seed: seed of the random stream (part of the saved state).
    prior: [n, n] float64, U[s, t] for the direction s -> t; zero diagonal.
    size: [n, n] float64, last average trigger size of s -> t; 0 means unknown.
    reward: [n, n] float64, V[s, t] for the direction s -> t; zero diagonal.
    count: [n, n] float64, how often the unordered pair {s, t} was chosen; symmetric.
    num_choices: how many times `choose` has been called.
  """

  def __init__(self, num_classes: int, epsilon: float = 0.3, alpha_steps: int = 1000,
               seed: int = 0):
    """Creates a scheduler with all-zero matrices.

    Args:
      num_classes: number of classes, at least 2.
      epsilon: exploration probability in [0, 1] (reference: 0.3).
      alpha_steps: steps for alpha to reach 1, > 0 (reference: 1000, i.e. alpha = 0.1 * t / 100).
      seed: non-negative integer seed of the random stream.

    Raises:
      ValueError: if an argument is out of range.
    """
    if int(num_classes) != num_classes or num_classes < 2:
      raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if not 0.0 <= epsilon <= 1.0:
      raise ValueError(f"epsilon must be in [0, 1], got {epsilon!r}")
    if alpha_steps <= 0:
      raise ValueError(f"alpha_steps must be > 0, got {alpha_steps!r}")
    self.num_classes = int(num_classes)
    self.epsilon = float(epsilon)
    self.alpha_steps = alpha_steps
    self.seed = self._check_seed(seed)
    n = self.num_classes
    self.prior = np.zeros((n, n), np.float64)
    self.size = np.zeros((n, n), np.float64)
    self.reward = np.zeros((n, n), np.float64)
    self.count = np.zeros((n, n), np.float64)
    self.num_choices = 0

  @staticmethod
  def _check_seed(seed) -> int:
    if int(seed) != seed or seed < 0:
      raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)

  @property
  def num_pairs(self) -> int:
    """Number of arms, n(n-1)/2."""
    return self.num_classes * (self.num_classes - 1) // 2

  def _check_pair(self, s, t) -> Tuple[int, int]:
    s, t = int(s), int(t)
    n = self.num_classes
    if not (0 <= s < n and 0 <= t < n) or s == t:
      raise ValueError(f"({s}, {t}) is not a pair of distinct classes in [0, {n})")
    return s, t

  def set_prior(self, prior: np.ndarray, universal_sizes: Sequence[Optional[float]]) -> None:
    """Initialises U, the sizes and V from the warm-up's universal triggers.

    Args:
      prior: [n, n] array; prior[i, t] is the mean relative loss decrease of the class-i samples
        while inverting the universal trigger toward t. The diagonal is ignored.
      universal_sizes: n values; universal_sizes[t] is the size (3-channel L1 of the mask) of the
        universal trigger toward t. 0, a negative value, NaN or None means the inversion failed.

    Sets, for every i != t:
      * prior[i, t] = U[i, t] if the trigger toward t succeeded, else 0. The reference's failed
        triggers report a loss decrease of 1 and so look maximally fast; a failed inversion
        says nothing about how close the classes are, so it gets no prior. Non-finite U entries are
        also replaced by 0.
      * size[i, t] = universal_sizes[t], or 0 ("unknown") if it failed.
      * reward[i, t] = size[i, t] / max(size), as the reference does on the first post-warm-up
        step. This mixes units with the later relative-growth rewards: V starts as a
        normalised distance in [0, 1] and becomes an EMA of relative growth as pairs are updated.
        It is kept to match the reference's early choices. When every trigger failed, max(size) is
        0 and V stays all zeros (the reference divides by zero).
    The diagonals stay 0. `count` and the number of choices are not touched.

    Raises:
      ValueError: if the shapes do not match num_classes.
    """
    n = self.num_classes
    prior = np.array(prior, dtype=np.float64)  # A copy: never alias the caller's array.
    if prior.shape != (n, n):
      raise ValueError(f"prior must have shape {(n, n)}, got {prior.shape}")
    if len(universal_sizes) != n:
      raise ValueError(f"universal_sizes must have {n} entries, got {len(universal_sizes)}")
    ok = np.array([_is_valid_size(v) for v in universal_sizes])
    sizes = np.array([float(v) if good else 0.0 for v, good in zip(universal_sizes, ok)])
    off_diagonal = ~np.eye(n, dtype=bool)

    prior[~np.isfinite(prior)] = 0.0
    prior[:, ~ok] = 0.0
    prior[~off_diagonal] = 0.0
    self.prior = prior

    # Column t holds the size of the universal trigger toward t, the same for every source i.
    self.size = np.where(off_diagonal, sizes[np.newaxis, :], 0.0)
    largest = self.size.max()
    if largest > 0.0:
      self.reward = self.size / largest
    else:
      self.reward = np.zeros((n, n), np.float64)

  def alpha(self, step: int) -> float:
    """Weight of the reward V against the prior U at a post-warm-up step.

    Args:
      step: number of post-warm-up training steps done before this one (0 at the first).

    Returns:
      min(step / alpha_steps, 1).

    Raises:
      ValueError: if step is negative.
    """
    if step < 0:
      raise ValueError(f"step must be >= 0, got {step!r}")
    return min(float(step) / self.alpha_steps, 1.0)

  def scores(self, step: int) -> np.ndarray:
    """Symmetric greedy score of every pair at `step`, with -inf on the diagonal.

    Args:
      step: post-warm-up training step, as for `alpha`.

    Returns:
      [n, n] float64 array (1 - alpha) * (U + U^T) + alpha * (V + V^T), diagonal set to -inf.
    """
    alpha = self.alpha(step)
    # Skip a term whose weight is 0 so that a huge entry in the other matrix cannot turn into NaN.
    score = np.zeros((self.num_classes, self.num_classes), np.float64)
    if alpha < 1.0:
      score += (1.0 - alpha) * (self.prior + self.prior.T)
    if alpha > 0.0:
      score += alpha * (self.reward + self.reward.T)
    # The reference could pick s == t when every off-diagonal score is negative.
    np.fill_diagonal(score, -np.inf)
    return score

  def _rng(self) -> np.random.Generator:
    # A fresh generator per choice, keyed by (seed, number of choices so far): the saved state
    # then only needs the two integers, and a restored scheduler continues the same sequence
    # independently of NumPy's bit-generator state format.
    return np.random.default_rng([self.seed, self.num_choices])

  def choose(self, step: int, exclude: Sequence[int] = ()) -> Tuple[int, int]:
    """Picks the pair for the next period and counts it.

    Args:
      step: post-warm-up training step (0 at the first); sets alpha.
      exclude: classes that may not be part of the pair (those of pairs already chosen for the
        same period, see `choose_many`).

    Returns:
      (s, t), two distinct class indices. Greedy picks are the first maximum of `scores(step)` in
      row-major order, hence s < t. Random picks (probability epsilon) are a uniformly random
      ordered pair, so s > t is possible.

    Raises:
      ValueError: if fewer than two classes are left once `exclude` is removed.
    """
    excluded = sorted({int(c) for c in exclude})
    free = np.setdiff1d(np.arange(self.num_classes), excluded)
    if len(free) < 2:
      raise ValueError(f"no pair is left: {len(excluded)} of {self.num_classes} classes excluded")
    rng = self._rng()
    if rng.random() < self.epsilon:
      # With nothing excluded `free` is arange(n): the same draw as choice(n) (checked).
      s, t = rng.choice(free, size=2, replace=False)
    else:
      score = self.scores(step)
      score[excluded, :] = -np.inf
      score[:, excluded] = -np.inf
      s, t = np.unravel_index(np.argmax(score), score.shape)
    s, t = int(s), int(t)
    self.count[s, t] += 1.0
    self.count[t, s] += 1.0
    self.num_choices += 1
    return s, t

  def choose_many(self, step: int, count: int):
    """Picks `count` pairs with no class in common for one period (several pairs per period).

    The pairs are chosen one after another by `choose`, each excluding the classes of those before
    it: the greedy picks are the best disjoint pairs in score order, and each pick still explores
    with probability epsilon. count=1 is exactly `choose`.

    Returns:
      A list of `count` (s, t) tuples.

    Raises:
      ValueError: if 2 * count exceeds the number of classes.
    """
    if not 1 <= count <= self.num_classes // 2:
      raise ValueError(f"{count} disjoint pairs per period need at least {2 * count} classes; "
                       f"this model has {self.num_classes}")
    pairs = []
    for _ in range(count):
      pairs.append(self.choose(step, exclude=[c for pair in pairs for c in pair]))
    return pairs

  def update(self, s: int, t: int, avg_size_st: Optional[float],
             avg_size_ts: Optional[float]) -> None:
    """Updates sizes and rewards at the end of a period on the pair (s, t).

    For each direction d in {(s, t), (t, s)} with new average trigger size a:
      * a is None, NaN, inf or <= 0 (no successful generation in the period): d is unchanged.
      * size[d] <= 0 (size unknown, i.e. the universal trigger failed): size[d] = a and reward[d]
        is unchanged. There is no earlier size to measure growth against, so the first
        measurement only sets the baseline. (The reference instead makes V an alias of the size
        matrix here, and can later divide by zero.)
      * otherwise: reward[d] = (reward[d] + (a - size[d]) / size[d]) / 2, then size[d] = a. (A
        growth that overflows to inf, possible only for a denormal old size, is not added.)

    Args:
      s: source class of the period.
      t: target class of the period.
      avg_size_st: average size of the s -> t triggers over the period.
      avg_size_ts: average size of the t -> s triggers over the period.

    Raises:
      ValueError: if (s, t) is not a pair of distinct classes.
    """
    s, t = self._check_pair(s, t)
    for (i, j), new_size in (((s, t), avg_size_st), ((t, s), avg_size_ts)):
      if not _is_valid_size(new_size):
        continue
      new_size = float(new_size)
      old_size = self.size[i, j]
      if old_size > 0.0:
        growth = (new_size - old_size) / old_size
        # Only overflows for a denormal old size; never let an inf reach the scores.
        if math.isfinite(growth):
          self.reward[i, j] = 0.5 * (self.reward[i, j] + growth)
      self.size[i, j] = new_size

  def state_dict(self) -> Dict[str, np.ndarray]:
    """Returns the complete mutable state as copies.

    Returns:
      Dict with float64 [n, n] arrays "prior", "size", "reward", "count" and int64 scalars
      "num_choices" and "seed". Hyper-parameters (epsilon, alpha_steps) are configuration and are
      not included.
    """
    state = {key: getattr(self, key).copy() for key in _ARRAY_KEYS}
    state["num_choices"] = np.array(self.num_choices, np.int64)
    state["seed"] = np.array(self.seed, np.int64)
    return state

  def load_state_dict(self, state: Dict[str, np.ndarray]) -> None:
    """Restores a state produced by `state_dict`; later choices continue the saved sequence.

    Args:
      state: mapping with the keys of `state_dict`; values may be NumPy arrays, tensors with a
        `numpy()` method or anything `np.asarray` accepts.

    Raises:
      ValueError: if a key is missing, a matrix has the wrong shape or holds non-finite values.
    """
    n = self.num_classes
    missing = [k for k in _ARRAY_KEYS + ("num_choices", "seed") if k not in state]
    if missing:
      raise ValueError(f"scheduler state lacks {missing}")

    def as_numpy(value):
      return np.asarray(value.numpy() if hasattr(value, "numpy") else value)

    arrays = {}
    for key in _ARRAY_KEYS:
      value = np.array(as_numpy(state[key]), dtype=np.float64)  # A copy, never an alias.
      if value.shape != (n, n):
        raise ValueError(f"state[{key!r}] must have shape {(n, n)}, got {value.shape}")
      if not np.all(np.isfinite(value)):
        raise ValueError(f"state[{key!r}] holds non-finite values")
      arrays[key] = value
    num_choices = int(as_numpy(state["num_choices"]))
    if num_choices < 0:
      raise ValueError(f"num_choices must be >= 0, got {num_choices}")
    seed = self._check_seed(int(as_numpy(state["seed"])))
    for key, value in arrays.items():
      setattr(self, key, value)
    self.num_choices = num_choices
    self.seed = seed


# ------------------------------------------------------------------------------------------------
# Ablations of the K-arm scheduler (HardenConfig.schedule). Each keeps PairScheduler's interface
# and state (so MothHardener drives and checkpoints it unchanged) and changes only how a pair is
# picked; `update` still keeps the sizes and V up to date, so the logs compare across schedules.


class PriorOnlyScheduler(PairScheduler):
  """The K-arm scheduler scoring pairs by the warm-up's prior U alone (alpha stays 0).

  It still explores with probability epsilon; V is kept up to date but never used.
  """

  def alpha(self, step: int) -> float:
    super().alpha(step)  # Validates the step.
    return 0.0


class RewardOnlyScheduler(PairScheduler):
  """The K-arm scheduler scoring pairs by the reward V alone (alpha is 1 from the first step).

  It still explores with probability epsilon; V starts as the warm-up's normalised universal
  trigger sizes (PairScheduler.set_prior), so its first greedy picks follow them.
  """

  def alpha(self, step: int) -> float:
    super().alpha(step)
    return 1.0


class RandomPairScheduler(PairScheduler):
  """Uniformly random pairs: PairScheduler's exploration branch at every choice (epsilon = 1).

  The draw is PairScheduler's, keyed by (seed, number of choices), so a seed fixes the sequence
  and a restored scheduler continues it.
  """

  def __init__(self, num_classes: int, alpha_steps: int = 1000, seed: int = 0):
    """Args: as PairScheduler's, without epsilon (always 1)."""
    super().__init__(num_classes, epsilon=1.0, alpha_steps=alpha_steps, seed=seed)


def tournament_order(num_classes: int):
  """Every unordered pair (s < t) once, round after round of a round-robin tournament.

  The circle method: class n-1 (for odd n, a "bye") stays put while the others rotate; each round
  is up to n // 2 pairs with no class in common, and the n - 1 rounds (n for odd n) hold every pair
  exactly once. So any run of consecutive pairs inside one round shares no class.
  """
  n = int(num_classes)
  m = n + (n % 2)  # An odd n gets a bye, the class index n, whose pairs are dropped.
  order = []
  for r in range(m - 1):
    ring = [(k + r) % (m - 1) for k in range(m - 1)]
    pairs = [(ring[0], m - 1)] + [(ring[k], ring[m - 1 - k]) for k in range(1, m // 2)]
    order += [(min(a, b), max(a, b)) for a, b in pairs if max(a, b) < n]
  return order


class RoundRobinScheduler(PairScheduler):
  """The pairs in a fixed order, cycling: a round-robin tournament's (`tournament_order`).

  Each pick is the least-visited pair with no class in `exclude`, ties in the fixed order. With one
  pair per period that is the fixed order, then the same again; with several pairs per period
  (`choose_many`) a period takes the next pairs of a round (which share no class), so every pair
  gets its turn before any gets a second one when the pairs per period divide n // 2. The visit
  counts are PairScheduler's `count`, so the order survives a checkpoint without state of its own.
  No randomness: the seed is kept only for the interface.
  """

  def __init__(self, num_classes: int, alpha_steps: int = 1000, seed: int = 0):
    """Args: as PairScheduler's, without epsilon (unused)."""
    super().__init__(num_classes, epsilon=0.0, alpha_steps=alpha_steps, seed=seed)
    self.order = tournament_order(self.num_classes)

  def choose(self, step: int, exclude: Sequence[int] = ()) -> Tuple[int, int]:
    """The least-visited pair (s < t) with neither class in `exclude`; ties in the fixed order.

    Raises:
      ValueError: if fewer than two classes are left once `exclude` is removed.
    """
    self.alpha(step)  # Validates the step.
    excluded = {int(c) for c in exclude}
    if self.num_classes - len(excluded & set(range(self.num_classes))) < 2:
      raise ValueError(f"no pair is left: {len(excluded)} of {self.num_classes} classes excluded")
    candidates = [(self.count[s, t], rank, s, t) for rank, (s, t) in enumerate(self.order)
                  if s not in excluded and t not in excluded]
    _, _, s, t = min(candidates)
    self.count[s, t] += 1.0
    self.count[t, s] += 1.0
    self.num_choices += 1
    return s, t


def make_scheduler(schedule: str, num_classes: int, epsilon: float = 0.3,
                   alpha_steps: int = 1000, seed: int = 0) -> PairScheduler:
  """The pair scheduler of a HardenConfig.schedule value.

  Args:
    schedule: "karm" (PairScheduler), "prior_only", "reward_only", "random" or "round_robin".
    num_classes, epsilon, alpha_steps, seed: as PairScheduler's (epsilon only for the K-arm
      schedules: karm, prior_only, reward_only).

  Raises:
    ValueError: an unknown schedule, or an argument out of range.
  """
  if schedule == "karm":
    return PairScheduler(num_classes, epsilon, alpha_steps, seed=seed)
  if schedule == "prior_only":
    return PriorOnlyScheduler(num_classes, epsilon, alpha_steps, seed=seed)
  if schedule == "reward_only":
    return RewardOnlyScheduler(num_classes, epsilon, alpha_steps, seed=seed)
  if schedule == "random":
    return RandomPairScheduler(num_classes, alpha_steps, seed=seed)
  if schedule == "round_robin":
    return RoundRobinScheduler(num_classes, alpha_steps, seed=seed)
  raise ValueError(f"schedule must be karm, prior_only, reward_only, random or round_robin, got "
                   f"{schedule!r}")
