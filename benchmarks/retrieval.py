"""Exact top-K retrieval throughput: our sharded blockwise search vs faiss IndexFlatIP.

    .venv/bin/python -m benchmarks.retrieval --num_queries 10000 --gallery 1000000 \
        --dim 768 --k 100 [--json]

Synthetic float32 embeddings (L2-normalised Gaussians). Times
`ShardedGallery.search` (m5_jax/evaluate/search.py) on whatever devices JAX sees
(after one warm-up query block, so compile time is reported separately), and
faiss-cpu's exact IndexFlatIP on the same data in the same process, interleaved
in `--rounds` chunks of queries (see `measure`), then compares the returned ids.

Ties: two fp32 dot products that differ by less than `TIE_EPS` can come out in
either order depending on the summation order of the matmul, so rank j of a
query is "tied" when its score is within TIE_EPS of the score at rank j-1 or
j+1, or of rank K+1 (the first left out, which it may swap with). Every untied
rank must hold the same id in both lists; `untied_mismatches` counts those that
do not (0 is the pass condition).

faiss is a benchmark-only dependency: `pip install -r benchmarks/requirements.txt`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from benchmarks import machine

TIE_EPS = 1e-6  # > the ~3e-7 rounding gap seen between fp32 matmuls of unit 768-d vectors


def synthetic(n: int, dim: int, seed: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  out = np.empty((n, dim), np.float32)
  for lo in range(0, n, 65536):  # in chunks: no float64 copy of a 3 GB array
    block = rng.standard_normal((min(65536, n - lo), dim), dtype=np.float32)
    out[lo:lo + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
  return out


def compare(ours_s, ours_i, ref_s, ref_i, eps: float = TIE_EPS) -> dict:
  """Id agreement of [Q, K] top-K lists against a reference's [Q, K + 1] lists (the extra
  rank tells whether rank K is tied with the first rank left out); ties as in the doc."""
  k = ours_i.shape[1]
  scores = ref_s[:, :k]
  gap_prev = np.abs(np.diff(scores, axis=1, prepend=np.inf))
  gap_next = np.abs(scores - ref_s[:, 1:k + 1])
  gap_cut = np.abs(scores - ref_s[:, k:k + 1])
  tied = (gap_prev < eps) | (gap_next < eps) | (gap_cut < eps)
  differ = ours_i != ref_i[:, :k]
  return {
      'ranks': int(differ.size),
      'tied_ranks': int(tied.sum()),
      'identical_ids_share': float(1 - differ.mean()),
      'untied_mismatches': int((differ & ~tied).sum()),
      'max_score_gap': float(np.abs(np.sort(ours_s, 1) - np.sort(scores, 1)).max()),
  }


def _timed(fn):
  """(result, wall seconds, process CPU seconds) of fn()."""
  wall, cpu = time.perf_counter(), machine.cpu_seconds()
  out = fn()
  return out, time.perf_counter() - wall, machine.cpu_seconds() - cpu


def measure(num_queries: int, gallery_size: int, dim: int, k: int, query_block: int = 1024,
            gallery_block: int | None = None, with_faiss: bool = True, rounds: int = 5,
            sparse_groups: int | None = None) -> dict:
  """Ours and faiss on the same arrays, timed in `rounds` interleaved chunks of queries.

  Each round times ours and faiss on the same chunk back to back (alternating who
  goes first), so a change in this shared machine's load hits both sides alike;
  the ratio is also reported per process CPU-second, which the load cannot move.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from m5_jax.evaluate import search  # pylint: disable=g-import-not-at-top

  gallery_block = search.GALLERY_BLOCK if gallery_block is None else gallery_block
  sparse_groups = search.SPARSE_GROUPS if sparse_groups is None else sparse_groups
  gallery = synthetic(gallery_size, dim, seed=0)
  queries = synthetic(num_queries, dim, seed=1)
  query_block = max(1, min(query_block, num_queries))
  result = {'num_queries': num_queries, 'gallery': gallery_size, 'dim': dim, 'k': k,
            'query_block': query_block, 'gallery_block': gallery_block,
            'sparse_groups': sparse_groups,
            'devices': f'{jax.device_count()} x {jax.devices()[0].platform}',
            'load_avg_start': machine.load_average()}

  def place():
    placed = search.ShardedGallery(gallery, gallery_block=gallery_block)
    jax.block_until_ready(placed.embeddings)
    return placed
  index, result['ours_place_s'], _ = _timed(place)
  _, result['ours_first_block_s'], _ = _timed(  # includes compilation
      lambda: index.search(queries[:query_block], k, query_block=query_block,
                           sparse_groups=sparse_groups))

  try:
    import faiss  # pylint: disable=g-import-not-at-top
  except ImportError:
    faiss = None
  flat = None
  if with_faiss and faiss is not None:
    flat = faiss.IndexFlatIP(dim)
    _, result['faiss_add_s'], _ = _timed(lambda: flat.add(gallery))
    result.update(faiss_version=faiss.__version__, faiss_threads=faiss.omp_get_max_threads())
  else:
    result['faiss'] = 'not installed (pip install -r benchmarks/requirements.txt)'

  # Chunks of whole query blocks, so ours never pads a block that faiss does not see.
  blocks = -(-num_queries // query_block)
  per_round = -(-blocks // max(1, rounds)) * query_block
  last = num_queries - (num_queries - 1) // per_round * per_round
  if last % query_block:  # the search compiles a shorter tail block for it: not timed
    tail = last % query_block
    index.search(queries[-tail:], k, query_block=query_block, sparse_groups=sparse_groups)
  ours_s, ours_i, ref_s, ref_i, per_round_rows = [], [], [], [], []
  totals = dict(ours_s=0.0, ours_cpu_s=0.0, faiss_s=0.0, faiss_cpu_s=0.0)
  block_counts = dict(gallery_blocks=0, pruned_blocks=0)
  for r, lo in enumerate(range(0, num_queries, per_round)):
    chunk = queries[lo:lo + per_round]
    sides = [('ours', lambda c=chunk: index.search(c, k, query_block=query_block,
                                                   sparse_groups=sparse_groups))]
    if flat is not None:
      sides.append(('faiss', lambda c=chunk: flat.search(c, k + 1)))  # + 1: see compare()
    row = {'queries': len(chunk)}
    for side, fn in (sides if r % 2 == 0 else sides[::-1]):
      (scores, ids), wall, cpu = _timed(fn)
      (ours_s if side == 'ours' else ref_s).append(scores)
      (ours_i if side == 'ours' else ref_i).append(ids)
      row[f'{side}_s'], row[f'{side}_cpu_s'] = wall, cpu
      if side == 'ours':
        for key in block_counts:
          block_counts[key] += index.last_search_stats[key]
      totals[f'{side}_s'] += wall
      totals[f'{side}_cpu_s'] += cpu
    row['load_avg'] = machine.load_average()
    per_round_rows.append(row)
    print(f'round {r + 1}: {row}', file=sys.stderr, flush=True)
  result['rounds'] = per_round_rows
  result.update(block_counts)
  result['ours_s'], result['ours_cpu_s'] = totals['ours_s'], totals['ours_cpu_s']
  result['ours_qps'] = num_queries / result['ours_s']
  if flat is not None:
    result.update(faiss_s=totals['faiss_s'], faiss_cpu_s=totals['faiss_cpu_s'],
                  faiss_qps=num_queries / totals['faiss_s'],
                  time_ratio_ours_over_faiss=totals['ours_s'] / totals['faiss_s'],
                  cpu_ratio_ours_over_faiss=totals['ours_cpu_s'] / totals['faiss_cpu_s'],
                  **compare(np.concatenate(ours_s), np.concatenate(ours_i),
                            np.concatenate(ref_s), np.concatenate(ref_i)))
  result['load_avg_end'] = machine.load_average()
  result['peak_rss_mib'] = machine.peak_rss_mib()
  return result


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--num_queries', type=int, default=10_000)
  parser.add_argument('--gallery', type=int, default=1_000_000)
  parser.add_argument('--dim', type=int, default=768)
  parser.add_argument('--k', type=int, default=100)
  parser.add_argument('--query_block', type=int, default=1024)
  parser.add_argument('--gallery_block', type=int, default=None,
                      help='rows per scan step (default: search.GALLERY_BLOCK)')
  parser.add_argument('--sparse_groups', type=int, default=None,
                      help='pruned-path width (default: search.SPARSE_GROUPS; 0: off)')
  parser.add_argument('--no_faiss', action='store_true')
  parser.add_argument('--rounds', type=int, default=5,
                      help='interleaved chunks: ours and faiss alternate on each')
  parser.add_argument('--json', action='store_true', help='print one JSON object')
  args = parser.parse_args(argv)
  r = measure(args.num_queries, args.gallery, args.dim, args.k, args.query_block,
              args.gallery_block, not args.no_faiss, args.rounds, args.sparse_groups)
  if args.json:
    print(json.dumps(r))
    return 0
  print(f"ours: {r['ours_qps']:.1f} queries/s ({r['ours_s']:.1f} s; placing "
        f"{r['ours_place_s']:.1f} s, first block incl. compile {r['ours_first_block_s']:.1f} s) "
        f"on {r['devices']}; {r['pruned_blocks']} of {r['gallery_blocks']} gallery blocks pruned")
  if 'faiss_s' in r:
    print(f"faiss {r['faiss_version']} IndexFlatIP ({r['faiss_threads']} threads): "
          f"{r['faiss_qps']:.1f} queries/s ({r['faiss_s']:.1f} s); ours/faiss time "
          f"{r['time_ratio_ours_over_faiss']:.2f} (per CPU-s "
          f"{r['cpu_ratio_ours_over_faiss']:.2f}); ids identical "
          f"{100 * r['identical_ids_share']:.3f}%, {r['tied_ranks']} tied ranks, "
          f"{r['untied_mismatches']} untied mismatches; load {r['load_avg_start']}-"
          f"{r['load_avg_end']}")
  return 0


if __name__ == '__main__':
  sys.exit(main())
