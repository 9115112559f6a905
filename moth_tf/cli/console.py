"""Everything the phases print to the terminal, in one place: start lines, results and tables.

The phases (moth_tf.cli.phases) compute and record; the wording and layout of what a user reads live
here, so every hardening method reports through the same lines.
"""

from moth_tf import progress
from moth_tf.evaluation import detection
from moth_tf.evaluation import distance


def print_warning(text: str):
  """A warning the user must see (one line on stderr, before the work it is about)."""
  progress.warn(text)


def print_harden_start(method: str, base_path: str, out_dir: str, description: str):
  """The line printed before a hardening run starts."""
  print(f"{method} hardening of {base_path}: {description}; output {out_dir}", flush=True)


def print_harden_end(acc_before: float, acc_after: float, results: dict, model_file: str):
  """Accuracy before and after, and where the time went."""
  share = results["generation_seconds"] + results["warmup_seconds"]
  split = (f" ({share:.1f} s generating triggers, {results['training_seconds']:.1f} s training)"
           if share > 0 else "")
  print(f"test accuracy {acc_before:.4f} -> {acc_after:.4f} ({100 * (acc_after - acc_before):+.2f} "
        f"points); hardening took {results['wall_seconds']:.1f} s for {results['steps']} steps"
        f"{split}; model saved to {model_file}")


def print_distance(result, payload):
  """A distance measurement: the matrix (or one direction), its mean, and any comparison."""
  if len(result.pairs) == 1:
    s, t = result.pairs[0]
    value = result.matrix[s, t]
    print(f"distance {s}->{t}: " + (f"{value:.3f}" if value == value else "failed (ASR bound never "
                                    "reached)"))
  else:
    print(distance.format_matrix(result.matrix))
    print(f"mean distance: {result.mean:.3f} over {len(result.pairs) - len(result.failures)} "
          f"directions; failures: {len(result.failures)}")
  print(f"wall time: {result.wall_seconds:.1f} s")
  if "comparison" in payload:
    c = payload["comparison"]
    print(f"enlargement vs {c['baseline']}: mean of per-pair relative changes "
          f"{100 * c['mean_relative_change']:+.2f}%, ratio of means {100 * c['ratio_of_means']:+.2f}%"
          f" ({c['pairs_compared']} pairs)")
    print(distance.format_matrix(100 * c["per_pair"], fmt="{:+7.1f}"))


def print_pipeline_summary(config, harden_results: dict, comparison: dict, means, failures, times,
                           run_dirs):
  """The pipeline's closing table: accuracy, distance and enlargement before and after."""
  acc_before = harden_results["test_accuracy_before"]
  acc_after = harden_results["test_accuracy_after"]
  rows = [
      ("test accuracy", f"{acc_before:.4f}", f"{acc_after:.4f}",
       f"{100 * (acc_after - acc_before):+.2f} pts"),
      ("mean class distance", f"{means[0]:.3f}", f"{means[1]:.3f}",
       f"{100 * comparison['mean_relative_change']:+.1f}% (mean of per-pair changes)"),
      ("", "", "", f"{100 * comparison['ratio_of_means']:+.1f}% (ratio of means)"),
      ("failed directions", str(failures[0]), str(failures[1]), ""),
  ]
  print()
  print(distance.format_matrix(100 * comparison["per_pair"], fmt="{:+7.1f}"))
  print(f"\nper-pair distance change (%) above; summary ({config.method}):")
  print(f"{'':22}{'before':>10}{'after':>10}  change")
  for name, before, after, change in rows:
    print(f"{name:22}{before:>10}{after:>10}  {change}")
  seeds_note = (f"{len(config.distance.seeds)} seed(s)" +
                ("" if len(config.distance.seeds) >= 3 else "; the reference protocol uses 3"))
  print(f"distance: {seeds_note}, {config.distance.steps} steps, early stop "
        f"{config.distance.early_stop_patience or 'off'}")
  print("stage times: " + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()) +
        f"; total {sum(times.values()):.1f} s")
  print(f"runs: {run_dirs[0]} and {run_dirs[1]}; view with tensorboard --logdir "
        f"{config.workdir}")


def print_detection(found, class_names=None):
  """Neural Cleanse's outcome: every label's norm and anomaly index, and the flagged labels."""
  print(detection.format_detection(found, class_names))


def print_backdoor(metrics: dict, label: str, original: dict = None):
  """C-Acc, ASR, R-Acc (and DER against the poisoned original) of one model."""
  line = (f"{label}: C-Acc {metrics['c_acc']:.4f}, ASR {metrics['asr']:.4f}, R-Acc "
          f"{metrics['r_acc']:.4f} ({metrics['stamped_images']} stamped test images)")
  if original is not None and "der" in metrics:
    line += (f"; against the poisoned original (C-Acc {original['c_acc']:.4f}, ASR "
             f"{original['asr']:.4f}): DER {metrics['der']:.4f}")
  print(line)


def describe_trigger(trigger) -> str:
  """A backdoor trigger in a few words, e.g. "3x3 patch (colour 1) at bottom_right"."""
  spec = trigger.spec
  if spec.get("kind") == "patch":
    colour = ",".join(f"{v:g}" for v in spec["colour"])
    return f"{spec['size']}x{spec['size']} patch (colour {colour}) at {spec['position']}"
  return f"blended noise pattern (alpha {spec.get('alpha', 0):g})"
