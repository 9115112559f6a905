"""Lists the longest functions of a source tree, to keep an eye on the ones worth splitting.

    python tools/longest_functions.py                 # moth_tf/, the 10 longest
    python tools/longest_functions.py moth_tf tests -n 20

A function's length is its lines from the `def` (decorators excluded) to its last line, docstring
and comments included; a nested function counts inside its parent and again on its own.
"""

import argparse
import ast
import pathlib
import sys


def function_lengths(root: pathlib.Path):
  """Yields (lines, "path:line", qualified name) for every function under `root`."""
  files = [root] if root.is_file() else sorted(root.rglob("*.py"))
  for path in files:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    yield from _walk(tree, path, prefix="")


def _walk(node, path, prefix):
  for child in ast.iter_child_nodes(node):
    if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
      name = prefix + child.name
      yield child.end_lineno - child.lineno + 1, f"{path}:{child.lineno}", name
      yield from _walk(child, path, name + ".")
    elif isinstance(child, ast.ClassDef):
      yield from _walk(child, path, prefix + child.name + ".")
    else:
      yield from _walk(child, path, prefix)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("paths", nargs="*", default=["moth_tf"])
  parser.add_argument("-n", type=int, default=10, help="how many to list")
  args = parser.parse_args(argv)
  rows = [row for p in args.paths for row in function_lengths(pathlib.Path(p))]
  rows.sort(key=lambda row: (-row[0], row[1]))
  print("| lines | function | where |\n|---:|---|---|")
  for lines, where, name in rows[:args.n]:
    print(f"| {lines} | `{name}` | {where} |")


if __name__ == "__main__":
  sys.exit(main())
