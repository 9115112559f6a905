"""The documentation holds together and tells the truth about the code (nothing is run):

* README.md and docs/*.md link only to files and headings that exist;
* every `python -m moth_tf.main` / `python -m moth_tf.report` command shown in the README parses
  with the command line's own absl flags;
* every flag the pages and the examples' docstrings name is a flag of the program it is given to;
* every call of the public API in a Python code block or an example passes keywords the function
  takes, and the API tables list the functions' parameters as the code has them;
* every measured figure quoted outside docs/results.md links to the results.md section it comes
  from.

The link and figure checks read Markdown only and import neither TensorFlow nor moth_tf. The flag
checks import the modules that define the flags and define them into a fresh `flags.FlagValues`, so
the process's global FLAGS are never touched; the API checks import moth_tf.api and
moth_tf.hardening.wrapper for `inspect.signature`.
"""

import contextlib
import functools
import glob
import importlib
import inspect
import os
import re
import shlex
import unicodedata
from unittest import mock

import pytest

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_README = os.path.join(_REPO, "README.md")
_PAGES = [_README] + sorted(glob.glob(os.path.join(_REPO, "docs", "*.md")))
_README_MAX_LINES = 250

# Where each command's flags are defined.
_FLAG_MODULES = {
    "moth_tf.main": "moth_tf.cli.flags",
    "moth_tf.report": "moth_tf.reporting.report",
}

_FENCE = re.compile(r"^\s*(```|~~~)")
_LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")


def _read(path):
  with open(path, encoding="utf-8") as f:
    return f.read()


def _split_fences(text):
  """(prose lines, code blocks): each code block is (info string, its lines)."""
  prose, blocks, block, info = [], [], None, ""
  for line in text.splitlines():
    if _FENCE.match(line):
      if block is None:
        block, info = [], line.strip().lstrip("`~").strip()
      else:
        blocks.append((info, block))
        block = None
      prose.append("")  # Keeps line numbers.
      continue
    if block is None:
      prose.append(line)
    else:
      block.append(line)
      prose.append("")
  return prose, blocks


def github_slug(heading: str) -> str:
  """The anchor GitHub gives a heading's text (before de-duplication)."""
  text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # Links keep their text.
  text = re.sub(r"<[^>]+>", "", text)  # HTML tags go.
  text = text.strip().lower()
  kept = []
  for ch in text:
    if ch in " -_" or unicodedata.category(ch)[0] in "LN":
      kept.append(ch)
  return "".join(kept).replace(" ", "-")


def anchors(path):
  """Every heading anchor of a Markdown file, numbered like GitHub's (-1, -2 for repeats)."""
  prose, _ = _split_fences(_read(path))
  seen, result = {}, set()
  for line in prose:
    match = re.match(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$", line)
    if not match:
      continue
    slug = github_slug(match.group(2))
    if slug in seen:
      seen[slug] += 1
      result.add(f"{slug}-{seen[slug]}")
    else:
      seen[slug] = 0
      result.add(slug)
  return result


def links(path):
  """(line number, target) of every Markdown link and image outside code."""
  prose, _ = _split_fences(_read(path))
  found = []
  for number, line in enumerate(prose, 1):
    line = _CODE_SPAN.sub("", line)
    for match in _LINK.finditer(line):
      found.append((number, match.group(1)))
  return found


def _relative_links():
  for page in _PAGES:
    for number, target in links(page):
      if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:, ...
        continue
      yield pytest.param(page, target, id=f"{os.path.relpath(page, _REPO)}:{number}:{target}")


def test_there_are_pages_and_links():
  assert os.path.exists(_README)
  assert len(_PAGES) > 1, "no docs/*.md"
  assert list(_relative_links())


@pytest.mark.parametrize("page, target", list(_relative_links()))
def test_relative_link_resolves(page, target):
  path, _, anchor = target.partition("#")
  if path:
    resolved = os.path.normpath(os.path.join(os.path.dirname(page), path))
    assert os.path.exists(resolved), f"{target}: no {os.path.relpath(resolved, _REPO)}"
    assert os.path.commonpath([resolved, _REPO]) == _REPO, f"{target} leaves the repository"
  else:
    resolved = page
  if anchor:
    assert resolved.endswith(".md"), f"{target}: an anchor into a file that is not Markdown"
    known = anchors(resolved)
    assert anchor in known, (f"{target}: no heading with anchor #{anchor} in "
                             f"{os.path.relpath(resolved, _REPO)}")


def test_slugs_follow_github():
  assert github_slug("Resume and --overwrite") == "resume-and---overwrite"
  assert github_slug("Several devices: `--strategy`") == "several-devices---strategy"
  assert github_slug("Fashion-MNIST (`small_cnn`)") == "fashion-mnist-small_cnn"
  assert github_slug("The report on a benchmark's logs") == "the-report-on-a-benchmarks-logs"
  assert github_slug("Ablations: what each part of MOTH buys") == (
      "ablations-what-each-part-of-moth-buys")


def fence_problems(text):
  """Line numbers (1-based) of fences that leave a code block open: a closing fence that carries an
  info string (```bash) opens the next block in the author's mind but closes the last one, and a
  block still open at the end swallows the rest of the page."""
  problems, open_at = [], None
  for number, line in enumerate(text.splitlines(), 1):
    if _FENCE.match(line):
      if open_at is None:
        open_at = number
      else:
        if line.strip().lstrip("`~").strip():
          problems.append(number)
        open_at = None
  if open_at is not None:
    problems.append(open_at)
  return problems


@pytest.mark.parametrize("page", _PAGES, ids=lambda p: os.path.relpath(p, _REPO))
def test_code_blocks_are_closed(page):
  assert not fence_problems(_read(page)), f"{page}: unclosed code block at these fences"


def test_the_fence_check_finds_an_unclosed_block():
  assert fence_problems("```python\nx = 1\n\ntext\n```bash\nls\n```\n") == [5, 7]
  assert fence_problems("```python\nx = 1\n```\n```bash\nls\n```\n") == []


def test_readme_is_short():
  lines = _read(_README).count("\n")
  assert lines <= _README_MAX_LINES, (
      f"README.md has {lines} lines; keep it at most {_README_MAX_LINES} and move detail to docs/")


# ------------------------------------------------------------------------------------------------
# The README's commands.


def _commands(path):
  """(module, argv) of every `python -m moth_tf.main|report ...` in the page's code blocks."""
  _, blocks = _split_fences(_read(path))
  found = []
  for _, block in blocks:
    logical = "\n".join(block).replace("\\\n", " ")
    for line in logical.splitlines():
      try:
        tokens = shlex.split(line, comments=True)
      except ValueError:  # Not shell (Python, BibTeX, ...).
        continue
      segment = []
      for token in tokens + ["&&"]:
        if token in ("&&", "||", ";", "|"):
          for i in range(len(segment) - 2):
            if (os.path.basename(segment[i]) in ("python", "python3") and segment[i + 1] == "-m"
                and segment[i + 2] in _FLAG_MODULES):
              found.append((segment[i + 2], segment[i + 3:]))
          segment = []
        else:
          segment.append(token)
  return found


def _flag_module(command):
  return importlib.import_module(_FLAG_MODULES[command])


def fresh_flag_values(define_flags):
  """A new FlagValues holding the flags `define_flags()` defines (the global FLAGS stay as they are).

  A `define_flags(flag_values=...)` gets it directly; otherwise every `absl.flags` function that
  takes `flag_values` is pointed at the new FlagValues while `define_flags()` runs.
  """
  from absl import flags
  fresh = flags.FlagValues()
  if "flag_values" in inspect.signature(define_flags).parameters:
    define_flags(flag_values=fresh)
    return fresh
  redirected = {}
  for name in dir(flags):
    function = getattr(flags, name)
    if name.startswith("_") or not callable(function) or inspect.isclass(function):
      continue
    try:
      parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
      continue
    if "flag_values" in parameters:
      redirected[name] = functools.partial(function, flag_values=fresh)
  with contextlib.ExitStack() as stack:
    for name, function in redirected.items():
      stack.enter_context(mock.patch.object(flags, name, function))
    define_flags()
  return fresh


_README_COMMANDS = _commands(_README)


def test_the_readme_shows_commands():
  assert any(module == "moth_tf.main" for module, _ in _README_COMMANDS)


@pytest.mark.parametrize("module, argv", _README_COMMANDS,
                         ids=[" ".join([m] + a) for m, a in _README_COMMANDS])
def test_readme_command_parses(module, argv, monkeypatch):
  from absl import flags
  monkeypatch.chdir(_REPO)  # Flagfiles are given relative to the repository's root.
  flag_values = fresh_flag_values(_flag_module(module).define_flags)
  try:
    rest = flag_values(["python -m " + module] + argv)
  except flags.Error as e:
    pytest.fail(f"python -m {module} {' '.join(argv)}: {e}")
  assert rest == ["python -m " + module], f"positional arguments left over: {rest[1:]}"


def test_a_misspelt_flag_fails_the_check(monkeypatch):
  from absl import flags
  monkeypatch.chdir(_REPO)
  flag_values = fresh_flag_values(_flag_module("moth_tf.main").define_flags)
  with pytest.raises(flags.Error, match="harden_stepz"):
    flag_values(["python -m moth_tf.main", "--harden_stepz=3"])


# ------------------------------------------------------------------------------------------------
# Flags named anywhere in the documentation.
#
# A `--flag` is checked where the page says which program takes it: in a command that runs
# moth_tf (`python -m moth_tf.main|report|prepare`, `python -m moth_tf`, the `moth_tf` script,
# `bazel run //:main -- ...`) or one of its scripts (`python benchmarks/X.py`,
# `python examples/X.py`), in a code block or a code span; and in a code span of prose that holds
# flags without a command (`--portion`, `flag --seeds=0: ...`), which must then be a flag of one
# of moth_tf's three programs, or of a benchmarks/examples script named in the same section. Code
# spans that start with another program (`pip`, `pytest`, `bazel test`, `tensorboard`, ...) are
# not checked. `--noFLAG` is accepted for a boolean FLAG.

_PROGRAMS = {  # Command -> (module that defines its flags, its define function).
    "moth_tf.main": ("moth_tf.cli.flags", "define_flags"),
    "moth_tf.report": ("moth_tf.reporting.report", "define_flags"),
    "moth_tf.prepare": ("moth_tf.data.prepare", "_define_flags"),
}
_MODULE_ALIASES = {"moth_tf": "moth_tf.main", "moth_tf.cli.main": "moth_tf.main",
                   "moth_tf.reporting.report": "moth_tf.report",
                   "moth_tf.data.prepare": "moth_tf.prepare"}
_BAZEL_TARGETS = {"//:main": "moth_tf.main", "//:prepare": "moth_tf.prepare"}
# absl's own flags, which every absl program takes (help flags, flagfiles).
_ABSL_FLAGS = frozenset({"flagfile", "undefok", "help", "helpfull", "helpshort", "helpxml",
                         "only_check_args"})
_OTHER_PROGRAMS = frozenset({"pip", "pip3", "pytest", "bazel", "tensorboard", "apt-get", "apt",
                             "git", "docker", "conda", "nvidia-smi", "sudo", "curl", "wget"})
_SCRIPT = re.compile(r"(?<![\w/])((?:benchmarks|examples)/\w+\.py)\b")
_FLAG_TOKEN = re.compile(r"^--([A-Za-z][A-Za-z0-9_-]*)")


@functools.lru_cache(maxsize=None)
def program_flags(program):
  """(names, boolean names) of the flags `program` takes: a key of _PROGRAMS, or the path of a
  script under benchmarks/ or examples/ (its argparse arguments and absl DEFINEs, read from the
  source without importing it)."""
  if program in _PROGRAMS:
    module, function = _PROGRAMS[program]
    flag_values = fresh_flag_values(getattr(importlib.import_module(module), function))
    names = set(flag_values) | _ABSL_FLAGS
    booleans = {name for name in flag_values if flag_values[name].boolean}
    return frozenset(names), frozenset(booleans)
  source = _read(os.path.join(_REPO, program))
  names = set(re.findall(r"add_argument\(\s*[\"']--([\w-]+)", source))
  absl_names = set(re.findall(r"DEFINE_\w+\(\s*[\"'](\w+)", source))
  booleans = set(re.findall(r"DEFINE_bool(?:ean)?\(\s*[\"'](\w+)", source))
  if absl_names:
    names |= absl_names | _ABSL_FLAGS
  return frozenset(names), frozenset(booleans)


def _moth_tf_flags():
  names, booleans = set(), set()
  for program in _PROGRAMS:
    more, more_booleans = program_flags(program)
    names |= more
    booleans |= more_booleans
  return names, booleans


def unknown_flag(name, names, booleans):
  """Whether `--name` is not a flag of (names, booleans); `--noX` counts for a boolean X."""
  if name in names:
    return False
  return not (name.startswith("no") and name[2:] in booleans)


def _tokens(text):
  try:
    return shlex.split(text, comments=False)
  except ValueError:  # An apostrophe in prose, a quote left open.
    return text.split()


def command_program(tokens):
  """(program, index of its first argument) for a command that runs moth_tf or one of its
  scripts; ("other", None) for another program; (None, 0) for no command (bare flags, text)."""
  i = 0
  while i < len(tokens) and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", tokens[i]):
    i += 1  # Environment assignments: TF_CONFIG='...' python -m ...
  if i >= len(tokens):
    return None, 0
  first = tokens[i]
  base = os.path.basename(first)
  if re.match(r"^python[0-9.]*$", base):
    if tokens[i + 1:i + 2] == ["-m"]:
      module = tokens[i + 2] if i + 2 < len(tokens) else ""
      module = _MODULE_ALIASES.get(module, module)
      return (module, i + 3) if module in _PROGRAMS else ("other", None)
    if i + 1 < len(tokens):
      script = _SCRIPT.search(tokens[i + 1])
      if script and os.path.exists(os.path.join(_REPO, script.group(1))):
        return script.group(1), i + 2
    return "other", None
  script = _SCRIPT.fullmatch(first.lstrip("./")) if first.endswith(".py") else None
  if script and os.path.exists(os.path.join(_REPO, script.group(1))):
    return script.group(1), i + 1
  if base == "moth_tf":
    return "moth_tf.main", i + 1
  if base == "bazel" and i + 2 < len(tokens) and tokens[i + 1] == "run":
    program = _BAZEL_TARGETS.get(tokens[i + 2])
    if program:
      rest = tokens[i + 3:]
      return program, i + 3 + (rest.index("--") + 1 if "--" in rest else 0)
  if base in _OTHER_PROGRAMS or base.endswith(".py"):
    return "other", None
  return None, 0


def _flag_names(tokens):
  for token in tokens:
    match = _FLAG_TOKEN.match(token)
    if match:
      yield match.group(1)


def _segments(tokens):
  segment = []
  for token in tokens + ["&&"]:
    if token in ("&&", "||", ";", "|"):
      if segment:
        yield segment
      segment = []
    else:
      segment.append(token)


def _prose_units(text):
  """The prose of a page cut into units, each a list of (line number, line): a table row is a
  unit, a heading is one, and so is every paragraph (lines up to a blank line). A unit's `section`
  is the index of the heading above it; its `table_caption` is, for a table row, the unit right
  before the table (its caption sentence), else None."""
  prose, _ = _split_fences(text)
  units, current, section, caption, in_table = [], [], 0, None, False

  def flush():
    nonlocal current
    if current:
      units.append({"lines": current, "section": section, "table_caption": None})
    current = []

  for number, line in enumerate(prose, 1):
    stripped = line.strip()
    if not stripped:
      flush()
      in_table = False
      continue
    if re.match(r"^ {0,3}#{1,6}\s", line):
      flush()
      section += 1
      in_table = False
      units.append({"lines": [(number, line)], "section": section, "table_caption": None})
      continue
    if stripped.startswith("|"):
      if not in_table:
        flush()
        caption = units[-1] if units and units[-1]["section"] == section else None
        in_table = True
      units.append({"lines": [(number, line)], "section": section, "table_caption": caption})
      continue
    current.append((number, line))
  flush()
  return units


def _unit_text(unit):
  """(text, line of each character's start offset) of a unit's lines joined by newlines."""
  text = "\n".join(line for _, line in unit["lines"])
  starts = []
  offset = 0
  for number, line in unit["lines"]:
    starts.append((offset, number))
    offset += len(line) + 1
  return text, starts


def _line_at(starts, offset):
  number = starts[0][1]
  for start, line in starts:
    if start <= offset:
      number = line
  return number


def _code_spans(text):
  """(offset, content) of every code span (may cross lines within a paragraph)."""
  for match in re.finditer(r"(`+)(.+?)\1", text, re.S):
    yield match.start(), match.group(2).replace("\n", " ")


def flag_problems_in_markdown(text):
  """(line, flag, program) of every flag the page names that its program does not take."""
  problems = []
  moth_names, moth_booleans = _moth_tf_flags()
  # Code blocks: commands only.
  lines = text.splitlines()
  in_block, logical, first_line = False, [], 0
  for number, line in enumerate(lines, 1):
    if _FENCE.match(line):
      in_block = not in_block
      continue
    if not in_block:
      continue
    if logical:
      logical.append(line)
    else:
      logical, first_line = [line], number
    if line.rstrip().endswith("\\"):
      continue
    joined = " ".join(part.rstrip().rstrip("\\") for part in logical)
    logical = []
    try:
      tokens = shlex.split(joined, comments=True)
    except ValueError:
      continue
    for segment in _segments(tokens):
      program, start = command_program(segment)
      if program in (None, "other"):
        continue
      names, booleans = program_flags(program)
      for name in _flag_names(segment[start:]):
        if unknown_flag(name, names, booleans):
          problems.append((first_line, "--" + name, program))
  # Code spans in prose.
  section_scripts = {}
  units = _prose_units(text)
  for unit in units:
    joined, _ = _unit_text(unit)
    section_scripts.setdefault(unit["section"], set()).update(_SCRIPT.findall(joined))
    section_scripts[unit["section"]].update(
        "benchmarks/" + name for name in re.findall(r"(?<![\w/])(\w+_benchmark\.py)", joined))
  for unit in units:
    joined, starts = _unit_text(unit)
    for offset, span in _code_spans(joined):
      tokens = _tokens(span)
      program, start = command_program(tokens)
      owner = re.search(r"([\w-]+)'s\s*`*$", joined[:offset])
      if program == "other" or (owner and owner.group(1).lower() in _OTHER_PROGRAMS):
        continue  # Another program's command, or its flag named as such: "Bazel's `--x`".
      if program is None:
        names, booleans = set(moth_names), set(moth_booleans)
        for script in section_scripts.get(unit["section"], ()):
          if os.path.exists(os.path.join(_REPO, script)):
            more, more_booleans = program_flags(script)
            names |= more
            booleans |= more_booleans
        candidates = [t for t in tokens if t.startswith("--")]
        program = "moth_tf"
      else:
        names, booleans = program_flags(program)
        candidates = tokens[start:]
      for name in _flag_names(candidates):
        if unknown_flag(name, names, booleans):
          problems.append((_line_at(starts, offset), "--" + name, program))
  return problems


def flag_problems_in_example(path):
  """(line, flag, program) of every flag an example's docstring names that the script does not
  take (or, on a line that runs moth_tf, that moth_tf does not)."""
  import ast
  source = _read(path)
  docstring = ast.get_docstring(ast.parse(source), clean=False) or ""
  script = os.path.relpath(path, _REPO)
  problems = []
  for number, line in enumerate(docstring.splitlines(), 2):
    program, start = command_program(_tokens(line.strip()))
    if program in (None, "other") or program == script:
      program, start = script, 0
    names, booleans = program_flags(program)
    for token in _tokens(line)[start:]:
      match = re.search(r"(?<![\w-])--([A-Za-z][A-Za-z0-9_-]*)", token)
      if match and unknown_flag(match.group(1), names, booleans):
        problems.append((number, "--" + match.group(1), program))
  return problems


_EXAMPLES = sorted(glob.glob(os.path.join(_REPO, "examples", "*.py")))


@pytest.mark.parametrize("page", _PAGES + _EXAMPLES, ids=lambda p: os.path.relpath(p, _REPO))
def test_every_flag_named_exists(page):
  if page.endswith(".py"):
    problems = flag_problems_in_example(page)
  else:
    problems = flag_problems_in_markdown(_read(page))
  where = os.path.relpath(page, _REPO)
  assert not problems, "flags that do not exist:\n" + "\n".join(
      f"  {where}:{line}: {flag} (not a flag of {program})" for line, flag, program in problems)


def test_the_flag_check_finds_unknown_flags():
  text = ("Run `python -m moth_tf.main --harden_stepz=3`, or set `--portionn`; `--nodownload` and\n"
          "`--nofigures` are booleans, `--noportion` is not. `pip install --upgrade x` and Bazel's\n"
          "`--sandbox_debug` are other programs'; `--sandbox_debug` alone is not.\n"
          "\n"
          "```bash\n"
          "python -m moth_tf.report --logdir=x --baselinez=y   # a comment --ignored\n"
          "python benchmarks/generation_benchmark.py --variants=default --nope=1\n"
          "pytest --some-pytest-flag && python -m moth_tf.prepare --dataset=gtsrb --source=D\n"
          "```\n")
  found = {(line, flag) for line, flag, _ in flag_problems_in_markdown(text)}
  assert found == {(1, "--harden_stepz"), (1, "--portionn"), (2, "--noportion"),
                   (3, "--sandbox_debug"), (6, "--baselinez"), (7, "--nope")}


# ------------------------------------------------------------------------------------------------
# The Python API as the documentation shows it.

# Public function -> where it is defined (moth_tf/__init__.py loads them from there).
_API = {
    "harden": "moth_tf.api",
    "class_distance": "moth_tf.api",
    "detect_backdoor": "moth_tf.api",
    "backdoor_metrics": "moth_tf.api",
    "hardening_model": "moth_tf.hardening.wrapper",
}


@functools.lru_cache(maxsize=None)
def api_signature(name):
  return inspect.signature(getattr(importlib.import_module(_API[name]), name))


def _called_api(call, imported):
  """The public API function a call node calls (moth_tf.harden(...), or harden(...) after
  `from moth_tf import harden`), else None."""
  import ast
  func = call.func
  if (isinstance(func, ast.Attribute) and func.attr in _API and isinstance(func.value, ast.Name)
      and func.value.id == "moth_tf"):
    return func.attr
  if isinstance(func, ast.Name) and func.id in imported:
    return imported[func.id]
  return None


def api_call_problems(source):
  """(line, message) of every call of the public API in `source` (Python) that its signature
  does not accept: an unknown keyword, or too many positional arguments."""
  import ast
  tree = ast.parse(source)
  imported = {}
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module == "moth_tf":
      for alias in node.names:
        if alias.name in _API:
          imported[alias.asname or alias.name] = alias.name
  problems = []
  for node in ast.walk(tree):
    if not isinstance(node, ast.Call):
      continue
    name = _called_api(node, imported)
    if name is None:
      continue
    parameters = api_signature(name).parameters
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
      continue
    for keyword in node.keywords:
      if keyword.arg is not None and (
          keyword.arg not in parameters
          or parameters[keyword.arg].kind is inspect.Parameter.POSITIONAL_ONLY):
        problems.append((node.lineno, f"moth_tf.{name}() takes no keyword {keyword.arg!r}"))
    positional = [p for p in parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if (not any(p.kind is p.VAR_POSITIONAL for p in parameters.values())
        and not any(isinstance(a, ast.Starred) for a in node.args)
        and len(node.args) > len(positional)):
      problems.append((node.lineno, f"moth_tf.{name}() takes at most {len(positional)} "
                                    f"positional arguments, not {len(node.args)}"))
  return problems


def _python_sources():
  """(id, first line number, source) of every fenced Python block of the pages, and every
  example script."""
  for page in _PAGES:
    lines = _read(page).splitlines()
    block, start, info = None, 0, ""
    for number, line in enumerate(lines, 1):
      if _FENCE.match(line):
        if block is None:
          block, start, info = [], number + 1, line.strip().lstrip("`~").strip()
        else:
          if info.split()[:1] in (["python"], ["py"]):
            yield f"{os.path.relpath(page, _REPO)}:{start}", start, "\n".join(block)
          block = None
        continue
      if block is not None:
        block.append(line)
  for path in _EXAMPLES:
    yield os.path.relpath(path, _REPO), 1, _read(path)


_PYTHON_SOURCES = list(_python_sources())


def test_there_are_python_blocks():
  assert any(where.startswith("README.md") for where, _, _ in _PYTHON_SOURCES)


@pytest.mark.parametrize("where, start, source", _PYTHON_SOURCES,
                         ids=[where for where, _, _ in _PYTHON_SOURCES])
def test_python_block_calls_the_api_as_it_is(where, start, source):
  problems = api_call_problems(source)  # A block that does not parse fails here too.
  path = where.split(":")[0]
  assert not problems, "\n".join(f"{path}:{start + line - 1}: {message}"
                                 for line, message in problems)


def test_the_api_check_finds_a_wrong_keyword():
  source = ("import moth_tf\nfrom moth_tf import class_distance as cd\n"
            "moth_tf.harden(model, train, val, 'moth', stepz=3)\n"
            "cd(model, x, y, steps=10, direction_blocks=16)\n"
            "moth_tf.backdoor_metrics(model, x, y, trigger, 10, 11)\n"
            "other.harden(model, nonsense=1)\n")
  assert [line for line, _ in api_call_problems(source)] == [3, 4, 5]


_SIGNATURE_ROW = re.compile(r"^\|\s*`(?:moth_tf\.)?(\w+)\((.*?)\)`\s*\|")


def signature_row_problems(text, exact):
  """(line, message) of every table row `| `name(params)` | ...` of a public API function whose
  parameters are not the function's: with `exact`, every parameter in order, with its default and
  the `*` where keyword-only ones start; otherwise `...` may stand for the rest, and the listed
  ones must be parameters, in order, with their defaults."""
  import ast
  problems = []
  prose, _ = _split_fences(text)
  for number, line in enumerate(prose, 1):
    match = _SIGNATURE_ROW.match(line.strip())
    if not match or match.group(1) not in _API:
      continue
    name, listed = match.group(1), match.group(2)
    shortened = "..." in listed
    if exact and shortened:
      problems.append((number, f"{name}: list every parameter, not '...'"))
      continue
    try:
      arguments = ast.parse(f"def f({listed.replace('...', '_ellipsis_=None')}): pass"
                            ).body[0].args
    except SyntaxError as e:
      problems.append((number, f"{name}({listed}) does not parse as a parameter list: {e.msg}"))
      continue
    shown = []  # (name, keyword-only, default or inspect.Parameter.empty)
    positional = arguments.posonlyargs + arguments.args
    defaults = [inspect.Parameter.empty] * (len(positional) - len(arguments.defaults))
    defaults += [ast.literal_eval(d) for d in arguments.defaults]
    for arg, default in zip(positional, defaults):
      shown.append((arg.arg, False, default))
    for arg, default in zip(arguments.kwonlyargs, arguments.kw_defaults):
      shown.append((arg.arg, True,
                    inspect.Parameter.empty if default is None else ast.literal_eval(default)))
    shown = [entry for entry in shown if entry[0] != "_ellipsis_"]
    actual = [(p.name, p.kind is p.KEYWORD_ONLY, p.default)
              for p in api_signature(name).parameters.values()]
    if shortened:
      names = [n for n, _, _ in actual]
      positions = [names.index(n) if n in names else -1 for n, _, _ in shown]
      if -1 in positions or positions != sorted(positions):
        problems.append((number, f"{name}: {[n for n, _, _ in shown]} are not parameters of "
                                 f"{name}{api_signature(name)} in that order"))
        continue
      for (shown_name, _, shown_default), position in zip(shown, positions):
        if shown_default != actual[position][2]:
          problems.append((number, f"{name}: {shown_name}={shown_default!r}, but the default is "
                                   f"{actual[position][2]!r}"))
    elif shown != actual:
      problems.append((number, f"the row shows {name}({listed}), the code is "
                               f"{name}{api_signature(name)}"))
  return problems


@pytest.mark.parametrize("page, exact", [("docs/user-guide.md", True), ("README.md", False)])
def test_api_tables_show_the_signatures(page, exact):
  problems = signature_row_problems(_read(os.path.join(_REPO, page)), exact)
  assert not problems, "\n".join(f"{page}:{line}: {message}" for line, message in problems)


def test_the_user_guide_has_a_row_for_every_function():
  text = _read(os.path.join(_REPO, "docs", "user-guide.md"))
  rows = {m.group(1) for m in map(_SIGNATURE_ROW.match, text.splitlines()) if m}
  assert set(_API) <= rows, f"no row for {sorted(set(_API) - rows)}"


def test_the_signature_check_finds_a_wrong_row():
  rows = ("| `harden(model, train, val=None, method=\"moth\", *, test=None)` | x |\n"
          "| `class_distance(model, x, y, *, samples=100, ...)` | x |\n"
          "| `class_distance(model, x, y, *, samples=10, ...)` | x |\n"
          "| `backdoor_metrics(model, y, x, ...)` | x |\n")
  assert [line for line, _ in signature_row_problems(rows, exact=True)] == [1, 2, 3, 4]
  assert [line for line, _ in signature_row_problems(rows, exact=False)] == [1, 3, 4]


# ------------------------------------------------------------------------------------------------
# Figures come from results.md.
#
# A measured figure quoted outside docs/results.md must sit in a unit of prose that links to the
# results.md section it comes from (`results.md#...`): its paragraph, its table row, or, for a
# table, the caption sentence right above it. A "figure" is, narrowly: a signed percentage
# (+61.2%, -0.1%), a percentage with decimals (97.77%), a fraction with four or more decimals
# (0.9777), or a number with a time unit (451 s, 3.35 ms, 2 min, 8.4 h). Numbers that are not
# results (defaults, sizes, a message's example value) are marked by `<!-- not a result -->` at the
# end of their line, which exempts that line. Code blocks and code spans are not read.

_NOT_A_RESULT = "<!-- not a result -->"
_FIGURE = re.compile(r"""
    (?<![\w.,])(?:
        [+-]\d[\d,]*(?:\.\d+)?\s?%                                          # +61.2%, -0.1%
      | \d[\d,]*\.\d+\s?%                                                   # 97.77%
      | 0\.\d{4,}(?!\d)                                                     # 0.9777
      | \d[\d,]*(?:\.\d+)?(?:\s|\xa0)?(?:ms|s|min|minutes?|h|hours?|seconds?)(?![\w-])  # 451 s
    )""", re.X)
_RESULTS_LINK = re.compile(r"\]\(\s*<?(?:[^)\s>]*/)?results\.md#[^)\s>]+")


def figures(line):
  """The figures in a line of prose (code spans, link targets and HTML comments left out)."""
  line = _CODE_SPAN.sub(" ", line)
  line = re.sub(r"\]\([^)]*\)", "]", line)
  line = re.sub(r"<!--.*?-->", " ", line)
  return [m.group(0).strip() for m in _FIGURE.finditer(line)]


def figure_problems(text):
  """(line, figure) of every figure in a unit of prose that does not link to results.md#..."""
  problems = []
  for unit in _prose_units(text):
    joined, _ = _unit_text(unit)
    linked = bool(_RESULTS_LINK.search(joined))
    caption = unit["table_caption"]
    if not linked and caption is not None:
      linked = bool(_RESULTS_LINK.search(_unit_text(caption)[0]))
    if linked:
      continue
    for number, line in unit["lines"]:
      if _NOT_A_RESULT in line:
        continue
      for figure in figures(line):
        problems.append((number, figure))
  return problems


_FIGURE_PAGES = [p for p in _PAGES if os.path.basename(p) != "results.md"]


@pytest.mark.parametrize("page", _FIGURE_PAGES, ids=lambda p: os.path.relpath(p, _REPO))
def test_figures_link_to_results(page):
  problems = figure_problems(_read(page))
  where = os.path.relpath(page, _REPO)
  assert not problems, (
      "figures without a results.md#... link in their paragraph, table row or table caption "
      f"(or {_NOT_A_RESULT} at the end of the line where they are not results):\n"
      + "\n".join(f"  {where}:{line}: {figure}" for line, figure in problems))


def test_the_figure_check():
  assert figures("from 97.49% to 98.89% (+60.0%), 451 s, 0.9777, 3.35 ms, ~2 min") == [
      "97.49%", "98.89%", "+60.0%", "451 s", "0.9777", "3.35 ms", "2 min"]
  assert figures("90% of 3 seeds, 10 steps, 1e-3, 8x8, `61.2%`, 20% and 0.5, (results.md#a-1.5-s)") == []
  text = ("A result, +61.2%\nacross two lines.\n\n"
          "Linked: 68 s ([results](results.md#summary)).\n\n"
          "A caption ([measured](docs/results.md#x)):\n\n| a | 97.77% |\n|---|---|\n\n"
          "| b | 11 s |\n\n"
          "A default of 0.1234 <!-- not a result -->\n")
  assert figure_problems(text) == [(1, "+61.2%"), (11, "11 s")]
