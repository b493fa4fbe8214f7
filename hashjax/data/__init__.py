"""Data sources: random-access uint8 images [N, H, W, C] and labels (class ids [N] or multi-hot
[N, L]).

`base` (what a source is, pixel conversions), `arrays` (digits, npz, pairs, mosaics),
`tfds_source` (tensorflow-datasets), `files` (`folder:` and `list:` image files),
`label_table` (attribute CSVs for folders), `anime_faces` (the anime-face set's tags), `split`
(the retrieval protocol's query / database / train split) and, above them, `sources` (a data
set named by a string).
"""
