"""Tests of trigger inversion under tf.distribute (moth_tf.triggers.distributed) and of
`--strategy=multi_worker` on a two-worker cluster on 127.0.0.1.

Strategies with several CPU replicas need the CPU split before TensorFlow initialises its devices,
and a multi-worker strategy needs its own processes, so those tests run in subprocesses.
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from moth_tf.triggers import distributed
from moth_tf.triggers import engine

import test_engine  # The hand-built patch model (tests/ is on sys.path under pytest).

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_FIELDS = ("mask", "pattern", "size", "success", "steps_run", "final_cost", "loss_start",
           "loss_end", "sample_direction")


def _env():
  # PYTHONPATH: subprocesses must import this checkout's moth_tf, not an installed copy.
  return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=os.pathsep.join(
      p for p in (REPO, os.environ.get("PYTHONPATH")) if p))


def _directions():
  """Five directions with different image counts; target 3 is unreachable (must fail)."""
  images = [test_engine._dark_images(7, 1), test_engine._dark_images(5, 2),
            test_engine._class2_images(6, 3), test_engine._dark_images(3, 4),
            test_engine._dark_images(4, 5)]
  return images, [1, 2, 1, 3, 2], [5, 6, 7, 8, 9]


def test_replica_blocks_are_contiguous_and_even():
  assert distributed.replica_blocks(10, 4) == [(0, 3), (3, 6), (6, 8), (8, 10)]
  assert distributed.replica_blocks(2, 4) == [(0, 1), (1, 2), (2, 2), (2, 2)]
  assert distributed.replica_blocks(90, 8)[0] == (0, 12) and distributed.replica_blocks(90, 8)[-1] == (79, 90)


def test_make_inverter_uses_the_engine_on_one_replica():
  model = test_engine._patch_model()
  assert isinstance(distributed.make_inverter(model), engine.TriggerInverter)
  one = tf.distribute.MirroredStrategy(["/cpu:0"])
  assert isinstance(distributed.make_inverter(model, strategy=one), engine.TriggerInverter)


def test_one_replica_is_bit_identical_to_the_engine():
  # The distribution machinery (padding, per-replica values, gather, unpadding, early stop across
  # chunks) on a one-replica strategy must not change a single bit.
  images, targets, seeds = _directions()
  settings = engine.InversionSettings(steps=120, chunk_steps=40, early_stop_patience=20)
  model = test_engine._patch_model()
  expected = engine.TriggerInverter(model, settings).invert(images, targets, seeds)
  got = distributed.DistributedInverter(model, settings, tf.distribute.MirroredStrategy(
      ["/cpu:0"])).invert(images, targets, seeds)
  for field in _FIELDS:
    np.testing.assert_array_equal(getattr(got, field), getattr(expected, field), err_msg=field)
  assert not expected.success[3] and expected.success[[0, 1, 2, 4]].all()


def _conv_dense_model():
  """A conv net with the layers whose CPU kernels round a row by batch size: a Conv2D on one
  channel and Dense layers (the input gradient dy @ W^T); one device and two replicas differed in
  every real-valued field with it before the engine cut directions into blocks."""
  keras.utils.set_random_seed(5)
  return keras.Sequential([
      keras.Input((6, 6, 1)),
      keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
      keras.layers.Flatten(),
      keras.layers.Dense(32, activation="relu"),
      keras.layers.Dense(4),
  ])


_REPLICAS = textwrap.dedent("""
    import json, sys
    from moth_tf import distribute
    distribute.split_cpu(int(sys.argv[2]))
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    import test_distributed
    from moth_tf.triggers import distributed, engine

    strategy = distribute.get_strategy("mirrored")
    images, targets, seeds = test_distributed._directions()
    out = {"replicas": strategy.num_replicas_in_sync, "cases": {}}
    cases = {"conv_dense": (test_distributed._conv_dense_model, 8),
             "conv_dense_2_blocks": (test_distributed._conv_dense_model, 2)}
    for name in sys.argv[3].split(","):
      build, blocks = cases[name]
      settings = engine.InversionSettings(steps=120, chunk_steps=40, early_stop_patience=20,
                                          direction_blocks=blocks)
      one = engine.TriggerInverter(build(), settings).invert(images, targets, seeds)
      with strategy.scope():
        mirrored_model = build()
      calls = []
      inverter = distributed.make_inverter(mirrored_model, settings, strategy)
      many = inverter.invert(images, targets, seeds, progress=lambda *a: calls.append(a))
      case = {"kind": type(inverter).__name__, "calls": calls, "one": {}, "many": {}}
      for key, r in (("one", one), ("many", many)):
        for f in test_distributed._FIELDS:
          case[key][f] = np.asarray(getattr(r, f), np.float64).tolist()
      out["cases"][name] = case
    print("RESULT " + json.dumps(out).replace("NaN", "null"))
""")


# The 5 directions of _directions() make 5 blocks of one by default (on 3 replicas: 2, 2 and 1
# blocks, and a padding block); direction_blocks=2 makes blocks of 3 and 2 directions (one replica
# per block). The conv model is the one that made one device and 2 replicas differ before blocks.
@pytest.mark.parametrize("replicas,cases", [(2, "conv_dense,conv_dense_2_blocks"),
                                            (3, "conv_dense")])
def test_replicas_give_the_bits_of_one_device(tmp_path, replicas, cases):
  """One device and N CPU replicas give the same result, bit for bit."""
  script = tmp_path / "replicas.py"
  script.write_text(_REPLICAS)
  proc = subprocess.run([sys.executable, str(script), os.path.dirname(__file__), str(replicas),
                         cases],
                        capture_output=True, text=True, timeout=300, env=_env(), cwd=str(tmp_path))
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][0]
  out = json.loads(line[len("RESULT "):])
  assert out["replicas"] == replicas and ",".join(out["cases"]) == cases
  for name, case in out["cases"].items():
    assert case["kind"] == "DistributedInverter", name
    for field in _FIELDS:
      # JSON keeps float32 values exactly (as float64) and NaN as null, which compares equal.
      np.testing.assert_array_equal(np.array(case["many"][field], np.float64),
                                    np.array(case["one"][field], np.float64),
                                    err_msg=f"{name}: {field}")
    assert case["calls"][-1][1:] == [5, 5], name  # Every direction finished.
    # Real triggers were compared, not only failures.
    assert np.sum(np.array(case["one"]["success"], bool)) >= 3, name
