"""The documentation holds: README.md and the pages under docs/ run their Python examples,
link only to files (and headings) that exist, and README and .ci/run keep the commands.

Which blocks run: every block fenced ```python (nothing else after the word), in a fresh
namespace, from the repository root. A Python block that cannot run here, one that needs
downloaded data or a finished run, carries a title saying what it needs, e.g.
```python title="needs runs/hashnet_digits"```, and is shown but not run. Shell commands are
fenced ```bash and never run. Blocks share this process, so examples that use the same array
shapes share compiled programs (and tests/conftest.py's persistent cache shares them across
runs).
"""

import os
import re
import unicodedata

import pytest

from tests import ROOT

DOCS = os.path.join(ROOT, 'docs')
PAGES = ['README.md'] + sorted(
    os.path.relpath(os.path.join(folder, name), ROOT)
    for folder, _, names in os.walk(DOCS) for name in names if name.endswith('.md'))
README_COMMANDS = ('pip install -e . && python train.py', 'pip install -e ".[test]" && pytest -q')
LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)(?:\s+"[^"]*")?\)')
HEADING = re.compile(r'^(#{1,6})\s+(.*?)\s*#*\s*$')


def _read(page: str) -> str:
  with open(os.path.join(ROOT, page), encoding='utf-8') as f:
    return f.read()


def fenced_blocks(text: str):
  """(info string, first line number, code) of every fenced block of a Markdown text."""
  blocks, info, start, lines, indent = [], None, 0, [], ''
  for number, line in enumerate(text.splitlines(), 1):
    fence = re.match(r'^(\s*)```(.*)$', line)
    if info is None and fence:
      indent, info, start, lines = fence.group(1), fence.group(2).strip(), number + 1, []
    elif info is not None and line.strip() == '```':
      blocks.append((info, start, '\n'.join(lines) + '\n'))
      info = None
    elif info is not None:
      lines.append(line[len(indent):] if line.startswith(indent) else line)
  assert info is None, f'a code fence opened at line {start - 1} is never closed'
  return blocks


def prose(text: str) -> str:
  """The text without its fenced blocks and inline code (links there are not links)."""
  out, inside = [], False
  for line in text.splitlines():
    if re.match(r'^\s*```', line):
      inside = not inside
      out.append('')
      continue
    out.append('' if inside else re.sub(r'`[^`]*`', '', line))
  return '\n'.join(out)


def slug(heading: str) -> str:
  """A heading's anchor as MkDocs (Python-Markdown's toc) writes it."""
  text = re.sub(r'`([^`]*)`', r'\1', heading)
  text = re.sub(r'\[([^\]]*)\]\([^)]*\)', r'\1', text)
  text = unicodedata.normalize('NFKD', text).encode('ascii', 'ignore').decode('ascii')
  text = re.sub(r'[^\w\s-]', '', text).strip().lower()
  return re.sub(r'[-\s]+', '-', text)


def anchors(page: str) -> set[str]:
  return {slug(m.group(2)) for line in prose(_read(page)).splitlines()
          if (m := HEADING.match(line))}


def _python_blocks():
  for page in PAGES:
    for info, line, code in fenced_blocks(_read(page)):
      if info == 'python':
        yield pytest.param(page, line, code, id=f'{page}:{line}')


@pytest.mark.parametrize('page,line,code', list(_python_blocks()))
def test_python_block_runs(page, line, code, monkeypatch):
  monkeypatch.chdir(ROOT)
  program = compile('\n' * (line - 1) + code, page, 'exec')  # a traceback names the page's lines
  exec(program, {'__name__': '__docs__'})  # pylint: disable=exec-used


def test_pages_have_python_examples():
  runnable = {param.values[0] for param in _python_blocks()}
  assert 'README.md' in runnable
  assert len(runnable) >= 5, runnable


@pytest.mark.parametrize('page', PAGES)
def test_relative_links_exist(page):
  folder = os.path.dirname(os.path.join(ROOT, page))
  broken = []
  for target in LINK.findall(prose(_read(page))):
    if re.match(r'^[a-z][a-z0-9+.-]*:', target):  # https:, mailto:, ...
      continue
    path, _, anchor = target.partition('#')
    resolved = os.path.normpath(os.path.join(folder, path)) if path else os.path.join(ROOT, page)
    if not os.path.exists(resolved):
      broken.append(f'{target} (no file {os.path.relpath(resolved, ROOT)})')
    elif anchor and resolved.endswith('.md') and anchor not in anchors(
        os.path.relpath(resolved, ROOT)):
      broken.append(f'{target} (no heading #{anchor})')
  assert not broken, f'{page}: broken links: {broken}'


def test_readme_and_index_link_every_page():
  """README's and the site's "where to read on" tables name every page of the site."""
  pages = {p for p in PAGES if p.startswith('docs/') and p.count('/') == 1}
  pages -= {'docs/index.md'}
  for home, folder in (('README.md', ''), ('docs/index.md', 'docs/')):
    linked = {folder + t.partition('#')[0] for t in LINK.findall(prose(_read(home)))}
    missing = sorted(pages - linked)
    assert not missing, f'{home} does not link {missing}'


def test_mkdocs_nav_lists_every_page():
  config = _read('mkdocs.yml')
  listed = set(re.findall(r'[\w./-]+\.md', config))
  missing = sorted(p for p in PAGES if p.startswith('docs/')
                   and p[len('docs/'):] not in listed)
  assert not missing, f'mkdocs.yml does not name {missing}'


def test_readme_quick_start_commands():
  text = _read('README.md')
  for command in README_COMMANDS:
    assert command in text
  ci = _read(os.path.join('.ci', 'run'))
  assert 'pip install -e ".[test]" && pytest -q' in ci
  assert 'mkdocs build --strict' in ci
  assert 'pip install -e ".[docs]" && mkdocs serve' in text
  assert 'mkdocs build --strict' in text
