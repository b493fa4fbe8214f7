"""The bottom layer: what every job runs on and knows nothing about any job.

`loop` (the training loop, once, with the job contract in its docstring) and `plumbing` (its
metrics rows, batches, prefetch, NaN check), `checkpoint` (disk-quota-aware checkpoints),
`disk` (writes a full disk cannot break), `workdir` (the run's lock and config.json record),
`preemption` (SIGTERM / SIGINT), `parallel` (mesh, shardings, multi-host), `cli` (the jobs'
flags and one-line errors), `pictures` (grids, PNGs, figures), `settings` (the settings types
every job shares and their checks) and `errors` (every error type).
"""
