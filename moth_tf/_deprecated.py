"""Module paths that moved into subpackages: the old ones keep working for one release.

`import moth_tf.distance`, `from moth_tf import tb_reader` and the like still give the module at its
new path (the same module object, so the same functions and classes) and emit one
DeprecationWarning naming the new path. The three documented commands keep their names for good
and run without a warning:

    python -m moth_tf.main      (moth_tf.cli.main)
    python -m moth_tf.report    (moth_tf.reporting.report)
    python -m moth_tf.prepare   (moth_tf.data.prepare)

How: `install()` (called by moth_tf/__init__.py) puts a finder first on sys.meta_path. It answers
only for the names in MOVED, and before the ordinary finders, so that a file left at an old path (an
install over an older version, or an editable install of an older checkout) is never loaded as a
second copy of a module. Importing an old name imports the new module and puts it in sys.modules under the old
name too; the warning is emitted once per process, at the first import. `python -m OLD` (runpy)
asks the same loader for the new module's code instead and runs it as __main__, which imports
nothing under the old name and so warns about nothing.

There are no stub files at the old paths: a moved file keeps its history (git follows the rename)
and nothing is written twice.

Names that moved out of a module that stays (`moth_tf.attacks.pgd.robust_accuracy`) go through
`moved_attributes`, a module-level __getattr__ with the same warning.
"""

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings

# Old module path -> new module path.
MOVED = {
    "moth_tf.main": "moth_tf.cli.main",
    "moth_tf.cli_flags": "moth_tf.cli.flags",
    "moth_tf.phases": "moth_tf.cli.phases",
    "moth_tf.console": "moth_tf.cli.console",
    "moth_tf.stderr_filter": "moth_tf.cli.stderr_filter",
    "moth_tf.report": "moth_tf.reporting.report",
    "moth_tf.report_figures": "moth_tf.reporting.report_figures",
    "moth_tf.comparison": "moth_tf.reporting.comparison",
    "moth_tf.tb_reader": "moth_tf.reporting.reader",
    "moth_tf.tb_records": "moth_tf.reporting.records",
    "moth_tf.figures": "moth_tf.reporting.figures",
    "moth_tf.distance": "moth_tf.evaluation.distance",
    "moth_tf.detection": "moth_tf.evaluation.detection",
    "moth_tf.prepare": "moth_tf.data.prepare",
}


# Old paths that are also commands: `python -m OLD` stays; importing them is what is deprecated.
COMMANDS = ("moth_tf.main", "moth_tf.report", "moth_tf.prepare")


def _warn(old: str, new: str, stacklevel: int):
  note = f" (`python -m {old}` keeps working)" if old in COMMANDS else ""
  warnings.warn(f"{old} moved to {new}; the old path will be removed in the next release{note}",
                DeprecationWarning, stacklevel=stacklevel + 1)


class _AliasLoader(importlib.abc.Loader):
  """Loads an old path as the module at its new path."""

  def __init__(self, new: str):
    self.new = new

  def create_module(self, spec):
    return None  # A placeholder; exec_module swaps the real module in.

  def exec_module(self, module):
    old = module.__name__
    # The importing frame lies outside importlib's frames, which warnings skips.
    _warn(old, self.new, stacklevel=2)
    # The import system returns whatever sys.modules holds under the name after exec_module, and
    # binds it as the parent package's attribute.
    sys.modules[old] = importlib.import_module(self.new)

  def get_code(self, fullname):
    """The new module's code, for `python -m OLD` (runpy runs it as __main__)."""
    del fullname
    spec = importlib.util.find_spec(self.new)
    return spec.loader.get_code(self.new)

  def is_package(self, fullname):
    del fullname
    return False


class _AliasFinder(importlib.abc.MetaPathFinder):
  """Finds the old paths of MOVED (and nothing else)."""

  def find_spec(self, fullname, path=None, target=None):
    del path, target
    new = MOVED.get(fullname)
    if new is None:
      return None
    new_spec = importlib.util.find_spec(new)
    return importlib.machinery.ModuleSpec(fullname, _AliasLoader(new), origin=new_spec.origin)


_FINDER = _AliasFinder()


def install():
  """Makes the old paths of MOVED importable (idempotent)."""
  if _FINDER not in sys.meta_path:
    sys.meta_path.insert(0, _FINDER)


def moved_attributes(module_name: str, moved: dict):
  """A module __getattr__ for names that moved to another module (name -> new module path).

      __getattr__ = _deprecated.moved_attributes(__name__, {"robust_accuracy": "moth_tf.x.y"})
  """

  def __getattr__(name):
    new = moved.get(name)
    if new is None:
      raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
    _warn(f"{module_name}.{name}", f"{new}.{name}", stacklevel=2)
    return getattr(importlib.import_module(new), name)

  return __getattr__
