"""Tests for hashjax/experiments/hashnet_claims.py: the three claims from a summary, and the
page's settings rows."""

from hashjax.experiments import hashnet_claims as hc


def _entry(m):
  return {'map_mean': m, 'map_std': 0.0, 'n': 1}


def _curve(tanh, sign):
  return [{'step': 10, 'beta': 2.0, 'loss_tanh': tanh, 'loss_sign': sign}]


def test_claims_from_a_summary():
  summary = {('mnist', 'hashnet', 48): _entry(0.95), ('mnist', 'dhn', 48): _entry(0.90),
             ('mnist', 'itq', 48): _entry(0.6), ('mnist', 'hashnet_no_weighting', 48): _entry(0.9),
             ('mnist_pairs100', 'hashnet', 48): _entry(0.5),
             ('mnist_pairs100', 'dhn', 48): _entry(0.55),
             ('mnist_pairs100', 'hashnet_no_weighting', 48): _entry(0.1)}
  curves = {'mnist': {'hashnet': _curve(0.30, 0.31),
                      'hashnet_no_continuation': _curve(0.3, 0.5), 'dhn': _curve(0.3, 0.45)}}
  one, two, three = hc.check_claims(summary, curves)
  assert not one['held'] and 'NO' in one['evidence'][-1]  # DHN wins on the pairs set
  assert one['evidence'][0] == 'mnist 48 bits: HashNet 0.950 vs best other (DHN) 0.900 → yes'
  assert two['held'] and three['held']
  assert three['evidence'][-1] == ("gap relative to HashNet's: HashNet w/o continuation "
                                   '(β=1) ×20.0, DHN ×15.0')
  # Claim 3 fails when the gaps are alike, claim 2 when the pairs set loses less.
  curves['mnist']['dhn'] = _curve(0.3, 0.315)
  summary[('mnist_pairs100', 'hashnet_no_weighting', 48)] = _entry(0.49)
  _, two, three = hc.check_claims(summary, curves)
  assert not two['held'] and not three['held']


def test_claims_without_cells_are_not_held():
  claims = hc.check_claims({}, {})
  assert [c['held'] for c in claims] == [False, False, False]
  assert all(c['evidence'] == [] for c in claims)


def test_page_lists_settings_from_the_saved_config():
  cell = {'dataset': 'pairs:npz:m.npz', 'num_steps': 200, 'batch_size': 64,
          'learning_rate': 1e-3, 'map_topk': 1000,
          'beta': {'beta0': 1.0, 'gamma': 0.12, 'power': 0.5, 'step_size': 20},
          'split': {'query_per_class': None, 'num_query': 1000, 'train_per_class': None,
                    'num_train': 5000}}
  record = {'name': 'mnist_pairs100', 'config': 'hashnet_mnist', 'cell': cell,
            'similar_fraction': 0.0101, 'seeds': [0], 'extra_seeds': [1, 2],
            'extra_seed_methods': ['hashnet'], 'bits': [48]}
  results = {'cells': [{'data': 'mnist_pairs100', 'method': 'hashnet', 'bits': 48, 'seed': 0,
                        'map': 0.2}], 'curves': {}, 'settings': [record]}
  page = hc.make_report(results)
  (row,) = page.settings[1]
  # β at the last step (199): (1 + 0.12 · 180)^0.5 = 4.75.
  assert row == ['mnist_pairs100', '`hashnet_mnist` + `pairs:npz:m.npz`',
                 '1000 queries, rest database, 5000 training from it, mAP@1000', '200', '64',
                 '0.001', 'β=(1+0.12·t)^0.5 every 20 steps (β_T≈4.8)', '1.01%',
                 '[0] / [1, 2] (hashnet)', '[48]']
  assert page.topks == {'mnist_pairs100': 1000} and list(page.labels)[0] == 'hashnet'
