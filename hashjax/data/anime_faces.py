"""The public anime-face set as a labelled image folder for `gan.py`.

The repository antoncoding/Deep_Learning_GAN holds 33,431 face crops (`faces/N.jpg`, 96×96
RGB) and `preprocessed/label.csv`, which tags 11,418 of them with one hair and one eye colour:
each line is an image id N and 23 one-hot columns, in the order of the dictionaries pickled
next to it (hair.pkl: 12 hair colours, eye.pkl: 11 eye colours; listed below, so no pickle
is read). The 11 eye colours come first, then the 12 hair colours: with that split every line
has exactly one 1 in each group (with 12 then 11, 223 lines would have two hair colours and
no eye colour), and the faces of each column show its colour (e.g. column 19, the 8th hair
colour, pink hair). This writes that table as a label table (`hashjax.data.label_table`) that the
`folder:` source reads:

  git clone --depth 1 https://github.com/antoncoding/Deep_Learning_GAN data/Deep_Learning_GAN
  python -m hashjax.commands.anime_faces data/Deep_Learning_GAN    # writes .../hair_eye.csv

Then `configs/dcgan_anime.py` (unconditional) and `configs/dcgan_anime_tags.py` (conditioned
on hair and eye colour) train on `folder:data/Deep_Learning_GAN/faces`.
"""

from __future__ import annotations

import os

from hashjax.runtime.errors import AnimeFacesError

HAIR = ('orange', 'white', 'aqua', 'gray', 'green', 'red', 'purple', 'pink', 'blue', 'black',
        'brown', 'blonde')
EYE = ('gray', 'black', 'orange', 'pink', 'yellow', 'aqua', 'purple', 'green', 'brown', 'red',
       'blue')


def convert(label_csv: str, out: str) -> tuple[int, list[str]]:
  """Writes `out` (header `id,hair,eye`, one row per tagged face) from the repository's
  label.csv.

  Returns:
    (rows written, the lines skipped: not an id with one eye and one hair colour; the
    repository's file has none).
  Raises:
    AnimeFacesError: no file, or no line in the expected format.
  """
  if not os.path.isfile(label_csv):
    raise AnimeFacesError(f'{label_csv} does not exist; clone the repository first (see '
                          'python -m hashjax.commands.anime_faces --help)')
  rows, skipped = [], []
  with open(label_csv) as f:
    for n, line in enumerate(f, 1):
      fields = [x.strip() for x in line.split(',')]
      if fields == ['']:
        continue
      hot = fields[1:]  # the eye colours, then the hair colours
      if (len(fields) != 1 + len(EYE) + len(HAIR) or not fields[0].isdigit() or
          any(x not in ('0', '1') for x in hot) or hot[:len(EYE)].count('1') != 1 or
          hot[len(EYE):].count('1') != 1):
        skipped.append(f'{label_csv}:{n}: {line.strip()[:80]!r}')
        continue
      rows.append(f'{fields[0]},{HAIR[hot[len(EYE):].index("1")]},{EYE[hot.index("1")]}')
  if not rows:
    raise AnimeFacesError(f'{label_csv} holds no line of an image id and {len(EYE)} + '
                          f'{len(HAIR)} one-hot columns (eye, then hair) with one 1 each')
  tmp = out + '.tmp'
  with open(tmp, 'w') as f:
    f.write('id,hair,eye\n' + '\n'.join(rows) + '\n')
  os.replace(tmp, out)
  return len(rows), skipped
