"""k-means on device: recovers well separated clusters, deterministic, masks padding."""
import jax
import numpy as np
import pytest

from m5_jax.evaluate import kmeans, metrics, search


@pytest.fixture(scope='module')
def blobs():
  rng = np.random.default_rng(0)
  centers = rng.normal(size=(12, 16)) * 8
  labels = rng.integers(0, 12, 997)
  return centers[labels] + rng.normal(size=(997, 16)), labels


def test_recovers_separated_clusters(blobs):
  points, labels = blobs
  result = kmeans.kmeans(points, 12, seed=0, chunk=32)
  scores = metrics.clustering_metrics(labels, result.assignments)
  assert scores['nmi'] > 99.9 and scores['purity'] > 99.9
  assert result.converged and result.assignments.shape == (997,)
  # Inertia of the true partition with noise variance 1 in 16-d: about N * 16.
  assert result.inertia == pytest.approx(997 * 16, rel=0.15)


def test_deterministic_and_device_count_independent(blobs):
  points, _ = blobs
  a = kmeans.kmeans(points, 12, seed=3, chunk=64)
  b = kmeans.kmeans(points, 12, seed=3, chunk=64)
  np.testing.assert_array_equal(a.assignments, b.assignments)
  one = kmeans.kmeans(points, 12, seed=3, mesh=search.gallery_mesh(jax.devices()[:1]))
  assert metrics.clustering_metrics(a.assignments, one.assignments)['nmi'] > 99.9


def test_invalid_rows_are_ignored(blobs):
  points, labels = blobs
  valid = np.ones(len(points), bool)
  valid[::7] = False
  corrupted = points.copy()
  corrupted[~valid] = 1e6  # would grab a centroid if it were counted
  result = kmeans.kmeans(corrupted, 12, seed=0, valid=valid, chunk=32)
  assert (result.assignments[~valid] == -1).all()
  assert metrics.clustering_metrics(labels[valid], result.assignments[valid])['nmi'] > 99.9


def test_bad_k():
  with pytest.raises(ValueError, match='k=5'):
    kmeans.kmeans(np.zeros((3, 2)), 5)
