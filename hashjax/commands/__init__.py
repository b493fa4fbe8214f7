"""The commands of hashjax beside train.py and gan.py, each `python -m hashjax.commands.NAME`:

* `search`: the nearest database items of a query of a finished run, printed and drawn;
* `fisher`: fisher.npz (the prior of a `laplace` update) for a run made without it;
* `attributes`: an attribute-conditioned GAN run scored by the attribute classifier;
* `pretrained`: a PyTorch checkpoint converted to the .npz that `pretrained=` reads;
* `anime_faces`: the anime-face repository's tags as a label table.

Each parses its own flags (absl's style: `--flag_name=value`), prints one line
`NAME: error: ...` and exits with code 2 for bad input, and keeps its work in the library
modules it calls.
"""
