"""Distribution strategy factory: default | mirrored | multi_worker."""

import tensorflow as tf


def get_strategy(name: str = "default") -> tf.distribute.Strategy:
  """Returns the tf.distribute strategy called `name`.

  Args:
    name: "default" (one device), "mirrored" (all local GPUs, or all logical CPU devices when there
      is no GPU) or "multi_worker" (MultiWorkerMirroredStrategy; reads the cluster from TF_CONFIG).
  """
  if name == "default":
    return tf.distribute.get_strategy()
  if name == "mirrored":
    gpus = tf.config.list_logical_devices("GPU")
    devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(devices=devices)
  if name == "multi_worker":
    return tf.distribute.MultiWorkerMirroredStrategy()
  raise ValueError(f"unknown strategy {name!r}; use default, mirrored or multi_worker")


def split_cpu(num_devices: int):
  """Splits the physical CPU into `num_devices` logical devices (before TF initialises devices).

  Lets MirroredStrategy run on a machine without GPUs, for tests and demos.
  """
  cpu = tf.config.list_physical_devices("CPU")[0]
  tf.config.set_logical_device_configuration(
      cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(num_devices)])
