"""Tests for hashjax/experiments/hashnet_ablation.py and the `list:` data source it documents
for the paper protocols (NUS-WIDE, MS-COCO). No test reads ../shared/data."""

import os

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from hashjax import data, losses, metrics
from hashjax.experiments import hashnet_ablation as ha


def test_pair_digits_source_labels_and_imbalance():
  base = data.load_source('digits')
  pairs = ha.pair_digits_source(base, num_items=3000, seed=0)
  assert pairs.images(np.arange(2)).shape == (2, 8, 16, 1)
  assert len(pairs) == 3000 and pairs.labels.min() >= 0 and pairs.labels.max() <= 99
  # Label 10·a + b: the left half is a base image of class a, the right one of class b.
  left = pairs.images(np.arange(1))[0, :, :8]
  matches = np.flatnonzero((base.images(np.arange(len(base))) == left).all(axis=(1, 2, 3)))
  assert pairs.labels[0] // 10 in base.labels[matches]
  np.testing.assert_array_equal(pairs.labels, ha.pair_digits_source(base, 3000, 0).labels)
  counts = np.bincount(pairs.labels, minlength=100)
  similar = (counts * (counts - 1)).sum() / (3000 * 2999)
  assert 0.008 < similar < 0.013  # ~1% of pairs, vs ~10% for the digits alone


def test_continuous_map_equals_hamming_map_on_binary_codes():
  rng = np.random.default_rng(0)
  db = np.where(rng.random((300, 16)) > 0.5, 1, -1)
  q = np.where(rng.random((40, 16)) > 0.5, 1, -1)
  q_labels, db_labels = rng.integers(0, 5, 40), rng.integers(0, 5, 300)
  # ±1 codes: −⟨b_q, b_i⟩ = 2·Hamming − K, so both rankings (ties by index) coincide.
  for topk in (50, None):
    assert ha.continuous_map(q, db, q_labels, db_labels, topk) == pytest.approx(
        metrics.mean_average_precision(q, db, q_labels, db_labels, topk=topk), abs=1e-7)


def test_heldout_losses_sign_and_large_beta():
  rng = np.random.default_rng(0)
  z = jnp.asarray(rng.standard_normal((16, 8)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 3, 16))
  relaxed, binary = ha.heldout_losses(z, labels, beta=1.0, alpha=0.5)
  expected = losses.hashnet_loss(jnp.where(z >= 0, 1.0, -1.0), labels, alpha=0.5,
                                 weighting='none')
  assert float(binary) == pytest.approx(float(expected), rel=1e-6)
  relaxed_big, _ = ha.heldout_losses(z, labels, beta=1e4, alpha=0.5)
  assert float(relaxed_big) == pytest.approx(float(binary), rel=1e-3)
  assert float(relaxed) != pytest.approx(float(binary), rel=1e-3)


def test_cell_config_applies_method_overrides():
  settings = ha.grid_settings('full', 'x.npz')[0]
  assert ha.cell_config(settings, 'hashnet', 16, 0).loss.weighting == 'balanced'
  assert ha.cell_config(settings, 'hashnet_no_weighting', 16, 0).loss.weighting == 'none'
  assert ha.cell_config(settings, 'hashnet_no_continuation', 16, 0).beta.schedule == 'constant'
  dhn = ha.cell_config(settings, 'dhn', 48, 1)
  assert (dhn.loss.name, dhn.beta.schedule, dhn.bits, dhn.seed) == ('dhn', 'constant', 48, 1)
  cpu = {s.name: s for s in ha.grid_settings('cpu', 'x.npz')}
  assert cpu['mnist'].cells() == [(0, 16), (0, 32), (0, 48), (0, 64), (1, 48), (2, 48)]
  with pytest.raises(ValueError, match='unknown plan'):
    ha.grid_settings('huge')


def test_claims_from_a_summary():
  def entry(m):
    return {'map_mean': m, 'map_std': 0.0, 'n': 1}
  summary = {('mnist', 'hashnet', 48): entry(0.95), ('mnist', 'dhn', 48): entry(0.90),
             ('mnist', 'itq', 48): entry(0.6), ('mnist', 'hashnet_no_weighting', 48): entry(0.9),
             ('mnist_pairs100', 'hashnet', 48): entry(0.5),
             ('mnist_pairs100', 'dhn', 48): entry(0.55),
             ('mnist_pairs100', 'hashnet_no_weighting', 48): entry(0.1)}
  row = lambda t, s: [{'step': 10, 'beta': 2.0, 'loss_tanh': t, 'loss_sign': s}]
  curves = {'mnist': {'hashnet': row(0.30, 0.31), 'hashnet_no_continuation': row(0.3, 0.5),
                      'dhn': row(0.3, 0.45)}}
  one, two, three = ha.check_claims(summary, curves)
  assert not one['held'] and 'NO' in one['evidence'][-1]  # DHN wins on the pairs set
  assert two['held'] and three['held']


def test_tiny_grid_writes_report(tmp_path):
  settings = ha.DataSettings('digits', 'digits', 5, None, 20, None, None, num_steps=4,
                             methods=('hashnet',), bits=(ha.LOSS_CURVE_BITS,), seeds=(0,),
                             batch_size=16, loss_every=2)
  grid = ha.run_grid([settings])
  methods = {c['method'] for c in grid['cells']}
  assert methods == {'hashnet', ha.CONTINUOUS, 'lsh', 'itq'}
  assert [r['step'] for r in grid['curves']['digits']['hashnet']] == [0, 2, 4]
  for c in grid['cells']:
    assert 0.0 <= c['map'] <= 1.0
  ha.write_report({**grid, 'command': 'cmd', 'wall_seconds': 1.0}, str(tmp_path / 'results'),
                  str(tmp_path / 'RESULTS.md'))
  text = (tmp_path / 'RESULTS.md').read_text()
  assert '## The claims' in text and '| HashNet |' in text
  for name in ('map_vs_bits.png', 'pr_48bits.png', 'quantization_loss.png'):
    assert (tmp_path / 'results' / name).stat().st_size > 1000


def test_grid_in_two_worker_processes_matches_one_and_resumes(tmp_path):
  settings = ha.DataSettings('digits', 'digits', 5, None, 20, None, None, num_steps=3,
                             methods=('hashnet', 'dhn'), bits=(16, ha.LOSS_CURVE_BITS),
                             seeds=(0,), batch_size=16, loss_every=2)
  one = ha.run_grid([settings])
  saved = []
  two = ha.run_grid([settings], save=lambda g: saved.append(len(g['cells'])), workers=2)
  key = lambda c: (c['method'], c['bits'], c['seed'])
  assert [key(c) for c in two['cells']] == [key(c) for c in one['cells']]  # grid order
  for a, b in zip(one['cells'], two['cells']):
    assert abs(a['map'] - b['map']) < 0.05, (key(a), a['map'], b['map'])
  assert saved == [5, 10]  # one save per (seed, bits) unit: lsh, itq, hashnet (+continuous), dhn
  assert set(two['curves']['digits']) == {'hashnet', 'dhn'}
  # Resuming from the 16-bit unit runs only the 48-bit one.
  partial = {'cells': [c for c in one['cells'] if c['bits'] == 16], 'curves': {}}
  resumed = ha.run_grid([settings], previous=partial)
  assert [key(c) for c in resumed['cells']] == [key(c) for c in one['cells']]
  assert resumed['cells'][:5] == partial['cells']


def test_failing_unit_in_a_worker_names_it():
  settings = ha.DataSettings('broken', 'npz:/nonexistent/x.npz', 5, None, 20, None, None,
                             num_steps=3, methods=('hashnet',), bits=(16, 32), seeds=(0,))
  failed = r'broken (16|32) bits seed 0 failed: DataError: .*x\.npz'
  with pytest.raises(RuntimeError, match=failed):
    ha.run_grid([settings], workers=2)


def test_cli_rejects_bad_worker_count(capsys):
  with pytest.raises(SystemExit) as e:
    ha.main(['--workers=0', '--out', '/nonexistent/never-written'])
  assert e.value.code == 2
  assert '--workers=0; accepted: an integer >= 1' in capsys.readouterr().err


# --- list:PATH (multi-hot image lists) -------------------------------------------------------


def _write_list(root, lines, images=('a.png', 'b/c.png', 'b/d.png')):
  os.makedirs(root / 'b', exist_ok=True)
  for i, name in enumerate(images):
    Image.fromarray(np.full((10, 14, 3), 40 * i, np.uint8)).save(root / name)
  path = root / 'all.txt'
  path.write_text('\n'.join(lines) + '\n')
  return str(path)


def test_list_source_reads_multi_hot_labels_and_resizes(tmp_path):
  path = _write_list(tmp_path, ['# path labels', 'a.png 1 0 0 1', 'b/c.png 0 1 0 0', '',
                                'b/d.png 0 0 1 1'])
  source = data.load_source(f'list:{path}', image_size=8)
  np.testing.assert_array_equal(source.labels, [[1, 0, 0, 1], [0, 1, 0, 0], [0, 0, 1, 1]])
  images = source.images(np.array([2, 0]))
  assert images.shape == (2, 8, 8, 3) and images.dtype == np.uint8
  assert images[0].mean() == pytest.approx(80, abs=1) and images[1].max() == 0
  split = data.protocol_split(source.labels, seed=0, num_query=1, num_train=1)
  assert len(split.query) == 1 and len(split.database) == 2
  sim = np.asarray(losses.similarity_matrix(source.labels))
  assert sim[0, 2] == 1 and sim[0, 1] == 0  # shares label 3 / nothing


@pytest.mark.parametrize('lines,size,message', [
    (['a.png 1 0', 'b/c.png 0 2'], 8, r'all.txt:2: expected'),
    (['a.png'], 8, r'all.txt:1: expected'),
    (['a.png 1 0', 'b/c.png 0 1 1'], 8, r'all.txt:2: 3 labels, but line 1 .* has 2'),
    (['a.png 1 0', 'missing.png 0 1'], 8, r"all.txt:2: image .*missing.png' does not exist"),
    (['# nothing'], 8, 'names no image'),
    (['a.png 1 0'], None, 'needs image_size'),
])
def test_list_source_errors(tmp_path, lines, size, message):
  path = _write_list(tmp_path, lines)
  with pytest.raises(data.DataError, match=message):
    data.load_source(f'list:{path}', image_size=size)


def test_list_source_missing_file_and_undecodable_image(tmp_path):
  with pytest.raises(data.DataError, match='does not exist'):
    data.load_source(f'list:{tmp_path}/nope.txt', image_size=8)
  path = _write_list(tmp_path, ['a.png 1', 'bad.png 1'])
  (tmp_path / 'bad.png').write_bytes(b'not an image')
  source = data.load_source(f'list:{path}', image_size=8)
  with pytest.raises(data.DataError, match="bad.png' cannot be decoded"):
    source.images(np.array([1]))
