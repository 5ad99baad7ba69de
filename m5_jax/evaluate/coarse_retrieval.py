"""Coarse-grained retrieval: positives are gallery items of the query's category.

    python -m m5_jax.evaluate.coarse_retrieval --workdir DIR [--step N | --all | --watch] \
        [--subsets T,I,IT,T:I,all] [--feature pooled|encoder_pooled]

Splits coarse_query against coarse_gallery. Writes <workdir>/eval/coarse_retrieval/
(step_<N>.json, results.md, TensorBoard scalars, precision_at_k.png); see runner.py
for the modes and results_io.py for the outputs.
"""
from __future__ import annotations

import sys

from m5_jax.evaluate import retrieval

TASK = 'coarse_retrieval'
main = retrieval.binary_main(TASK, 'coarse_query', 'coarse_gallery', 'label')

if __name__ == '__main__':
  main(sys.argv[1:])
