"""Drops TensorFlow's native start-up chatter from the command line's stderr, and nothing else.

TensorFlow's C++ code logs through absl before absl's logging is initialised, so those lines ignore
TF_CPP_MIN_LOG_LEVEL: on a machine without a GPU every command printed 7 lines (oneDNN notice, "could
not find cuda drivers", "failed call to cuInit", CPU-feature notes), twice, before a one-line error
message. The filter sends file descriptor 2 through a pipe; a thread forwards every line to the real
stderr except the lines of that chatter (known patterns below), so Python tracebacks, our own
messages and any other native error still reach the user, as they are written.

Only the command line installs it (not library callers or tests). It stays off when the user asks
for native logs (TF_CPP_MIN_LOG_LEVEL set below 2) or for absl verbosity (--verbosity / -v).
"""

import atexit
import os
import re
import sys
import threading

# Lines of start-up chatter: informational / warning lines of TF's C++ logging, the absl notice in
# front of them, the CPU feature note's second line, and the CUDA probing errors of a machine
# without a usable GPU (they say nothing the user can act on: TF falls back to the CPU).
_NOISE = re.compile(
    rb"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|[IW]\d{4} [0-9:. ]+\d+ [\w./-]+:\d+\] .*"
    rb"|E\d{4} [0-9:. ]+\d+ [\w./-]+:\d+\] (failed call to cuInit|Unable to register cu\w+ factory"
    rb"|.*cuda drivers).*"
    rb"|To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler "
    rb"flags\.)\r?\n?$")


def is_noise(line: bytes) -> bool:
  """True for a line of TensorFlow's native start-up chatter."""
  return bool(_NOISE.match(line))


def wanted(argv, environ) -> bool:
  """Whether to filter: not when the user asked for native or verbose logs."""
  level = environ.get("TF_CPP_MIN_LOG_LEVEL")
  if level is not None and level.strip().isdigit() and int(level) < 2:
    return False
  return not any(a.startswith(("--verbosity", "-v=", "--v=")) or a == "-v" for a in argv[1:])


def install():
  """Routes fd 2 through the filter for the rest of the process (idempotent; POSIX only)."""
  if getattr(install, "done", False) or not hasattr(os, "pipe"):
    return
  install.done = True
  try:
    real = os.dup(2)
    read_end, write_end = os.pipe()
  except OSError:
    return  # No usable stderr (closed, say): nothing to filter.
  sys.stderr.flush()
  os.dup2(write_end, 2)
  os.close(write_end)

  def forward():
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
      while True:
        line = pipe.readline()
        if not line:
          break
        if not is_noise(line):
          os.write(real, line)

  thread = threading.Thread(target=forward, name="stderr-filter", daemon=True)
  thread.start()

  def restore():
    # Put the real stderr back (closing the pipe's last write end) and let the thread drain it.
    try:
      sys.stderr.flush()
    except (OSError, ValueError):
      pass
    os.dup2(real, 2)
    thread.join(timeout=2.0)

  atexit.register(restore)
