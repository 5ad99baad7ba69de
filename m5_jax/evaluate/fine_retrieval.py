"""Fine-grained retrieval: positives are gallery listings of the query's product instance.

    python -m m5_jax.evaluate.fine_retrieval --workdir DIR [--step N | --all | --watch] \
        [--subsets T,I,IT,T:I,all] [--feature pooled|encoder_pooled]

Splits fine_query against fine_gallery; same metrics, modes and outputs as
coarse_retrieval (<workdir>/eval/fine_retrieval/).
"""
from __future__ import annotations

import sys

from m5_jax.evaluate import retrieval

TASK = 'fine_retrieval'
main = retrieval.binary_main(TASK, 'fine_query', 'fine_gallery', 'instance')

if __name__ == '__main__':
  main(sys.argv[1:])
