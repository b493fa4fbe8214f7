"""Reproducible experiments built on the library's public functions (not imported by hashjax).

`grid` runs a list of units in one or several processes, saving each result (--workers,
--resume); `hashing_cell` trains and scores one hashing config; `report` draws a grid's
figures and page; `hashnet_ablation` (with `hashnet_claims`) is HashNet's claims grid.
"""
