"""Deep learning to hash: the HashNet job, the update job, and what they are made of.

`config` (typed settings), `losses` (HashNet, DHN), `schedules` (β continuation), `augment`
(random views, copies), `step` (the train state and the one hashing step every job uses),
`encoding` (the model as an encoder), `evaluation` (a run's eval.json), `job` (the HashNet
job), `priors` and `increments` (the old model as a prior; incremental protocols), `update`
(the update job), `pretrained` (torchvision weights), `baselines` (LSH, ITQ) and `run` (which
job a config asks for).
"""
