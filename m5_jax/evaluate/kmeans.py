"""k-means on device (JAX): k-means++ seeding, Lloyd iterations, sharded over devices.

Points [N, D] are split by rows over a 1-D mesh (padding rows carry weight 0).
Each Lloyd step assigns points chunk by chunk (memory O(chunk x k) per device,
never N x k), sums them per cluster with `segment_sum` and combines the shards
with one `psum`. Seeding is k-means++ (D^2 sampling, Arthur & Vassilvitskii 2007)
over the valid points (greedy, as scikit-learn), with the Gumbel-top-k trick so that
a sharded top_k does the sampling. Everything is a pure function of `seed`: the same seed gives the same
clusters on any number of devices (up to float summation order).

An empty cluster keeps its previous centroid. Convergence: the squared centroid
shift falls under `tol` x the mean per-dimension variance of the data (as
scikit-learn).
"""
from __future__ import annotations

import dataclasses
import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from m5_jax.evaluate import search

AXIS = search.AXIS


@dataclasses.dataclass
class KMeansResult:
  centroids: np.ndarray    # f32[k, D]
  assignments: np.ndarray  # int32[N]
  inertia: float           # sum of squared distances to the assigned centroid
  iterations: int
  converged: bool


def _sq_dist(points, centroids):
  """[n, k] squared distances, computed as |x|^2 - 2 x.c + |c|^2 in fp32."""
  cross = jnp.einsum('nd,kd->nk', points, centroids, precision=jax.lax.Precision.HIGHEST)
  return jnp.maximum((points ** 2).sum(-1)[:, None] - 2 * cross
                     + (centroids ** 2).sum(-1)[None, :], 0.0)


@functools.cache
def _seed_fn(mesh: Mesh, k: int, trials: int):
  """Greedy k-means++ seeding under jit on row-sharded points (GSPMD does the collectives).

  Each step draws `trials` candidates by D^2 sampling and keeps the one that
  lowers the potential most (scikit-learn's variant; plain k-means++ when
  trials == 1).
  """
  sharded = NamedSharding(mesh, P(AXIS))

  def seed(points, weights, rng):
    def gumbel_top(key, log_p, n):
      # top-n of (log p + Gumbel) samples n indices without replacement, by p.
      noise = jax.random.gumbel(key, log_p.shape, jnp.float32)
      return jax.lax.top_k(jax.lax.with_sharding_constraint(log_p + noise, sharded), n)[1]

    keys = jax.random.split(rng, k)
    log_valid = jnp.where(weights > 0, 0.0, -jnp.inf)
    first = points[gumbel_top(keys[0], log_valid, 1)[0]]
    centroids = jnp.zeros((k, points.shape[1]), jnp.float32).at[0].set(first)
    min_d2 = _sq_dist(points, first[None])[:, 0]

    def body(i, carry):
      centroids, min_d2 = carry
      # D^2 sampling; once every valid point is a centroid, fall back to uniform.
      log_p = jnp.where(weights > 0, jnp.log(min_d2), -jnp.inf)
      log_p = jnp.where(jnp.isfinite(log_p).any(), log_p, log_valid)
      candidates = points[gumbel_top(keys[i], log_p, trials)]             # [trials, D]
      new_d2 = jnp.minimum(min_d2[:, None], _sq_dist(points, candidates))  # [N, trials]
      best = jnp.argmin((new_d2 * weights[:, None]).sum(0))
      return centroids.at[i].set(candidates[best]), new_d2[:, best]

    centroids, _ = jax.lax.fori_loop(1, k, body, (centroids, min_d2))
    return centroids

  replicated = NamedSharding(mesh, P())
  return jax.jit(seed, out_shardings=replicated)


@functools.cache
def _lloyd_fn(mesh: Mesh, k: int, chunk: int):
  """One Lloyd step: (new centroids, assignments, inertia, counts)."""

  def local(points, weights, centroids):
    n_local, dim = points.shape
    chunks = (points.reshape(-1, chunk, dim), weights.reshape(-1, chunk))

    def step(carry, xs):
      sums, counts, inertia = carry
      x, w = xs
      d2 = _sq_dist(x, centroids)
      assign = jnp.argmin(d2, axis=1).astype(jnp.int32)
      sums = sums + jax.ops.segment_sum(x * w[:, None], assign, num_segments=k)
      counts = counts + jax.ops.segment_sum(w, assign, num_segments=k)
      inertia = inertia + (jnp.take_along_axis(d2, assign[:, None], 1)[:, 0] * w).sum()
      return (sums, counts, inertia), assign

    init = (jnp.zeros((k, dim), jnp.float32), jnp.zeros((k,), jnp.float32), jnp.float32(0))
    init = jax.lax.pcast(init, (AXIS,), to='varying')
    (sums, counts, inertia), assign = jax.lax.scan(step, init, chunks)
    sums, counts, inertia = jax.lax.psum((sums, counts, inertia), AXIS)
    new = jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1)[:, None], centroids)
    return new, assign.reshape(n_local), inertia, counts

  fn = jax.shard_map(local, mesh=mesh, in_specs=(P(AXIS, None), P(AXIS), P()),
                     out_specs=(P(), P(AXIS), P(), P()))
  return jax.jit(fn)


def kmeans(points: np.ndarray, k: int, *, seed: int = 0, max_iterations: int = 100,
           tol: float = 1e-4, valid: np.ndarray | None = None, mesh: Mesh | None = None,
           chunk: int = 4096) -> KMeansResult:
  """Clusters `points` [N, D] into k clusters. Rows with valid=False get assignment -1."""
  points = np.asarray(points, np.float32)
  if points.ndim != 2:
    raise ValueError(f'kmeans: points must be [N, D], got {points.shape}')
  valid = np.ones(len(points), bool) if valid is None else np.asarray(valid, bool)
  if not 1 <= k <= valid.sum():
    raise ValueError(f'kmeans: k={k} must be in [1, #valid points={int(valid.sum())}]')
  mesh = mesh or search.gallery_mesh()
  num_shards = mesh.devices.size
  per_shard = -(-len(points) // num_shards)
  chunk = int(min(chunk, per_shard))
  per_shard = -(-per_shard // chunk) * chunk
  padded = np.zeros((per_shard * num_shards, points.shape[1]), np.float32)
  padded[:len(points)] = points
  weights = np.zeros((len(padded),), np.float32)
  weights[:len(points)] = valid

  x = search.put_global(padded, NamedSharding(mesh, P(AXIS, None)))
  w = search.put_global(weights, NamedSharding(mesh, P(AXIS)))
  trials = max(1, min(2 + int(np.log(k)), int(valid.sum())))
  centroids = _seed_fn(mesh, k, trials)(x, w, jax.random.key(seed))
  threshold = tol * float(points[valid].var(axis=0).mean())

  lloyd = _lloyd_fn(mesh, k, chunk)
  converged, iteration = False, 0
  for iteration in range(1, max_iterations + 1):
    new, assign, inertia, _ = lloyd(x, w, centroids)
    shift = float(((new - centroids) ** 2).sum())
    centroids = new
    if iteration % 10 == 0:
      logging.info('kmeans: iteration %d, inertia %.4g, centroid shift %.3g',
                   iteration, float(inertia), shift)
    if shift <= threshold:
      converged = True
      break
  # Assignments and inertia for the final centroids.
  _, assign, inertia, _ = lloyd(x, w, centroids)
  assignments = search.fetch(assign)[:len(points)].astype(np.int32)
  assignments[~valid] = -1
  return KMeansResult(centroids=search.fetch(centroids),
                      assignments=assignments, inertia=float(inertia),
                      iterations=iteration, converged=converged)
