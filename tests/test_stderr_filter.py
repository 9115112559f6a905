"""The command line's stderr filter (moth_tf.cli.stderr_filter): TF's native start-up chatter goes,
everything else stays."""

import os
import subprocess
import sys

import pytest

from moth_tf.cli import stderr_filter

# Lines seen on this project's CPU machine before every one-line error (TF 2.20).
_CHATTER = [
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
    b"I0000 00:00:1795715108.353063   12737 port.cc:153] oneDNN custom operations are on. You may "
    b"see slightly different numerical results due to floating-point round-off errors from "
    b"different computation orders. To turn them off, set the environment variable "
    b"`TF_ENABLE_ONEDNN_OPTS=0`.\n",
    b"I0000 00:00:1795715108.353396   12737 cudart_stub.cc:31] Could not find cuda drivers on your "
    b"machine, GPU will not be used.\n",
    b"E0000 00:00:1795715112.730177   12737 cuda_platform.cc:52] failed call to cuInit: INTERNAL: "
    b"CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)\n",
    b"I0000 00:00:1795714464.502796    3266 cpu_feature_guard.cc:227] This TensorFlow binary is "
    b"optimized to use available CPU instructions in performance-critical operations.\n",
    b"To enable the following instructions: AVX2 AVX512F AVX512_VNNI AVX512_BF16 AVX_VNNI FMA, in "
    b"other operations, rebuild TensorFlow with the appropriate compiler flags.\n",
]


@pytest.mark.parametrize("line", _CHATTER)
def test_start_up_chatter_is_noise(line):
  assert stderr_filter.is_noise(line)


@pytest.mark.parametrize("line", [
    b"moth_tf: error: no trained model at W/digits_lenet_natural/model.keras; make it first\n",
    b"Traceback (most recent call last):\n",
    b"E0000 00:00:1795715112.730177   12737 some_kernel.cc:52] OOM when allocating tensor\n",
    b"F0000 00:00:1795715112.730177   12737 check.cc:52] Check failed: x == y\n",
    b"WARNING: the hardened model is fine-tuned in inference mode\n",
])
def test_everything_else_passes(line):
  assert not stderr_filter.is_noise(line)


def test_off_when_the_user_asks_for_logs():
  assert stderr_filter.wanted(["prog", "--phase=test"], {})
  assert stderr_filter.wanted(["prog"], {"TF_CPP_MIN_LOG_LEVEL": "2"})
  assert not stderr_filter.wanted(["prog"], {"TF_CPP_MIN_LOG_LEVEL": "0"})
  assert not stderr_filter.wanted(["prog", "--verbosity=1"], {})
  assert not stderr_filter.wanted(["prog", "-v=1"], {})


@pytest.mark.parametrize("module", ["moth_tf.main", "moth_tf.cli", "moth_tf"])
def test_a_user_error_is_one_line_on_stderr(module, tmp_path):
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  proc = subprocess.run(
      [sys.executable, "-m", module, "--phase=test", f"--workdir={tmp_path}"],
      capture_output=True, text=True, env=env, cwd=os.path.dirname(os.path.dirname(__file__)),
      check=False, timeout=300)
  assert proc.returncode == 1
  lines = proc.stderr.splitlines()
  assert len(lines) == 1, proc.stderr
  assert lines[0].startswith("moth_tf: error: no trained model at ")
