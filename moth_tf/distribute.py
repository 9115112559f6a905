"""Distribution strategy factory (default | mirrored | multi_worker) and multi-worker file rules.

Under `multi_worker` every worker runs the same program and must take part in every collective
(variable creation, gradient all-reduce, the trigger engine's gathers, reading metric variables
when a model is saved), so every worker also runs every save. Only the chief's files are the run's:
the others write into a `workertemp_<task id>` folder inside the run directory (the TF multi-worker
guide's pattern), which `discard_worker_dir` removes at the end of the phase.
"""

import json
import os
import shutil

import tensorflow as tf

from moth_tf import _compat

# Strategies made so far, by name: MultiWorkerMirroredStrategy must be made once, before any other
# TensorFlow op, and every phase of the process must then use that same object.
_STRATEGIES = {}


def get_strategy(name: str = "default") -> tf.distribute.Strategy:
  """Returns the tf.distribute strategy called `name` (the same object on every call).

  Args:
    name: "default" (one device), "mirrored" (all local GPUs, or all logical CPU devices when there
      is no GPU) or "multi_worker" (MultiWorkerMirroredStrategy; reads the cluster from TF_CONFIG,
      and must be made before any other TensorFlow op of the process).
  """
  if name == "default":
    return tf.distribute.get_strategy()
  if name not in ("mirrored", "multi_worker"):
    raise ValueError(f"unknown strategy {name!r}; use default, mirrored or multi_worker")
  if name not in _STRATEGIES:
    if name == "mirrored":
      gpus = tf.config.list_logical_devices("GPU")
      devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
      _STRATEGIES[name] = tf.distribute.MirroredStrategy(devices=devices)
    else:
      _check_tf_config()
      _STRATEGIES[name] = tf.distribute.MultiWorkerMirroredStrategy()
      _fix_keras_multi_worker_mean()
  return _STRATEGIES[name]


def _check_tf_config():
  """Raises ValueError unless TF_CONFIG describes a cluster with workers and this task."""
  raw = os.environ.get("TF_CONFIG")
  if not raw:
    raise ValueError("--strategy=multi_worker needs the TF_CONFIG environment variable (the "
                     "cluster and this worker's task); see docs/scaling.md#multi-worker-runs")
  try:
    tf_config = json.loads(raw)
    workers = tf_config["cluster"]["worker"]
    task = tf_config["task"]
    if task["type"] not in ("worker", "chief") or not workers:
      raise ValueError
  except (ValueError, KeyError, TypeError):
    raise ValueError('TF_CONFIG must be JSON like {"cluster": {"worker": ["host1:port", '
                     '"host2:port"]}, "task": {"type": "worker", "index": 0}}; got '
                     f"{raw[:200]}") from None


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """Whether this process writes the run's files: always, except on a non-chief worker of a
  multi-worker strategy (worker 0 is the chief when the cluster names none)."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not is_multi_worker(strategy):
    return True
  task_type, task_id = resolver.task_type, resolver.task_id
  if task_type == "chief":
    return True
  cluster = resolver.cluster_spec().as_dict()
  return task_type == "worker" and task_id == 0 and "chief" not in cluster


def _fix_keras_multi_worker_mean():
  """Makes Keras 3's per-step metric reduction work under MultiWorkerMirroredStrategy.

  Keras 3 (checked with 3.15) reduces the logs of every train and test step with
  `strategy.reduce("MEAN", value, axis=0)` on multi-worker strategies; the logs are scalars, so
  every `fit` fails with "Invalid reduction dimension 0 for input with 0 dimensions". Scalars are
  reduced over replicas only (axis None); everything else goes to Keras unchanged (the patch
  itself is moth_tf._compat.replace_reduce_per_replica).
  """

  def make_replacement(original):

    def reduce_per_replica(values, strategy, reduction):
      if reduction not in ("auto", "mean") or not is_multi_worker(strategy) or isinstance(
          strategy, tf.distribute.TPUStrategy):
        return original(values, strategy, reduction)

      def reduce(value):
        local = strategy.experimental_local_results(value)[0]
        axis = 0 if local.shape.rank else None
        return strategy.reduce("MEAN", value, axis=axis)

      return tf.nest.map_structure(reduce, values)

    return reduce_per_replica

  _compat.replace_reduce_per_replica(make_replacement)


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
  """Whether `strategy` spans several worker processes."""
  return bool(getattr(strategy.extended, "_in_multi_worker_mode", lambda: False)())


def prepare_fit(model, strategy: tf.distribute.Strategy, sample_batch):
  """Lets `model.fit` and `model.evaluate` run under a multi-worker strategy (no-op otherwise).

  Keras 3 (checked with 3.15) builds a model at the start of `fit` and `evaluate` from the first
  batch, reduced across replicas with `strategy.reduce(MEAN, (x, y))` in eager mode; on
  MultiWorkerMirroredStrategy that reduce takes no tuple and `fit` fails with "Attempt to convert a
  value (PerReplica...) to a Tensor". This builds the model (and its compiled loss and metrics) from
  `sample_batch`, a local (x, y) batch, instead (moth_tf._compat.build_from_local_batch).
  """
  if not is_multi_worker(strategy):
    return
  _compat.build_from_local_batch(model, strategy, sample_batch)


def worker_dir(strategy: tf.distribute.Strategy, run_dir: str) -> str:
  """Where this process writes what belongs in `run_dir`: `run_dir` itself on the chief, else a
  `workertemp_<task id>` folder inside it, so two workers never write the same file.

  A non-chief worker's folder survives an interruption (it holds that worker's resumable backup,
  which it restores from when the run is started again) and is removed by discard_worker_dir.
  """
  if is_chief(strategy):
    return run_dir
  return os.path.join(run_dir, f"workertemp_{strategy.cluster_resolver.task_id}")


def discard_worker_dir(strategy: tf.distribute.Strategy, run_dir: str):
  """Removes a non-chief worker's temporary folder of `run_dir` (nothing on the chief)."""
  if not is_chief(strategy):
    shutil.rmtree(worker_dir(strategy, run_dir), ignore_errors=True)


def split_cpu(num_devices: int):
  """Splits the physical CPU into `num_devices` logical devices (before TF initialises devices).

  Lets MirroredStrategy run on a machine without GPUs, for tests and demos.
  """
  cpu = tf.config.list_physical_devices("CPU")[0]
  tf.config.set_logical_device_configuration(
      cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(num_devices)])


def loopback_tf_configs(num_workers: int):
  """TF_CONFIG values (JSON strings) of a `num_workers` cluster on 127.0.0.1, one per worker.

  For tests and demos of --strategy=multi_worker on one machine: start one process per value, each
  with its value in the TF_CONFIG environment variable. The ports are free when this returns
  (the OS picked them), though another program could take one before the workers bind it.
  """
  import socket
  sockets = []
  for _ in range(num_workers):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    sockets.append(s)
  workers = [f"127.0.0.1:{s.getsockname()[1]}" for s in sockets]
  for s in sockets:
    s.close()
  return [json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}})
          for i in range(num_workers)]
