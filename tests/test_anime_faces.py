"""hashjax/anime_faces.py: the anime-face repository's label.csv as a label table, on a tiny
synthetic copy (no data is downloaded)."""

from hashjax import anime_faces, label_table


def _line(image_id, hair, eye):
  hot = ['0'] * (len(anime_faces.HAIR) + len(anime_faces.EYE))
  for i in hair:
    hot[i] = '1'
  for i in eye:
    hot[len(anime_faces.HAIR) + i] = '1'
  return ','.join([str(image_id)] + hot)


def test_one_hot_rows_become_named_values_and_bad_rows_are_skipped_with_a_count(tmp_path,
                                                                               capsys):
  (tmp_path / 'preprocessed').mkdir()
  lines = [_line(2, [3], [10]), _line(186, [3, 11], []), _line(5, [11], [0]), _line(7, [], [1])]
  (tmp_path / 'preprocessed' / 'label.csv').write_text('\n'.join(lines) + '\n')
  assert anime_faces.main([str(tmp_path)]) == 0
  out, err = capsys.readouterr()
  assert out.startswith(f'wrote {tmp_path}/hair_eye.csv: 2 faces tagged')
  assert err.startswith('anime_faces: warning: skipped 2 lines without exactly one hair and '
                        f'one eye colour (e.g. {tmp_path}/preprocessed/label.csv:2: ')
  assert (tmp_path / 'hair_eye.csv').read_text() == 'id,hair,eye\n2,gray,blue\n5,blonde,gray\n'
  table = label_table.read_label_table(str(tmp_path / 'hair_eye.csv'))
  assert table.values == (('blonde', 'gray'), ('blue', 'gray'))


def test_a_missing_or_useless_label_file_is_a_one_line_error(tmp_path, capsys):
  assert anime_faces.main([str(tmp_path)]) == 2
  assert capsys.readouterr().err == (
      f'anime_faces: error: {tmp_path}/preprocessed/label.csv does not exist; clone the '
      'repository first (see python -m hashjax.anime_faces --help)\n')
  (tmp_path / 'preprocessed').mkdir()
  (tmp_path / 'preprocessed' / 'label.csv').write_text('1,2,3\n')
  assert anime_faces.main([str(tmp_path)]) == 2
  assert 'holds no line of an image id and 12 + 11 one-hot columns' in capsys.readouterr().err
  assert not (tmp_path / 'hair_eye.csv').exists()
