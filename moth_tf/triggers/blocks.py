"""Direction blocks: how an engine call's K directions are cut, so results never depend on devices.

Blocks. A direction's random numbers never depend on the other directions of a call, but on CPU its
arithmetic would: the kernels pick their algorithm from a tensor's shape, not only its values.
Measured with TensorFlow 2.21 on x86 (oneDNN on, the default): a row of a MatMul (Dense forward,
and dy @ W^T, the input gradient of every Dense) comes out differently for batches of 1, 2-15 and
16 or more rows, and a one-channel Conv2D for 1 row against more; with oneDNN off, Eigen's MatMul
changes at other sizes (13, 49 rows for K = 1024). Element-wise `exp` and `atanh` (softmax, the
trigger encoding) round the last elements of a tensor, those after its last full SIMD packet,
differently from the others, so even a direction's position in a state tensor matters. Grappler's
arithmetic optimizer and constant folding rewrite a graph with static shapes differently from one
traced with relaxed shapes. `enable_op_determinism()` changes none of this; it makes runs
repeatable, not shape-independent.
So the K directions of a call are cut into `min(K, settings.direction_blocks)` contiguous blocks,
a partition that depends only on the call, and every block has its own tensors and its own model
call: a direction meets the same shapes, batch-mates and positions whoever runs its block. One
device runs all blocks in one `tf.while_loop` (TensorFlow runs independent blocks concurrently);
moth_tf.triggers.distributed hands whole blocks to the replicas of a tf.distribute strategy, so one
device and N replicas give the same bits. A block whose directions are all done skips its step.
The price on one device is one model call per block instead of one for the whole call
(docs/scaling.md, "Trigger directions across replicas").
"""

import dataclasses
from typing import List, Optional, Sequence, Tuple

import numpy as np


def check_directions(images, targets, seeds) -> int:
  """Checks an invert call's per-direction arguments; returns the number of directions K."""
  k = len(images)
  if not (k == len(targets) == len(seeds)):
    raise ValueError("images, targets and seeds must have one entry per direction")
  if not images or any(len(im) == 0 for im in images):
    raise ValueError("every direction needs at least one image")
  return k


def contiguous_blocks(count: int, parts: int) -> List[Tuple[int, int]]:
  """`parts` contiguous, as-even-as-possible [start, stop) ranges of range(count).

  The first count % parts ranges get one element more (np.array_split's rule).
  Example: contiguous_blocks(10, 4) -> [(0, 3), (3, 6), (6, 8), (8, 10)].
  """
  base, extra = divmod(count, parts)
  starts = [r * base + min(r, extra) for r in range(parts + 1)]
  return [(starts[r], starts[r + 1]) for r in range(parts)]


def direction_blocks(num_directions: int, max_blocks: int) -> List[Tuple[int, int]]:
  """The blocks of an invert call: min(K, max_blocks) contiguous direction ranges.

  Depends only on the call and the settings, never on the devices, so that every direction is
  computed with the same shapes on one device and on any number of replicas.
  """
  return contiguous_blocks(num_directions, min(num_directions, max_blocks))


@dataclasses.dataclass
class DirectionBlock:
  """The inputs of one block of directions (NumPy), indexed from the block's first direction.

  Attributes:
    x: [N, H, W, C] the block's images, direction after direction.
    sample_dir: [N] direction (within the block) of each image.
    targets, seeds, costs: [B] per direction.
    mask, pattern: optional warm start, [B, H, W] and [B, H, W, C]; None draws it from the seeds.
    done: [B] directions that start finished (padding blocks of the distributed engine).
  """
  x: np.ndarray
  sample_dir: np.ndarray
  targets: np.ndarray
  seeds: np.ndarray
  costs: np.ndarray
  mask: Optional[np.ndarray]
  pattern: Optional[np.ndarray]
  done: np.ndarray

  @property
  def num_directions(self) -> int:
    return len(self.targets)


def split_directions(images, targets, seeds, init_cost, init_mask, init_pattern,
                     max_blocks: int) -> List[DirectionBlock]:
  """Checks an invert call's arguments and cuts them into `direction_blocks(K, max_blocks)`."""
  k = check_directions(images, targets, seeds)
  images = [np.asarray(im, np.float32) for im in images]
  h, w, c = images[0].shape[1:]
  targets = np.asarray(targets, np.int32)
  seeds = np.asarray(seeds, np.int32)
  costs = np.broadcast_to(np.asarray(init_cost, np.float32), (k,))
  masks = None if init_mask is None else np.reshape(np.asarray(init_mask, np.float32), (k, h, w))
  patterns = None if init_pattern is None else np.reshape(np.asarray(init_pattern, np.float32),
                                                          (k, h, w, c))
  blocks = []
  for start, stop in direction_blocks(k, max_blocks):
    ims = images[start:stop]
    blocks.append(DirectionBlock(
        x=np.concatenate(ims),
        sample_dir=np.concatenate([np.full(len(im), d, np.int32) for d, im in enumerate(ims)]),
        targets=targets[start:stop], seeds=seeds[start:stop], costs=costs[start:stop].copy(),
        mask=None if masks is None else masks[start:stop],
        pattern=None if patterns is None else patterns[start:stop],
        done=np.zeros(stop - start, bool)))
  return blocks


def concat_states(states: Sequence[dict]) -> dict:
  """Block states (NumPy or tensors) joined along their first axis, block after block."""
  return {key: np.concatenate([np.asarray(st[key]) for st in states]) for key in states[0]}
