"""Benchmark: base training of lenet on digits from the command line.

Runs `python -m moth_tf.main --phase=train --dataset=digits` in a fresh workdir, then
`--phase=test`, and prints test accuracy and wall times (training alone, and the whole process
including TensorFlow's start-up).

    python benchmarks/train_benchmark.py [--workdir=DIR]
"""

import argparse
import json
import os
import re
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default=os.path.join(common.DEFAULT_WORKDIR, "train_bench"))
  args = parser.parse_args()
  shutil.rmtree(args.workdir, ignore_errors=True)
  print(common.machine_note())
  wall, _ = common.run_cli("--phase=train", "--dataset=digits", workdir=args.workdir)
  summary = json.load(open(os.path.join(args.workdir, "digits_lenet_natural", "summary.json")))
  test_wall, out = common.run_cli("--phase=test", "--dataset=digits", workdir=args.workdir)
  printed = float(re.search(r"test accuracy: ([0-9.]+)", out).group(1))
  print(f"train: test accuracy {summary['test_accuracy']:.4f}, training (model.fit) "
        f"{summary['train']['wall_seconds']:.1f} s, whole command {wall:.1f} s")
  print(f"test phase: printed accuracy {printed:.4f}, summary.json {summary['test_accuracy']:.4f}, "
        f"whole command {test_wall:.1f} s")
  ok = summary["test_accuracy"] >= 0.97 and summary["train"]["wall_seconds"] < 60
  print("target (>= 97% test accuracy, < 60 s training):", "met" if ok else "NOT met")


if __name__ == "__main__":
  main()
