"""The checkpointed state of MOTH's driver (moth_tf.hardening.driver): what a resumed run needs.

The driver keeps its state on the host (trigger store, scheduler, counters, the period in
progress); at every epoch end `save` copies it into the StampingModel's non-trainable variables,
which Keras's BackupAndRestore checkpoints with the weights, and a resumed run's first step `load`s
it back, so that it continues the period it was in and reports the counters of the whole run.
"""

import dataclasses

import numpy as np



@dataclasses.dataclass
class DriverState:
  """The driver's counters and the period in progress, checkpointed at every epoch end.

  The pair and its current triggers are checkpointed apart (StampingModel's pair_classes,
  pair_masks, pair_patterns; the step stamped them), as are the trigger store, the scheduler and
  the trigger sizes of the period's steps so far.

  Attributes:
    fast, rollback, warm_fast, reused, generations: generations (or steps without one) of each
      kind: per pair when two-sided, per direction when one-sided.
    failed_directions: generations of a direction that missed the ASR bound.
    engine_calls: batched engine calls; inversion_steps: their longest direction's steps, summed.
    generation_seconds, warmup_seconds: host time spent generating triggers, and in the warm-up.
    period_pos: steps done in the current period; in_period: 1 inside a period, else 0.
    failed_last: 1 if a direction of the period's last generation failed (it rolls back next).
    period_steps_done: trigger sizes recorded in the current period.
  """
  fast: float = 0.0
  rollback: float = 0.0
  failed_directions: float = 0.0
  generations: float = 0.0
  generation_seconds: float = 0.0
  warmup_seconds: float = 0.0
  period_pos: float = 0.0
  in_period: float = 0.0
  failed_last: float = 0.0
  period_steps_done: float = 0.0
  warm_fast: float = 0.0
  reused: float = 0.0
  engine_calls: float = 0.0
  inversion_steps: float = 0.0

  # StampingModel.driver_state is a float32 vector: the fields in the order above, then zeros. The
  # layout is the checkpoint format, so append new fields at the end only (older checkpoints then
  # resume with zeros in them).
  def to_vector(self, size: int) -> np.ndarray:
    values = [getattr(self, field.name) for field in dataclasses.fields(self)]
    vector = np.zeros((size,), np.float32)
    vector[:len(values)] = values
    return vector

  @classmethod
  def from_vector(cls, vector) -> "DriverState":
    values = np.asarray(vector).tolist()
    return cls(*values[:len(dataclasses.fields(cls))])


def save(hardener):
  """Copies a driver's host state into its model's variables (BackupAndRestore then saves them)."""
  m = hardener.model
  hardener.push_store()
  state = hardener.scheduler.state_dict()
  m.sched_prior.assign(state["prior"].astype(np.float32))
  m.sched_size.assign(state["size"].astype(np.float32))
  m.sched_reward.assign(state["reward"].astype(np.float32))
  m.sched_count.assign(state["count"].astype(np.float32))
  m.sched_choices.assign(int(state["num_choices"]))
  m.global_step.assign(hardener.step)
  m.initialized.assign(1)
  state = DriverState(
      **{k: hardener.events[k] for k in ("fast", "rollback", "failed_directions", "generations",
                                         "warm_fast", "reused", "engine_calls",
                                         "inversion_steps")},
      generation_seconds=hardener.generation_seconds, warmup_seconds=hardener.warmup_seconds,
      period_pos=hardener.period_pos, in_period=float(hardener.period_pos > 0),
      failed_last=float(hardener.fails.any()), period_steps_done=len(hardener.period_sizes))
  m.driver_state.assign(state.to_vector(m.driver_state.shape[0]))
  sizes = np.zeros(m.period_sizes.shape, np.float32)
  done = hardener.period_sizes[:len(sizes)]
  if done:
    sizes[:len(done)] = np.asarray(done, np.float32).reshape(len(done), -1)
  m.period_sizes.assign(sizes)


def load(hardener):
  """Restores a driver's host state from its model's variables (after BackupAndRestore loaded
  them)."""
  m = hardener.model
  hardener.store_masks = m.store_masks.numpy()[..., 0]
  hardener.store_patterns = m.store_patterns.numpy()
  hardener.scheduler.load_state_dict({
      "prior": m.sched_prior.numpy().astype(np.float64),
      "size": m.sched_size.numpy().astype(np.float64),
      "reward": m.sched_reward.numpy().astype(np.float64),
      "count": m.sched_count.numpy().astype(np.float64),
      "num_choices": np.array(int(m.sched_choices.numpy()), np.int64),
      "seed": np.array(hardener.config.seed, np.int64)})
  hardener.step = int(m.global_step.numpy())
  # The universal triggers are only needed if the run resumes inside its first n (warm-up) steps,
  # which needs fewer than n steps per epoch. They are not checkpointed; the store's column t
  # (family 0) holds the universal trigger toward t until a pair period overwrites it: an
  # approximation in that rare case.
  hardener.universal_masks = np.stack(
      [hardener.store_masks[(t + 1) % hardener.n, t, 0] for t in range(hardener.n)])
  hardener.universal_patterns = np.stack(
      [hardener.store_patterns[(t + 1) % hardener.n, t, 0] for t in range(hardener.n)])
  hardener._period_reset()
  state = DriverState.from_vector(m.driver_state.numpy())
  hardener.events = {k: int(getattr(state, k)) for k in hardener.events}
  hardener.generation_seconds = state.generation_seconds
  hardener.warmup_seconds = state.warmup_seconds
  done = int(state.period_steps_done)
  if state.in_period and done <= m.period_sizes.shape[0]:
    # Continue the period the checkpoint was taken in, as the uninterrupted run does.
    hardener.period_pos = int(state.period_pos)
    p, r = hardener.num_pairs, hardener.config.moth.families
    hardener.pairs = [tuple(int(c) for c in pair)
                      for pair in m.pair_classes.numpy().reshape(p, 2)]
    hardener.cur_masks = m.pair_masks.numpy()[..., 0].reshape(
        p, 2, r, *hardener.store_masks.shape[-2:])
    hardener.cur_patterns = m.pair_patterns.numpy().reshape(
        p, 2, r, *hardener.store_patterns.shape[-3:])
    hardener.fails[:] = int(state.failed_last)
    hardener.period_sizes = [row.astype(np.float64).reshape(p, 2)
                             for row in m.period_sizes.numpy()[:done]]
  if hardener.verbose:
    print(f"MOTH: resumed at step {hardener.step} from the backup checkpoint", flush=True)
