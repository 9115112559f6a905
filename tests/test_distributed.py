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

import numpy as np
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


_TWO_REPLICAS = textwrap.dedent("""
    import json, sys
    from moth_tf import distribute
    distribute.split_cpu(2)
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    import test_distributed, test_engine
    from moth_tf.triggers import distributed, engine

    strategy = distribute.get_strategy("mirrored")
    with strategy.scope():
      mirrored_model = test_engine._patch_model()
    images, targets, seeds = test_distributed._directions()
    settings = engine.InversionSettings(steps=120, chunk_steps=40, early_stop_patience=20)
    one = engine.TriggerInverter(test_engine._patch_model(), settings).invert(images, targets, seeds)
    calls = []
    inverter = distributed.make_inverter(mirrored_model, settings, strategy)
    two = inverter.invert(images, targets, seeds, progress=lambda *a: calls.append(a))
    out = {"replicas": strategy.num_replicas_in_sync, "kind": type(inverter).__name__,
           "calls": calls, "one": {}, "two": {}}
    for name, r in (("one", one), ("two", two)):
      for f in test_distributed._FIELDS:
        out[name][f] = np.asarray(getattr(r, f), np.float64).tolist()
    print("RESULT " + json.dumps(out).replace("NaN", "null"))
""")


def test_two_replicas_match_one_device(tmp_path):
  script = tmp_path / "two.py"
  script.write_text(_TWO_REPLICAS)
  proc = subprocess.run([sys.executable, str(script), os.path.dirname(__file__)],
                        capture_output=True, text=True, timeout=300, env=_env(), cwd=str(tmp_path))
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][0]
  out = json.loads(line[len("RESULT "):])
  assert out["replicas"] == 2 and out["kind"] == "DistributedInverter"
  one = {k: np.array(v, np.float64) for k, v in out["one"].items()}
  two = {k: np.array(v, np.float64) for k, v in out["two"].items()}
  # Same decisions, same order; the real-valued results agree to float round-off. (Not to the
  # bit: the CPU's matrix kernels round a row differently in batches of other sizes, which already
  # makes the one-device engine differ in the last bits between one call and two; README, section
  # "Scaling trigger optimisation".)
  for field in ("success", "steps_run", "final_cost", "sample_direction"):
    np.testing.assert_array_equal(two[field], one[field], err_msg=field)
  np.testing.assert_array_equal(np.isnan(two["size"]), np.isnan(one["size"]))
  np.testing.assert_allclose(two["size"], one["size"], rtol=1e-4)
  np.testing.assert_allclose(two["mask"], one["mask"], atol=1e-4)
  np.testing.assert_array_equal(two["loss_start"], one["loss_start"])
  assert out["calls"][-1][2] == 5 and out["calls"][-1][1] == 5  # Every direction finished.
