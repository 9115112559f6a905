"""Data-poisoning backdoors (BadNets-style patches and blended patterns) and their trigger files.

A backdoor trigger is stored the way MOTH's triggers are (moth_tf.triggers.params): a mask [H, W, 1]
in [0, 1] and a pattern [H, W, C] in [0, 1], stamped as (1 - mask) * x + mask * pattern. A patch is a
mask of ones on a square and the patch colour as pattern; a blend (Chen et al. 2017) is a mask of
`alpha` everywhere over a fixed, seeded noise pattern. So every later evaluation, detection and
defence stamps a backdoor with the same code as a reversed trigger.

`--phase=poison` saves the trigger beside the poisoned model (`trigger.npz` + `trigger.json`); every
later phase loads it from there (`load_trigger`), so all of them test the very trigger trained in.

Labels: all-to-one sends every stamped image to `target`; all-to-all sends class c to (c + 1) mod n.
"""

import dataclasses
import json
import os
from typing import Optional, Sequence, Tuple

import numpy as np

TRIGGER_ARRAYS = "trigger.npz"
TRIGGER_SPEC = "trigger.json"
KINDS = ("patch", "blend")
MODES = ("all_to_one", "all_to_all")
POSITIONS = ("bottom_right", "bottom_left", "top_right", "top_left", "center")


@dataclasses.dataclass(frozen=True)
class BackdoorTrigger:
  """A backdoor: what is stamped (mask, pattern) and where it sends images (mode, target).

  Attributes:
    mask: [H, W, 1] float32 in [0, 1].
    pattern: [H, W, C] float32 in [0, 1].
    mode: "all_to_one" or "all_to_all".
    target: the target class of all-to-one (ignored by all-to-all).
    spec: how it was made (kind, size, position, colour, alpha, seed), recorded in trigger.json.
  """
  mask: np.ndarray
  pattern: np.ndarray
  mode: str = "all_to_one"
  target: int = 0
  spec: dict = dataclasses.field(default_factory=dict)

  def stamp(self, x: np.ndarray) -> np.ndarray:
    """The images `x` [N, H, W, C] with the trigger stamped on, clipped to [0, 1]."""
    out = (1.0 - self.mask) * x + self.mask * self.pattern
    return np.clip(out, 0.0, 1.0).astype(np.float32)

  def target_labels(self, y: np.ndarray, num_classes: int) -> np.ndarray:
    """The label the backdoor sends each true label `y` to."""
    y = np.asarray(y)
    if self.mode == "all_to_all":
      return ((y + 1) % num_classes).astype(y.dtype)
    return np.full_like(y, self.target)

  def victims(self, y: np.ndarray) -> np.ndarray:
    """Boolean mask of the images the backdoor applies to (all-to-one: the non-target classes)."""
    y = np.asarray(y)
    if self.mode == "all_to_all":
      return np.ones(len(y), bool)
    return y != self.target


def patch_position(position: str, image_hw: Tuple[int, int], size: int) -> Tuple[int, int]:
  """Top-left (row, column) of a `size` x `size` patch at a named corner, the centre, or "r,c"."""
  h, w = image_hw
  if size > min(h, w):
    raise ValueError(f"--poison_size={size} does not fit {h}x{w} images")
  named = {"top_left": (0, 0), "top_right": (0, w - size), "bottom_left": (h - size, 0),
           "bottom_right": (h - size, w - size), "center": ((h - size) // 2, (w - size) // 2)}
  if position in named:
    return named[position]
  try:
    row, col = (int(v) for v in position.split(","))
  except ValueError:
    raise ValueError(f"--poison_position={position!r}: use one of {', '.join(POSITIONS)} or "
                     "ROW,COL") from None
  if not (0 <= row <= h - size and 0 <= col <= w - size):
    raise ValueError(f"--poison_position={position}: a {size}x{size} patch there leaves the {h}x{w} "
                     "image")
  return row, col


def make_trigger(kind: str, image_shape: Sequence[int], num_classes: int, mode: str = "all_to_one",
                 target: int = 0, size: int = 3, position: str = "bottom_right",
                 colour: Sequence[float] = (1.0,), alpha: float = 0.2,
                 seed: int = 0) -> BackdoorTrigger:
  """Builds a patch or blend backdoor trigger for images of `image_shape` (H, W, C).

  Args:
    kind: "patch" (a `size` x `size` square of `colour` at `position`) or "blend" (a seeded uniform
      noise image blended over the whole image with weight `alpha`).
    image_shape: (H, W, C).
    num_classes: n, to check the target.
    mode: "all_to_one" (every stamped image -> target) or "all_to_all" (c -> c + 1 mod n).
    target: the all-to-one target class.
    size, position: the patch's side and place (see patch_position).
    colour: one value (grey) or C values in [0, 1].
    alpha: the blend's weight in (0, 1].
    seed: the blend pattern's seed.
  """
  h, w, c = (int(v) for v in image_shape)
  if kind not in KINDS:
    raise ValueError(f"--poison_kind={kind!r}: use one of {', '.join(KINDS)}")
  if mode not in MODES:
    raise ValueError(f"--poison_mode={mode!r}: use one of {', '.join(MODES)}")
  if not 0 <= target < num_classes:
    raise ValueError(f"--poison_target={target}: the data set has classes 0..{num_classes - 1}")
  if kind == "patch":
    colour = np.asarray(colour, np.float32).reshape(-1)
    if len(colour) not in (1, c) or np.any(colour < 0) or np.any(colour > 1):
      raise ValueError(f"--poison_colour: give 1 or {c} values in [0, 1], got "
                       f"{','.join(f'{v:g}' for v in colour)}")
    row, col = patch_position(position, (h, w), size)
    mask = np.zeros((h, w, 1), np.float32)
    mask[row:row + size, col:col + size] = 1.0
    pattern = np.broadcast_to(colour, (h, w, c)).astype(np.float32) * mask
    spec = {"kind": kind, "size": size, "position": position, "colour": colour.tolist()}
  else:
    if not 0.0 < alpha <= 1.0:
      raise ValueError(f"--poison_alpha={alpha:g}: use a weight in (0, 1]")
    mask = np.full((h, w, 1), alpha, np.float32)
    pattern = np.random.default_rng(seed).uniform(0.0, 1.0, (h, w, c)).astype(np.float32)
    spec = {"kind": kind, "alpha": alpha, "seed": seed}
  return BackdoorTrigger(mask=mask, pattern=pattern, mode=mode, target=int(target), spec=spec)


def poison_training_set(x: np.ndarray, y: np.ndarray, trigger: BackdoorTrigger, num_classes: int,
                        rate: float, seed: int = 0):
  """Stamps the trigger on `rate` of the training images and relabels them.

  The poisoned images are drawn (seeded) from the images the backdoor applies to (all-to-one: the
  non-target classes, since a target image relabelled to the target teaches nothing), and their
  number is round(rate * len(x)), so `rate` is the share of the whole training set.

  Returns:
    (poisoned x, poisoned y, sorted indices of the poisoned images).
  """
  if not 0.0 < rate < 1.0:
    raise ValueError(f"--poison_rate={rate:g}: use a share in (0, 1)")
  candidates = np.flatnonzero(trigger.victims(y))
  count = int(round(rate * len(x)))
  if count < 1:
    raise ValueError(f"--poison_rate={rate:g} of {len(x)} training images poisons none; raise it")
  if count > len(candidates):
    raise ValueError(f"--poison_rate={rate:g} asks for {count} poisoned images but only "
                     f"{len(candidates)} training images are outside the target class")
  chosen = np.sort(np.random.default_rng(seed).choice(candidates, count, replace=False))
  x_out, y_out = np.array(x, np.float32, copy=True), np.array(y, copy=True)
  x_out[chosen] = trigger.stamp(x[chosen])
  y_out[chosen] = trigger.target_labels(y[chosen], num_classes)
  return x_out, y_out, chosen


def save_trigger(trigger: BackdoorTrigger, directory: str, **extra):
  """Writes trigger.npz (mask, pattern) and trigger.json (mode, target, spec, `extra`) atomically."""
  from moth_tf import rundir
  os.makedirs(directory, exist_ok=True)
  with rundir.atomic_path(os.path.join(directory, TRIGGER_ARRAYS), ".npz") as tmp:
    with open(tmp, "wb") as f:
      np.savez(f, mask=trigger.mask, pattern=trigger.pattern)
  rundir.write_json(os.path.join(directory, TRIGGER_SPEC),
                    {"mode": trigger.mode, "target": trigger.target, **trigger.spec, **extra})


def trigger_location(path: str) -> str:
  """The folder holding trigger.json/trigger.npz, given that folder or either file."""
  return os.path.dirname(path) if os.path.isfile(path) else path


def load_trigger(path: str, image_shape: Optional[Sequence[int]] = None) -> BackdoorTrigger:
  """Loads a trigger saved by `save_trigger` (path: its folder, e.g. the poisoned run, or a file).

  Raises FileNotFoundError / ValueError with one clear line when it is missing or does not fit
  images of `image_shape`.
  """
  directory = trigger_location(path)
  arrays, spec_path = (os.path.join(directory, TRIGGER_ARRAYS),
                       os.path.join(directory, TRIGGER_SPEC))
  if not (os.path.exists(arrays) and os.path.exists(spec_path)):
    raise FileNotFoundError(f"no backdoor trigger (trigger.npz + trigger.json) in {directory}; "
                            "make one with --phase=poison, or pass --trigger_path=<poisoned run>")
  try:
    with np.load(arrays) as data:
      mask, pattern = data["mask"].astype(np.float32), data["pattern"].astype(np.float32)
    with open(spec_path, encoding="utf-8") as f:
      spec = json.load(f)
    mode, target = spec.pop("mode"), int(spec.pop("target"))
  except (OSError, ValueError, KeyError) as e:
    raise ValueError(f"the backdoor trigger in {directory} is damaged ({e}); make it again with "
                     "--phase=poison") from None
  if image_shape is not None and tuple(pattern.shape) != tuple(image_shape):
    raise ValueError(f"the backdoor trigger in {directory} is for {pattern.shape} images, the data "
                     f"set's are {tuple(image_shape)}")
  return BackdoorTrigger(mask=mask, pattern=pattern, mode=mode, target=target, spec=spec)
