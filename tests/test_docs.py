"""README's Python examples run as written."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_python_blocks_run():
  text = open(os.path.join(ROOT, 'README.md')).read()
  blocks = re.findall(r'```python\n(.*?)```', text, flags=re.S)
  assert blocks, 'README has no python example'
  for block in blocks:
    exec(compile(block, 'README.md', 'exec'), {})  # pylint: disable=exec-used


def test_readme_quick_start_commands():
  text = open(os.path.join(ROOT, 'README.md')).read()
  assert 'pip install -e . && python train.py' in text
  assert 'pip install -e ".[test]" && pytest -q' in text
  ci = open(os.path.join(ROOT, '.ci', 'run')).read()
  assert 'pip install -e ".[test]" && pytest -q' in ci
