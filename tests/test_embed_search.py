"""Embeddings export (m5_jax.embed) and search (m5_jax.search) on the shared tiny
text+image M5-MMT trained on mini (`mini_trained`)."""
import os

import numpy as np
import pyarrow.dataset
import pytest

from m5_jax import config_lib
from m5_jax import embed
from m5_jax import search
from m5_jax.evaluate import model_features

pytest_plugins = ['m5_fixtures', 'train_fixtures']

SPLIT = 'pretrain'
STEP = 24


@pytest.fixture(scope='module')
def exported(mini_trained, tmp_path_factory):
  """(out dir, manifest, table, the evaluators' SplitFeatures of the split, config)."""
  out = str(tmp_path_factory.mktemp('embeddings') / 'pretrain')
  config = config_lib.validate(config_lib.load_workdir_config(mini_trained))
  manifest = embed.export(mini_trained, SPLIT, out, step=STEP, batch_size=8, part_items=8)
  embedder = model_features.Embedder(mini_trained, config, batch_size=8)
  embedder.restore(STEP)
  _, table = embed.read_embeddings(out)
  return out, manifest, table, embedder.embed(SPLIT), config


def test_export_matches_the_evaluators(exported, mini_release):
  out, manifest, table, features, config = exported
  assert manifest['num_parts'] >= 2  # the resume test below needs several parts
  assert table.num_rows == features.num_items == manifest['num_items']
  assert table.column('index').to_pylist() == list(range(table.num_rows))
  assert pyarrow.dataset.dataset(out).count_rows() == table.num_rows  # DIR reads as one table
  assert table.column('item_id').to_pylist() == model_features.read_item_ids(config,
                                                                             SPLIT).tolist()
  np.testing.assert_array_equal(table.column('label').to_numpy(), features.label)
  np.testing.assert_array_equal(table.column('instance').to_numpy(), features.instance)
  # Absent modalities are nulls, exactly where the release lacks them (the generator's list).
  _, release_manifest = mini_release
  absent = {(item, m) for item, m, _ in release_manifest['absent_raw']}
  ids = table.column('item_id').to_pylist()
  nulls = 0
  for m in ('text', 'image'):
    vectors, present = embed.column_vectors(table.column(m), manifest['dim'])
    np.testing.assert_array_equal(present, [(i, m) not in absent for i in ids])
    np.testing.assert_array_equal(present, features.present[m])
    np.testing.assert_allclose(vectors[present], features.pooled[m][present], atol=1e-6)
    nulls += int((~present).sum())
  assert nulls > 0
  # fused = the evaluators' combined feature of all modalities (normalize=center).
  fused, has_any = embed.column_vectors(table.column(embed.FUSED), manifest['dim'])
  combined = features.combine(('text', 'image'), 'center')
  np.testing.assert_array_equal(has_any, combined.has_any)
  np.testing.assert_allclose(fused, combined.features, atol=1e-5)


def test_resume_embeds_only_a_missing_part(exported, mini_trained, capsys):
  out, manifest, table, _, _ = exported
  os.remove(os.path.join(out, embed.part_name(1)))
  with pytest.raises(embed.EmbedError, match='missing'):
    embed.read_embeddings(out)
  capsys.readouterr()
  embed.export(mini_trained, SPLIT, out, batch_size=8, part_items=8)  # step from manifest
  printed = capsys.readouterr().out
  assert f'{manifest["num_parts"]} parts, 1 to do' in printed
  assert '1 parts embedded, 1 fused' in printed  # the other parts keep their fused column
  _, again = embed.read_embeddings(out)
  assert again.equals(table)


def test_search_by_id_excludes_the_item_and_ranks_by_dot_product(exported):
  out, manifest, table, features, _ = exported
  combined = features.combine(('text', 'image'), 'center')
  row = int(np.flatnonzero(combined.has_any)[0])
  item = table.column('item_id')[row].as_py()
  results, query_row, _ = search.search(out, query_id=item, modalities='T,I', k=5)
  assert query_row == row
  scores = combined.features[combined.has_any] @ combined.features[row]
  candidates = np.flatnonzero(combined.has_any)
  expected = [c for c in candidates[np.argsort(-scores, kind='stable')] if c != row][:5]
  assert [r['index'] for r in results] == expected  # the item itself is left out
  np.testing.assert_allclose([r['score'] for r in results],
                             combined.features[expected] @ combined.features[row], atol=1e-4)


def test_search_by_text_embeds_with_the_text_tower(exported):
  out, _, table, features, _ = exported
  text_rows = np.flatnonzero(features.present['text'])
  title = table.column('title')[int(text_rows[0])].as_py()
  results, _, _ = search.search(out, query_text=title, modalities='T', k=4)
  scores = [r['score'] for r in results]
  assert len(results) == 4 and scores == sorted(scores, reverse=True)
  # A title embedded as a query is that item's own text vector: the item ranks first.
  assert results[0]['index'] == int(text_rows[0])
  assert results[0]['score'] == pytest.approx(1.0, abs=1e-4)


def test_bad_inputs_are_one_line(exported, mini_trained, tmp_path, capsys):
  out = exported[0]
  (tmp_path / 'a_file').write_text('')
  cases = [
      (embed.main, ['--workdir', mini_trained, '--split', SPLIT, '--out',
                    str(tmp_path / 'a_file')], 'is a file'),
      (embed.main, ['--workdir', mini_trained, '--split', SPLIT, '--out', out, '--feature',
                    'encoder_pooled'], "feature='pooled', not 'encoder_pooled'"),
      (embed.main, ['--workdir', str(tmp_path / 'nope'), '--split', SPLIT, '--out', str(tmp_path)],
       'no run at'),
      (search.main, ['--embeddings', str(tmp_path), '--query-id', 'x'], 'no embeddings in'),
      (search.main, ['--embeddings', out, '--query-id', 'no-such-item'], 'is not in'),
      (search.main, ['--embeddings', out, '--query-id', 'x', '--modalities', 'Q'],
       'bad modality set'),
      (search.main, ['--embeddings', out, '--query-id', '0', '--query-text', 'a'], 'one of'),
      (search.main, ['--embeddings', out, '--query-text', 'a', '--faiss-index',
                     str(tmp_path / 'index')], 'faiss'),
  ]
  for main, argv, message in cases:
    if message == 'faiss' and _has_faiss():
      continue
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], (argv, err)


def _has_faiss():
  try:
    import faiss  # pylint: disable=g-import-not-at-top,unused-import
    return True
  except ImportError:
    return False


def test_faiss_index_ranks_like_the_sharded_search(exported, tmp_path, capsys):
  faiss = pytest.importorskip('faiss')  # in requirements-test.txt; optional for users
  out, _, table, _, _ = exported
  path = str(tmp_path / 'gallery.faiss')
  item = table.column('item_id')[0].as_py()
  assert search.main(['--embeddings', out, '--query-id', item, '--k', '5',
                      '--faiss-index', path]) == 0
  assert path in capsys.readouterr().out
  results, row, (_, _, gallery) = search.search(out, query_id=item, k=5)
  index = faiss.read_index(path)
  assert index.ntotal == int(gallery.has_any.sum())
  scores, ids = index.search(gallery.features[row][None].astype(np.float32), 6)
  # faiss does not know the query is excluded: drop its own id, keep the first five.
  kept = [(s, i) for s, i in zip(scores[0], ids[0]) if i != row][:5]
  assert [int(i) for _, i in kept] == [r['index'] for r in results]
  np.testing.assert_allclose([s for s, _ in kept], [r['score'] for r in results], atol=1e-4)
