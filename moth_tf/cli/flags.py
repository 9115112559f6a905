"""Every command-line flag of `python -m moth_tf.main`, defined in one function.

Defined inside `define_flags()` (not at import time) so that importing library modules or tests never
registers flags; only `main.py` calls it and reads FLAGS.
"""

from absl import flags

from moth_tf import config as config_lib
from moth_tf import data as data_lib
from moth_tf.data import augment as augment_lib
from moth_tf import models
from moth_tf.hardening import methods as hardening_methods


def define_flags():
  """Defines the flags of the main binary. Safe to call once per process."""
  flags.DEFINE_enum("phase", "pipeline", list(config_lib.PHASES),
                    "What to run: pipeline (train if missing, distance, harden, distance again), "
                    "train (natural base model), test (clean accuracy), robustness (L-inf PGD "
                    "accuracy), distance (pairwise class "
                    "distance), harden (MOTH hardening), poison (train a backdoored model), backdoor "
                    "(C-Acc, ASR, R-Acc, DER under a saved trigger), detect (Neural Cleanse).")
  flags.DEFINE_enum("dataset", "digits", list(data_lib.DATASETS), "Data set.")
  flags.DEFINE_enum("model", None, list(models.MODELS),
                    "Architecture (default: the data set's default: lenet for digits, resnet20 "
                    "for cifar10 and gtsrb, nin for svhn, cnn for lisa, small_cnn for "
                    "fashion_mnist).")
  flags.DEFINE_enum("method", None, list(config_lib.METHODS),
                    "Which run to act on (test, robustness, distance; default natural, the base "
                    "model) or which hardening method to run (harden, pipeline; default moth): "
                    + "; ".join(f"{name}: {entry.summary}" for name, entry in
                                hardening_methods.METHODS.items()) + ".")
  flags.DEFINE_string("workdir", config_lib.DEFAULT_WORKDIR, "Where run directories are created.")
  flags.DEFINE_string("data_dir", None,
                      "tfds data dir / folder of prepared .npz files / folder of the Fashion-MNIST "
                      "IDX files (searched alone when given).")
  flags.DEFINE_bool("download", True,
                    "cifar10 / svhn: when --data_dir (else $TFDS_DATA_DIR, else "
                    "~/tensorflow_datasets) does not hold the data set, download and prepare it "
                    "there with tensorflow_datasets. --nodownload (or MOTH_TF_NO_DOWNLOAD=1) never "
                    "touches the network: a missing data set is an error at once.")
  flags.DEFINE_integer("image_size", None, "Resize images to this square size (bilinear).",
                       lower_bound=4)
  flags.DEFINE_enum("augment", "default", ["default"] + list(augment_lib.RECIPES),
                    "Training augmentation of every fit (base training, poisoning, hardening): "
                    "default (the data set's: cifar10 shift_flip 4 px, fashion_mnist crop_flip "
                    "2 px, the others none), none, flip, crop (zero padding + random crop), "
                    "crop_flip, shift (continuous, bilinear), shift_flip.")
  flags.DEFINE_integer("augment_pad", None,
                       "Largest shift in pixels of the crop and shift recipes (default: the data "
                       "set's, else an eighth of the image side).", lower_bound=1)
  flags.DEFINE_string("model_path", None,
                      "A user model to evaluate or harden instead of the run's own: a .keras "
                      "file or a TF SavedModel directory. It is never modified.")
  flags.DEFINE_bool("unsafe_load", False,
                    "Load .keras files that need safe_mode=False (only for files you trust).")
  flags.DEFINE_bool("overwrite", False,
                    "Replace a finished run directory (one with a model.keras) of --phase=train, "
                    "harden or pipeline instead of refusing. An interrupted run always resumes.")
  flags.DEFINE_enum("strategy", "default", list(config_lib.STRATEGIES),
                    "tf.distribute strategy of training, hardening, distance and detection: "
                    "default (one device), mirrored (all local GPUs, or --cpu_devices logical "
                    "CPUs) or multi_worker (MultiWorkerMirroredStrategy; the cluster from "
                    "TF_CONFIG). Trigger optimisations are split across the replicas.")
  flags.DEFINE_integer("cpu_devices", None,
                       "Split the CPU into this many logical devices (to run --strategy=mirrored "
                       "without GPUs, for tests and demos).", lower_bound=1)
  flags.DEFINE_integer("seed", 0, "Random seed of training/hardening.", lower_bound=0)
  flags.DEFINE_enum("progress", "auto", list(config_lib.PROGRESS),
                    "Progress output of training, hardening, distance and detection: bar (Keras's "
                    "live bar), epoch (plain lines: one per training epoch, at most ~20 per "
                    "hardening run, for log files and CI), none, or auto (bar when stdout is a "
                    "terminal, epoch otherwise).")

  # Base training (0 / empty: the data set's recipe, moth_tf.training.RECIPES).
  flags.DEFINE_integer("epochs", None, "Training epochs (default: the data set's recipe).",
                       lower_bound=1)
  flags.DEFINE_integer("batch_size", None, "Global batch size (default: the recipe's).",
                       lower_bound=1)
  flags.DEFINE_float("learning_rate", None, "Learning rate (default: the recipe's).",
                     lower_bound=0.0)
  flags.DEFINE_enum("optimizer", None, ["adam", "sgd"], "Optimizer (default: the recipe's).")

  # Class distance.
  flags.DEFINE_integer("distance_samples", 100,
                       "Held-out images of the source class per direction.", lower_bound=1)
  flags.DEFINE_integer("distance_steps", 1000, "Optimisation steps per direction.",
                       lower_bound=1)
  flags.DEFINE_integer("seeds", 3, "Number of seeds (the reference's values first); the "
                       "distance is the element-wise minimum over seeds.", lower_bound=1)
  flags.DEFINE_float("asr_bound", 0.9, "Attack success rate a trigger must reach.",
                     lower_bound=0.0, upper_bound=1.0)
  flags.DEFINE_string("pair", None, "Measure only the direction s-t, e.g. --pair=3-5.")
  flags.DEFINE_integer("early_stop_patience", 200,
                       "Stop a direction after this many steps without a 1% smaller trigger; 0 "
                       "runs all steps like the reference.", lower_bound=0)
  flags.DEFINE_integer("batch_directions", 0,
                       "Directions optimised together in one graph (0: all pairs at once; 1: one "
                       "at a time like the reference).", lower_bound=0)
  flags.DEFINE_integer("direction_blocks", 8,
                       "Blocks the directions of a graph call are cut into, each with its own "
                       "model call; under --strategy the replicas take whole blocks, so at most "
                       "this many get work. The result depends on it, never on the devices.",
                       lower_bound=1)
  flags.DEFINE_string("compare_to", None,
                      "A baseline run directory or distance.json to report the enlargement "
                      "against.")

  # MOTH hardening (unset: the preset's value; defaults in moth_tf.config.HardenConfig).
  flags.DEFINE_enum("preset", "default", ["default", "reference"],
                    "Hardening preset: ours (hardens; see benchmarks/hardening_benchmark.py) or the "
                    "authors' (2 epochs, 10% of min(#s,#t) stamped) for comparison.")
  flags.DEFINE_enum("mode", None, ["nat", "adv"],
                    "nat: stamp triggers on clean batches; adv: PGD-perturb each batch first.")
  flags.DEFINE_integer("harden_epochs", None,
                       "Hardening epochs (default: about --harden_steps steps).", lower_bound=1)
  flags.DEFINE_integer("harden_steps", None,
                       "Hardening budget in training steps when --harden_epochs is not given "
                       "(default 2000).", lower_bound=1)
  flags.DEFINE_integer("harden_batch_size", None, "Hardening global batch size.", lower_bound=1)
  flags.DEFINE_float("harden_learning_rate", None, "Hardening SGD learning rate.",
                     lower_bound=0.0)
  # No bounds here: the validator below states the whole range (0, 1] in one message.
  flags.DEFINE_float("portion", None,
                     "Fraction, in (0, 1], of each pair class's batch images stamped.")
  flags.DEFINE_float("warm_ratio", None,
                     "Fraction of non-target batch images stamped during the warm-up.",
                     lower_bound=0.0, upper_bound=1.0)
  flags.DEFINE_float("replay", None,
                     "Fraction of the other batch images stamped with a stored trigger of their "
                     "class (trigger replay; 0 = MOTH as published).", lower_bound=0.0,
                     upper_bound=1.0)
  flags.DEFINE_integer("warmup_steps", None,
                       "Inversion steps of the warm-up universal triggers (reference 500).",
                       lower_bound=1)
  flags.DEFINE_integer("warmup_samples", None,
                       "Training images of every other class per warm-up universal trigger "
                       "(reference 10).", lower_bound=1)
  flags.DEFINE_integer("pair_steps", None,
                       "Inversion steps of a pair's first generation in a period and after a "
                       "failure (reference 200).", lower_bound=1)
  flags.DEFINE_integer("fast_steps", None,
                       "Inversion steps of the fast generations while both directions succeed "
                       "(reference 40).", lower_bound=1)
  flags.DEFINE_float("fast_cost", None,
                     "Initial L1 cost of the fast generations (reference 0.2, on its summed "
                     "cross-entropy).", lower_bound=0.0)
  flags.DEFINE_integer("trigger_samples", None,
                       "Training images per class used to generate each pair trigger.",
                       lower_bound=1)
  flags.DEFINE_integer("lr_warmup_steps", None,
                       "Hardening steps over which the learning rate ramps up linearly from 0.",
                       lower_bound=0)
  flags.DEFINE_enum("lr_decay", None, ["constant", "cosine"],
                    "Hardening learning rate after the ramp: constant, or cosine decay to 0.")
  flags.DEFINE_integer("generations_per_period", None,
                       "MOTH: generate the pair's triggers in the first N steps of each period "
                       "only; the others stamp the last ones again (default: every step).",
                       lower_bound=1)
  flags.DEFINE_bool("warm_fast_start", None,
                    "MOTH: a pair chosen before starts its period in fast mode from its stored "
                    "triggers instead of a full generation.")
  flags.DEFINE_bool("fast_first_visit", None,
                    "MOTH, with --warm_fast_start: a pair's first period also starts in fast mode, "
                    "from the warm-up's universal triggers.")
  flags.DEFINE_integer("pairs_per_period", None,
                       "MOTH: class pairs (with no class in common) hardened together in every "
                       "period; their triggers are generated in one batched call (default 1, as "
                       "published).", lower_bound=1)
  flags.DEFINE_integer("period", None,
                       "MOTH: training steps per period, each period on the scheduler's pairs "
                       "(reference 3).", lower_bound=1)
  flags.DEFINE_integer("generation_early_stop", None,
                       "MOTH: a pair generation's direction stops after this many steps without a "
                       "1% smaller successful trigger (0 = never, as published).", lower_bound=0)
  flags.DEFINE_integer("rollback_steps", None,
                       "MOTH: steps of the full-cost generation after a failed one (default: "
                       "--pair_steps).", lower_bound=1)
  flags.DEFINE_bool("fixed_trigger_images", None,
                    "MOTH: generate each class's triggers on the same seeded sample of its "
                    "training images all run long, instead of a fresh sample per generation.")
  flags.DEFINE_integer("trigger_families", None,
                       "Independently initialised triggers kept, generated and stamped per "
                       "direction (ours; the reference has 1).", lower_bound=1)
  # MOTH ablations: each switches one of the paper's design choices off (README, "Ablations").
  flags.DEFINE_enum("generation", None, list(config_lib.GENERATIONS),
                    "MOTH: two_sided (default) generates a pair's two directions together (one "
                    "loss, one fast/rollback decision); one_sided generates each direction on its "
                    "own.")
  flags.DEFINE_enum("schedule", None, list(config_lib.SCHEDULES),
                    "MOTH: what picks the pairs: karm (default: the K-arm bandit, prior U then "
                    "reward V), prior_only (U alone), reward_only (V alone), random (uniform, "
                    "seeded), round_robin (every pair in turn, in a fixed order, cycling).")
  flags.DEFINE_float("schedule_epsilon", None,
                     "MOTH: share of the K-arm schedules' choices that explore a random pair "
                     "(default 0.3).", lower_bound=0.0, upper_bound=1.0)
  flags.DEFINE_integer("alpha_steps", None,
                       "MOTH: steps after the warm-up over which the K-arm score moves from the "
                       "prior U to the reward V (default 1000).", lower_bound=1)
  flags.DEFINE_bool("trigger_reuse", None,
                    "MOTH: warm-start each generation from the latest trigger at --fast_cost, "
                    "rolling back to --pair_cost after a failure (default); --notrigger_reuse: "
                    "every generation from a random trigger at --pair_cost for --pair_steps.")

  # Baselines (--method=adv_train, uap, pairwise).
  flags.DEFINE_enum("batchnorm", None, list(config_lib.BATCHNORM_MODES),
                    "How the BatchNorm layers of a model being hardened see the perturbed images "
                    "of a batch: mixed (in the batch statistics, as the reference), clean_stats "
                    "(clean images in training mode, perturbed ones normalised by the moving "
                    "averages), frozen (all in inference mode), recalibrate (mixed, then the "
                    "moving averages re-estimated from clean images). Default: the preset's.")
  flags.DEFINE_float("adv_mix", None,
                     "adv_train: share, in (0, 1], of each batch replaced by its PGD examples "
                     "(default 1: every image).")
  flags.DEFINE_float("uap_epsilon", None,
                     "uap: L-inf radius of the shared perturbation (default: the data set's "
                     "training PGD epsilon).")
  flags.DEFINE_float("uap_step_size", None,
                     "uap: signed-gradient ascent step of the perturbation per batch (default: "
                     "the data set's training PGD step size).")
  flags.DEFINE_float("pairwise_tol", None,
                     "pairwise: relative growth of a pair's two trigger sizes together below which "
                     "a period counts as 'no growth' (default 0.05).", lower_bound=0.0, upper_bound=1.0)
  flags.DEFINE_integer("pairwise_patience", None,
                       "pairwise: periods in a row without growth that end a pair (default 10).",
                       lower_bound=1)
  flags.DEFINE_integer("pairwise_max_periods", None,
                       "pairwise: most periods one pair gets (default 100).", lower_bound=1)
  # nad (Neural Attention Distillation).
  flags.DEFINE_float("nad_clean_share", None,
                     "nad: share, in (0, 1], of the training images (stratified, seeded) that the "
                     "teacher and the student train on (default 0.05).")
  flags.DEFINE_integer("nad_teacher_epochs", None,
                       "nad: epochs of clean fine-tuning that make the teacher (default 10).",
                       lower_bound=1)
  flags.DEFINE_integer("nad_epochs", None,
                       "nad: epochs of attention distillation of the student (default 20).",
                       lower_bound=1)
  flags.DEFINE_float("nad_power", None,
                     "nad: exponent p of the attention map, the channel mean of |activation|^p "
                     "(default 2).")
  flags.DEFINE_list("nad_layers", None,
                    "nad: comma-separated names of the classifier's layers (4-D outputs) whose "
                    "attention maps are distilled (default: the architecture's, see README).")
  flags.DEFINE_list("nad_betas", None,
                    "nad: comma-separated weights of the layers' attention losses, one per layer "
                    "(default: NAD's 500, 1000, 1000, scaled to each map's size).")
  flags.register_validator(
      "nad_clean_share", lambda v: v is None or 0.0 < v <= 1.0,
      message="--nad_clean_share must be in (0, 1] (the share of the training images NAD trains "
              "on)")
  flags.register_validator("nad_power", lambda v: v is None or v > 0,
                           message="--nad_power must be > 0")
  flags.register_validator(
      "nad_betas", lambda v: v is None or _parse_floats(v) is not None,
      message="--nad_betas must be comma-separated numbers >= 0, one per layer, e.g. "
              "--nad_betas=500,1000,1000")

  # The backdoor scenario: --phase=poison / backdoor / detect, --method=nc.
  flags.DEFINE_string("base_run", None,
                      "The base model's run: natural (default; made by --phase=train) or a "
                      "poisoned run made by --phase=poison (default name there: poisoned). Phases "
                      "act on {dataset}_{model}_{base_run} and write what --method makes of it to "
                      "{dataset}_{model}_{base_run}_{method}.")
  flags.DEFINE_string("trigger_path", None,
                      "backdoor/detect: the poisoned run directory (or its trigger.json) whose "
                      "backdoor trigger to test (default: the --base_run's).")
  flags.DEFINE_enum("poison_kind", "patch", ["patch", "blend"],
                    "Backdoor trigger: a square patch, or a seeded noise pattern blended over the "
                    "whole image.")
  flags.DEFINE_enum("poison_mode", "all_to_one", ["all_to_one", "all_to_all"],
                    "all_to_one: stamped images are relabelled to --poison_target; all_to_all: "
                    "class c to c+1 mod n.")
  flags.DEFINE_integer("poison_target", 0, "The all-to-one target class.", lower_bound=0)
  flags.DEFINE_float("poison_rate", 0.1,
                     "Share of the whole training set that is stamped and relabelled (drawn from "
                     "the non-target classes for all_to_one).", lower_bound=0.0, upper_bound=1.0)
  flags.DEFINE_integer("poison_size", 3, "Side of the patch in pixels.", lower_bound=1)
  flags.DEFINE_string("poison_position", "bottom_right",
                      "Where the patch goes: bottom_right, bottom_left, top_right, top_left, "
                      "center, or ROW,COL of its top-left pixel.")
  flags.DEFINE_list("poison_colour", ["1.0"],
                    "Patch colour in [0, 1]: one grey value or one per channel.")
  flags.DEFINE_float("poison_alpha", 0.2, "Blend weight of the blended pattern.", lower_bound=0.0,
                     upper_bound=1.0)
  flags.DEFINE_integer("nc_steps", None,
                       "Neural Cleanse: optimisation steps per label's trigger (default 1000).",
                       lower_bound=1)
  flags.DEFINE_integer("nc_samples", None,
                       "Neural Cleanse: images of each other class per label (default 30).",
                       lower_bound=1)
  flags.DEFINE_float("nc_asr_bound", None, "Neural Cleanse: ASR a trigger must reach (0.99).",
                     lower_bound=0.0, upper_bound=1.0)
  flags.DEFINE_float("nc_threshold", None,
                     "Neural Cleanse: flag labels whose anomaly index exceeds this on the small "
                     "side (2).", lower_bound=0.0)
  flags.DEFINE_bool("nc_unlearn_all", None,
                    "--method=nc: unlearn every label's reversed trigger, not only the flagged "
                    "labels'.")
  flags.DEFINE_float("nc_stamp_share", None,
                     "--method=nc: share of each batch stamped with a reversed trigger (0.2).",
                     lower_bound=0.0, upper_bound=1.0)

  # Portion 0 would generate every pair's triggers and never stamp them; HardenConfig rejects it
  # too, for library callers.
  flags.register_validator(
      "portion", lambda v: v is None or 0.0 < v <= 1.0,
      message="--portion must be in (0, 1] (the share of each scheduled pair's images that carry "
              "its triggers)")
  flags.register_validator(
      "pair", lambda v: v is None or _parse_pair(v) is not None,
      message="--pair must look like s-t with two different class indices, e.g. --pair=3-5")


def _parse_pair(text):
  parts = text.split("-")
  if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
    return None
  s, t = int(parts[0]), int(parts[1])
  return None if s == t else (s, t)


def parse_pair(text):
  """'3-5' -> (3, 5); None stays None."""
  return None if text is None else _parse_pair(text)


def _parse_floats(items):
  try:
    values = tuple(float(item) for item in items)
  except ValueError:
    return None
  return values if all(v >= 0 for v in values) else None


def parse_betas(items):
  """['500', '1e3'] -> (500.0, 1000.0); None stays None.

  Raises:
    ValueError: an item is not a number >= 0 (one line naming --nad_betas).
  """
  if items is None:
    return None
  values = _parse_floats(items)
  if values is None:
    raise ValueError(f"--nad_betas must be comma-separated numbers >= 0, got {','.join(items)!r}")
  return values
