"""A Python toolchain whose interpreter is the python3 of the environment Bazel was started from.

moth_tf's third-party dependencies (tensorflow, keras, pytest, ...) are installed into a Python
environment with pip, not fetched by Bazel. `local_python_configure` finds that environment's
interpreter when the WORKSPACE is evaluated: $PYTHON_BIN_PATH if set, otherwise the first `python3`
on $PATH (an activated virtual environment included), resolved to `sys.executable`, so that pyenv
shims and the like are not needed inside the test sandbox. It is looked up again whenever PATH or
PYTHON_BIN_PATH changes.
"""

_BUILD = """\
load("@bazel_tools//tools/python:toolchain.bzl", "py_runtime_pair")

package(default_visibility = ["//visibility:public"])

# Found through {how}.
py_runtime(
    name = "py3_runtime",
    interpreter_path = "{interpreter}",
    python_version = "PY3",
)

py_runtime_pair(
    name = "runtime_pair",
    py3_runtime = ":py3_runtime",
)

toolchain(
    name = "toolchain",
    toolchain = ":runtime_pair",
    toolchain_type = "@bazel_tools//tools/python:toolchain_type",
)
"""

def _local_python_configure_impl(ctx):
    python = ctx.os.environ.get("PYTHON_BIN_PATH", "")
    how = "$PYTHON_BIN_PATH"
    if not python:
        how = "python3 on $PATH"
        found = ctx.which("python3")
        if not found:
            fail("moth_tf: no python3 on PATH; activate the environment that has moth_tf's " +
                 "dependencies (pip install -e \".[test]\") or set PYTHON_BIN_PATH.")
        python = str(found)
    result = ctx.execute([python, "-c", "import sys; print(sys.executable)"])
    if result.return_code != 0 or not result.stdout.strip():
        fail("moth_tf: %s (%s) does not run: %s" % (python, how, result.stderr))
    interpreter = result.stdout.strip()
    check = ctx.execute([interpreter, "-c", "import pytest"])
    if check.return_code != 0:
        print("moth_tf: %s has no pytest; the py_tests will fail (pip install -e \".[test]\")." %
              interpreter)
    ctx.file("WORKSPACE", "workspace(name = \"%s\")\n" % ctx.name)
    ctx.file("BUILD", _BUILD.format(interpreter = interpreter, how = how))

local_python_configure = repository_rule(
    implementation = _local_python_configure_impl,
    environ = ["PATH", "PYTHON_BIN_PATH"],
    local = True,
)
