"""CIFAR-10 and SVHN (cropped digits) from a prepared tensorflow_datasets directory.

The splits follow the reference implementation:

  * CIFAR-10: validation = the first 2,000 training images, train = the other 48,000, test = the
    10,000 test images.
  * SVHN (tfds `svhn_cropped`): validation = the first 6,000 training images, train = the other
    67,257, test = the 26,032 test images; the 531,131 "extra" images are not used.

"First" means in the original file order (CIFAR-10's data_batch_1..5, SVHN's train_32x32.mat), the
order the reference got from `keras.datasets.cifar10` and `scipy.io.loadmat`. tfds stores examples
in a hashed order, so each split is sorted back by the `id` feature ("train_00000", ...), which tfds
writes as the zero-padded index into the original files.

Where the data directory (`data_dir`, else $TFDS_DATA_DIR, else ~/tensorflow_datasets) does not
hold a prepared copy yet, tfds downloads and prepares it there on first use (`download=True`, the
default). Without network access the download fails, and the loaders raise
`DatasetUnavailableError` in one line naming the data set, the directory and the offline route: copy
a prepared `tensorflow_datasets/` folder from a machine with internet into the data directory. That
takes seconds, not the minutes of tfds's retries (10, with growing pauses, 3.5 minutes for a name
that does not resolve): before handing over to tfds, a TCP connection to each download host (or to
the proxy the environment names for it) must open within PROBE_TIMEOUT seconds. With
`download=False` (the command line's --nodownload) or $MOTH_TF_NO_DOWNLOAD=1 nothing is fetched:
a missing data set is that same kind of error within a fraction of a second, without any network
attempt.
"""

import os
import socket
import threading
import time
import urllib.parse
from typing import Iterable, Optional

import numpy as np

from moth_tf.data import augment
from moth_tf.data import base

CIFAR10_INFO = base.DatasetInfo(
    name="cifar10", num_classes=10, image_shape=(32, 32, 3),
    class_names=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                 "truck"),
    normalization=((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    # The authors' recipe: flip and a continuous +-4 px shift with zero fill.
    augment=augment.Augmentation("shift_flip", 4),
    train_pgd=base.PGDSettings(8 / 255, 7, 2 / 255),
    eval_pgd=base.PGDSettings(8 / 255, 20, 2 / 255),
    default_model="resnet20")

SVHN_INFO = base.DatasetInfo(
    name="svhn", num_classes=10, image_shape=(32, 32, 3),
    class_names=tuple(str(i) for i in range(10)),
    train_pgd=base.PGDSettings(0.03, 8, 0.005),
    eval_pgd=base.PGDSettings(0.03, 100, 0.001),
    default_model="nin")

# Number of leading training images (in original order) held out for validation.
CIFAR10_VAL_SIZE = 2000
SVHN_VAL_SIZE = 6000

# Examples per tfds batch while reading a split into memory. A finite size is used instead of
# batch_size=-1: for -1 tfds batches by the split sizes recorded in the data set's metadata, and
# where those are unknown (as under `tfds.testing.mock_data`) it batches by sys.maxsize, which
# aborts the whole process inside tf.data.
_READ_BATCH = 8192

# Set to 1 on machines without network access: loaders then never try to download, as with
# download=False.
NO_DOWNLOAD_ENV = "MOTH_TF_NO_DOWNLOAD"
_TRUE = ("1", "true", "yes")

# Seconds within which a download host (or its proxy) must accept a TCP connection before tfds is
# handed the download; DNS resolution included.
PROBE_TIMEOUT = 5.0


def load_cifar10(data_dir: Optional[str] = None, download: bool = True) -> base.DatasetSplits:
  """Loads CIFAR-10 from tfds: 48,000 train / 2,000 validation / 10,000 test images.

  Args:
    data_dir: the tfds data directory (None: $TFDS_DATA_DIR, else ~/tensorflow_datasets).
    download: download and prepare the data set there when it is missing (tfds's own machinery).
      False, or $MOTH_TF_NO_DOWNLOAD=1, never touches the network.

  Returns:
    DatasetSplits with float32 [0,1] 32x32x3 images and int64 labels.

  Raises:
    DatasetUnavailableError: `cifar10` is not prepared in the data directory and could not (or
      was not to) be downloaded.
  """
  return _load_carved(CIFAR10_INFO, "cifar10", CIFAR10_VAL_SIZE, data_dir, download)


def load_svhn(data_dir: Optional[str] = None, download: bool = True) -> base.DatasetSplits:
  """Loads SVHN (tfds `svhn_cropped`): 67,257 train / 6,000 validation / 26,032 test images.

  Preparing it the first time downloads all three of tfds's files (about 1.5 GB, the unused
  "extra" split included).

  Args:
    data_dir: the tfds data directory (None: $TFDS_DATA_DIR, else ~/tensorflow_datasets).
    download: download and prepare the data set there when it is missing (tfds's own machinery).
      False, or $MOTH_TF_NO_DOWNLOAD=1, never touches the network.

  Returns:
    DatasetSplits with float32 [0,1] 32x32x3 images and int64 labels.

  Raises:
    DatasetUnavailableError: `svhn_cropped` is not prepared in the data directory and could not
      (or was not to) be downloaded.
  """
  return _load_carved(SVHN_INFO, "svhn_cropped", SVHN_VAL_SIZE, data_dir, download)


def download_allowed(download: bool = True, environ=None) -> bool:
  """Whether a loader may download: `download`, unless $MOTH_TF_NO_DOWNLOAD is set to 1 (or
  true/yes), the switch for machines without network access that holds for every command."""
  environ = os.environ if environ is None else environ
  return download and environ.get(NO_DOWNLOAD_ENV, "").strip().lower() not in _TRUE


def _load_carved(info, tfds_name, val_size, data_dir, download):
  """Reads train and test, then holds out the first `val_size` training images for validation."""
  builder = _prepared_builder(info.name, tfds_name, data_dir, download)
  x_train, y_train = _read_split(builder, info.name, tfds_name, "train", data_dir, download)
  x_test, y_test = _read_split(builder, info.name, tfds_name, "test", data_dir, download)
  if len(x_train) <= val_size:
    raise ValueError(f"{tfds_name} train split has only {len(x_train)} images; the validation "
                     f"split alone needs the first {val_size}")
  return base.DatasetSplits(
      info,
      base.as_float_images(x_train[val_size:]), y_train[val_size:],
      base.as_float_images(x_train[:val_size]), y_train[:val_size],
      base.as_float_images(x_test), y_test)


def _prepared_builder(name, tfds_name, data_dir, download):
  """The tfds builder of `tfds_name` in `data_dir`, downloaded and prepared first if allowed."""
  import tensorflow_datasets as tfds  # Imported lazily: tfds is slow to import.

  try:
    builder = tfds.builder(tfds_name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as err:
    raise base.DatasetUnavailableError(missing_message(name, tfds_name, data_dir)) from err
  prepare(builder, name, tfds_name, data_dir, download)
  return builder


def prepare(builder, name: str, tfds_name: str, data_dir: Optional[str], download: bool):
  """Downloads and prepares a tfds builder's data set into its data dir when allowed (a no-op
  when it is prepared there already, or when downloading is off: reading it then says whether it
  is there, without any network).

  Args:
    builder: the tfds builder.
    name: the data set's name in moth_tf ("svhn", "tfds:mnist"), for messages.
    tfds_name: its tfds name.
    data_dir: the tfds data dir as given (None: tfds's default), for messages.
    download: whether downloading is allowed (see `download_allowed`).

  Raises:
    DatasetUnavailableError: the download failed; one line with the offline route.
  """
  if not download_allowed(download):
    return
  if _will_download(builder):
    problem = network_problem(_download_urls(builder))
    if problem:
      raise base.DatasetUnavailableError(
          _download_failed_message(name, tfds_name, data_dir, f"no network: {problem}"))
  try:
    builder.download_and_prepare()
  except _download_errors() as err:
    raise base.DatasetUnavailableError(
        _download_failed_message(name, tfds_name, data_dir, _one_line(err))) from err


def _will_download(builder):
  """Whether download_and_prepare is about to fetch: not for a prepared data set, nor under
  `tfds.testing.mock_data`, which makes it a no-op (tests of users' code run offline with it)."""
  method = getattr(type(builder), "download_and_prepare", None)
  if getattr(method, "__module__", "").startswith("tensorflow_datasets.testing"):
    return False
  return not builder.is_prepared()


def _download_urls(builder):
  """The URLs tfds will fetch for the builder: those its checksums file registers (none for a
  builder without one, e.g. a local dataset's)."""
  # A builder without a checksums file may raise instead of returning None: nothing to probe then,
  # and tfds reports its own download errors.
  try:
    return list(builder.url_infos or ())
  except Exception:  # pylint: disable=broad-except
    return []


def network_problem(urls: Iterable[str], timeout: float = PROBE_TIMEOUT) -> Optional[str]:
  """Why the hosts of `urls` cannot be reached, in a few words, or None when each one (or the
  proxy that requests would use for it, from the environment) accepts a TCP connection within
  `timeout` seconds. The hosts are tried in parallel; a DNS lookup that hangs counts as a failure
  at the deadline.

  Args:
    urls: the URLs of the download.
    timeout: seconds for all the connections together.
  """
  endpoints = []
  for url in urls:
    endpoint = _endpoint(url)
    if endpoint and endpoint not in endpoints:
      endpoints.append(endpoint)
  if not endpoints:
    return None
  results = {}

  def connect(endpoint):
    try:
      socket.create_connection(endpoint, timeout=timeout).close()
      results[endpoint] = None
    except OSError as err:
      results[endpoint] = _one_line(err, limit=120)

  threads = [threading.Thread(target=connect, args=(e,), daemon=True) for e in endpoints]
  deadline = time.monotonic() + timeout
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join(max(0.0, deadline - time.monotonic()))
  for host, port in endpoints:
    if (host, port) not in results:  # Still resolving or connecting at the deadline.
      return f"{host}:{port} did not answer within {timeout:g} s"
    if results[host, port]:
      return f"cannot connect to {host}:{port} ({results[host, port]})"
  return None


def _endpoint(url):
  """(host, port) that fetching `url` connects to first: its proxy's, if the environment names
  one for it (HTTPS_PROXY, NO_PROXY, ... as requests reads them), else its own."""
  import requests  # tfds's HTTP client, installed with it.

  proxy = requests.utils.get_environ_proxies(url).get(urllib.parse.urlsplit(url).scheme)
  parts = urllib.parse.urlsplit(proxy if proxy else url)
  if not parts.hostname:
    return None
  default_port = {"https": 443, "http": 80, "ftp": 21}.get(parts.scheme, 443)
  return parts.hostname, parts.port or default_port


def _download_errors():
  """What a failed fetch raises out of download_and_prepare: no route or name resolution
  (requests' ConnectionError and timeouts are OSErrors, as are urllib's), an HTTP error status
  (tfds's DownloadError), or a file that is not the one tfds registered (a captive portal's page:
  NonMatchingChecksumError)."""
  from tensorflow_datasets.core import download as tfds_download
  from tensorflow_datasets.core.download import download_manager
  return (OSError, tfds_download.DownloadError, download_manager.NonMatchingChecksumError)


def _read_split(builder, name, tfds_name, split, data_dir, download):
  """One tfds split as (uint8 images, int64 labels), in the original files' order."""
  import tensorflow_datasets as tfds  # Imported lazily: tfds is slow to import.

  try:
    # The examples are read as dicts rather than (image, label) pairs to get the `id` feature.
    ds = builder.as_dataset(split=split, batch_size=_READ_BATCH)
  except AssertionError as err:
    # tfds signals missing data with an AssertionError ("could not find data in ...") after only
    # looking at the local directory, so with downloads off this fails fast without network.
    raise base.DatasetUnavailableError(missing_message(name, tfds_name, data_dir)) from err
  images, labels, ids = [], [], []
  for batch in tfds.as_numpy(ds):
    images.append(batch["image"])
    labels.append(batch["label"])
    ids.append(batch["id"])
  if not images:
    return np.zeros((0, 32, 32, 3), np.uint8), np.zeros((0,), np.int64)
  # Stable, so any duplicate ids keep tfds's (deterministic) relative order.
  order = np.argsort(np.concatenate(ids), kind="stable")
  return np.concatenate(images)[order], np.concatenate(labels)[order].astype(np.int64)


def data_dir_shown(data_dir: Optional[str]) -> str:
  """The directory tfds uses: `data_dir`, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
  return data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.join(
      os.path.expanduser("~"), "tensorflow_datasets")


def _offline_route(tfds_name, directory):
  """How to fill `directory` without network: the same words for both errors."""
  return (f"copy a prepared tensorflow_datasets/ folder (at least its {tfds_name}/ folder) from a "
          f"machine with internet, where `tfds build {tfds_name}` or `python -c \"import "
          f"tensorflow_datasets as tfds; tfds.builder('{tfds_name}').download_and_prepare()\"` "
          f"makes it in ~/tensorflow_datasets, into {directory} (or pass --data_dir=DIR pointing "
          f"at such a copy)")


def missing_message(name: str, tfds_name: str, data_dir: Optional[str]) -> str:
  """One line: where tfds looked, that downloading was off (and by what), and how to fill it."""
  looked_in = data_dir_shown(data_dir)
  if download_allowed(True):
    why_off, turn_on = "downloading is off (--nodownload)", "without --nodownload"
  else:
    why_off, turn_on = f"${NO_DOWNLOAD_ENV} is set", f"with ${NO_DOWNLOAD_ENV} unset"
  return (f"{_display_name(name, tfds_name)} is not in the tfds data dir {looked_in}, and "
          f"{why_off}. To get it: run once with network access {turn_on} (tfds then downloads "
          f"and prepares it there), or {_offline_route(tfds_name, looked_in)}.")


def _download_failed_message(name, tfds_name, data_dir, why):
  """One line: which data set failed to download into which directory, why, and the way round."""
  directory = data_dir_shown(data_dir)
  return (f"{_display_name(name, tfds_name)} could not be downloaded into the tfds data dir "
          f"{directory} ({why}). Run once with network access, or "
          f"{_offline_route(tfds_name, directory)}; --nodownload (or {NO_DOWNLOAD_ENV}=1) skips "
          f"the download attempt.")


def _one_line(err, limit=240):
  """The error's type and first line, shortened: the cause, not a traceback."""
  text = " ".join(str(err).split()) or "no message"
  if len(text) > limit:
    text = text[:limit - 3] + "..."
  return f"{type(err).__name__}: {text}"


def _display_name(name, tfds_name):
  """The registry name, plus tfds's where they differ: "svhn (tfds name svhn_cropped)"."""
  return name if name in (tfds_name, f"tfds:{tfds_name}") else f"{name} (tfds name {tfds_name})"
