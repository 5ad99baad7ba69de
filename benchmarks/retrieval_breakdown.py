"""Where exact retrieval time goes: XLA matmul alone, with selection, our full search, faiss.

    PYTHONPATH=. python benchmarks/retrieval_breakdown.py

One 1024-query block against a 262144-row gallery (16384-row blocks, d=768, fp32,
top-100), each variant timed after a warm-up; results in benchmarks/RESULTS.md s. 3.
Needs faiss-cpu (benchmarks/requirements.txt).
"""
import time

import jax
import jax.numpy as jnp

from benchmarks.retrieval import synthetic
from m5_jax.evaluate import search

GALLERY, QUERIES, DIM, BLOCK, K = 262144, 1024, 768, 16384, 100
FLOP = 2 * QUERIES * GALLERY * DIM


def scan_with(select):
  """jit(gallery blocks, queries): the search's matmul scan, keeping `select(scores)`
  (summed into a carry so XLA cannot drop the selection)."""
  @jax.jit
  def run(blocks, queries):
    def body(carry, rows):
      scores = jnp.einsum('qd,nd->qn', queries, rows, precision=jax.lax.Precision.HIGHEST)
      return carry + select(scores).sum(1), None
    return jax.lax.scan(body, jnp.zeros(QUERIES), blocks)[0]
  return run


def report(name: str, seconds: float) -> None:
  print(f'{name}: {seconds:.2f} s  {FLOP / seconds / 1e9:.0f} GFLOP/s')


def timed(fn) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def main() -> None:
  gallery, queries = synthetic(GALLERY, DIM, 0), synthetic(QUERIES, DIM, 1)
  variants = {
      'matmul+max': lambda s: s.max(1, keepdims=True),
      'matmul+block_candidates': lambda s: search.block_candidates(s, K + 1)[0],
      'matmul+top_k': lambda s: jax.lax.top_k(s, K)[0],
  }
  blocks, device_queries = jnp.asarray(gallery).reshape(-1, BLOCK, DIM), jnp.asarray(queries)
  for name, select in variants.items():
    run = scan_with(select)
    run(blocks, device_queries).block_until_ready()  # compile
    report(name, timed(lambda run=run: run(blocks, device_queries)))

  index = search.ShardedGallery(gallery, gallery_block=BLOCK)
  index.search(queries, K, query_block=QUERIES)  # compile
  report('full search', timed(lambda: index.search(queries, K, query_block=QUERIES)))

  import faiss  # pylint: disable=g-import-not-at-top
  flat = faiss.IndexFlatIP(DIM)
  flat.add(gallery)
  report('faiss', timed(lambda: flat.search(queries, K + 1)))


if __name__ == '__main__':
  main()
