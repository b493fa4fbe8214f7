"""hashjax/data/anime_faces.py: the anime-face repository's label.csv as a label table, on a tiny
synthetic copy (no data is downloaded)."""

from hashjax.commands import anime_faces as anime_faces_lib
from hashjax.data import anime_faces, label_table


def _line(image_id, eye, hair):
  """A label.csv line: the id, 11 eye-colour columns, then 12 hair-colour columns."""
  hot = ['0'] * (len(anime_faces.EYE) + len(anime_faces.HAIR))
  for i in eye:
    hot[i] = '1'
  for i in hair:
    hot[len(anime_faces.EYE) + i] = '1'
  return ','.join([str(image_id)] + hot)


def test_one_hot_rows_become_named_values_and_bad_rows_are_skipped_with_a_count(tmp_path,
                                                                               capsys):
  (tmp_path / 'preprocessed').mkdir()
  lines = [_line(2, [3], [11]), _line(186, [3, 10], []), _line(5, [0], [0]), _line(7, [], [1])]
  (tmp_path / 'preprocessed' / 'label.csv').write_text('\n'.join(lines) + '\n')
  assert anime_faces_lib.main([str(tmp_path)]) == 0
  out, err = capsys.readouterr()
  assert out.startswith(f'wrote {tmp_path}/hair_eye.csv: 2 faces tagged')
  assert err.startswith('anime_faces: warning: skipped 2 lines without exactly one eye and '
                        f'one hair colour (e.g. {tmp_path}/preprocessed/label.csv:2: ')
  # eye 3 = pink, hair 11 = blonde; eye 0 = gray, hair 0 = orange (the pickles' orders).
  assert (tmp_path / 'hair_eye.csv').read_text() == ('id,hair,eye\n2,blonde,pink\n'
                                                     '5,orange,gray\n')
  table = label_table.read_label_table(str(tmp_path / 'hair_eye.csv'))
  assert table.values == (('blonde', 'orange'), ('gray', 'pink'))


def test_a_missing_or_useless_label_file_is_a_one_line_error(tmp_path, capsys):
  assert anime_faces_lib.main([str(tmp_path)]) == 2
  assert capsys.readouterr().err == (
      f'anime_faces: error: {tmp_path}/preprocessed/label.csv does not exist; clone the '
      'repository first (see python -m hashjax.commands.anime_faces --help)\n')
  (tmp_path / 'preprocessed').mkdir()
  (tmp_path / 'preprocessed' / 'label.csv').write_text('1,2,3\n')
  assert anime_faces_lib.main([str(tmp_path)]) == 2
  assert ('holds no line of an image id and 11 + 12 one-hot columns (eye, then hair)'
          in capsys.readouterr().err)
  assert not (tmp_path / 'hair_eye.csv').exists()
