"""HashNet's three claims, tested on the results of `hashnet_ablation`, and the parts of its
page (docs/RESULTS.md) that are particular to it: the methods' labels, the settings table and
the notes. `report.write` draws the rest.
"""

from __future__ import annotations

from typing import Any

from hashjax.experiments import hashing_cell, report

# HashNet's own runs, ranked by ⟨tanh(β_T z_q), tanh(β_T z_i)⟩ (no sign).
CONTINUOUS = 'hashnet_continuous'
LABELS = {  # the order of tables, legends and figure styles
    'hashnet': 'HashNet', 'hashnet_no_weighting': 'HashNet w/o weighting',
    'hashnet_no_continuation': 'HashNet w/o continuation (β=1)', 'dhn': 'DHN',
    CONTINUOUS: 'HashNet, continuous codes (no sign)', 'lsh': 'LSH', 'itq': 'ITQ',
}
MNIST_SETS = ('mnist', 'mnist_pairs100')  # ~10% and ~1% of pairs similar
LOSS_CURVE_BITS = 48  # the code length of claims 2 and 3 and of the loss curves


def _mean(summary, key):
  entry = summary.get(key)
  return None if entry is None else entry['map_mean']


def _claim_beats_baselines(summary) -> dict[str, Any]:
  lines, held = [], True
  for data in [d for d in MNIST_SETS if any(k[0] == d for k in summary)]:
    for bits in report.bits_of(summary, data):
      ours = _mean(summary, (data, 'hashnet', bits))
      others = {m: _mean(summary, (data, m, bits)) for m in ('dhn', 'lsh', 'itq')}
      others = {m: v for m, v in others.items() if v is not None}
      if ours is None or not others:
        continue
      best = max(others, key=others.get)
      held &= ours > others[best]
      lines.append(f'{data} {bits} bits: HashNet {ours:.3f} vs best other ({LABELS[best]}) '
                   f'{others[best]:.3f} → {"yes" if ours > others[best] else "NO"}')
  return {'claim': '1. HashNet beats DHN, ITQ and LSH at every code length',
          'held': held and bool(lines), 'evidence': lines}


def _claim_weighting(summary) -> dict[str, Any]:
  lines, drops = [], {}
  for data in MNIST_SETS:
    ours = _mean(summary, (data, 'hashnet', LOSS_CURVE_BITS))
    plain = _mean(summary, (data, 'hashnet_no_weighting', LOSS_CURVE_BITS))
    if ours is None or plain is None:
      continue
    drops[data] = ours - plain
    lines.append(f'{data} {LOSS_CURVE_BITS} bits: HashNet {ours:.3f}, without weighting '
                 f'{plain:.3f}: drop {ours - plain:+.3f} ({(ours - plain) / ours:.0%} of HashNet)')
  return {'claim': '2. Weighting matters most when similar pairs are rare (drop from removing '
                   'it larger on the 100-class set, ~1% similar, than on MNIST, ~10%)',
          'held': len(drops) == 2 and drops['mnist_pairs100'] > drops['mnist'],
          'evidence': lines}


def _claim_continuation(curves) -> dict[str, Any]:
  lines, gaps = [], {}
  for method in ('hashnet', 'hashnet_no_continuation', 'dhn'):
    rows = curves.get('mnist', {}).get(method)
    if not rows:
      continue
    last = rows[-1]
    gaps[method] = last['loss_sign'] - last['loss_tanh']
    lines.append(f'{LABELS[method]} at step {last["step"]} (β = {last["beta"]:.2f}): '
                 f'tanh(βz) {last["loss_tanh"]:.4f}, sign(z) {last["loss_sign"]:.4f} nats/pair, '
                 f'gap {gaps[method]:+.4f}')
  others = {m: g for m, g in gaps.items() if m != 'hashnet'}
  if 'hashnet' in gaps and others and gaps['hashnet'] > 0:
    lines.append("gap relative to HashNet's: " + ', '.join(
        f'{LABELS[m]} ×{g / gaps["hashnet"]:.1f}' for m, g in others.items()))
  held = 'hashnet' in gaps and bool(others) and all(
      abs(gaps['hashnet']) < 0.5 * g for g in others.values())
  return {'claim': '3. Continuation: the sign(z) loss stays close to the tanh(βz) loss for '
                   "HashNet (gap < half of the others') but jumps for DHN and without "
                   'continuation (MNIST, 48 bits, held-out pairs, final step)',
          'held': held, 'evidence': lines}


def check_claims(summary: report.Summary, curves) -> list[dict[str, Any]]:
  """The three claims, each {'claim', 'held', 'evidence'} from the summarised grid."""
  return [_claim_beats_baselines(summary), _claim_weighting(summary),
          _claim_continuation(curves)]


def _settings_row(record: dict[str, Any]) -> list[str]:
  cell, split, beta = record['cell'], record['cell']['split'], record['cell']['beta']
  q = (f'{split["query_per_class"]}/class' if split['query_per_class']
       else str(split['num_query']))
  t = (f'{split["train_per_class"]}/class' if split['train_per_class']
       else str(split['num_train']))
  steps, every = cell['num_steps'], beta['step_size']
  beta_last = (beta['beta0'] + beta['gamma'] * ((steps - 1) // every * every)) ** beta['power']
  extra = (f' ({", ".join(record["extra_seed_methods"])})' if record['extra_seeds'] else '')
  return [record['name'], f'`{record["config"]}` + `{cell["dataset"]}`',
          f'{q} queries, rest database, {t} training from it, mAP@{cell["map_topk"] or "all"}',
          str(steps), str(cell['batch_size']), f'{cell["learning_rate"]:g}',
          f'β=(1+{beta["gamma"]:.3g}·t)^{beta["power"]:g} every {every} steps '
          f'(β_T≈{beta_last:.1f})', f'{record["similar_fraction"]:.2%}',
          f'{list(record["seeds"])} / {list(record["extra_seeds"])}{extra}',
          str(list(record['bits']))]


NOTES = [
    'Common to every deep cell: `small_cnn` backbone at native size (8×8, 28×28, 56×28), '
    'Adam (weight decay 1e-4), hash layer lr ×10, lr ×0.5 at half the steps, α = 10/bits, '
    'batch pairs = all ordered pairs of the batch; each cell is its data set\'s config file '
    'with the overrides in `hashnet_ablation.cell_config`. Ablations: *w/o weighting* = '
    "`loss.weighting='none'`; *w/o continuation* = `beta.schedule='constant'` (β = 1), sign "
    "at test; *continuous codes* = HashNet's own runs ranked by −⟨tanh(β_T z_q), "
    "tanh(β_T z_i)⟩ (no sign; ties by index, so no tie interval); DHN = `loss.name='dhn'` "
    '(unweighted pairwise NLL + 0.1 × log cosh(|u|−1), u = tanh(z), β = 1). LSH: Gaussian '
    'projections of the centred pixels (in [−1, 1]); ITQ: PCA to K dims + 50 rotation '
    'iterations; both fitted on the training images, one draw per seed.',
    'The 100-class set (the `pairs:npz:PATH` source, `hashjax.data.arrays.pair_source`): item n '
    'puts MNIST test image a_n left of image b_n (two seeded permutations; 10,000 items, '
    '56×28 px), label 10·y(a_n) + y(b_n). Evaluation is mAP@1000 over Hamming ranking with '
    'ties by database index (`hashjax.retrieval.metrics`); queries with no relevant item in '
    'the first 1,000 ranks count 0.',
    'Plans: the default `--plan=full` runs every method × {16, 32, 48, 64} bits × 3 seeds on '
    'all three sets; `--plan=cpu` runs seed 0 everywhere plus seeds 1 and 2 of HashNet at 48 '
    'bits on MNIST, and only 48 bits on the 100-class set; `--quick` is a smoke test. '
    'Every (data, method, bits, seed) unit is saved in `--workdir` as it finishes; '
    '`--resume` keeps the saved units; `--workers=2` runs two single-threaded processes, one '
    'per core.',
]
SETTINGS_HEADER = ['data', 'config + dataset', 'protocol', 'steps', 'batch', 'lr',
                   'β schedule', 'similar pairs (train)', 'seeds / extra seeds @48', 'bits']


def make_report(results: dict[str, Any]) -> report.Report:
  """The page's experiment-specific parts: claims, settings table, notes."""
  summary = report.summarize(results['cells'])
  records = [r for r in results['settings'] if any(k[0] == r['name'] for k in summary)]
  return report.Report(
      title='HashNet claims, reproduced on CPU-sized data',
      generator='hashjax/experiments/hashnet_ablation.py', labels=LABELS,
      claims=check_claims(summary, results['curves']),
      topks={r['name']: r['cell']['map_topk'] for r in records},
      settings=(SETTINGS_HEADER, [_settings_row(r) for r in records]), notes=NOTES,
      curve_datasets=MNIST_SETS, curve_methods=('hashnet', 'hashnet_no_continuation', 'dhn'),
      curve_bits=LOSS_CURVE_BITS, pr_bits=LOSS_CURVE_BITS,
      curve_caption='Held-out pairwise NLL (unweighted, α = 10/bits, all ordered pairs of a '
                    f'fixed batch of {hashing_cell.HELDOUT} database images outside the '
                    'training set) with the continuous codes tanh(βz) (top) and the binary '
                    'codes sign(z) (bottom).')
