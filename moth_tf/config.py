"""Frozen, validated configuration of one run. moth_tf.cli.main builds these from flags; library
code takes them (or their fields) as explicit arguments and never reads flags.

Each setting is declared once, as a dataclass field made by `setting`: its name, type, default,
bounds, choices and help live there. The command line's flags are derived from these fields
(moth_tf.cli.flags), the configs check their own bounds and choices in `__post_init__`, and
`replace` sets fields from a dict (the Python API's `config={...}`, a JSON file) with a clear error
for a key that is no setting.

Hardening is split by concern: `HardenConfig` holds what every method shares (budget, optimiser,
BatchNorm rule, seed) and one sub-config per method family (`moth`, `adv_train`, `uap`,
`pairwise`, `nc`, `nad`). Each sub-config's fields also have a flat name, its `PREFIX` plus the
field's name (`nad_epochs`, `pairwise_tol`, MOTH's own without a prefix), which is the flag's name
unless the field says otherwise, the key a dict may use, and how summary.json records it.
"""

import dataclasses
import os
import re
from typing import ClassVar, Optional, Tuple

PHASES = ("pipeline", "train", "test", "robustness", "distance", "harden", "poison", "backdoor",
          "detect")
from moth_tf.hardening import methods as _methods  # pylint: disable=g-import-not-at-top
from moth_tf.data import own as _own_data  # pylint: disable=g-import-not-at-top
# The settings machinery (moth_tf.settings); `replace` and `flat_dict` are also this module's API
# for configs (config.replace(HardenConfig(), {"steps": 500}), summary.json's flat_dict).
from moth_tf.settings import Checked  # pylint: disable=g-import-not-at-top
from moth_tf.settings import check  # pylint: disable=g-import-not-at-top
from moth_tf.settings import flat_dict  # pylint: disable=g-import-not-at-top
from moth_tf.settings import replace  # pylint: disable=g-import-not-at-top
from moth_tf.settings import setting  # pylint: disable=g-import-not-at-top
from moth_tf.settings import sub_config  # pylint: disable=g-import-not-at-top

# "natural" is the base model; the others are hardening methods (moth_tf.hardening.methods). These
# two are the built-in names; `methods()` also holds the ones registered later.
METHODS = ("natural",) + tuple(_methods.METHODS)
HARDENING_METHODS = tuple(_methods.METHODS)
STRATEGIES = ("default", "mirrored", "multi_worker")
# Keras dtype policies of --precision: the classifier computes in float32, bfloat16 or float16 (its
# variables stay float32; triggers and their losses always float32). mixed_float16 trains with
# Keras's loss scaling (a LossScaleOptimizer).
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
# How BatchNorm layers see a hardening batch's perturbed images (moth_tf.hardening.model, where
# each rule is defined; kept here too so that the config does not import TensorFlow).
BATCHNORM_MODES = ("mixed", "clean_stats", "frozen", "recalibrate")
# How fits report progress (moth_tf.progress): auto = bar on a terminal, epoch lines otherwise.
PROGRESS = ("auto", "bar", "epoch", "none")
# MOTH's design choices that MothConfig can switch off one at a time (the paper's ablations;
# moth_tf.hardening.moth and moth_tf.hardening.scheduler define each).
GENERATIONS = ("two_sided", "one_sided")
SCHEDULES = ("karm", "prior_only", "reward_only", "random", "round_robin")
# Where run directories go unless --workdir says otherwise.
DEFAULT_WORKDIR = "saved_models"
# The authors' seed values (reference 3.1): --seeds=3 uses the first three.
REFERENCE_SEEDS = (1024, 557540351, 157301989)


def hardening_methods() -> Tuple[str, ...]:
  """Every hardening method's name, the registered ones included."""
  return tuple(_methods.METHODS)


def methods() -> Tuple[str, ...]:
  """Every value of RunConfig.method: "natural" (the base model) and the hardening methods."""
  return ("natural",) + hardening_methods()


def resolve_progress(progress: str, is_terminal: bool) -> str:
  """A progress setting with "auto" decided: a live bar on a terminal, epoch lines otherwise (a
  bar's carriage returns make a log file or CI log one unreadable line per epoch)."""
  if progress == "auto":
    return "bar" if is_terminal else "epoch"
  return progress


# --- Data, training, distance ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DataConfig(Checked):
  """Which data set and how it is loaded."""
  # A registered name (moth_tf.data.DATASETS), `tfds:NAME` or `folder:PATH` (moth_tf.data.own).
  dataset: str = setting("digits", "Data set.", cli="custom")
  data_dir: Optional[str] = setting(
      None, "tfds data dir / folder of prepared .npz files / folder of the Fashion-MNIST IDX files "
      "(searched alone when given).",
      none="$TFDS_DATA_DIR or ~/tensorflow_datasets for the tfds sets, $MOTH_TF_DATA_DIR or "
      "~/moth_tf_data for gtsrb and lisa, the usual places for Fashion-MNIST")
  image_size: Optional[int] = setting(None, "Resize images to this square size (bilinear).",
                                      lower=4, none="the data set's own size")
  # Training augmentation of every fit (moth_tf.data.augment): a recipe name and its shift in
  # pixels; None: the data set's default. The flags ask for one; these record the one resolved.
  augment: Optional[str] = setting(None, cli="custom")
  augment_pad: Optional[int] = setting(None, lower=0, cli="custom")
  download: bool = setting(
      True, "cifar10 / svhn / tfds:NAME: when --data_dir (else $TFDS_DATA_DIR, else "
      "~/tensorflow_datasets) does not hold the data set, download and prepare it there with "
      "tensorflow_datasets. "
      "--nodownload (or MOTH_TF_NO_DOWNLOAD=1) never touches the network: a missing data set is an "
      "error at once.")


@dataclasses.dataclass(frozen=True)
class TrainConfig(Checked):
  """Base (natural) training recipe (the data set's, moth_tf.training.RECIPES, unless a flag
  says otherwise)."""
  PRESET_FLAGS: ClassVar[bool] = True
  epochs: int = setting(30, "Base training epochs.", lower=1)
  batch_size: int = setting(128, "Base training global batch size.", lower=1)
  optimizer: str = setting("adam", "Base training optimizer.", choices=("adam", "sgd"))
  learning_rate: float = setting(1e-3, "Base training learning rate.", above=0.0)
  momentum: float = setting(0.9, cli=False)
  schedule: str = setting("constant", choices=("constant", "cosine"), cli=False)


@dataclasses.dataclass(frozen=True)
class DistanceConfig(Checked):
  """Pairwise class-distance measurement (reference 3.1-3.2)."""
  samples: int = setting(100, "Held-out images of the source class per direction.", lower=1,
                         flag="distance_samples")
  steps: int = setting(1000, "Optimisation steps per direction.", lower=1, flag="distance_steps")
  # --seeds=N takes the first N of the reference's values.
  seeds: Tuple[int, ...] = setting(REFERENCE_SEEDS, cli="custom")
  asr_bound: float = setting(0.9, "Attack success rate a trigger must reach.", above=0.0,
                             upper=1.0)
  init_cost: float = setting(1e-3, cli=False)
  # --pair=s-t.
  pair: Optional[Tuple[int, int]] = setting(None, cli="custom")
  # Stop a direction once its best size has not improved by `early_stop_tol` (relative) for this many
  # steps; 0 runs every step like the reference.
  early_stop_patience: int = setting(
      200, "Stop a direction after this many steps without a 1% smaller trigger; 0 runs all steps "
      "like the reference.", lower=0)
  early_stop_tol: float = setting(0.01, cli=False)
  batch_directions: int = setting(
      0, "Directions optimised together in one graph (0: all pairs at once; 1: one at a time like "
      "the reference).", lower=0)
  # Blocks per graph call (moth_tf.triggers.blocks): the most replicas that share a call.
  direction_blocks: int = setting(
      8, "Blocks the directions of a graph call are cut into, each with its own model call; under "
      "--strategy the replicas take whole blocks, so at most this many get work. The result "
      "depends on it, never on the devices.", lower=1)
  compare_to: Optional[str] = setting(
      None, "A baseline run directory or distance.json to report the enlargement against.",
      none="none")

  def check(self):
    check(len(self.seeds) >= 1, "at least one seed is needed")


# --- Backdoors ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NeuralCleanseConfig(Checked):
  """Neural Cleanse (Wang et al. 2019): trigger reverse-engineering per label, MAD outlier test, and
  unlearning (`--phase=detect`, `--method=nc`)."""
  PREFIX: ClassVar[str] = "nc_"
  PRESET_FLAGS: ClassVar[bool] = True
  WHAT: ClassVar[str] = "Neural Cleanse"
  # Optimisation of one trigger per label (all labels in one engine call): steps, images per source
  # class (every class but the label), the ASR the trigger must reach (NC's 0.99), early stop.
  steps: int = setting(
      1000, "Neural Cleanse: optimisation steps per label's trigger.", lower=1)
  samples: int = setting(
      30, "Neural Cleanse: images of each other class per label.", lower=1)
  asr_bound: float = setting(0.99, "Neural Cleanse: ASR a trigger must reach.", above=0.0,
                             upper=1.0)
  init_cost: float = setting(1e-3, cli=False)
  early_stop_patience: int = setting(200, lower=0, cli=False)
  # A label is flagged when its trigger's L1 norm is on the small side with anomaly index > this.
  threshold: float = setting(
      2.0, "Neural Cleanse: flag labels whose anomaly index exceeds this on the small side.",
      above=0.0)
  # Unlearning: the reversed triggers of the flagged labels (or of every label) are stamped on this
  # share of each batch, labels kept.
  unlearn_all: bool = setting(
      False, "--method=nc: unlearn every label's reversed trigger, not only the flagged labels'.")
  stamp_share: float = setting(
      0.2, "--method=nc: share of each batch stamped with a reversed trigger.", above=0.0,
      upper=1.0)
  seed: int = setting(0, cli=False)


@dataclasses.dataclass(frozen=True)
class PoisonConfig(Checked):
  """A data-poisoning backdoor (`--phase=poison`, moth_tf.attacks.backdoor)."""
  PREFIX: ClassVar[str] = "poison_"
  kind: str = setting("patch", "Backdoor trigger: a square patch, or a seeded noise pattern "
                      "blended over the whole image.", choices=("patch", "blend"))
  mode: str = setting("all_to_one", "all_to_one: stamped images are relabelled to "
                      "--poison_target; all_to_all: class c to c+1 mod n.",
                      choices=("all_to_one", "all_to_all"))
  target: int = setting(0, "The all-to-one target class.", lower=0)
  rate: float = setting(0.1, "Share of the whole training set that is stamped and relabelled "
                        "(drawn from the non-target classes for all_to_one).", above=0.0,
                        below=1.0)
  size: int = setting(3, "Side of the patch in pixels.", lower=1)
  position: str = setting("bottom_right", "Where the patch goes: bottom_right, bottom_left, "
                          "top_right, top_left, center, or ROW,COL of its top-left pixel.")
  colour: Tuple[float, ...] = setting(
      (1.0,), "Patch colour in [0, 1]: one grey value or one per channel.", lower=0.0, upper=1.0)
  alpha: float = setting(0.2, "Blend weight of the blended pattern.", above=0.0, upper=1.0)
  # The run's --seed.
  seed: int = setting(0, cli=False)


# --- Hardening ------------------------------------------------------------------------------------

# Default pairs per MOTH period (MothConfig.pairs_for): several pairs per engine call cost far less
# than one call each (the calls are small), and each step hardens all of them.
AUTO_PAIRS_PER_PERIOD = 5


@dataclasses.dataclass(frozen=True)
class MothConfig(Checked):
  """MOTH's driver (moth_tf.hardening.moth; also run by Universal and Pairwise): stamping, the
  trigger generation and its schedule (reference section 2.5 for the constants)."""
  PRESET_FLAGS: ClassVar[bool] = True
  WHAT: ClassVar[str] = "MOTH"
  # Portion 0 would switch pair stamping off while every step still generates the pair's triggers:
  # all of the hardening's trigger-generation time spent for nothing.
  portion: float = setting(
      0.5, "Fraction, in (0, 1], of each pair class's batch images stamped.", above=0.0,
      upper=1.0, why="the share of each scheduled pair's images that carry its triggers")
  warm_ratio: float = setting(
      0.5, "Fraction of non-target batch images stamped during the warm-up.", lower=0.0, upper=1.0)
  replay: float = setting(
      0.3, "Fraction of the other batch images stamped with a stored trigger of their class "
      "(trigger replay; 0 = MOTH as published).", lower=0.0, upper=1.0)
  mode: str = setting("nat", "nat: stamp triggers on clean batches; adv: PGD-perturb each batch "
                      "first.", choices=("nat", "adv"))
  # `schedule`'s exploration and the steps over which the K-arm score fades from the prior U to the
  # reward V.
  epsilon: float = setting(
      0.3, "MOTH: share of the K-arm schedules' choices that explore a random pair.",
      flag="schedule_epsilon", lower=0.0, upper=1.0)
  alpha_steps: int = setting(
      1000, "MOTH: steps after the warm-up over which the K-arm score moves from the prior U to "
      "the reward V.", lower=1,
      why="the steps over which the K-arm score moves from the prior U to the reward V")
  period: int = setting(
      3, "MOTH: training steps per period, each period on the scheduler's pairs (reference 3).",
      lower=1)
  warmup_steps: int = setting(
      500, "Inversion steps of the warm-up universal triggers (reference 500).", lower=1)
  warmup_asr: float = setting(0.99, cli=False)
  warmup_samples: int = setting(
      10, "Training images of every other class per warm-up universal trigger (reference 10).",
      lower=1)
  pair_asr: float = setting(0.9, cli=False)
  pair_steps: int = setting(
      200, "Inversion steps of a pair's first generation in a period and after a failure "
      "(reference 200).", lower=1)
  pair_cost: float = setting(1e-3, cli=False)
  fast_steps: int = setting(
      40, "Inversion steps of the fast generations while both directions succeed (reference 40).",
      lower=1)
  # Steps of the generation at pair_cost that follows a failed one (None: pair_steps, as published).
  rollback_steps: Optional[int] = setting(
      None, "MOTH: steps of the full-cost generation after a failed one.", lower=1,
      none="--pair_steps")
  fast_cost: float = setting(
      0.2, "Initial L1 cost of the fast generations (reference 0.2, on its summed cross-entropy).",
      lower=0.0)
  trigger_samples: int = setting(
      20, "Training images per class used to generate each pair trigger.", lower=1)
  # Independently initialised triggers kept and stamped per direction (ours; 1 = as published).
  families: int = setting(
      1, "Independently initialised triggers kept, generated and stamped per direction (ours; the "
      "reference has 1).", flag="trigger_families", lower=1)
  # "mean": per-direction mean CE + cost * L1, as the distance measure, so the stamped triggers are
  # near-minimal; "sum": the reference's TriggerCombo, whose summed cross-entropy makes the same
  # cost about N times weaker on N images.
  pair_ce_reduction: str = setting("mean", choices=("mean", "sum"), cli=False)
  # Warm starts come from the store; the reference keeps the largest successful trigger per
  # direction, we keep the latest (it is closer to the current model's minimal trigger).
  store_largest: bool = setting(False, cli=False)
  # Trigger generation (the published schedule is generations_per_period=None,
  # warm_fast_start=False, fast_first_visit=False, pairs_per_period=1, fixed_trigger_images=False,
  # as in REFERENCE_HARDENING). `generations_per_period`: the first that many steps of a period
  # generate the pairs' triggers; the others stamp the last ones again (a failed generation is
  # still retried at the next step); None: every step.
  generations_per_period: Optional[int] = setting(
      1, "MOTH: generate the pair's triggers in the first N steps of each period only; the others "
      "stamp the last ones again.", lower=1, none="every step")
  # A pair chosen before starts its period in fast mode from its stored triggers, not at
  # pair_steps.
  warm_fast_start: bool = setting(
      True, "MOTH: a pair chosen before starts its period in fast mode from its stored triggers "
      "instead of a full generation.")
  # With warm_fast_start: a pair's first period also starts in fast mode, from the warm-up's
  # universal triggers toward its two classes (a failure falls back as above).
  fast_first_visit: bool = setting(
      True, "MOTH, with --warm_fast_start: a pair's first period also starts in fast mode, from "
      "the warm-up's universal triggers.")
  # The scheduler picks that many pairs with no class in common for every period; their triggers
  # are generated in one batched engine call and all of them are stamped in each step of the
  # period. None: min(AUTO_PAIRS_PER_PERIOD, n // 2) (`pairs_for`).
  pairs_per_period: Optional[int] = setting(
      None, "MOTH: class pairs (with no class in common) hardened together in every period; their "
      "triggers are generated in one batched call.", lower=1,
      none=f"min({AUTO_PAIRS_PER_PERIOD}, n // 2) on n classes")
  # Every generation of class c's triggers uses the same seeded sample of `trigger_samples`
  # class-c training images, not a fresh one (False: a fresh one, as the reference's current-batch
  # images). A near-minimal trigger that just reaches the ASR bound on one sample often misses it
  # on the next, and a fast generation cannot grow it back; where that makes most warm fast starts
  # fail (Fashion-MNIST), the recipe fixes the images. On digits fresh samples harden more.
  fixed_trigger_images: bool = setting(
      False, "MOTH: generate each class's triggers on the same seeded sample of its training "
      "images all run long, instead of a fresh sample per generation.")
  # A pair generation's direction stops once it has reached the ASR bound and its trigger has not
  # shrunk by 1% for that many steps (0: run every step, as published). It saves steps, but the
  # triggers it stops early are less minimal and harden less, so no recipe uses it.
  generation_early_stop: int = setting(
      0, "MOTH: a pair generation's direction stops after this many steps without a 1% smaller "
      "successful trigger (0 = never, as published).", lower=0)
  # Ablations: each switches one part of MOTH off (the defaults are MOTH). They act on MOTH's
  # driver, so also on Pairwise, except `schedule`, which Pairwise replaces with its sweep.
  # "two_sided" generates the two directions of a pair together (one engine block with one summed
  # loss, and one fast / rollback decision for the pair: fast while both succeed); "one_sided"
  # generates each direction on its own, as running a one-direction generator twice would.
  generation: str = setting(
      "two_sided", "MOTH: two_sided generates a pair's two directions together (one "
      "loss, one fast/rollback decision); one_sided generates each direction on its own.",
      choices=GENERATIONS)
  # What picks the pairs of a period. "karm": the K-arm bandit (prior U fading into the reward V
  # over `alpha_steps` steps, exploring with probability `epsilon`); "prior_only": U alone;
  # "reward_only": V alone (both still explore with `epsilon`); "random": uniformly random pairs
  # (seeded); "round_robin": the pairs in a fixed order (a round-robin tournament's rounds, whose
  # pairs share no class), cycling.
  schedule: str = setting(
      "karm", "MOTH: what picks the pairs: karm (the K-arm bandit, prior U then reward V), "
      "prior_only (U alone), reward_only (V alone), random (uniform, seeded), round_robin "
      "(every pair in turn, in a fixed order, cycling).", choices=SCHEDULES)
  # A generation warm-starts from the latest successful trigger at `fast_cost` for `fast_steps`
  # and rolls back to `pair_cost` for `pair_steps` after a failure (paper, section IV-D); False:
  # every generation starts from a random trigger at `pair_cost` for `pair_steps`.
  trigger_reuse: bool = setting(
      True, "MOTH: warm-start each generation from the latest trigger at --fast_cost, rolling back "
      "to a full-cost generation of --rollback_steps after a failure; --notrigger_reuse: every "
      "generation from a random trigger at the full cost for --pair_steps.")

  def check(self):
    if self.generations_per_period is not None and not (
        1 <= self.generations_per_period <= self.period):
      raise ValueError(f"generations_per_period must be in 1..period ({self.period}), got "
                       f"{self.generations_per_period}")

  def pairs_for(self, num_classes: int) -> int:
    """Class pairs per period on an n-class model: `pairs_per_period`, or by default
    min(AUTO_PAIRS_PER_PERIOD, n // 2)."""
    if self.pairs_per_period is not None:
      return self.pairs_per_period
    return max(1, min(AUTO_PAIRS_PER_PERIOD, num_classes // 2))


@dataclasses.dataclass(frozen=True)
class AdvTrainConfig(Checked):
  """PGD adversarial training (moth_tf.baselines.adv_train)."""
  PREFIX: ClassVar[str] = "adv_"
  PRESET_FLAGS: ClassVar[bool] = True
  mix: float = setting(
      1.0, "adv_train: share, in (0, 1], of each batch replaced by its PGD examples (1: every "
      "image).", above=0.0, upper=1.0,
      why="the share of each batch replaced by its PGD examples")


@dataclasses.dataclass(frozen=True)
class UapConfig(Checked):
  """Universal adversarial training (moth_tf.baselines.uap): the shared perturbation's L-inf radius
  and signed-gradient step (None: the data set's training PGD budget, as adv_train)."""
  PREFIX: ClassVar[str] = "uap_"
  PRESET_FLAGS: ClassVar[bool] = True
  epsilon: Optional[float] = setting(
      None, "uap: L-inf radius of the shared perturbation.", above=0.0, upper=1.0,
      none="the data set's training PGD epsilon")
  step_size: Optional[float] = setting(
      None, "uap: signed-gradient ascent step of the perturbation per batch.", above=0.0,
      upper=1.0, none="the data set's training PGD step size")


@dataclasses.dataclass(frozen=True)
class PairwiseConfig(Checked):
  """Pairwise (moth_tf.baselines.pairwise): a pair is done when the sum of its two directions'
  period-average trigger sizes did not exceed its largest earlier value by more than `tol`
  (relative) for `patience` periods in a row, or after `max_periods` periods."""
  PREFIX: ClassVar[str] = "pairwise_"
  PRESET_FLAGS: ClassVar[bool] = True
  tol: float = setting(
      0.05, "pairwise: relative growth of a pair's two trigger sizes together below which a "
      "period counts as 'no growth'.", lower=0.0, upper=1.0)
  patience: int = setting(
      10, "pairwise: periods in a row without growth that end a pair.", lower=1)
  max_periods: int = setting(100, "pairwise: most periods one pair gets.", lower=1)


@dataclasses.dataclass(frozen=True)
class NadConfig(Checked):
  """Neural Attention Distillation (moth_tf.baselines.nad): a teacher fine-tuned for
  `teacher_epochs` on a stratified `clean_share` of the training images, then a student trained on
  the same images for `epochs` with CE + sum_l beta_l * AT loss of layer l (attention map: channel
  mean of |A|^power). Layers and betas: None = the architecture's defaults
  (moth_tf.baselines.nad.DEFAULT_LAYERS)."""
  PREFIX: ClassVar[str] = "nad_"
  PRESET_FLAGS: ClassVar[bool] = True
  WHAT: ClassVar[str] = "NAD"
  clean_share: float = setting(
      0.05, "nad: share, in (0, 1], of the training images (stratified, seeded) that the teacher "
      "and the student train on.", above=0.0, upper=1.0,
      why="the share of the training images NAD trains on")
  teacher_epochs: int = setting(
      10, "nad: epochs of clean fine-tuning that make the teacher.", lower=1)
  epochs: int = setting(
      20, "nad: epochs of attention distillation of the student.", lower=1)
  power: float = setting(
      2.0, "nad: exponent p of the attention map, the channel mean of |activation|^p.",
      above=0.0, why="the exponent of |activation| in the attention map")
  layers: Optional[Tuple[str, ...]] = setting(
      None, "nad: comma-separated names of the classifier's layers (4-D outputs) whose attention "
      "maps are distilled.", none="the architecture's, see docs/methods.md#nad")
  betas: Optional[Tuple[float, ...]] = setting(
      None, "nad: comma-separated weights of the layers' attention losses, one per layer.",
      lower=0.0, none="NAD's 500, 1000, 1000, scaled to each map's size")

  def check(self):
    check(self.layers is None or len(self.layers) > 0,
           "nad_layers must name at least one layer (None: the architecture's defaults)")
    if self.betas is not None:
      check(len(self.betas) > 0, "nad_betas must hold at least one weight (None: the defaults)")
      check(self.layers is None or len(self.betas) == len(self.layers),
             f"nad_betas has {len(self.betas)} weight(s) for {len(self.layers or ())} nad_layers; "
             "give one per layer")


# The epoch length, in steps, of a hardening on a stream of unknown size (HardenConfig).
STREAM_EPOCH_STEPS = 500


@dataclasses.dataclass(frozen=True)
class HardenConfig(Checked):
  """Hardening: what every method shares, and one sub-config per method family.

  Defaults are ours and chosen to harden (benchmarks/hardening_benchmark.py); REFERENCE_HARDENING is
  the authors' setting (`--preset=reference`).
  """
  PRESET_FLAGS: ClassVar[bool] = True
  WHAT: ClassVar[str] = "hardening"
  # Budget: `epochs` if given, else exactly `steps` training steps (the last epoch cut short
  # where they end; the authors used 2 epochs).
  epochs: Optional[int] = setting(
      None, "Hardening epochs (given, they set the budget instead of --harden_steps).",
      flag="harden_epochs", lower=1, none="as many as --harden_steps takes")
  steps: int = setting(
      2000, "Hardening budget in training steps when --harden_epochs is not given: the run takes "
      "exactly this many steps, the last epoch cut short where they end.",
      flag="harden_steps", lower=1)
  batch_size: int = setting(128, "Hardening global batch size.", flag="harden_batch_size",
                            lower=1)
  learning_rate: float = setting(0.01, "Hardening SGD learning rate.",
                                 flag="harden_learning_rate", above=0.0)
  # The learning rate ramps up linearly over the first `lr_warmup_steps` steps (the first warm-up
  # batches carry universal triggers that flip nearly every image: a full-rate step on them wrecks
  # the model) and then stays constant or follows a cosine decay to 0.
  lr_warmup_steps: int = setting(
      100, "Hardening steps over which the learning rate ramps up linearly from 0.", lower=0)
  lr_decay: str = setting(
      "cosine", "Hardening learning rate after the ramp: constant, or cosine decay to 0.",
      choices=("constant", "cosine"))
  momentum: float = setting(0.9, cli=False)
  # How BatchNorm layers see the perturbed (stamped, adversarial) images of a hardening batch
  # (moth_tf.hardening.model.BATCHNORM_MODES). Only models with BatchNorm layers are affected.
  batchnorm: str = setting(
      "mixed", "How the BatchNorm layers of a model being hardened see the perturbed images of a "
      "batch: mixed (in the batch statistics, as the reference), clean_stats (clean images in "
      "training mode, perturbed ones normalised by the moving averages), frozen (all in inference "
      "mode), recalibrate (mixed, then the moving averages re-estimated from clean images).",
      choices=BATCHNORM_MODES)
  # Streaming training data (moth_tf.data.stream): the images per class held in memory, the first
  # ones of the stream; trigger generation draws its images from them. 200 holds every digits
  # training image, so arrays and a stream of them harden alike.
  trigger_pool: int = setting(
      200, "Streaming training data (tfds:, folder:, a tf.data.Dataset): training images per class "
      "held in memory for trigger generation, the first ones of the stream.",
      lower=1)
  # The run's --seed.
  seed: int = setting(0, cli=False)
  # The run's --jit_compile: XLA for the training step and the trigger engine's step loop.
  jit_compile: bool = setting(False, cli=False)
  moth: MothConfig = sub_config(MothConfig)
  adv_train: AdvTrainConfig = sub_config(AdvTrainConfig)
  uap: UapConfig = sub_config(UapConfig)
  pairwise: PairwiseConfig = sub_config(PairwiseConfig)
  nc: NeuralCleanseConfig = sub_config(NeuralCleanseConfig, flatten=False)
  nad: NadConfig = sub_config(NadConfig)

  def pairs_for(self, num_classes: int) -> int:
    """MOTH's class pairs per period on an n-class model (MothConfig.pairs_for)."""
    return self.moth.pairs_for(num_classes)

  def steps_per_epoch_for(self, num_train: Optional[int]) -> int:
    """Training steps in one epoch of `num_train` images (the last batch may be partial). A
    stream of unknown size (None) has epochs of STREAM_EPOCH_STEPS steps (fewer for a shorter
    run): an epoch is then only the interval of checkpoints and logs."""
    if num_train is None:
      if self.epochs:
        raise ValueError(f"harden_epochs={self.epochs} needs training data of known size; give "
                         "the budget in steps (harden_steps) for a stream of unknown length")
      return max(1, min(self.steps, STREAM_EPOCH_STEPS))
    return -(-num_train // self.batch_size)

  def epochs_for(self, num_train: Optional[int]) -> int:
    """Hardening epochs on `num_train` images: explicit, or as many as `steps` steps start (the
    last one may be cut short: see total_steps_for)."""
    if self.epochs:
      return self.epochs
    return -(-self.steps // self.steps_per_epoch_for(num_train))

  def total_steps_for(self, num_train: Optional[int]) -> int:
    """Training steps of a run on `num_train` images: epochs x steps per epoch with explicit
    epochs, else `steps` exactly."""
    if self.epochs:
      return self.epochs * self.steps_per_epoch_for(num_train)
    return self.steps

  def lr_ramp_steps_for(self, num_train: int, total_steps: Optional[int] = None) -> int:
    """The learning-rate ramp actually used: `lr_warmup_steps`, capped below the run's length
    (`total_steps`, by default the configured budget on `num_train` images)."""
    total_steps = total_steps or self.total_steps_for(num_train)
    return min(self.lr_warmup_steps, max(total_steps - 1, 0))


def harden_config(**settings) -> HardenConfig:
  """A HardenConfig from the defaults and settings given by name, flat or nested
  (`harden_config(steps=500, portion=0.1, nad={"epochs": 5})`); see `replace`."""
  return replace(HardenConfig(), settings)


@dataclasses.dataclass(frozen=True)
class RunConfig(Checked):
  """Everything one invocation of `python -m moth_tf.main` does."""
  phase: str = setting(
      "pipeline", "What to run: pipeline (train if missing, distance, harden, distance again), "
      "train (natural base model), test (clean accuracy), robustness (L-inf PGD accuracy), "
      "distance (pairwise class distance), harden (MOTH hardening), poison (train a backdoored "
      "model), backdoor (C-Acc, ASR, R-Acc, DER under a saved trigger), detect (Neural Cleanse).",
      choices=PHASES)
  # Checked against the live registry (`methods()`), which may have grown since import.
  method: str = setting("natural", cli="custom")
  model: str = setting("lenet", cli="custom")
  workdir: str = setting(DEFAULT_WORKDIR, "Where run directories are created.")
  # A user model (.keras or SavedModel dir) instead of the run's.
  model_path: Optional[str] = setting(
      None, "A user model to evaluate or harden instead of the run's own: a .keras file or a TF "
      "SavedModel directory. It is never modified.", none="the run's own model")
  unsafe_load: bool = setting(
      False, "Load .keras files that need safe_mode=False (only for files you trust).")
  # Replace a finished run directory (train, harden) instead of refusing.
  overwrite: bool = setting(
      False, "Replace a finished run directory (one with a model.keras) of --phase=train, harden "
      "or pipeline instead of refusing. An interrupted run always resumes.")
  strategy: str = setting(
      "default", "tf.distribute strategy of training, hardening, distance and detection: default "
      "(one device), mirrored (all local GPUs, or --cpu_devices logical CPUs) or multi_worker "
      "(MultiWorkerMirroredStrategy; the cluster from TF_CONFIG). Trigger optimisations are split "
      "across the replicas.", choices=STRATEGIES)
  seed: int = setting(0, "Random seed of training/hardening.", lower=0)
  precision: str = setting(
      "float32", "Keras dtype policy the classifier computes in, in every phase: float32, "
      "mixed_bfloat16 or mixed_float16 (float32 variables; mixed_float16 trains with loss "
      "scaling). Triggers, masks, patterns and their losses stay float32. A loaded model is "
      "rebuilt under the policy for the work; saved models are float32 copies.",
      choices=PRECISIONS)
  jit_compile: bool = setting(
      False, "Compile the training step (base training, poisoning, hardening) and the trigger "
      "engine's step loop (class distance, MOTH's trigger generation, Neural Cleanse) with XLA.")
  # The base model's run: "natural" (--phase=train's) or a poisoned run made by --phase=poison.
  base_run: str = setting("natural", cli="custom")
  # Where a backdoor phase finds the trigger (a poisoned run directory); None: the base run's.
  trigger_path: Optional[str] = setting(
      None, "backdoor/detect: the poisoned run directory (or its trigger.json) whose backdoor "
      "trigger to test.", none="the --base_run's")
  # How fits, distance and detection report progress: one of PROGRESS (moth_tf.progress).
  progress: str = setting(
      "auto", "Progress output of training, hardening, distance and detection: bar (Keras's live "
      "bar), epoch (plain lines: one per training epoch, at most ~20 per hardening run, for log "
      "files and CI), none, or auto (bar when stdout is a terminal, epoch otherwise).",
      choices=PROGRESS)
  data: DataConfig = sub_config(DataConfig, flatten=False)
  train: TrainConfig = sub_config(TrainConfig, flatten=False)
  distance: DistanceConfig = sub_config(DistanceConfig, flatten=False)
  harden: HardenConfig = sub_config(HardenConfig, flatten=False)
  poison: PoisonConfig = sub_config(PoisonConfig, flatten=False)

  def check(self):
    check(self.method in methods(), f"method must be one of {methods()}, got {self.method!r}")
    check(re.fullmatch(r"[a-z0-9][a-z0-9_]*", self.base_run) is not None,
           f"base_run must be a run name of lower-case letters, digits and _, got {self.base_run!r}")
    check(self.base_run not in hardening_methods(),
           f"base_run={self.base_run!r} is a hardening method's name; pick another run name")

  def run_dir(self, method: Optional[str] = None) -> str:
    """The run directory of (dataset, model, method) under the workdir.

    From the natural base model: `{dataset}_{model}_{method}` (`..._natural` is the base itself).
    From another base run (a poisoned model): `{dataset}_{model}_{base_run}` is the base itself and
    `{dataset}_{model}_{base_run}_{method}` what a method made of it. Own data sets' names become
    directory names first: `tfds:NAME` -> `tfds-NAME`, `folder:PATH` -> `folder-BASENAME-HASH`
    (moth_tf.data.own.run_dir_name).
    """
    method = method or self.method
    prefix = f"{_own_data.run_dir_name(self.data.dataset)}_{self.model}"
    if self.base_run == "natural":
      return os.path.join(self.workdir, f"{prefix}_{method}")
    suffix = "" if method == "natural" else f"_{method}"
    return os.path.join(self.workdir, f"{prefix}_{self.base_run}{suffix}")

  def to_dict(self) -> dict:
    """The configuration as JSON-ready values (summary.json, HParams); the hardening settings under
    their flat names (`flat_dict`)."""
    return flat_dict(self)
