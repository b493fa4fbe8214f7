"""The report of a hashing grid: figures (PNG) and a Markdown page from its results.json.

Every method has one `Style` (colour, line style, marker) in every figure, fixed by its place
in the experiment's list of methods (`method_styles`), not by which methods a panel holds.

A grid's results: {'cells': [{'data', 'method', 'bits', 'seed', 'map', and for codes with
a Hamming ranking 'map_interval', 'precision@radius2', 'pr_precision', 'pr_recall'}],
'curves': {data: {method: [{'step', 'beta', 'loss_tanh', 'loss_sign'}]}}, 'settings':
[{'name', ...}], 'command', 'date', 'versions', 'plan', 'wall_seconds', 'sessions'}.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, NamedTuple

import numpy as np

Summary = dict[tuple[str, str, int], dict[str, float]]


class Style(NamedTuple):
  color: str
  linestyle: str
  marker: str


# Solid lines for the first four methods (the deep ones), then dashed, dotted, dash-dotted.
PALETTE = (Style('C0', '-', 'o'), Style('C1', '-', 's'), Style('C2', '-', '^'),
           Style('C3', '-', 'D'), Style('C4', '--', 'v'), Style('C5', ':', 'x'),
           Style('C7', ':', '+'), Style('C6', '-.', '*'), Style('C8', '-.', '<'),
           Style('C9', '-.', '>'))


def method_styles(methods) -> dict[str, Style]:
  """{method: Style}: the i-th method of the experiment's list gets PALETTE[i]."""
  methods = list(methods)
  if len(methods) > len(PALETTE):
    raise ValueError(f'{len(methods)} methods; the palette has {len(PALETTE)} styles')
  return dict(zip(methods, PALETTE))


@dataclasses.dataclass(frozen=True)
class Report:
  """What an experiment adds to its results to make the page.

  labels: method → legend label, in the order of the tables, legends and styles.
  claims: [{'claim', 'held', 'evidence': [lines]}]. topks: data → mAP cutoff (None: all).
  settings: (header, rows) of the settings table. notes: paragraphs after it.
  curve_datasets, curve_methods, curve_bits: what the loss-curve figure shows.
  pr_bits: the code length of the precision-recall figure.
  """
  title: str
  generator: str
  labels: dict[str, str]
  claims: list[dict[str, Any]]
  topks: dict[str, int | None]
  settings: tuple[list[str], list[list[str]]]
  notes: list[str]
  curve_datasets: tuple[str, ...]
  curve_methods: tuple[str, ...]
  curve_bits: int
  pr_bits: int
  curve_caption: str = ''


def upgrade_cell(cell: dict[str, Any]) -> dict[str, Any]:
  """A cell of a results.json written before the metric keys took the `map@100` form
  ('precision_at_radius_2'), in today's keys."""
  return {('precision@radius2' if k == 'precision_at_radius_2' else k): v
          for k, v in cell.items()}


def summarize(cells: list[dict[str, Any]]) -> Summary:
  """(data, method, bits) → mean/std over seeds of map, and the seed means of the tie
  interval ends ('worst', 'best') and of P@r≤2 ('p_r2') where the cells have them."""
  groups: dict[tuple[str, str, int], list] = {}
  for c in map(upgrade_cell, cells):
    groups.setdefault((c['data'], c['method'], c['bits']), []).append(c)
  out = {}
  for key, rows in groups.items():
    maps = np.array([r['map'] for r in rows])
    entry = {'map_mean': float(maps.mean()), 'map_std': float(maps.std()), 'n': len(rows)}
    if 'map_interval' in rows[0]:
      entry['worst'] = float(np.mean([r['map_interval'][0] for r in rows]))
      entry['best'] = float(np.mean([r['map_interval'][1] for r in rows]))
      entry['p_r2'] = float(np.mean([r['precision@radius2'] for r in rows]))
    out[key] = entry
  return out


def bits_of(summary: Summary, data: str) -> list[int]:
  return sorted({b for d, _, b in summary if d == data})


def _present(summary: Summary, data: str, labels) -> list[str]:
  return [m for m in labels if any(d == data and k == m for d, k, _ in summary)]


def _panels(rows: int, cols: int, width: float):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt.subplots(rows, cols, figsize=(width * cols, 4 * rows), squeeze=False)


def map_vs_bits_figure(summary: Summary, datasets, labels, styles):
  """mAP (mean ± std over seeds) against code length, one panel per data set."""
  fig, axes = _panels(1, len(datasets), 5)
  for ax, data in zip(axes[0], datasets):
    for method in _present(summary, data, labels):
      bits = [b for b in bits_of(summary, data) if (data, method, b) in summary]
      mean = [summary[(data, method, b)]['map_mean'] for b in bits]
      std = [summary[(data, method, b)]['map_std'] for b in bits]
      style = styles[method]
      bars = ax.errorbar(bits, mean, yerr=std, capsize=3, label=labels[method],
                         color=style.color, linestyle=style.linestyle, marker=style.marker)
      bars.lines[0].set_gid(method)  # the mean line (not its caps): what tests look up
    ax.set(title=data, xlabel='bits', ylabel='mAP (ties by index)', ylim=(0, 1.02))
    ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=7)
  fig.tight_layout()
  return fig


def pr_figure(cells, datasets, bits: int, labels, styles):
  """Precision against recall within Hamming radius 0..bits (seed means), one panel per set."""
  fig, axes = _panels(1, len(datasets), 5)
  for ax, data in zip(axes[0], datasets):
    rows = [c for c in cells if c['data'] == data and c['bits'] == bits and 'pr_recall' in c]
    for method in [m for m in labels if any(r['method'] == m for r in rows)]:
      mine = [r for r in rows if r['method'] == method]
      style = styles[method]
      ax.plot(np.mean([r['pr_recall'] for r in mine], axis=0),
              np.mean([r['pr_precision'] for r in mine], axis=0), label=labels[method],
              gid=method, color=style.color, linestyle=style.linestyle, marker='.')
    ax.set(title=f'{data}, {bits} bits (Hamming radius 0..{bits})', xlabel='recall',
           ylabel='precision', xlim=(0, 1), ylim=(0, 1.02))
    ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=7)
  fig.tight_layout()
  return fig


def loss_curves_figure(curves, datasets, methods, bits: int, labels, styles):
  """Held-out pairwise NLL over training: tanh(βz) codes (top row) and sign(z) codes (bottom
  row), one column per data set."""
  fig, axes = _panels(2, len(datasets), 6)
  for col, data in enumerate(datasets):
    for row, (key, codes) in enumerate((('loss_tanh', 'tanh(βz)'), ('loss_sign', 'sign(z)'))):
      ax = axes[row][col]
      for method in [m for m in methods if m in curves.get(data, {})]:
        rows = curves[data][method]
        style = styles[method]
        ax.plot([r['step'] for r in rows], [r[key] for r in rows], label=labels[method],
                gid=method, color=style.color, linestyle=style.linestyle)
      ax.set(title=f'{data}, {bits} bits: held-out pairwise NLL, {codes} codes',
             xlabel='step', ylabel='nats per pair (unweighted)')
      ax.grid(alpha=0.3)
      ax.legend(fontsize=7)
  fig.tight_layout()
  return fig


def save_figure(fig, path: str) -> None:
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig.savefig(path, dpi=110)
  plt.close(fig)


def table(header: list[str], rows: list[list[str]]) -> list[str]:
  """Markdown table lines."""
  return (['| ' + ' | '.join(header) + ' |', '| --- |' + ' --- |' * (len(header) - 1)]
          + ['| ' + ' | '.join(row) + ' |' for row in rows])


def _fmt(entry: dict[str, float] | None, key: str = 'map') -> str:
  if entry is None:
    return '–'
  if key == 'map':
    if entry['n'] == 1:
      return f'{entry["map_mean"]:.3f}'
    return f'{entry["map_mean"]:.3f} ± {entry["map_std"]:.3f} (n={entry["n"]})'
  if key == 'interval':
    return f'[{entry["worst"]:.3f}, {entry["best"]:.3f}]' if 'worst' in entry else '–'
  return f'{entry["p_r2"]:.3f}' if 'p_r2' in entry else '–'


def map_tables(summary: Summary, data: str, topk: int | None, labels) -> list[str]:
  """The mAP table of one data set, then its tie-interval / P@r≤2 table."""
  bits, methods = bits_of(summary, data), _present(summary, data, labels)
  cell = lambda m, b, key='map': _fmt(summary.get((data, m, b)), key)
  lines = [f'### {data} (mAP@{topk or "all"})', '']
  lines += table(['method'] + [f'{b} bits' for b in bits],
                 [[labels[m]] + [cell(m, b) for b in bits] for m in methods])
  lines += ['', 'Tie interval [worst, best] over the orders of tied items (seed mean) and '
            'precision within Hamming radius 2 (empty ball = 0):', '']
  hamming = [m for m in methods if any('worst' in summary.get((data, m, b), {}) for b in bits)]
  lines += table(['method'] + [f'{b} bits: interval / P@r≤2' for b in bits],
                 [[labels[m]] + [f'{cell(m, b, "interval")} / {cell(m, b, "p")}' for b in bits]
                  for m in hamming])
  return lines + ['']


def _sessions_text(results) -> str:
  sessions = results.get('sessions') or []
  if len(sessions) < 2:
    return ''
  parts = [f'{r["date"]}: {r["wall_seconds"] / 60:.1f} min, {r["cells"]} cells, '
           f'{r["workers"]} worker{"s" if r["workers"] > 1 else ""}' for r in sessions]
  return f', in {len(sessions)} resumed runs ({"; ".join(parts)})'


def page_head(results, title: str, generator: str) -> list[str]:
  """The title, the command that generated the page, its date, wall time and versions."""
  v = results.get('versions', {})
  versions = ', '.join(f'{k} {val}' for k, val in v.items() if k not in ('devices', 'cpu_count'))
  return [f'# {title}', '',
          f'Generated by `{generator}`; do not edit by hand. Command:', '',
          '```bash', results.get('command', ''), '```', '',
          f'Date: {results.get("date")}. Wall time of the grid: '
          f'{results.get("wall_seconds", 0) / 60:.1f} min on {v.get("devices")} '
          f'({v.get("cpu_count")} CPU cores){_sessions_text(results)}. '
          f'Plan: `{results.get("plan")}`. Versions: {versions}.', '']


def claims_section(claims) -> list[str]:
  """The "## The claims" section: each claim, whether it held, and its evidence lines."""
  lines = ['## The claims', '']
  for c in claims:
    verdict = ('not tested (cells missing)' if not c['evidence'] else
               'held' if c['held'] else 'did not hold')
    lines.append(f'- **{c["claim"]}: {verdict}.**')
    lines += [f'  - {e}' for e in c['evidence']]
  return lines + ['']


def write(results: dict[str, Any], report: Report, out_dir: str, report_path: str) -> None:
  """map_vs_bits.png, pr_<bits>bits.png and (with curves) quantization_loss.png in
  `out_dir`, and the Markdown page at `report_path`."""
  summary = summarize(results['cells'])
  datasets = [s['name'] for s in results['settings'] if any(k[0] == s['name'] for k in summary)]
  styles = method_styles(report.labels)
  os.makedirs(out_dir, exist_ok=True)
  rel = os.path.relpath(out_dir, os.path.dirname(os.path.abspath(report_path)))
  pr_name = f'pr_{report.pr_bits}bits.png'
  save_figure(map_vs_bits_figure(summary, datasets, report.labels, styles),
              os.path.join(out_dir, 'map_vs_bits.png'))
  save_figure(pr_figure(results['cells'], datasets, report.pr_bits, report.labels, styles),
              os.path.join(out_dir, pr_name))
  curve_sets = [d for d in report.curve_datasets if d in results['curves']]
  if curve_sets:
    save_figure(loss_curves_figure(results['curves'], curve_sets, report.curve_methods,
                                   report.curve_bits, report.labels, styles),
                os.path.join(out_dir, 'quantization_loss.png'))
  lines = page_head(results, report.title, report.generator) + claims_section(report.claims)
  lines += ['## mAP@topk (mean ± std over seeds; ties by database index)', '']
  for data in datasets:
    lines += map_tables(summary, data, report.topks.get(data), report.labels)
  lines += ['## Figures', '', f'![mAP vs bits]({rel}/map_vs_bits.png)', '',
            f'![precision-recall at {report.pr_bits} bits]({rel}/{pr_name})', '']
  if curve_sets:
    lines += [f'![quantization loss]({rel}/quantization_loss.png)', '', report.curve_caption, '']
  lines += ['## Settings', ''] + table(*report.settings) + ['']
  for note in report.notes:
    lines += [note, '']
  with open(report_path, 'w') as f:
    f.write('\n'.join(lines[:-1]) + '\n')
