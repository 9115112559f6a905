"""The package layout: old module paths warn and give the moved modules, the commands run without a
warning, and nothing in the repository imports an old path (moth_tf._deprecated)."""

import ast
import importlib
import os
import pathlib
import re
import subprocess
import sys
import warnings

import pytest

import moth_tf
from moth_tf import _deprecated

_REPO = pathlib.Path(__file__).resolve().parent.parent


def _forget(old: str):
  """Undoes an earlier import of `old`, so that importing it again goes through the finder."""
  sys.modules.pop(old, None)
  parent, _, child = old.rpartition(".")
  if child in vars(sys.modules[parent]):
    delattr(sys.modules[parent], child)


@pytest.mark.parametrize("old,new", sorted(_deprecated.MOVED.items()))
def test_old_module_path_warns_and_is_the_new_module(old, new):
  _forget(old)
  with pytest.warns(DeprecationWarning, match=f"{old} moved to {new}"):
    module = importlib.import_module(old)
  assert module is importlib.import_module(new)


@pytest.mark.parametrize("old,new", sorted(_deprecated.MOVED.items()))
def test_from_import_of_an_old_path_warns_at_the_import_and_once(old, new):
  _forget(old)
  child = old.rpartition(".")[2]
  with pytest.warns(DeprecationWarning, match=f"{old} moved to {new}") as record:
    exec(f"from moth_tf import {child} as module", {})  # pylint: disable=exec-used
  # Attributed to the importing line, not to importlib's frames.
  assert record[0].filename == "<string>"
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    namespace = {}
    exec(f"from moth_tf import {child} as module", namespace)  # Cached: no second warning.
  assert namespace["module"] is importlib.import_module(new)
  assert getattr(moth_tf, child) is importlib.import_module(new)


def test_names_used_from_old_paths_are_the_same_objects():
  from moth_tf.evaluation import distance
  from moth_tf.reporting import reader
  _forget("moth_tf.distance")
  _forget("moth_tf.tb_reader")
  with pytest.warns(DeprecationWarning):
    from moth_tf.distance import measure_distance  # pylint: disable=g-import-not-at-top
    from moth_tf.tb_reader import read_runs  # pylint: disable=g-import-not-at-top
  assert measure_distance is distance.measure_distance
  assert read_runs is reader.read_runs


def test_robust_accuracy_moved_out_of_the_attack_module():
  from moth_tf.attacks import pgd
  from moth_tf.evaluation import robustness
  for name in ("robust_accuracy", "RobustnessResult"):
    with pytest.warns(DeprecationWarning, match=f"moth_tf.evaluation.robustness.{name}"):
      assert getattr(pgd, name) is getattr(robustness, name)
  with pytest.raises(AttributeError):
    pgd.no_such_name  # pylint: disable=pointless-statement


def test_no_module_file_at_an_old_path():
  # A file there would never load (the finder answers first) and would only mislead a reader.
  for old in _deprecated.MOVED:
    path = _REPO / (old.replace(".", "/") + ".py")
    assert not path.exists(), path


def test_the_top_level_holds_the_library_concepts_and_the_public_api():
  top = sorted(p.name for p in (_REPO / "moth_tf").iterdir()
               if p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists()))
  assert top == [
      "__init__.py", "__main__.py", "_compat.py", "_deprecated.py", "api.py", "attacks",
      "baselines", "cli", "config.py", "data", "distribute.py", "estimate.py", "evaluation",
      "hardening", "inputs.py", "logits.py", "models", "progress.py", "recipes.py", "reporting",
      "rundir.py", "settings.py", "training.py", "triggers"]


def _imported_modules(path: pathlib.Path):
  """Every module `path` imports (`import a.b`, `from a.b import c` as a.b and a.b.c)."""
  found = []
  for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
    if isinstance(node, ast.Import):
      found += [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module:
      found += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
  return found


# Entry points that are command lines themselves and share the command line's helpers.
_COMMAND_LINE_ENTRY_POINTS = {"moth_tf/__main__.py", "moth_tf/reporting/report.py",
                              "moth_tf/_deprecated.py"}


def test_the_library_does_not_import_the_command_line():
  """moth_tf.cli uses the library, never the other way round (docs/design.md's package map)."""
  users = {}
  for path in (_REPO / "moth_tf").rglob("*.py"):
    name = str(path.relative_to(_REPO))
    if name.startswith("moth_tf/cli/") or name in _COMMAND_LINE_ENTRY_POINTS:
      continue
    found = [m for m in _imported_modules(path)
             if m == "moth_tf.cli" or m.startswith("moth_tf.cli.")]
    if found:
      users[name] = found
  assert not users


def _old_path_imports(path: pathlib.Path):
  """The imports of an old path in one file: `import moth_tf.X`, `from moth_tf.X import ...` and
  `from moth_tf import X`."""
  return [m for m in _imported_modules(path) if m in _deprecated.MOVED]


def test_nothing_in_the_repository_imports_an_old_path():
  users = {}
  for folder in ("moth_tf", "tests", "benchmarks", "examples", "tools"):
    for path in (_REPO / folder).rglob("*.py"):
      if path.name != "test_layout.py":
        found = _old_path_imports(path)
        if found:
          users[str(path.relative_to(_REPO))] = found
  assert not users


# In every warning of moth_tf._deprecated (other libraries' deprecation warnings are theirs).
_SHIM_WARNING = "the old path will be removed"


def _run(*args):
  """`python -W default ARGS` in the repository root (so this checkout's moth_tf is imported)."""
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      p for p in (str(_REPO), os.environ.get("PYTHONPATH")) if p))
  return subprocess.run([sys.executable, "-W", "default", *args], capture_output=True, text=True,
                        timeout=300, cwd=str(_REPO), env=env, check=False)


@pytest.mark.parametrize("command", ["moth_tf.main", "moth_tf.cli", "moth_tf", "moth_tf.report",
                                     "moth_tf.prepare", "moth_tf.data.prepare"])
def test_commands_run_without_a_deprecation_warning(command):
  proc = _run("-m", command, "--help")
  assert proc.returncode == 1, proc.stderr  # absl ends --help with exit code 1.
  assert "--helpfull" in proc.stdout
  assert _SHIM_WARNING not in proc.stderr, proc.stderr


def test_main_reaches_the_phases_without_a_deprecation_warning(tmp_path):
  proc = _run("-m", "moth_tf.main", "--phase=test", f"--workdir={tmp_path}")
  assert proc.returncode == 1
  assert "moth_tf: error: no trained model at " in proc.stderr
  assert _SHIM_WARNING not in proc.stderr, proc.stderr


def test_every_test_module_has_its_bazel_target():
  """`bazel test //...` runs the same tests as pytest: each tests/test_*.py is one py_test."""
  build = (_REPO / "tests" / "BUILD").read_text(encoding="utf-8")
  declared = set(re.findall(r'srcs = \["(test_\w+\.py)"\]', build))
  modules = {path.name for path in (_REPO / "tests").glob("test_*.py")}
  assert modules - declared == set(), "tests/BUILD lacks a moth_py_test for these"
  assert declared - modules == set(), "tests/BUILD names test modules that do not exist"
