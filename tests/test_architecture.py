"""The package's layout as a test: which subpackage may import which, no import circle, and
the size limits of STYLE (no function over 80 lines, no module over 450).

Every import of every module under hashjax/ counts, function-local ones too. Run it as a
script to print each subpackage's imports and the verdicts:

  python tests/test_architecture.py
"""

from __future__ import annotations

import ast
import collections
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, 'hashjax')

# Bottom to top; a package imports only those it lists (and itself). The two jobs (gan,
# hashing) never import each other; models and ops know no job.
ALLOWED = {
    'ops': set(),
    'runtime': {'ops'},
    'models': {'ops'},
    'data': {'runtime'},
    'retrieval': {'runtime', 'data'},
    'gan': {'runtime', 'data', 'models'},
    'hashing': {'runtime', 'data', 'models', 'retrieval'},
    'serve': {'runtime', 'data', 'models', 'retrieval', 'hashing'},
    'experiments': {'runtime', 'data', 'models', 'retrieval', 'hashing'},
    'commands': {'runtime', 'data', 'models', 'retrieval', 'hashing', 'gan'},
    '': {'runtime', 'data', 'models', 'retrieval', 'hashing', 'gan', 'ops'},  # hashjax/__init__
}
TOP_LEVEL = {'__init__.py'}  # the only modules directly in hashjax/
MAX_FUNCTION_LINES, MAX_MODULE_LINES = 80, 450


def modules() -> dict[str, str]:
  """Dotted module name → path, for every .py file under hashjax/."""
  out = {}
  for folder, dirs, files in os.walk(PACKAGE):
    dirs[:] = sorted(d for d in dirs if not d.startswith(('.', '__')))
    for name in sorted(files):
      if name.endswith('.py'):
        path = os.path.join(folder, name)
        rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, '.')
        out[rel.removesuffix('.__init__')] = path
  return out


def imports(path: str, known: dict[str, str]) -> set[str]:
  """The hashjax modules a file imports (a name imported from a package counts as its
  submodule when there is one)."""
  found = set()
  for node in ast.walk(ast.parse(open(path, encoding='utf-8').read())):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names if a.name.startswith('hashjax')}
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      if not node.module.startswith('hashjax'):
        continue
      for a in node.names:
        sub = f'{node.module}.{a.name}'
        found.add(sub if sub in known else node.module)
  return found & set(known)


def package(module: str) -> str:
  """'hashjax.retrieval.metrics' → 'retrieval'; 'hashjax' → ''."""
  parts = module.split('.')
  return parts[1] if len(parts) > 1 else ''


def graph() -> dict[str, set[str]]:
  known = modules()
  return {m: imports(p, known) - {m} for m, p in known.items()}


def layer_violations(edges: dict[str, set[str]]) -> list[str]:
  out = []
  for module, targets in sorted(edges.items()):
    for target in sorted(targets):
      a, b = package(module), package(target)
      if a != b and b not in ALLOWED[a]:
        out.append(f'{module} imports {target}: {a or "hashjax"} may import '
                   f'{", ".join(sorted(ALLOWED[a])) or "nothing of hashjax"}')
  return out


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components with more than one module (Tarjan)."""
  index, low, stack, on_stack, found = {}, {}, [], set(), []
  counter = [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on_stack.add(v)
    for w in sorted(edges.get(v, ())):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        found.append(sorted(component))

  for v in sorted(edges):
    if v not in index:
      visit(v)
  return found


def oversized() -> list[str]:
  out = []
  for module, path in sorted(modules().items()):
    source = open(path, encoding='utf-8').read()
    lines = source.count('\n')
    if lines > MAX_MODULE_LINES:
      out.append(f'{module}: {lines} lines (at most {MAX_MODULE_LINES})')
    for node in ast.walk(ast.parse(source)):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        start = min([node.lineno] + [d.lineno for d in node.decorator_list])
        length = node.end_lineno - start + 1
        if length > MAX_FUNCTION_LINES:
          out.append(f'{module}:{node.lineno} {node.name}: {length} lines '
                     f'(at most {MAX_FUNCTION_LINES})')
  return out


def test_no_module_directly_in_the_package_but_its_init():
  flat = {f for f in os.listdir(PACKAGE) if f.endswith('.py')}
  assert flat <= TOP_LEVEL, f'modules directly in hashjax/: {sorted(flat - TOP_LEVEL)}'


def test_every_package_is_placed():
  assert {package(m) for m in modules()} <= set(ALLOWED)


def test_imports_follow_the_layers():
  assert layer_violations(graph()) == []


def test_no_import_circle():
  assert circles(graph()) == []


def test_sizes():
  assert oversized() == []


# What `from hashjax import X` gave before the subpackages: each X still imports.
NAMES_BEFORE_THE_MOVE = (
    'HammingIndex', 'HashNet', 'JSDEstimate', 'average_precision', 'average_precision_of_sets',
    'beta_schedule', 'code_flip_rate', 'constant_beta', 'copy_detection', 'dhn_loss',
    'estimate_jsd', 'exact_jsd', 'fisher_diagonal', 'graded_metrics', 'hamming_distance',
    'hamming_topk', 'hash_activation', 'hashnet_loss', 'jsd_lower_bound', 'laplace_penalty',
    'map_tie_summary', 'mean_acg', 'mean_average_precision', 'mean_ndcg', 'neighbour_sets',
    'pack_codes', 'precision_at_radius', 'precision_at_topk', 'precision_recall_curve',
    'recall_at_radius', 'retrieval_report', 'sign_codes', 'unpack_codes')


def test_every_public_name_of_before_still_imports_from_hashjax():
  import hashjax  # pylint: disable=g-import-not-at-top  # the check above reads files only
  assert set(NAMES_BEFORE_THE_MOVE) <= set(hashjax.__all__)
  missing = [name for name in hashjax.__all__ if not callable(getattr(hashjax, name, None))]
  assert missing == []


def test_the_check_sees_a_circle_and_an_import_up():
  edges = {'hashjax.data.a': {'hashjax.data.b'}, 'hashjax.data.b': {'hashjax.data.a'},
           'hashjax.runtime.x': {'hashjax.hashing.y'}, 'hashjax.hashing.y': set()}
  assert circles(edges) == [['hashjax.data.a', 'hashjax.data.b']]
  assert layer_violations(edges) == [
      'hashjax.runtime.x imports hashjax.hashing.y: runtime may import ops']


def main() -> int:
  edges = graph()
  by_package = collections.defaultdict(set)
  for module, targets in edges.items():
    by_package[package(module) or 'hashjax'] |= {package(t) or 'hashjax' for t in targets}
  for name in ('ops', 'runtime', 'models', 'data', 'retrieval', 'gan', 'hashing', 'serve',
               'experiments', 'commands', 'hashjax'):
    uses = sorted(by_package[name] - {name})
    print(f'{name:12} {len([m for m in edges if (package(m) or "hashjax") == name]):3} modules'
          f'  imports: {", ".join(uses) or "-"}')
  problems = layer_violations(edges) + [' → '.join(c) for c in circles(edges)] + oversized()
  print('\n'.join(problems) if problems else
        'no import against the layers, no circle, no function over 80 lines, '
        'no module over 450 lines')
  return 1 if problems else 0


if __name__ == '__main__':
  sys.exit(main())
