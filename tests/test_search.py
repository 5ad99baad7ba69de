"""Blockwise sharded top-K search equals brute force (8 fake devices, uneven sizes)."""
import jax
import numpy as np
import pytest

from m5_jax.evaluate import search


def brute_force(queries, gallery, k, exclude, valid):
  scores = queries @ gallery.T
  scores[:, ~valid] = -np.inf
  rows = np.arange(len(queries))
  has = exclude >= 0
  scores[rows[has], exclude[has]] = -np.inf
  scores = np.pad(scores, ((0, 0), (0, max(0, k - scores.shape[1]))), constant_values=-np.inf)
  order = np.argsort(-scores, axis=1, kind='stable')[:, :k]
  top = np.take_along_axis(scores, order, 1)
  return top, np.where(np.isneginf(top), -1, order)


@pytest.mark.parametrize('num_items,num_queries,k,gallery_block,query_block', [
    (1003, 37, 10, 32, 16),    # uneven everything, several blocks per device
    (61, 5, 100, 8192, 1024),  # K > gallery: empty slots come back as -1
    (8, 3, 4, 1, 2),           # one row per device
])
def test_sharded_search_equals_brute_force(num_items, num_queries, k, gallery_block, query_block):
  assert jax.device_count() == 8
  rng = np.random.default_rng(num_items)
  gallery = rng.normal(size=(num_items, 12)).astype(np.float32)
  queries = rng.normal(size=(num_queries, 12)).astype(np.float32)
  valid = rng.random(num_items) > 0.15
  exclude = rng.integers(-1, num_items, num_queries)
  scores, indices = search.top_k_search(queries, gallery, k, exclude=exclude,
                                        gallery_valid=valid, query_block=query_block,
                                        gallery_block=gallery_block)
  ref_scores, ref_indices = brute_force(queries, gallery, k, exclude, valid)
  np.testing.assert_array_equal(indices, ref_indices)
  np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-5)
  # Padding and masked rows never appear; the query's own row never appears.
  returned = indices[indices >= 0]
  assert returned.max() < num_items and valid[returned].all()
  assert not (indices == exclude[:, None])[exclude >= 0].any()
  assert ((indices >= 0).sum(1) == np.minimum(k, valid.sum() - ((exclude >= 0) & valid[
      np.maximum(exclude, 0)]))).all()


def test_one_device_equals_eight_devices():
  rng = np.random.default_rng(3)
  gallery = rng.normal(size=(300, 8)).astype(np.float32)
  queries = rng.normal(size=(20, 8)).astype(np.float32)
  one = search.top_k_search(queries, gallery, 7, mesh=search.gallery_mesh(jax.devices()[:1]),
                            gallery_block=64)
  eight = search.top_k_search(queries, gallery, 7, gallery_block=16)
  np.testing.assert_array_equal(one[1], eight[1])


def test_gallery_is_reusable_and_checks_shapes():
  rng = np.random.default_rng(4)
  index = search.ShardedGallery(rng.normal(size=(50, 4)), gallery_block=4)
  a = index.search(rng.normal(size=(3, 4)), 5)
  b = index.search(rng.normal(size=(9, 4)), 5)
  assert a[1].shape == (3, 5) and b[1].shape == (9, 5)
  with pytest.raises(ValueError, match=r'\[Q, 4\]'):
    index.search(np.zeros((2, 5)), 5)


@pytest.mark.parametrize('num_items,k,gallery_block,valid_share,devices', [
    (8192, 5, 512, 0.9, 8),      # grouped candidates, 2 blocks per device, many exact ties
    (20000, 100, 8192, 0.003, 1),  # fewer valid rows than k: -1 slots through the grouped path
])
def test_grouped_candidates_keep_exact_top_k_and_tie_order(num_items, k, gallery_block,
                                                           valid_share, devices):
  # Small integer vectors: scores repeat a lot, so a wrong tie rule (which of two equal
  # scores wins) shows up as different indices from the stable brute force.
  assert search.block_candidates(np.zeros((1, gallery_block), np.float32), k + 1)[0].shape[1] \
      < gallery_block, 'this case must exercise the grouped path'
  rng = np.random.default_rng(k)
  gallery = rng.integers(-2, 3, size=(num_items, 4)).astype(np.float32)
  queries = rng.integers(-2, 3, size=(33, 4)).astype(np.float32)
  valid = rng.random(num_items) < valid_share
  exclude = rng.integers(-1, num_items, len(queries))
  mesh = search.gallery_mesh(jax.devices()[:devices])
  scores, indices = search.top_k_search(queries, gallery, k, exclude=exclude, mesh=mesh,
                                        gallery_valid=valid, gallery_block=gallery_block,
                                        query_block=16)
  ref_scores, ref_indices = brute_force(queries, gallery, k, exclude, valid)
  np.testing.assert_array_equal(indices, ref_indices)
  np.testing.assert_array_equal(scores, ref_scores)


def test_block_candidates_hold_the_top_k():
  rng = np.random.default_rng(0)
  scores = rng.normal(size=(7, 4096)).astype(np.float32)
  cand_s, cand_i = search.block_candidates(scores, 10)
  assert cand_s.shape == (7, 10 * search.GROUP)
  np.testing.assert_array_equal(np.take_along_axis(scores, np.asarray(cand_i), 1), cand_s)
  assert (np.diff(np.asarray(cand_i), axis=1) > 0).all()  # column order
  top = np.sort(scores, 1)[:, -10:]
  np.testing.assert_array_equal(np.sort(np.asarray(cand_s), 1)[:, -10:], top)


@pytest.mark.parametrize('devices', [8, 1])
@pytest.mark.parametrize('integer', [True, False])
def test_pruned_path_keeps_exact_top_k_and_tie_order(devices, integer):
  # 128-row blocks = 8 groups of 16; sparse_groups=2 prunes a block when no query has more
  # than 2 groups above its current k-th best. Integer vectors make exact ties everywhere:
  # a tie at the k-th score must go to the earlier row, as in a stable sort.
  rng = np.random.default_rng(devices + integer)
  num_items = 6000
  if integer:
    gallery = rng.integers(-2, 3, size=(num_items, 4)).astype(np.float32)
    queries = rng.integers(-2, 3, size=(40, 4)).astype(np.float32)
  else:
    gallery = rng.normal(size=(num_items, 16)).astype(np.float32)
    queries = rng.normal(size=(40, 16)).astype(np.float32)
  valid = rng.random(num_items) > 0.1
  exclude = rng.integers(-1, num_items, len(queries))
  index = search.ShardedGallery(gallery, valid=valid, gallery_block=128,
                                mesh=search.gallery_mesh(jax.devices()[:devices]))
  scores, indices = index.search(queries, 7, exclude=exclude, query_block=16, sparse_groups=2)
  ref_scores, ref_indices = brute_force(queries, gallery, 7, exclude, valid)
  np.testing.assert_array_equal(indices, ref_indices)
  np.testing.assert_array_equal(scores, ref_scores)
  stats = index.last_search_stats
  assert stats['gallery_blocks'] == 3 * -(-num_items // (128 * devices)) * devices
  assert 0 < stats['pruned_blocks'] < stats['gallery_blocks'], stats  # both paths ran


def test_pruning_off_gives_the_same_lists():
  rng = np.random.default_rng(5)
  gallery = rng.normal(size=(4096, 8)).astype(np.float32)
  queries = rng.normal(size=(24, 8)).astype(np.float32)
  index = search.ShardedGallery(gallery, gallery_block=256,
                                mesh=search.gallery_mesh(jax.devices()[:1]))
  pruned = index.search(queries, 9, sparse_groups=4)
  assert index.last_search_stats['pruned_blocks'] > 0
  dense = index.search(queries, 9, sparse_groups=0)
  assert index.last_search_stats['pruned_blocks'] == 0
  np.testing.assert_array_equal(pruned[1], dense[1])
  np.testing.assert_array_equal(pruned[0], dense[0])


def test_sparse_candidates_take_the_flagged_groups_in_column_order():
  g = search.GROUP
  grouped = np.arange(2 * 5 * g, dtype=np.float32).reshape(2, 5, g)
  above = np.array([[False, True, False, True, False],   # two flagged: groups 1 and 3
                    [False, False, False, False, True]])  # one flagged: group 4, one empty slot
  cand_s, cand_i = map(np.asarray, search.sparse_candidates(grouped, above, 2))
  assert cand_s.shape == cand_i.shape == (2, 2 * g)
  np.testing.assert_array_equal(cand_i[0], np.r_[np.arange(g, 2 * g), np.arange(3 * g, 4 * g)])
  np.testing.assert_array_equal(cand_s[0], grouped[0, [1, 3]].reshape(-1))
  np.testing.assert_array_equal(cand_i[1, :g], np.arange(4 * g, 5 * g))
  np.testing.assert_array_equal(cand_s[1, :g], grouped[1, 4])
  assert np.isneginf(cand_s[1, g:]).all()


def test_short_last_query_block_is_padded_to_tail_multiple_only(monkeypatch):
  rng = np.random.default_rng(6)
  gallery = rng.normal(size=(500, 8)).astype(np.float32)
  queries = rng.normal(size=(300, 8)).astype(np.float32)
  exclude = rng.integers(-1, 500, 300)
  index = search.ShardedGallery(gallery, gallery_block=64)
  uploaded = []
  put_global = search.put_global
  monkeypatch.setattr(search, 'put_global',
                      lambda array, sharding: uploaded.append(array.shape) or
                      put_global(array, sharding))
  scores, indices = index.search(queries, 5, exclude=exclude, query_block=256)
  ref_scores, ref_indices = brute_force(queries, gallery, 5, exclude, np.ones(500, bool))
  np.testing.assert_array_equal(indices, ref_indices)
  np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-5)
  # 300 = a block of 256 + a tail of 44, padded to TAIL_QUERIES = 128 rows, not to 256.
  assert search.TAIL_QUERIES == 128
  assert [shape[0] for shape in uploaded if len(shape) == 2] == [256, 128]
