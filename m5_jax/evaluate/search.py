"""Exact top-K dot-product search, sharded over devices and blockwise.

The gallery [N, D] is split by rows over every device of a 1-D mesh. A block of
queries is replicated; each device scans its rows in blocks of `gallery_block`,
keeping a running top-K (scores [Qb, K]), so memory is O(Qb x gallery_block) per
device and a 1M-item gallery never needs a Q x N (let alone N x N) matrix. The
per-device top-K lists are then all-gathered and merged into the global top-K.

Selection per block costs little next to the matmul. A block is cut into groups
of GROUP rows; only a group whose best score beats a query's current K-th best
can change that query's list. Once the lists have filled, that is a few groups
per block, so when no query of the block has more than `sparse_groups` of them
the block's update reads only those (the pruned path); otherwise it keeps the
K + 1 groups with the largest maxima (`block_candidates`). Both are exact and
break ties as a stable sort of the whole row does: the lower row wins.

Rows added to pad the gallery to a multiple of (devices x block) and rows the
caller marks invalid score -inf; a query's own item (`exclude`, a gallery row
index, -1 for none) scores -inf for that query only. Slots the gallery cannot
fill (fewer than K valid rows) come back as index -1 with score -inf, so padding
never reaches a result.

Works multi-host: every host passes the same full numpy arrays; each host
uploads only the rows its devices own (`make_array_from_callback`).
"""
from __future__ import annotations

import functools
import logging
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = 'gallery'
NEG_INF = -np.inf
GROUP = 16  # rows per group in block_candidates and sparse_candidates
SPARSE_GROUPS = 16  # groups per block the pruned path takes (ShardedGallery.search)
# Gallery rows per scan step. A 1024-query x 4096-row fp32 score block (16 MB) stays in
# a CPU's last-level cache: XLA:CPU's matmul ran at 199-205 GFLOP/s at that shape on
# the 2-core benchmark VM against 166-177 with 16384 rows (64 MB), benchmarks/RESULTS.md.
GALLERY_BLOCK = 4096
TAIL_QUERIES = 128  # a short last query block is padded to a multiple of this


def gallery_mesh(devices=None) -> Mesh:
  """A 1-D mesh over all (or the given) devices, gallery rows sharded over it."""
  devices = np.asarray(jax.devices() if devices is None else devices)
  return Mesh(devices.reshape(-1), (AXIS,))


def put_global(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """A host array that every process holds in full -> a global jax.Array."""
  return jax.make_array_from_callback(array.shape, sharding, lambda idx: array[idx])


def fetch(array: jax.Array) -> np.ndarray:
  """A global jax.Array -> numpy on every host (also when not fully addressable)."""
  if array.is_fully_addressable:
    return np.asarray(array)
  if array.sharding.is_fully_replicated:
    return np.asarray(array.addressable_data(0))
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(array, tiled=True))


class ShardedGallery:
  """Gallery embeddings resident on the mesh, padded and masked; search it many times."""

  def __init__(self, embeddings: np.ndarray, *, valid: np.ndarray | None = None,
               mesh: Mesh | None = None, gallery_block: int = GALLERY_BLOCK,
               dtype=jnp.float32):
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2:
      raise ValueError(f'gallery must be [N, D], got shape {embeddings.shape}')
    self.mesh = mesh or gallery_mesh()
    self.num_items, self.dim = embeddings.shape
    num_shards = self.mesh.devices.size
    per_shard = -(-max(self.num_items, 1) // num_shards)
    self.block = int(min(gallery_block, per_shard))
    self.per_shard = -(-per_shard // self.block) * self.block
    padded = self.per_shard * num_shards

    rows = np.zeros((padded, self.dim), dtype=np.dtype(dtype))
    rows[:self.num_items] = embeddings
    mask = np.zeros((padded,), bool)
    mask[:self.num_items] = True if valid is None else np.asarray(valid, bool)
    self.num_valid = int(mask.sum())
    self.embeddings = put_global(rows, NamedSharding(self.mesh, P(AXIS, None)))
    self.valid = put_global(mask, NamedSharding(self.mesh, P(AXIS)))
    self.last_search_stats = {}  # of the latest search(): blocks scanned and pruned

  def search(self, queries: np.ndarray, k: int, *, exclude: np.ndarray | None = None,
             query_block: int = 1024, precision=jax.lax.Precision.HIGHEST,
             sparse_groups: int = SPARSE_GROUPS, log_every_s: float = 30.0
             ) -> tuple[np.ndarray, np.ndarray]:
    """Top-k gallery rows per query: (scores f32[Q, k], indices int32[Q, k]).

    exclude: int[Q] gallery row to drop from each query's ranking (-1: none).
    sparse_groups: most groups of GROUP rows per query the pruned path takes from a
      gallery block (0: never prune; same results either way, see the module doc).
    """
    queries = np.asarray(queries)
    if queries.ndim != 2 or queries.shape[1] != self.dim:
      raise ValueError(f'queries must be [Q, {self.dim}], got {queries.shape}')
    num_queries = queries.shape[0]
    exclude = (np.full((num_queries,), -1, np.int32) if exclude is None
               else np.asarray(exclude, np.int32))
    query_block = int(max(1, min(query_block, num_queries)))
    fn = _search_fn(self.mesh, int(k), self.block, precision, int(sparse_groups))
    replicated = NamedSharding(self.mesh, P())

    results = []  # (scores, indices, pruned blocks, rows used): async, fetched at the end
    start = last_log = time.time()
    for lo in range(0, num_queries, query_block):
      hi = min(lo + query_block, num_queries)
      # A short last block is padded to a multiple of TAIL_QUERIES, not to a whole
      # block: that costs one more compile and saves up to a block of wasted matmul.
      rows = min(query_block, -(-(hi - lo) // TAIL_QUERIES) * TAIL_QUERIES)
      block_queries = np.zeros((rows, self.dim), self.embeddings.dtype)
      block_queries[:hi - lo] = queries[lo:hi]
      block_exclude = np.full((rows,), -1, np.int32)
      block_exclude[:hi - lo] = exclude[lo:hi]
      scores, indices, pruned = fn(self.embeddings, self.valid,
                                   put_global(block_queries, replicated),
                                   put_global(block_exclude, replicated))
      results.append((scores, indices, pruned, hi - lo))
      if time.time() - last_log > log_every_s:
        jax.block_until_ready(scores)
        last_log = time.time()
        rate = hi / (last_log - start)
        logging.info('search: %d/%d queries, %.0f queries/s, ETA %.0f s', hi, num_queries,
                     rate, (num_queries - hi) / rate)
    if not results:
      return np.zeros((0, k), np.float32), np.zeros((0, k), np.int32)
    blocks = len(results) * self.mesh.devices.size * (self.per_shard // self.block)
    pruned = sum(int(fetch(p)) for _, _, p, _ in results)
    self.last_search_stats = {'gallery_blocks': blocks, 'pruned_blocks': pruned}
    logging.info('search: %d queries, %d of %d gallery blocks took the pruned path',
                 num_queries, pruned, blocks)
    return (np.concatenate([fetch(scores)[:n] for scores, _, _, n in results]),
            np.concatenate([fetch(indices)[:n] for _, indices, _, n in results]))


def _take_groups(grouped: jax.Array, groups: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The rows of `grouped` [Q, G, GROUP] at group indices `groups` [Q, C], flattened:
  (scores [Q, C * GROUP], their column indices in the ungrouped row)."""
  num_q, num_groups = groups.shape
  cand_s = jnp.take_along_axis(grouped, groups[:, :, None], axis=1)
  cand_i = groups[:, :, None] * GROUP + jnp.arange(GROUP, dtype=jnp.int32)
  return cand_s.reshape(num_q, num_groups * GROUP), cand_i.reshape(num_q, num_groups * GROUP)


def block_candidates(scores: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """A [Q, C] subset of each row of `scores` [Q, n] that holds its exact top k.

  Returns (scores, column indices), columns in increasing order, so a later
  lax.top_k breaks ties towards the lower column exactly as on the full row.
  Split the row into groups of GROUP columns: a group whose maximum is below the
  k-th largest group maximum holds no top-k entry (k larger ones exist), so only
  the k groups with the largest maxima (ties: lower group first, which keeps
  tied entries of lower columns) can hold one. lax.top_k then runs on
  k * GROUP + k columns instead of n (6x fewer at n = 16384, k = 100), which is
  most of the selection cost next to the matmul.
  """
  num_q, n = scores.shape
  if n % GROUP or n < 8 * k * GROUP // 2:  # too few groups to gain: keep the whole row
    return scores, jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (num_q, n))
  grouped = scores.reshape(num_q, n // GROUP, GROUP)
  _, groups = jax.lax.top_k(grouped.max(axis=2), k)
  groups = jnp.sort(groups, axis=1)  # column order for the tie rule above
  return _take_groups(grouped, groups)


def sparse_candidates(grouped: jax.Array, above: jax.Array, num_groups: int
                      ) -> tuple[jax.Array, jax.Array]:
  """The first `num_groups` groups flagged in `above` [Q, G] of `grouped` [Q, G, GROUP].

  Returns (scores [Q, num_groups * GROUP], column indices), columns increasing;
  slots beyond a row's flagged groups score -inf. Exact when no row flags more
  than `num_groups` groups (the caller checks).
  """
  num_g = grouped.shape[1]
  # Largest key = lowest flagged group, so top_k returns them in column order
  # (a float key: XLA:CPU's TopK kernel is f32; an int key falls back to a sort).
  key = jnp.where(above, jnp.float32(num_g) - jnp.arange(num_g, dtype=jnp.float32), 0.0)
  _, groups = jax.lax.top_k(key, num_groups)
  flagged = jnp.repeat(jnp.take_along_axis(above, groups, axis=1), GROUP, axis=1)
  cand_s, cand_i = _take_groups(grouped, groups)
  return jnp.where(flagged, cand_s, NEG_INF), cand_i


@functools.cache
def _search_fn(mesh: Mesh, k: int, block: int, precision, sparse_groups: int):
  """Compiled search of one replicated query block against the sharded gallery."""

  def local_top_k(gallery, valid, queries, exclude):
    # gallery: this device's rows [n_local, D]; queries replicated [Qb, D].
    n_local = gallery.shape[0]
    first_row = jax.lax.axis_index(AXIS) * n_local
    blocks = gallery.reshape(n_local // block, block, -1)
    block_valid = valid.reshape(n_local // block, block)
    num_q = queries.shape[0]
    # Pruning needs whole groups, and enough of them to leave most out.
    prune = block % GROUP == 0 and block // GROUP > 2 * sparse_groups > 0

    def merge(best, cand_s, cand_i):
      """The running top-k (carry first: on equal scores the earlier, lower row wins)."""
      cand_s = jnp.where(cand_i == exclude[:, None], NEG_INF, cand_s)
      all_s = jnp.concatenate([best[0], cand_s], axis=1)
      all_i = jnp.concatenate([best[1], cand_i], axis=1)
      top_s, pos = jax.lax.top_k(all_s, k)
      return top_s, jnp.take_along_axis(all_i, pos, axis=1)

    def scan_block(best, xs):
      b, rows, ok = xs
      s = jnp.einsum('qd,nd->qn', queries, rows, precision=precision,
                     preferred_element_type=jnp.float32)
      offset = first_row + b * block

      def dense(best):
        # Invalid rows: a -inf bias per row, fused into the readers of s (no masked copy).
        masked = s + jnp.where(ok, 0.0, NEG_INF)[None, :]
        # The query's own row is dropped from the candidates, not from s: one spare
        # candidate keeps the top k exact when it was among them.
        cand_s, cand_i = block_candidates(masked, k + 1)
        return merge(best, cand_s, offset + cand_i)

      if not prune:
        return dense(best), False

      # Only a score above a query's current k-th best can enter its list (an equal
      # one loses the tie to the earlier row), so only groups whose maximum is above
      # it matter. Once the lists have filled, that is a few groups per block: take
      # those alone, unless some query of the block has more (then the dense path).
      # The maxima are of the unmasked scores: an invalid row can only flag a group
      # too many, and its candidate is masked below. Computing the maxima and
      # everything else of a branch from s itself keeps s the only [Qb, block] array.
      grouped = s.reshape(num_q, block // GROUP, GROUP)
      above = grouped.max(axis=2) > best[0][:, -1:]
      few = above.sum(axis=1).max() <= sparse_groups

      def sparse(best):
        cand_s, cand_i = sparse_candidates(grouped, above, sparse_groups)
        cand_s = jnp.where(ok[cand_i], cand_s, NEG_INF)
        return merge(best, cand_s, offset + cand_i)

      return jax.lax.cond(few, sparse, dense, best), few

    init = (jnp.full((num_q, k), NEG_INF, jnp.float32), jnp.full((num_q, k), -1, jnp.int32))
    init = jax.lax.pcast(init, (AXIS,), to='varying')  # the carry differs per device
    xs = (jnp.arange(blocks.shape[0], dtype=jnp.int32), blocks, block_valid)
    (best_s, best_i), pruned = jax.lax.scan(scan_block, init, xs)
    return best_s, best_i, pruned.sum(keepdims=True, dtype=jnp.int32)

  # Each device's list lands in its own column block: [Qb, devices * k].
  per_device = jax.shard_map(local_top_k, mesh=mesh,
                             in_specs=(P(AXIS, None), P(AXIS), P(), P()),
                             out_specs=(P(None, AXIS), P(None, AXIS), P(AXIS)))

  def merged(gallery, valid, queries, exclude):
    all_s, all_i, pruned = per_device(gallery, valid, queries, exclude)
    top_s, pos = jax.lax.top_k(all_s, k)
    top_i = jnp.take_along_axis(all_i, pos, axis=1)
    return top_s, jnp.where(jnp.isneginf(top_s), -1, top_i), pruned.sum()

  replicated = NamedSharding(mesh, P())
  return jax.jit(merged, out_shardings=(replicated, replicated, replicated))


def top_k_search(queries: np.ndarray, gallery: np.ndarray, k: int, *,
                 exclude: np.ndarray | None = None, gallery_valid: np.ndarray | None = None,
                 mesh: Mesh | None = None, query_block: int = 1024,
                 gallery_block: int = GALLERY_BLOCK) -> tuple[np.ndarray, np.ndarray]:
  """One-shot `ShardedGallery(gallery).search(queries, k)`; see the module doc."""
  index = ShardedGallery(gallery, valid=gallery_valid, mesh=mesh, gallery_block=gallery_block)
  return index.search(queries, k, exclude=exclude, query_block=query_block)
