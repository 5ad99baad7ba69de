"""Exact top-K retrieval throughput: our sharded blockwise search vs faiss IndexFlatIP.

    .venv/bin/python benchmarks/retrieval.py --num_queries 10000 --gallery 1000000 \
        --dim 768 --k 100 [--faiss_path /tmp/faiss_pkg] [--out benchmarks/results/retrieval.md]

Synthetic float32 embeddings (L2-normalised Gaussians). Times
`ShardedGallery.search` (m5_jax/evaluate/search.py) on whatever devices JAX sees
(after one warm-up query block, so compile time is reported separately), and,
when faiss can be imported, faiss-cpu's exact IndexFlatIP on the same data,
then compares the returned ids (ties aside they must agree). faiss is not a
project dependency: install it aside for this benchmark, e.g.
`pip install --target /tmp/faiss_pkg faiss-cpu`, and pass --faiss_path.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time

import numpy as np


def synthetic(n: int, dim: int, seed: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  out = np.empty((n, dim), np.float32)
  for lo in range(0, n, 65536):  # in chunks: no float64 copy of a 3 GB array
    block = rng.standard_normal((min(65536, n - lo), dim), dtype=np.float32)
    out[lo:lo + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
  return out


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--num_queries', type=int, default=10_000)
  parser.add_argument('--gallery', type=int, default=1_000_000)
  parser.add_argument('--dim', type=int, default=768)
  parser.add_argument('--k', type=int, default=100)
  parser.add_argument('--query_block', type=int, default=1024)
  parser.add_argument('--gallery_block', type=int, default=16384)
  parser.add_argument('--faiss_path', default='', help='extra sys.path entry holding faiss')
  parser.add_argument('--out', default='', help='append a Markdown result row here')
  args = parser.parse_args(argv)

  import jax  # pylint: disable=g-import-not-at-top
  from m5_jax.evaluate import search  # pylint: disable=g-import-not-at-top

  t = time.time()
  gallery = synthetic(args.gallery, args.dim, seed=0)
  queries = synthetic(args.num_queries, args.dim, seed=1)
  print(f'data: {args.num_queries} x {args.gallery} x {args.dim} in {time.time() - t:.1f} s',
        flush=True)

  t = time.time()
  index = search.ShardedGallery(gallery, gallery_block=args.gallery_block)
  jax.block_until_ready(index.embeddings)
  place_s = time.time() - t
  t = time.time()
  index.search(queries[:args.query_block], args.k, query_block=args.query_block)
  warmup_s = time.time() - t
  t = time.time()
  ours_scores, ours_ids = index.search(queries, args.k, query_block=args.query_block,
                                       log_every_s=10.0)
  ours_s = time.time() - t
  ours_qps = args.num_queries / ours_s
  devices = f'{jax.device_count()} x {jax.devices()[0].platform}'
  print(f'ours: {ours_qps:.1f} queries/s ({ours_s:.1f} s; placing {place_s:.1f} s, '
        f'first block incl. compile {warmup_s:.1f} s) on {devices}', flush=True)

  faiss_note = 'faiss not importable (see --faiss_path)'
  faiss_qps = None
  if args.faiss_path:
    sys.path.append(args.faiss_path)  # appended: the venv's numpy stays first
  try:
    import faiss  # pylint: disable=g-import-not-at-top
  except ImportError:
    faiss = None
  if faiss is not None:
    t = time.time()
    flat = faiss.IndexFlatIP(args.dim)
    flat.add(gallery)
    add_s = time.time() - t
    t = time.time()
    faiss_scores, faiss_ids = flat.search(queries, args.k)
    faiss_s = time.time() - t
    faiss_qps = args.num_queries / faiss_s
    same = (faiss_ids == ours_ids).mean()
    # Disagreements must be near-ties: compare the k-th scores.
    max_score_gap = float(np.abs(np.sort(faiss_scores, 1) - np.sort(ours_scores, 1)).max())
    faiss_note = (f'faiss {faiss.__version__} IndexFlatIP ({faiss.omp_get_max_threads()} '
                  f'threads): {faiss_qps:.1f} queries/s ({faiss_s:.1f} s, add {add_s:.1f} s); '
                  f'ids identical {100 * same:.3f}%, max score gap {max_score_gap:.2e}')
  print(faiss_note, flush=True)

  if args.out:
    os.makedirs(os.path.dirname(args.out) or '.', exist_ok=True)
    line = (f'| {datetime.date.today()} | {platform.processor() or platform.machine()}, '
            f'{os.cpu_count()} cores | {devices} | {args.num_queries} | {args.gallery} | '
            f'{args.dim} | {args.k} | {ours_qps:.1f} | '
            f'{"-" if faiss_qps is None else f"{faiss_qps:.1f}"} | {faiss_note} |\n')
    with open(args.out, 'a') as f:
      f.write(line)


if __name__ == '__main__':
  main()
