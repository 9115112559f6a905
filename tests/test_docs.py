"""The documentation holds together: README.md and docs/*.md link only to files and headings that
exist, and every `python -m moth_tf.main` / `python -m moth_tf.report` command shown in the README
parses with the command line's own absl flags (nothing is run).

The link checks read Markdown only and import neither TensorFlow nor moth_tf. The command checks
import the module that defines the flags and parse into a fresh `flags.FlagValues`, so the process's
global FLAGS are never touched.
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


@pytest.mark.parametrize("page, target", _relative_links())
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
