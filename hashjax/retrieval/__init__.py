"""Retrieval over binary codes: Hamming distances, exact top-k, metrics and search.

`codes` (sign, packing, Hamming distance), `engine` (the one distance pass and chunk driver),
`relevance` (what counts as relevant: class labels, multi-hot labels, index sets, grades),
`selection` (exact top-k without sorting rows), `ranking` (histograms, radix orderings and
tie-aware AP on the host), `metrics` (mAP, precision, recall, PR curves), `graded` and
`weighted_ap` (NDCG, ACG, WAP), `copy_detection`, `neighbours` (nearest-neighbour ground
truth), `search` (`hamming_topk`, `HammingIndex`), `backends` (faiss, MIH glue) and `mih`
(multi-index hashing).
"""
