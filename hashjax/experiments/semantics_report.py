"""The page of the retrieval-by-content experiment (`semantics`): its tables, what held, and
its pictures of queries with their top-10 results.

results.json: {'cells': [{'data', 'method', 'bits', 'seed', 'map', 'map_interval' (class mAP
at the config's map_topk), and eval_extra's entries under their eval.json keys: copy_* and
neighbour_map@T* (mnist) or ndcg@T* / acg@T / wap@T* (mosaics), T the data set's cutoff}],
'pictures': {'<data>_<method>': {'queries', 'items', 'distances'}}, 'settings', 'command',
'date', 'versions', 'plan', 'wall_seconds', 'sessions'}.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from hashjax.experiments import report
from hashjax.hashing.evaluation import upgrade_row
from hashjax.retrieval.metrics import metric_key

LABELS = {  # the order of the tables and pictures
    'chance': 'chance (all codes equal: read the expected-ties columns)',
    'views': 'HashNet, label-free (views)', 'views_no_weighting': 'views w/o weighting',
    'lsh': 'LSH', 'itq': 'ITQ', 'supervised': 'HashNet, supervised (classes)',
    'hard': 'HashNet, hard similarity', 'soft': 'HashNet, soft similarity (Jaccard)',
}
# Frames of the pictures: the copy's original, same class, other class (mnist); mosaics
# shade by the number of digits shared with the query, 0..4.
FRAME = {'original': '#1a9850', 'same': '#4575b4', 'other': '#d73027'}
SHARED = ('#d73027', '#fc8d59', '#fee08b', '#91bfdb', '#4575b4')


def draw_examples(path: str, data: str, query_images, source, query_items, items_RxT,
                  distances_RxT) -> None:
  """A PNG of R rows: a query image (a copy for mnist), then its top T items with their
  Hamming distance d and a frame: mnist green = the copy's original, blue = same class, red =
  other; mosaics coloured and marked by s, the number of digits shared with the query.

  Args:
    query_images: uint8 [R, H, W, C]. source: the images and labels of the item ids.
    query_items: ids [R] of the queries (the originals of the mnist copies).
    items_RxT, distances_RxT: ids and Hamming distances of the results, ranked.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  rows, cols = items_RxT.shape[0], items_RxT.shape[1] + 1
  fig, axes = plt.subplots(rows, cols, figsize=(1.1 * cols, 1.25 * rows), squeeze=False)
  labels = source.labels
  for r in range(rows):
    cells = [(np.asarray(query_images[r]), 'copy' if data == 'mnist' else 'query', 'black')]
    for item, d in zip(items_RxT[r], distances_RxT[r]):
      image = np.asarray(source.images(np.array([item])))[0]
      if data == 'mnist':
        kind = ('original' if item == query_items[r] else
                'same' if labels[item] == labels[query_items[r]] else 'other')
        cells.append((image, f'd={d}', FRAME[kind]))
      else:
        shared = int(labels[item] @ labels[query_items[r]])
        cells.append((image, f'd={d} s={shared}', SHARED[min(shared, 4)]))
    for ax, (image, title, colour) in zip(axes[r], cells):
      ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap='gray')
      ax.set_title(title, fontsize=7)
      ax.set_xticks([])
      ax.set_yticks([])
      for spine in ax.spines.values():
        spine.set_color(colour)
        spine.set_linewidth(2.5)
  fig.tight_layout(pad=0.3)
  report.save_figure(fig, path)


def _groups(cells) -> dict[tuple[str, str, int], list[dict[str, Any]]]:
  out: dict[tuple[str, str, int], list] = {}
  for c in cells:
    out.setdefault((c['data'], c['method'], c['bits']), []).append(c)
  return out


def _stat(rows, key: str, index: int | None = None) -> tuple[float, float] | None:
  values = [r[key] if index is None else r[key][index] for r in rows if key in r]
  return (float(np.mean(values)), float(np.std(values))) if values else None


def _fmt(stat) -> str:
  return '—' if stat is None else f'{stat[0]:.4f} ± {stat[1]:.4f}'


def _methods(groups, data: str) -> list[tuple[str, int]]:
  present = {(m, b) for d, m, b in groups if d == data}
  return [(m, b) for b in sorted({b for _, b in present}) for m in LABELS if (m, b) in present]


COPY_MAP = metric_key('copy_map', None)


def cutoffs(results: dict[str, Any]) -> dict[str, tuple[int | None, int | None]]:
  """{data set: (its eval_extra cutoff, its class mAP cutoff)} from results.json's settings."""
  out = {}
  for s in results.get('settings', []):
    topk = s['cell']['map_topk']
    out[s['name']] = (topk if s.get('extra_topk') is None else s['extra_topk'], topk)
  return out


def upgrade(results: dict[str, Any]) -> dict[str, Any]:
  """results.json with every cell's eval_extra entries in today's keys (`upgrade_row`: cells
  written before the metric keys took the `map@100` form)."""
  topks = cutoffs(results)
  cells = []
  for cell in results['cells']:
    extra, topk = dict(cell), topks.get(cell['data'], (None, None))[0]
    kept = {k: extra.pop(k) for k in ('map', 'map_interval') if k in extra}
    cells.append({**upgrade_row(extra, topk), **kept})
  return {**results, 'cells': cells}


def mnist_columns(extra_topk, topk) -> tuple[tuple[str, str], ...]:
  return ((COPY_MAP, 'copy mAP'), (metric_key('copy_map', None, 'expected'),
                                   'copy mAP, expected ties'),
          (metric_key('copy_recall', 1), 'recall@1'), (metric_key('copy_recall', 10), 'recall@10'),
          (metric_key('neighbour_map', extra_topk), f'1 %-NN {_at("mAP", extra_topk)}'),
          ('map', f'class {_at("mAP", topk)}'))


def mosaic_columns(extra_topk, topk) -> tuple[tuple[str, str], ...]:
  ndcg = metric_key('ndcg', extra_topk)
  return ((ndcg, _at('NDCG', extra_topk)), (f'{ndcg}_expected',
                                            f'{_at("NDCG", extra_topk)}, expected ties'),
          (metric_key('acg', extra_topk), _at('ACG', extra_topk)),
          (metric_key('wap', extra_topk), _at('WAP', extra_topk)),
          ('map', f'class {_at("mAP", topk)}'))


def _at(name: str, topk) -> str:
  return metric_key(name, topk)


def result_table(groups, data: str, columns) -> list[str]:
  """Rows method × bits: mean ± std over seeds of each column, and the seed count."""
  header = ['method', 'bits', 'seeds'] + [name for _, name in columns]
  rows = [[LABELS[m], str(b), str(len(groups[(data, m, b)]))] +
          [_fmt(_stat(groups[(data, m, b)], key)) for key, _ in columns]
          for m, b in _methods(groups, data)]
  return report.table(header, rows)


def _seed_diffs(groups, data: str, ours: str, other: str, bits: int, key: str) -> list[float]:
  """ours − other per seed that both have."""
  a = {r['seed']: r[key] for r in groups.get((data, ours, bits), [])}
  b = {r['seed']: r[key] for r in groups.get((data, other, bits), [])}
  return [a[s] - b[s] for s in sorted(a) if s in b]


def _claim_copies(groups) -> dict[str, Any]:
  lines, held = [], True
  for bits in sorted({b for d, m, b in groups if d == 'mnist' and m == 'views'}):
    ours = _stat(groups[('mnist', 'views', bits)], COPY_MAP)
    others = {m: _stat(groups.get(('mnist', m, bits), []), COPY_MAP) for m in ('itq', 'lsh')}
    others = {m: v for m, v in others.items() if v is not None}
    if not others:
      continue
    best = max(others, key=lambda m: others[m][0])
    held &= ours[0] > others[best][0]
    lines.append(f'{bits} bits: label-free HashNet {_fmt(ours)} vs {LABELS[best]} '
                 f'{_fmt(others[best])} (' + ', '.join(f'{LABELS[m]} {_fmt(v)}' for m, v in
                                                      others.items()) +
                 f') → {"yes" if ours[0] > others[best][0] else "NO"}')
  return {'claim': 'Label-free HashNet beats ITQ and LSH on copy-detection mAP at every code '
                   'length (mean over seeds)', 'held': held and bool(lines), 'evidence': lines}


def _claim_pair(groups, data: str, ours: str, other: str, key: str, claim: str
                ) -> dict[str, Any]:
  lines, held = [], True
  for bits in sorted({b for d, m, b in groups if d == data and m == ours}):
    diffs = _seed_diffs(groups, data, ours, other, bits, key)
    if not diffs:
      continue
    mean = float(np.mean(diffs))
    held &= mean > 0
    lines.append(f'{bits} bits: {LABELS[ours]} {_fmt(_stat(groups[(data, ours, bits)], key))}'
                 f', {LABELS[other]} {_fmt(_stat(groups[(data, other, bits)], key))}; '
                 f'difference per seed {", ".join(f"{d:+.4f}" for d in diffs)} (mean '
                 f'{mean:+.4f}) → {"yes" if mean > 0 else "NO"}')
  return {'claim': claim, 'held': held and bool(lines), 'evidence': lines}


def check_claims(cells, mosaic_topk: int | None = 100) -> list[dict[str, Any]]:
  """The experiment's three questions, each {'claim', 'held', 'evidence'} (mosaic_topk: the
  cutoff of the mosaics' NDCG)."""
  groups = _groups(cells)
  return [
      _claim_copies(groups),
      _claim_pair(groups, 'mnist', 'views', 'views_no_weighting', COPY_MAP,
                  "HashNet's weighting matters without labels: copy-detection mAP is higher "
                  'with it than without (mean of the per-seed differences)'),
      _claim_pair(groups, 'mosaics', 'soft', 'hard', metric_key('ndcg', mosaic_topk),
                  'On mosaics, soft similarity ranks by grade better than hard: '
                  f'{_at("NDCG", mosaic_topk)} higher (mean of the per-seed differences)'),
  ]


NOTES = [
    '**What each figure measures.** *Copy detection*: every query image is transformed with '
    'held-out transformations never used in training (`augment.copies`: a crop keeping '
    '30–100 % of the area, a rotation within ±20°, quantisation to 8 grey levels and a '
    'square occluding 40 % of the side) and searched among the 9,000 database images plus '
    'the 1,000 originals; its '
    'one relevant item is its original. mAP is then the mean of 1/rank, recall@k the share '
    'of originals in the first k. This measures what the image shows, not its class. '
    '*1 %-NN mAP@1000*: relevant = the query\'s 90 nearest database images in raw pixel '
    'space (Euclidean), the classic protocol for unsupervised hashing; it rewards codes that '
    'preserve pixel distances, which is what ITQ approximates and what a network trained on '
    'views is not asked to do. *Class mAP@1000*: relevant = same digit; for the label-free '
    'methods it shows how much class structure appears without labels; for supervised '
    'HashNet it is its training objective. *Mosaics*: NDCG@100 with gain 2^s − 1, s = the '
    'number of digits a database mosaic shares with the query (0–4), normalised by the ideal '
    'ranking of the whole database; ACG@100 is the mean s of the first 100; WAP@100 the '
    'weighted AP; class mAP@1000 counts a mosaic relevant when it shares any digit. '
    '*Chance* gives every item the same code, so all are tied: its expected-ties figures are '
    'those of a random ranking, the floor every method is read against.',
    '**Ties.** Every figure without a qualifier ranks tied Hamming distances by database '
    'index, as the mAP of every other page here does; "expected ties" is the exact '
    'expectation over the orders of tied items (closed form per distance bucket, '
    '`hashjax.retrieval.metrics`). With 32-bit codes ties are common, and the two can differ.',
    '**Training.** Every deep cell is configs/hashnet_mnist.py (small CNN, Adam 1e-3, batch '
    '64, β from 1 to ≈ 5 over the run) with the ablation grid\'s settings '
    '(`hashnet_ablation.COMMON` and `schedule_overrides`), the data set\'s overrides and the '
    'method\'s: *views* = `loss.similarity=views` (each batch image becomes two random views '
    'with the default `augment.*` strengths: crop 0.5, rotation ±10°, brightness and contrast '
    '0.2, noise 0.05, cutout 0.25, no flip; the two views of one image are the only similar '
    'pair, 1 in 2B − 1 = 127 of the pairs); *w/o weighting* adds `loss.weighting=none`; '
    '*supervised* and *hard* = the class labels (mosaics: similar when sharing a digit); '
    '*soft* = `loss.similarity=soft` (target the Jaccard index of the digit sets, the '
    'weighting balancing the similar and dissimilar masses). LSH and ITQ are fitted on the '
    'training images\' raw pixels, one draw per seed. The copies of seed s are drawn with '
    'key s, the same for every method.',
]


def _settings_table(results) -> list[str]:
  rows = []
  for s in results['settings']:
    cell, split = s['cell'], s['cell']['split']
    q = (f'{split["query_per_class"]}/class' if split['query_per_class']
         else str(split['num_query']))
    rows.append([s['name'], f'`{cell["dataset"]}`', f'{q} queries, rest database',
                 str(cell['num_steps']), str(cell['batch_size']),
                 f'{s["similar"]["hard"]:.2%} / {s["similar"]["soft"]:.3f}',
                 str(list(s['seeds'])), str(list(s['bits']))])
  return report.table(['data', 'source', 'protocol', 'steps', 'batch',
                       'training pairs: share a label / mean Jaccard', 'seeds', 'bits'], rows)


def write(results: dict[str, Any], out_dir: str, report_path: str) -> None:
  """The Markdown page at `report_path`; the pictures are already in `out_dir`."""
  results = upgrade(results)
  topks = cutoffs(results)
  groups = _groups(results['cells'])
  rel = os.path.relpath(out_dir, os.path.dirname(os.path.abspath(report_path)))
  lines = report.page_head(results, 'Retrieval by content: label-free, supervised and graded '
                           'hashing', 'hashjax/experiments/semantics.py')
  lines += report.claims_section(check_claims(results['cells'],
                                              topks.get('mosaics', (100, None))[0]))
  lines += ['## MNIST: copies, pixel neighbours and classes', '',
            'Mean ± std over seeds; ties by database index unless the column says otherwise.',
            ''] + result_table(groups, 'mnist', mnist_columns(*topks.get('mnist', (None, None))))
  lines += ['']
  lines += ['## Mosaics: hard against soft similarity', '',
            'Mean ± std over seeds; NDCG@100 is the ranking by shared digits (0–4); class '
            'mAP@1000 counts any shared digit as relevant.', '']
  lines += result_table(groups, 'mosaics', mosaic_columns(*topks.get('mosaics', (100, None))))
  lines += ['']
  lines += ['## Queries and their top 10', '',
            'Seed 0, 64 bits; d = Hamming distance, ties by database index. MNIST rows are '
            'copies (held-out transformations of a query): green = its original, blue = the '
            'same digit, red = another digit. Mosaic rows are queries: s = digits shared with '
            'the query, from red (0) to blue (4).', '']
  for name, label in LABELS.items():
    for data in ('mnist', 'mosaics'):
      if f'{data}_{name}' in results.get('pictures', {}):
        lines += [f'**{data}, {label}**', '', f'![{data} {label}]({rel}/{data}_{name}.png)', '']
  lines += ['## Settings', ''] + _settings_table(results) + ['']
  for note in NOTES:
    lines += [note, '']
  with open(report_path, 'w') as f:
    f.write('\n'.join(lines[:-1]) + '\n')
