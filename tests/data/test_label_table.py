"""Tests for hashjax/data/label_table.py and the `folder:` source with a label table
(`image_files.load_folder(..., labels=)`): both formats, the errors, and what happens to
images without a row and rows without an image."""

import os
import tempfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from hashjax.data import files as image_files
from hashjax.data import label_table
from hashjax.runtime.errors import DataError


def _write(tmp_path, text, name='labels.csv'):
  path = tmp_path / name
  path.write_text(text)
  return str(path)


def test_values_by_name_are_sorted_and_empty_means_unknown(tmp_path):
  table = label_table.read_label_table(_write(tmp_path, 'file,hair,eye\n'
                                                        'a/1.jpg,blue,red\n'
                                                        '2.jpg,black,\n\n'
                                                        '3.jpg, blue ,green\n'))
  assert (table.key, table.names) == ('file', ('hair', 'eye'))
  assert table.values == (('black', 'blue'), ('green', 'red'))
  ids = table.attribute_ids(['a/1.jpg', '2.jpg', '3.jpg', 'other.jpg'])
  np.testing.assert_array_equal(ids, [[1, 1], [0, -1], [1, 0], [-1, -1]])
  np.testing.assert_array_equal(label_table.multi_hot(ids, (2, 2)),
                                [[0, 1, 0, 1], [1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]])


def test_one_hot_columns_keep_their_order_and_ids_match_any_extension(tmp_path):
  table = label_table.read_label_table(_write(
      tmp_path, 'id,hair=orange,hair=white,eye=gray,eye=black,eye=orange\n'
                '12,0,1,0,0,1\n7,1,0,0,0,0\n'))
  assert table.values == (('orange', 'white'), ('gray', 'black', 'orange'))
  ids = table.attribute_ids(['faces/12.jpg', '7.png', '8.png'])
  np.testing.assert_array_equal(ids, [[1, 2], [0, -1], [-1, -1]])


@pytest.mark.parametrize('text,message', [
    ('', 'is empty'),
    ('name,hair\nx,blue\n', "the header must start with file or id"),
    ('file\nx.jpg\n', 'the header must start with file or id and name at least one'),
    ('file,hair=\nx.jpg,1\n', "column 'hair=' is neither an attribute name nor"),
    ('file,hair,hair\nx.jpg,a,b\n', 'a column is named twice'),
    ('file,hair,hair=blue\nx.jpg,a,1\n', "attribute 'hair' is given both by name and one-hot"),
    ('file,hair,eye\nx.jpg,blue\ny.jpg,a,b,c\nz.jpg,a,b\n',
     'labels.csv:2: 1 values for 2 attribute columns (2 malformed rows in all)'),
    ('id,hair=blue,hair=red\n1,2,0\n', "labels.csv:2: one-hot column hair=blue holds '2'"),
    ('id,hair=blue,hair=red\n1,1,1\n', 'labels.csv:2: 2 values of hair (blue, red); each row'),
    ('file,hair\nx.jpg,a\nx.jpg,b\n', "labels.csv:3: file 'x.jpg' is also on line 2"),
    ('file,hair\n,a\n', 'labels.csv:2: no file in the first column'),
])
def test_malformed_tables_are_one_line_errors(tmp_path, text, message):
  with pytest.raises(DataError, match='^[^\n]*$') as e:
    label_table.read_label_table(_write(tmp_path, text))
  assert message in str(e.value)


@pytest.mark.parametrize('data,message', [
    (b'file,hair\nx.jpg,bl\xe9\n', r"labels.csv:2: byte 18 \(b'\\xe9'\) is not UTF-8; save "
                                   r"the table as UTF-8 text$"),
    (b'file,hair\nx.jpg,"' + b'a' * 200_000 + b'"\n',
     r'labels.csv:2: field larger than field limit \(131072\)$'),
])
def test_bytes_that_are_not_utf8_or_csv_are_one_line_errors(tmp_path, data, message):
  (tmp_path / 'labels.csv').write_bytes(data)
  with pytest.raises(DataError, match=message):
    label_table.read_label_table(str(tmp_path / 'labels.csv'))


def test_a_byte_order_mark_is_accepted(tmp_path):
  (tmp_path / 'labels.csv').write_bytes('file,hair\nx.jpg,blue\n'.encode('utf-8-sig'))
  table = label_table.read_label_table(str(tmp_path / 'labels.csv'))
  assert (table.key, table.names, table.values) == ('file', ('hair',), (('blue',),))


# Bytes near a label table: its words, separators, quotes, a BOM, a NUL, non-UTF-8 bytes.
_PIECES = st.sampled_from([b'file', b'id', b'hair', b'eye', b'=', b'blue', b'1', b'0', b',',
                           b'\n', b'\r\n', b'"', b' ', b'x.jpg', b'\xef\xbb\xbf', b'\x00',
                           b'\xe9', b'\xff\xfe'])
_TABLES = st.one_of(st.binary(max_size=300), st.lists(_PIECES, max_size=40).map(b''.join))


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(data=_TABLES)
def test_any_bytes_parse_the_same_way_twice_or_give_one_line(data):
  with tempfile.TemporaryDirectory() as folder:
    path = os.path.join(folder, 'labels.csv')
    with open(path, 'wb') as f:
      f.write(data)
    try:
      table = label_table.read_label_table(path)
    except DataError as e:
      assert '\n' not in str(e) and str(e)
      return
    again = label_table.read_label_table(path)
    assert (again.key, again.names, again.values) == (table.key, table.names, table.values)
    assert again.rows.keys() == table.rows.keys()
    for key, ids in table.rows.items():
      np.testing.assert_array_equal(again.rows[key], ids)
      assert ids.shape == (len(table.names),) and ids.dtype == np.int32
      assert all(-1 <= i < len(v) for i, v in zip(ids, table.values))


def test_a_missing_table_is_an_error(tmp_path):
  with pytest.raises(DataError, match=r"label table '.*nope.csv' does not exist"):
    label_table.read_label_table(str(tmp_path / 'nope.csv'))


def _faces(tmp_path):
  root = tmp_path / 'faces'
  root.mkdir()
  for i, color in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255), (9, 9, 9)]):
    Image.new('RGB', (12, 10), color).save(root / f'{i}.jpg', quality=100)
  return root


def test_folder_with_a_table_drops_or_keeps_untagged_images_and_warns_once(tmp_path, caplog):
  root = _faces(tmp_path)
  table = _write(tmp_path, 'id,hair,eye\n0,blue,red\n2,black,red\n17,blue,blue\n18,x,y\n')
  with caplog.at_level('WARNING'):
    src = image_files.load_folder(str(root), 8, str(tmp_path / 'cache'), labels=table)
  warnings = [r.getMessage() for r in caplog.records]
  assert len(warnings) == 1 and '2 of its 4 rows name no image' in warnings[0]
  assert len(src) == 2 and src.images(np.arange(2)).shape == (2, 8, 8, 3)
  assert src.names == ('hair', 'eye') and src.values == (('black', 'blue', 'x'),
                                                         ('blue', 'red', 'y'))
  np.testing.assert_array_equal(src.attribute_ids, [[1, 1], [0, 1]])
  np.testing.assert_array_equal(src.labels, [[0, 1, 0, 0, 1, 0], [1, 0, 0, 0, 1, 0]])
  assert src.images(np.array([1]))[0, 4, 4, 2] > 200  # 2.jpg is blue
  kept = image_files.load_folder(str(root), 8, str(tmp_path / 'cache'), labels=table,
                                 unlabelled='keep')
  np.testing.assert_array_equal(kept.attribute_ids, [[1, 1], [-1, -1], [0, 1], [-1, -1]])
  # From the caches: the same images and labels.
  again = image_files.load_folder(str(root), 8, str(tmp_path / 'cache'), labels=table)
  np.testing.assert_array_equal(again.images(np.arange(2)), src.images(np.arange(2)))
  np.testing.assert_array_equal(again.attribute_ids, src.attribute_ids)


def test_folder_table_errors(tmp_path):
  root = _faces(tmp_path)
  table = _write(tmp_path, 'id,hair\n40,blue\n')
  with pytest.raises(DataError, match=r"names none of the 4 images in .* \(rows are keyed by "
                                      r"id\)"):
    image_files.load_folder(str(root), 8, None, labels=table)
  with pytest.raises(DataError, match="unlabelled='some'; accepted: drop, keep"):
    image_files.load_folder(str(root), 8, None, labels=table, unlabelled='some')
