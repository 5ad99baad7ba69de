"""Where exact retrieval time goes: XLA matmul alone, with selection, our full search, faiss.

    PYTHONPATH=. python benchmarks/retrieval_breakdown.py

One 1024-query block against a 262144-row gallery (16384-row blocks, d=768, fp32,
top-100), each variant timed after a warm-up; results in benchmarks/RESULTS.md s. 3.
Needs faiss-cpu (benchmarks/requirements.txt).
"""
import time, numpy as np, jax, jax.numpy as jnp
from m5_jax.evaluate import search
from benchmarks.retrieval import synthetic
G, Q, D, B, K = 262144, 1024, 768, 16384, 100
gal = synthetic(G, D, 0); q = synthetic(Q, D, 1)
idx = search.ShardedGallery(gal, gallery_block=B)
idx.search(q, K, query_block=Q)
t=time.perf_counter(); idx.search(q, K, query_block=Q); full=time.perf_counter()-t
g = jnp.asarray(gal).reshape(G//B, B, D); qq = jnp.asarray(q)
@jax.jit
def mm_only(g, qq):
  def body(c, rows):
    s = jnp.einsum('qd,nd->qn', qq, rows, precision=jax.lax.Precision.HIGHEST)
    return c + s.max(1), None
  return jax.lax.scan(body, jnp.zeros(Q), g)[0]
@jax.jit
def mm_topk(g, qq):
  def body(c, rows):
    s = jnp.einsum('qd,nd->qn', qq, rows, precision=jax.lax.Precision.HIGHEST)
    return c + jax.lax.top_k(s, K)[0].sum(1), None
  return jax.lax.scan(body, jnp.zeros(Q), g)[0]
@jax.jit
def mm_cands(g, qq):
  def body(c, rows):
    s = jnp.einsum('qd,nd->qn', qq, rows, precision=jax.lax.Precision.HIGHEST)
    return c + search.block_candidates(s, K + 1)[0].sum(1), None
  return jax.lax.scan(body, jnp.zeros(Q), g)[0]
for name, f in (('matmul+max', mm_only), ('matmul+block_candidates', mm_cands), ('matmul+top_k', mm_topk)):
  f(g, qq).block_until_ready()
  t=time.perf_counter(); f(g, qq).block_until_ready(); dt=time.perf_counter()-t
  print(f'{name}: {dt:.2f} s  {2*Q*G*D/dt/1e9:.0f} GFLOP/s')
print(f'full search: {full:.2f} s  {2*Q*G*D/full/1e9:.0f} GFLOP/s')
import faiss
f = faiss.IndexFlatIP(D); f.add(gal)
t=time.perf_counter(); f.search(q, K+1); dt=time.perf_counter()-t
print(f'faiss: {dt:.2f} s  {2*Q*G*D/dt/1e9:.0f} GFLOP/s')
