"""Where exact retrieval time goes: XLA's matmul alone, our search's selection, faiss.

    PYTHONPATH=. python benchmarks/retrieval_breakdown.py

One 1024-query block against a 262144-row gallery (d=768, fp32, top-100), each
variant timed `ROUNDS` times after a warm-up, the variants interleaved within a
round so that load drift hits all alike; the best round is reported. Results in
benchmarks/RESULTS.md s. 3. Needs faiss-cpu (benchmarks/requirements.txt).

  matmul + row max, B rows per step: the search's scan without its selection, at
      the old (16384) and the new (4096) gallery block
  search, dense selection: every block through block_candidates (sparse_groups=0)
  search, pruned selection: the default (search.SPARSE_GROUPS, search.GALLERY_BLOCK)
"""
import time

import jax
import jax.numpy as jnp

from benchmarks.retrieval import synthetic
from m5_jax.evaluate import search

GALLERY, QUERIES, DIM, K, ROUNDS = 262144, 1024, 768, 100, 3
FLOP = 2 * QUERIES * GALLERY * DIM


def matmul_scan(block: int):
  """jit(gallery, queries): the search's matmul scan keeping only each row's max
  (summed into a carry so that XLA cannot drop the matmul)."""
  @jax.jit
  def run(gallery, queries):
    def body(carry, rows):
      scores = jnp.einsum('qd,nd->qn', queries, rows, precision=jax.lax.Precision.HIGHEST)
      return carry + scores.max(1), None
    return jax.lax.scan(body, jnp.zeros(QUERIES), gallery.reshape(-1, block, DIM))[0]
  return run


def timed(fn) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def main() -> None:
  import faiss  # pylint: disable=g-import-not-at-top
  gallery, queries = synthetic(GALLERY, DIM, 0), synthetic(QUERIES, DIM, 1)
  device_gallery, device_queries = jnp.asarray(gallery), jnp.asarray(queries)
  variants = {}
  for block in (16384, search.GALLERY_BLOCK):
    run = matmul_scan(block)
    variants[f'matmul + row max, {block}-row blocks'] = (
        lambda run=run: run(device_gallery, device_queries))
  old = search.ShardedGallery(gallery, gallery_block=16384)
  variants['search, dense selection, 16384-row blocks'] = lambda: old.search(
      queries, K, query_block=QUERIES, sparse_groups=0)
  new = search.ShardedGallery(gallery)
  variants[f'search, pruned selection, {search.GALLERY_BLOCK}-row blocks'] = lambda: new.search(
      queries, K, query_block=QUERIES)
  flat = faiss.IndexFlatIP(DIM)
  flat.add(gallery)
  variants['faiss IndexFlatIP (top-101)'] = lambda: flat.search(queries, K + 1)

  for fn in variants.values():
    fn()  # compile / warm up
  best = {name: float('inf') for name in variants}
  for _ in range(ROUNDS):
    for name, fn in variants.items():
      best[name] = min(best[name], timed(fn))
  faiss_s = best['faiss IndexFlatIP (top-101)']
  for name, seconds in best.items():
    print(f'{name:45s} {seconds:5.2f} s  {FLOP / seconds / 1e9:4.0f} GFLOP/s  '
          f'{seconds / faiss_s:.2f}x faiss')
  print(f"pruned blocks: {new.last_search_stats['pruned_blocks']} of "
        f"{new.last_search_stats['gallery_blocks']}")


if __name__ == '__main__':
  main()
