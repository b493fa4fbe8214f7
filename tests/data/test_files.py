"""Tests for hashjax/data/files.py: the `folder:PATH` and `list:PATH` sources (opened through
`data.load_source`)."""

import os

import numpy as np
import pytest
from PIL import Image

from hashjax.data import sources as data
from hashjax.data.split import protocol_split
from hashjax.hashing import losses
from hashjax.runtime import errors

# --- folder:PATH (class labels from subfolders) ----------------------------------------------


def _folder(tmp_path):
  root = tmp_path / 'faces'
  for cls, color in (('cats', (255, 0, 0)), ('dogs', (0, 0, 255))):
    (root / cls).mkdir(parents=True)
    for i in range(3):
      Image.new('RGB', (40 + i, 30), color).save(root / cls / f'{i}.png')
  Image.new('RGB', (20, 20), (0, 255, 0)).save(root / 'dogs' / 'x.jpg')
  (root / 'dogs' / 'broken.jpg').write_bytes(b'not a jpeg at all')
  (root / 'notes.txt').write_text('not an image')
  return root


def test_folder_source_skips_corrupt_files_and_labels_subfolders(tmp_path, caplog):
  root = _folder(tmp_path)
  with caplog.at_level('WARNING'):
    src = data.load_source(f'folder:{root}', image_size=16, cache_dir=str(tmp_path / 'cache'))
  assert 'skipped 1 of 8 files' in caplog.text and 'broken.jpg' in caplog.text
  assert len(src) == 7 and src.images(np.arange(7)).shape == (7, 16, 16, 3)
  np.testing.assert_array_equal(src.labels, [0, 0, 0, 1, 1, 1, 1])
  assert tuple(src.images(np.array([0]))[0, 8, 8]) == (255, 0, 0)
  assert len(os.listdir(tmp_path / 'cache')) == 1
  again = data.load_source(f'folder:{root}', image_size=16, cache_dir=str(tmp_path / 'cache'))
  np.testing.assert_array_equal(again.images(np.arange(7)), src.images(np.arange(7)))


def test_truncated_folder_cache_warns_once_and_is_rebuilt(tmp_path, caplog):
  root, cache_dir = _folder(tmp_path), str(tmp_path / 'data_cache')
  first = data.load_source(f'folder:{root}', image_size=16, cache_dir=cache_dir)
  cache, = [os.path.join(cache_dir, name) for name in os.listdir(cache_dir)]
  with open(cache, 'r+b') as f:
    f.truncate(os.path.getsize(cache) // 2)
  caplog.clear()
  with caplog.at_level('WARNING'):
    again = data.load_source(f'folder:{root}', image_size=16, cache_dir=cache_dir)
  damaged = [r.getMessage() for r in caplog.records if 'cannot be read' in r.getMessage()]
  assert len(damaged) == 1 and cache in damaged[0] and 'decoding the images again' in damaged[0]
  np.testing.assert_array_equal(again.images(np.arange(7)), first.images(np.arange(7)))
  np.testing.assert_array_equal(again.labels, first.labels)
  caplog.clear()
  with caplog.at_level('WARNING'):  # the rebuilt cache reads: no decoding, no warning
    data.load_source(f'folder:{root}', image_size=16, cache_dir=cache_dir)
  assert not caplog.records and os.listdir(cache_dir) == [os.path.basename(cache)]


def test_folder_source_errors(tmp_path):
  (tmp_path / 'empty').mkdir()
  (tmp_path / 'empty' / 'readme.txt').write_text('x')
  with pytest.raises(errors.DataError, match='holds no image file'):
    data.load_source(f'folder:{tmp_path / "empty"}', image_size=32)
  with pytest.raises(errors.DataError, match='does not exist'):
    data.load_source(f'folder:{tmp_path / "nope"}', image_size=32)
  with pytest.raises(errors.DataError, match='needs image_size'):
    data.load_source(f'folder:{tmp_path / "empty"}')

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
  split = protocol_split(source.labels, seed=0, num_query=1, num_train=1)
  assert len(split.query) == 1 and len(split.database) == 2
  sim = np.asarray(losses.similarity_matrix(source.labels))
  assert sim[0, 2] == 1 and sim[0, 1] == 0  # shares label 3 / nothing


def test_list_items_without_label_warn_once_with_their_count(tmp_path, caplog):
  path = _write_list(tmp_path, ['a.png 1 0', 'b/c.png 0 0', 'b/d.png 0 1'])
  with caplog.at_level('WARNING', logger='hashjax'):
    source = data.load_source(f'list:{path}', image_size=8)
  warnings = [r.getMessage() for r in caplog.records if r.levelname == 'WARNING']
  assert len(warnings) == 1 and warnings[0].startswith(f'1 of 3 items of {path} have no label')
  assert len(source) == 3  # kept: the warning says what they do to training and mAP


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
  with pytest.raises(errors.DataError, match=message):
    data.load_source(f'list:{path}', image_size=size)


def test_list_source_missing_file_and_undecodable_image(tmp_path):
  with pytest.raises(errors.DataError, match='does not exist'):
    data.load_source(f'list:{tmp_path}/nope.txt', image_size=8)
  path = _write_list(tmp_path, ['a.png 1', 'bad.png 1'])
  (tmp_path / 'bad.png').write_bytes(b'not an image')
  source = data.load_source(f'list:{path}', image_size=8)
  with pytest.raises(errors.DataError, match="bad.png' cannot be decoded"):
    source.images(np.array([1]))
