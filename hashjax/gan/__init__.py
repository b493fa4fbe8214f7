"""The GAN job and what measures it.

`config` (typed settings), `losses` (the minimax losses), `job` (state, step, the job of
`runtime.loop`), `evaluation` (samples, the held-out JSD estimate), `pictures` (sample grids,
attribute grids, interpolation strips, losses.png), `sampling` (`gan.py --mode=sample`),
`collapse` (the warning when D wins outright), `attribute_classifier` (does the conditioning
work?), `divergence` (JSD bounds and estimates) and `toy2d` (the 2-D mixtures).
"""
