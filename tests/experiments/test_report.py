"""Tests for hashjax/experiments/report.py: one colour and line style per method in every
figure (read back from the matplotlib artists), the seed summary, and the page."""

import matplotlib
import numpy as np
import pytest

from hashjax.experiments import report

matplotlib.use('Agg')

LABELS = {'deep': 'Deep', 'ablated': 'Ablated', 'other': 'Other', 'shallow': 'Shallow'}


def _cell(data, method, bits, seed, value, hamming=True):
  out = {'data': data, 'method': method, 'bits': bits, 'seed': seed, 'map': value}
  if hamming:
    out.update({'map_interval': [value - 0.1, value + 0.1], 'precision@radius2': value},
               pr_precision=[value] * (bits + 1), pr_recall=list(np.linspace(0, 1, bits + 1)))
  return out


def _results():
  """Two sets whose panels hold different methods in different orders: 'a' has every method,
  'b' lacks 'deep' and 'ablated' (so 'other' comes first there)."""
  cells = [_cell('a', m, b, s, 0.5 + 0.1 * i + 0.01 * s, hamming=m != 'other')
           for i, m in enumerate(LABELS) for b in (16, 48) for s in (0, 1)]
  cells += [_cell('b', m, 48, 0, 0.3, hamming=m != 'other') for m in ('shallow', 'other')]
  row = lambda t: [{'step': 0, 'beta': 1.0, 'loss_tanh': t, 'loss_sign': t + 1},
                   {'step': 10, 'beta': 2.0, 'loss_tanh': t / 2, 'loss_sign': t}]
  curves = {'a': {'ablated': row(1.0), 'deep': row(0.8), 'other': row(0.9)},
            'b': {'other': row(0.7), 'deep': row(0.6)}}
  return {'cells': cells, 'curves': curves, 'settings': [{'name': 'a'}, {'name': 'b'}]}


def _method_lines(fig):
  """(gid, colour as hex, line style) of every line of a method in the figure."""
  out = []
  for ax in fig.axes:
    for line in ax.get_lines():
      if line.get_gid() is not None:
        out.append((line.get_gid(), matplotlib.colors.to_hex(line.get_color()),
                    line.get_linestyle()))
  return out


def test_each_method_has_one_colour_and_line_style_in_every_figure():
  results = _results()
  summary = report.summarize(results['cells'])
  styles = report.method_styles(LABELS)
  figures = [
      report.map_vs_bits_figure(summary, ['a', 'b'], LABELS, styles),
      report.pr_figure(results['cells'], ['a', 'b'], 48, LABELS, styles),
      report.loss_curves_figure(results['curves'], ['a', 'b'], ('deep', 'ablated', 'other'),
                                48, LABELS, styles),
  ]
  drawn = [line for fig in figures for line in _method_lines(fig)]
  # map: 4 methods in a + 2 in b; PR: 3 with Hamming codes in a + 1 in b; curves: 2 rows × 5.
  assert len(drawn) == 6 + 4 + 10
  for gid, color, linestyle in drawn:
    style = styles[gid]
    assert (color, linestyle) == (matplotlib.colors.to_hex(style.color), style.linestyle), gid
  assert len({(c, s) for _, c, s in drawn}) == len({g for g, _, _ in drawn}) == 4
  # 'other' is the third method: C2 also where it is the first one drawn (the panels of 'b').
  assert {c for g, c, _ in drawn if g == 'other'} == {matplotlib.colors.to_hex('C2')}
  # Legends name the methods by their labels.
  legend = [t.get_text() for t in figures[0].axes[0].get_legend().get_texts()]
  assert legend == ['Deep', 'Ablated', 'Other', 'Shallow']


def test_method_styles_are_distinct_and_bounded():
  styles = report.method_styles([f'm{i}' for i in range(len(report.PALETTE))])
  assert len(set(styles.values())) == len(report.PALETTE)
  with pytest.raises(ValueError, match='11 methods; the palette has 10 styles'):
    report.method_styles([f'm{i}' for i in range(11)])


def test_summary_over_seeds():
  summary = report.summarize(_results()['cells'])
  entry = summary[('a', 'deep', 16)]
  assert entry['n'] == 2 and entry['map_mean'] == pytest.approx(0.505)
  assert entry['map_std'] == pytest.approx(0.005)
  assert (entry['worst'], entry['best'], entry['p_r2']) == pytest.approx((0.405, 0.605, 0.505))
  assert 'worst' not in summary[('a', 'other', 16)]  # no Hamming ranking, no tie interval
  assert report.bits_of(summary, 'a') == [16, 48] and report.bits_of(summary, 'b') == [48]
  # Cells written before the metric keys took the map@100 form summarise the same.
  old = [{('precision_at_radius_2' if k == 'precision@radius2' else k): v for k, v in c.items()}
         for c in _results()['cells']]
  assert report.summarize(old) == summary


def test_write_draws_the_figures_and_the_page(tmp_path):
  results = {**_results(), 'command': 'python -m x', 'date': 'today', 'wall_seconds': 120.0,
             'versions': {'jax': '0.10', 'devices': '1 × cpu', 'cpu_count': '2'}}
  page = report.Report(
      title='T', generator='x.py', labels=LABELS,
      claims=[{'claim': 'C1', 'held': True, 'evidence': ['e1']},
              {'claim': 'C2', 'held': False, 'evidence': []}],
      topks={'a': None, 'b': 10}, settings=(['data', 'steps'], [['a', '3']]), notes=['N1'],
      curve_datasets=('a', 'b'), curve_methods=('deep', 'other'), curve_bits=48, pr_bits=48,
      curve_caption='caption')
  report.write(results, page, str(tmp_path / 'out'), str(tmp_path / 'R.md'))
  text = (tmp_path / 'R.md').read_text()
  for line in ('# T', 'python -m x', '- **C1: held.**', '  - e1',
               '- **C2: not tested (cells missing).**', '### a (mAP@all)', '### b (mAP@10)',
               '| Deep | 0.505 ± 0.005 (n=2) | 0.505 ± 0.005 (n=2) |',
               '| Deep | [0.405, 0.605] / 0.505 | [0.405, 0.605] / 0.505 |',
               '| Other | 0.300 |', '![mAP vs bits](out/map_vs_bits.png)', 'caption',
               '| data | steps |', '| a | 3 |', 'N1', 'Wall time of the grid: 2.0 min'):
    assert line in text, line
  assert '| Other | [' not in text  # no tie interval for codes without a Hamming ranking
  for name in ('map_vs_bits.png', 'pr_48bits.png', 'quantization_loss.png'):
    assert (tmp_path / 'out' / name).stat().st_size > 1000
