"""Evaluation with fake models of known answers, subsets, the done-list runner, reports."""
import json
import os

import numpy as np
import pytest

from m5_jax import config_lib
from m5_jax.evaluate import classification, clustering, features, metrics, report, retrieval, runner
from m5_jax.evaluate import plots
from m5_jax.evaluate import results_io
from m5_jax.evaluate import tables as eval_tables

MODALITIES = ('text', 'table', 'image')


def fake_split(labels, vectors_by_modality, present=None):
  num = len(labels)
  present = present or {m: np.ones(num, bool) for m in vectors_by_modality}
  return features.SplitFeatures(
      pooled={m: np.asarray(v, np.float32) for m, v in vectors_by_modality.items()},
      present=present, label=np.asarray(labels), instance=np.asarray(labels))


def perfect_vectors(labels, num_classes, dim=32, noise=0.0, seed=0):
  """One direction per class (+ optional noise): a model that knows the answer."""
  rng = np.random.default_rng(seed)
  directions = np.linalg.qr(rng.normal(size=(dim, dim)))[0][:num_classes]
  return directions[labels] + noise * rng.normal(size=(len(labels), dim))


@pytest.fixture(scope='module')
def toy():
  rng = np.random.default_rng(0)
  num_classes = 8
  q_labels, g_labels = rng.integers(0, num_classes, 120), rng.integers(0, num_classes, 400)
  query = fake_split(q_labels, {'text': perfect_vectors(q_labels, num_classes),
                                'table': rng.normal(size=(120, 32)),
                                'image': perfect_vectors(q_labels, num_classes, noise=0.3)})
  gallery = fake_split(g_labels, {'text': perfect_vectors(g_labels, num_classes),
                                  'table': rng.normal(size=(400, 32)),
                                  'image': perfect_vectors(g_labels, num_classes, noise=0.3)})
  return query, gallery, num_classes


def test_perfect_embeddings_give_map_100_and_random_give_chance(toy):
  query, gallery, num_classes = toy
  pairs = retrieval.parse_pairs('T,P', MODALITIES)
  out = retrieval.evaluate_sets(query, gallery, 'label', pairs)
  perfect, rand = out['sets']['T'], out['sets']['P']
  for k in (1, 5, 10, 50, 100):
    assert perfect[f'm5_map@{k}'] == pytest.approx(100.0)
    assert perfect[f'm5_prec@{k}'] == pytest.approx(100.0)
  assert perfect['recall@100'] > 95.0  # ~50 positives per query, all in the top 100
  # Random features: precision is the positives' share of the gallery (~1/8).
  share = 100.0 * np.mean([(gallery.label == l).mean() for l in query.label])
  assert rand['m5_prec@10'] == pytest.approx(share, abs=4.0)
  assert rand['m5_prec@100'] == pytest.approx(share, abs=2.5)
  assert rand['m5_map@1'] < 35.0
  assert out['curves']['T']['m5_prec'][0] == pytest.approx(100.0)


def test_query_excluded_from_its_own_ranking(toy):
  query, _, _ = toy
  # Gallery = the query split itself: without exclusion every query finds itself first.
  singletons = fake_split(np.arange(120), {'text': np.eye(120, 32, dtype=np.float32) + 1.0})
  pairs = retrieval.parse_pairs('T', ('text',))
  excluded = retrieval.evaluate_sets(singletons, singletons, 'label', pairs,
                                     exclude=retrieval.exclusions(range(120), range(120)))
  assert excluded['sets']['T']['num_queries'] == 0  # nobody has another positive
  assert excluded['sets']['T']['queries_without_positives'] == 120
  self_match = retrieval.evaluate_sets(query, query, 'label', pairs,
                                       exclude=np.arange(120, dtype=np.int32))
  assert self_match['sets']['T']['m5_map@1'] == pytest.approx(100.0)  # other same-class items


def test_subsets_sum_present_modalities_and_count_missing():
  labels = np.array([0, 1, 2])
  split = fake_split(labels, {'text': np.eye(3, 4), 'image': 2 * np.eye(3, 4)[::-1]},
                     present={'text': np.array([1, 0, 1], bool), 'image': np.array([1, 0, 0], bool)})
  both = split.combine(('text', 'image'), normalize='none')
  np.testing.assert_allclose(both.features[0], [1, 0, 2, 0])
  np.testing.assert_allclose(both.features[1], 0)
  np.testing.assert_allclose(both.features[2], [0, 0, 1, 0])
  np.testing.assert_array_equal(both.has_any, [True, False, True])
  assert both.missing == {'text': 1, 'image': 2}
  unit = split.combine(('text', 'image'), normalize='modality', fusion='sum_dot')
  np.testing.assert_allclose(unit.features[0], [1, 0, 1, 0])
  cosine = split.combine(('text', 'image'), normalize='modality')   # 'sum': unit norm
  np.testing.assert_allclose(cosine.features[0], np.array([1, 0, 1, 0]) / np.sqrt(2))
  np.testing.assert_allclose(cosine.features[2], [0, 0, 1, 0])
  np.testing.assert_allclose(cosine.features[1], 0)                 # nothing present: zero


def test_sum_fusion_is_a_cosine_so_agreeing_modalities_do_not_make_hubs():
  # Query q has text and image pointing at direction 0 plus a private detail.
  # Gallery: the true match m (same details, its image off the shared direction)
  # and a hub h whose two modalities both sit exactly on the shared direction: its
  # sum is longer, so the unnormalised dot product ranks it first.
  e = np.eye(4)
  text = np.stack([e[0] + e[1], e[0] + e[1], e[0]])
  image = np.stack([e[0] + e[2], e[2] + 0.5 * e[3], e[0]])
  query = fake_split(np.array([0]), {'text': text[:1], 'image': image[:1]})
  gallery = fake_split(np.array([0, 1]), {'text': text[1:], 'image': image[1:]})
  def scores(fusion):
    q = query.combine(('text', 'image'), normalize='modality', fusion=fusion).features
    g = gallery.combine(('text', 'image'), normalize='modality', fusion=fusion).features
    return (q @ g.T)[0]
  unit = {m: v / np.linalg.norm(v, axis=1, keepdims=True) for m, v in (('text', text), ('image', image))}
  sums = unit['text'] + unit['image']
  np.testing.assert_allclose(scores('sum_dot'), sums[1:] @ sums[0], rtol=1e-5)
  cosines = (sums[1:] @ sums[0]) / np.linalg.norm(sums[1:], axis=1) / np.linalg.norm(sums[0])
  np.testing.assert_allclose(scores('sum'), cosines, rtol=1e-5)
  assert scores('sum_dot').argmax() == 1 and scores('sum').argmax() == 0


def test_concat_fusion_scores_the_sum_of_per_modality_similarities():
  rng = np.random.default_rng(0)
  vectors = {'text': rng.normal(size=(4, 3)), 'image': rng.normal(size=(4, 3))}
  present = {'text': np.array([1, 1, 1, 0], bool), 'image': np.array([1, 0, 1, 1], bool)}
  split = fake_split(np.arange(4), vectors, present=present)
  cat = split.combine(('text', 'image'), normalize='modality', fusion='concat')
  assert cat.features.shape == (4, 6)
  np.testing.assert_array_equal(cat.has_any, [True, True, True, True])
  unit = {m: v / np.linalg.norm(v, axis=1, keepdims=True) for m, v in vectors.items()}
  count = present['text'].astype(int) + present['image']
  for a in range(4):
    for b in range(4):
      expected = sum(unit[m][a] @ unit[m][b] for m in unit if present[m][a] and present[m][b])
      expected /= np.sqrt(count[a] * count[b])
      assert cat.features[a] @ cat.features[b] == pytest.approx(expected, abs=1e-6)
  # The sum keeps the cross-modal products that concat drops (items 0 and 2 have both).
  total = split.combine(('text', 'image'), normalize='modality', fusion='sum_dot')
  cross = unit['text'][0] @ unit['image'][2] + unit['image'][0] @ unit['text'][2]
  assert total.features[0] @ total.features[2] == pytest.approx(
      2 * cat.features[0] @ cat.features[2] + cross, abs=1e-5)
  with pytest.raises(ValueError, match='fusion'):
    split.combine(('text',), fusion='mean')


def test_centering_removes_the_common_component_that_hides_content():
  # Two modalities whose vectors share a large offset (like transformer outputs);
  # class c is a small direction on top of it. Half the items lack the image.
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(4), 20)
  eye = np.eye(16)
  offset = {'text': 10.0 * eye[8:12].sum(0), 'image': 10.0 * eye[12:16].sum(0)}
  vectors = {m: offset[m] + eye[labels + 4 * (m == 'image')] + 0.05 * rng.normal(size=(80, 16))
             for m in offset}
  present = {'text': np.ones(80, bool), 'image': np.arange(80) % 2 == 0}
  split = fake_split(labels, vectors, present=present)
  pair = [(('text', 'image'), ('text', 'image'))]
  exclude = np.arange(80, dtype=np.int32)

  def precision_at_positives(normalize):  # M5Product P@K: k = min(K, #positives) = 19
    out = retrieval.evaluate_sets(split, split, 'label', pair, exclude=exclude,
                                  normalize=normalize)
    return out['sets']['T+I']['m5_prec@50']

  # L2 only: items with the same modalities present outrank same-class items with
  # other modalities, so about half of each query's 19 positives are missed.
  assert precision_at_positives('modality') < 60.0
  # Centred on the gallery's means: the class directions decide.
  assert precision_at_positives('center') == pytest.approx(100.0)
  means = split.modality_means()
  np.testing.assert_allclose(means['text'], vectors['text'].mean(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(means['image'], vectors['image'][present['image']].mean(0),
                             rtol=1e-5, atol=1e-6)


def test_items_without_features_are_counted_not_ranked():
  labels = np.array([0, 0, 1, 1])
  vectors = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], np.float32)
  present = np.array([True, False, True, True])
  split = fake_split(labels, {'image': vectors}, present={'image': present})
  out = retrieval.evaluate_sets(split, split, 'label', [(('image',), ('image',))],
                                exclude=np.arange(4, dtype=np.int32))
  metrics = out['sets']['I']
  assert metrics['queries_without_features'] == 1 and metrics['gallery_without_features'] == 1
  # Query 0's only other class-0 item has no image: no positive, counted.
  assert metrics['queries_without_positives'] == 1 and metrics['num_queries'] == 2
  assert metrics['m5_map@1'] == pytest.approx(100.0)


def test_parse_pairs_and_labels():
  pairs = retrieval.parse_pairs('IT,T:I,all', MODALITIES)
  assert pairs[0] == (('text', 'image'), ('text', 'image'))
  assert pairs[1] == (('text',), ('image',))
  assert [retrieval.pair_label(*p) for p in pairs] == ['T+I', 'T->I', 'T+P+I']
  assert retrieval.default_subsets(MODALITIES) == 'T,P,I,IT,all'
  with pytest.raises(config_lib.ConfigError, match='bad modality set'):
    retrieval.parse_pairs('X', MODALITIES)


def test_parse_subsets_takes_sets_and_refuses_retrieval_pairs():
  assert features.parse_subsets('IT,P', MODALITIES) == [('text', 'image'), ('table',)]
  assert features.parse_subsets('', MODALITIES) == [
      ('text',), ('table',), ('image',), ('text', 'image'), MODALITIES]
  with pytest.raises(config_lib.ConfigError, match='T:I: a query:gallery pair is for retrieval'):
    features.parse_subsets('T,T:I', MODALITIES)


def test_linear_probe_and_clustering_on_known_features(toy):
  query, gallery, num_classes = toy
  probe = classification.linear_probe(gallery.combine(('text',)).features, gallery.label,
                                      num_classes, seed=0)
  perfect = classification.predict(probe, query.combine(('text',)).features)
  assert (perfect == query.label).all()
  rand = classification.linear_probe(gallery.combine(('table',)).features, gallery.label,
                                     num_classes, seed=0)
  assert (classification.predict(rand, query.combine(('table',)).features)
          == query.label).mean() < 0.4
  result, units = clustering.cluster(gallery.combine(('text',)), gallery.label, seed=0)
  assert result['nmi'] > 99.0 and result['purity'] > 99.0 and result['k'] == num_classes
  assert result['ci95']['nmi'][1] == pytest.approx(100.0) and result['ci95']['nmi'][0] > 98.0
  np.testing.assert_array_equal(units['unit'], np.arange(len(gallery.label)))
  np.testing.assert_array_equal(units['label'], gallery.label)
  assert units['cluster'].shape == gallery.label.shape


def test_restarted_evaluator_resumes_from_done_list(tmp_path):
  options = runner.Options(workdir=str(tmp_path), all=True)
  calls = []

  def crash_at_2(step):
    calls.append(step)
    if step == 2:
      raise KeyboardInterrupt  # the evaluator dies mid-run
  with pytest.raises(KeyboardInterrupt):
    runner.run('toy', options, lambda: [1, 2, 3], crash_at_2)
  assert calls == [1, 2]
  calls.clear()
  assert runner.run('toy', options, lambda: [1, 2, 3], calls.append) == [2, 3]
  assert calls == [2, 3]
  calls.clear()
  assert runner.run('toy', options, lambda: [1, 2, 3], calls.append) == []
  # Other subsets are a different evaluation; --force redoes.
  other = runner.Options(workdir=str(tmp_path), all=True, subsets='T')
  assert runner.run('toy', other, lambda: [1, 2, 3], calls.append) == [1, 2, 3]
  forced = runner.Options(workdir=str(tmp_path), step=3, force=True)
  assert runner.run('toy', forced, lambda: [1, 2, 3], calls.append) == [3]


def test_watch_waits_for_new_checkpoints_and_stops_at_final(tmp_path):
  listings = iter([[10], [10], [10, 20], [10, 20, 30]])
  current = {'steps': []}

  def list_steps():
    current['steps'] = next(listings, current['steps'])
    return current['steps']
  evaluated = runner.run('toy', runner.Options(workdir=str(tmp_path), watch=True, poll_s=0),
                         list_steps, lambda step: None, final_step=30, sleep=lambda s: None)
  assert evaluated == [10, 20, 30]


def test_vanished_checkpoint_is_skipped(tmp_path):
  def gone(step):
    raise FileNotFoundError(f'step {step} deleted')
  assert runner.run('toy', runner.Options(workdir=str(tmp_path), all=True), lambda: [5],
                    gone) == []


def test_flags_parse_strictly():
  options, extra, overrides = runner.parse_flags(
      ['--workdir', '/w', '--all', '--subsets=IT,T:I', '--config.input.batch_size=4'],
      {'finetuned': False})
  assert options.all and options.subsets == 'IT,T:I' and extra == {'finetuned': False}
  assert overrides == [('input.batch_size', '4')]
  with pytest.raises(config_lib.ConfigError, match='--subsets'):
    runner.parse_flags(['--workdir=/w', '--subset=T'])
  with pytest.raises(config_lib.ConfigError, match='at most one'):
    runner.parse_flags(['--workdir=/w', '--all', '--watch'])


def test_reports_write_json_tables_tensorboard_and_plots(tmp_path, toy):
  query, gallery, num_classes = toy
  results = retrieval.evaluate_sets(query, gallery, 'label',
                                    retrieval.parse_pairs('T,IT', MODALITIES))
  workdir = str(tmp_path)
  path = results_io.write_step(workdir, 'coarse_retrieval', 7, results,
                           eval_tables.retrieval_tables(results))
  with open(path) as f:
    saved = json.load(f)
  assert saved['step'] == 7 and saved['sets']['T']['m5_map@1'] == pytest.approx(100.0)
  out_dir = runner.output_dir(workdir, 'coarse_retrieval')
  assert any(name.startswith('events.out.tfevents') for name in os.listdir(out_dir))
  cls = {'sets': {'T': {'accuracy': 91.5}, 'T+I': {'accuracy': 95.0}}}
  table = report.paper_table(cls, report.load_step(workdir, 'coarse_retrieval'))
  assert table.splitlines()[0] == ('| Modalities | Acc | mAP@1 | mAP@5 | mAP@10 | P@1 | P@5 | P@10 '
                                   '| eval set |')
  assert '| T | 91.50 | 100.0 [100.0, 100.0] |' in table
  png = plots.plot_precision_curves(results['curves'], str(tmp_path / 'p.png'))
  proj = plots.plot_projection(gallery.pooled['image'], gallery.label, str(tmp_path / 'x.png'))
  tail = plots.plot_long_tail({0: 90.0, 1: 50.0}, {0: 100, 1: 3}, str(tmp_path / 't.png'))
  for p in (png, proj, tail):
    with open(p, 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_variants_get_their_own_folder_and_subsets_merge(tmp_path):
  workdir = str(tmp_path)
  default = runner.Options(workdir=workdir)
  other = runner.Options(workdir=workdir, feature='encoder_pooled')
  assert runner.variant_of(default) == ''
  assert runner.variant_of(other) == 'feature=encoder_pooled'
  # Task flags count where not default; the fine-tuned mode is not a variant.
  assert runner.variant_of(default, {'split': 'cls_train', 'finetuned': True},
                           {'split': 'cls_test', 'finetuned': False}) == 'split=cls_train'
  assert runner.variant_of(default, {'split': 'cls_test'}, {'split': 'cls_test'}) == ''
  # Another feature at the same step does not overwrite the default results ...
  results_io.write_step(workdir, 'clustering', 3, {'sets': {'T': {'nmi': 10.0}}})
  results_io.write_step(workdir, 'clustering', 3, {'sets': {'T': {'nmi': 20.0}}},
                    variant='feature=encoder_pooled')
  assert report.load_step(workdir, 'clustering')['sets']['T']['nmi'] == 10.0
  assert report.load_step(workdir, 'clustering', 3, 'feature=encoder_pooled')['sets'] == {
      'T': {'nmi': 20.0}}
  # ... and other subsets at the same step add rows (the new value of a row wins).
  merged = results_io.with_saved_rows(workdir, 'clustering', 3,
                                  {'sets': {'I': {'nmi': 5.0}, 'T': {'nmi': 11.0}}})
  assert merged['sets'] == {'T': {'nmi': 11.0}, 'I': {'nmi': 5.0}}
  # Signatures differ per variant, so a done-list never mixes them.
  assert default.signature('clustering') != other.signature('clustering')


def test_method_table_never_guesses_the_row(tmp_path):
  for name, acc in (('a', 50.0), ('b', 60.0)):
    results_io.write_step(str(tmp_path / name), 'classification', 1,
                      {'sets': {'T': {'accuracy': acc}, 'I+T': {'accuracy': acc + 1}}})
  runs = {'a': str(tmp_path / 'a'), 'b': str(tmp_path / 'b')}
  table = report.method_table(runs, 'I+T')
  assert '| a | 51.00 | - | - | - |' in table and '| b | 61.00 |' in table
  assert '| a | - |' in report.method_table(runs, 'I+T+P')  # absent row: '-', not another row
  assert '| b | 61.00 |' in report.method_table(runs, 'all')  # the row with most modalities
  with pytest.raises(ValueError, match='--modality_set'):
    report.method_table(runs)


def test_intervals_units_and_small_set_flag(tmp_path, toy):
  query, gallery, _ = toy
  results = retrieval.evaluate_sets(query, gallery, 'label',
                                    retrieval.parse_pairs('T,P', MODALITIES))
  perfect, rand = results['sets']['T'], results['sets']['P']
  assert perfect['ci95']['m5_map@10'] == pytest.approx([100.0, 100.0])
  assert perfect['too_small_to_separate_5_points'] == []
  # Random features on 120 queries: mAP@10 ~ 26 +- 5; flagged exactly when the
  # interval reaches more than 5 points either side (Recall@10 ~ 2.6 +- 0.4 never is).
  low, high = rand['ci95']['m5_map@10']
  assert low < rand['m5_map@10'] < high and high - low > 5.0
  assert rand['too_small_to_separate_5_points'] == (['m5_map@10'] if high - low > 10 else [])
  assert metrics.too_small({'m5_map@10': [40.0, 50.5], 'recall@10': [40.0, 49.9],
                            'accuracy': [None, None]}) == ['m5_map@10']
  units = results['units']['P']
  assert set(units) == {'unit', *(f'{m}@{k}' for m in ('m5_map', 'm5_prec', 'std_map', 'recall',
                                                      'hit_rate') for k in (1, 5, 10, 50, 100))}
  assert 100 * units['m5_map@10'].mean() == pytest.approx(rand['m5_map@10'], abs=1e-4)
  np.testing.assert_array_equal(units['unit'], np.arange(120))
  # Saved beside the JSON, not in it; other subsets of the same step merge in.
  workdir = str(tmp_path)
  path = results_io.write_step(workdir, 'coarse_retrieval', 5, results,
                           eval_tables.retrieval_tables(results))
  with open(path) as f:
    saved = json.load(f)
  assert 'units' not in saved and saved['units_file'] == 'step_00000005.npz'
  assert saved['sets']['P']['ci95']['m5_map@10'] == pytest.approx([low, high])
  more = retrieval.evaluate_sets(query, gallery, 'label', retrieval.parse_pairs('I', MODALITIES))
  results_io.write_step(workdir, 'coarse_retrieval', 5,
                    results_io.with_saved_rows(workdir, 'coarse_retrieval', 5, more))
  loaded = report.load_units(path)
  assert set(loaded) == {'T', 'P', 'I'}
  np.testing.assert_array_equal(loaded['P']['recall@10'], units['recall@10'])
  # The tables: value [interval], and a visible flag on a small set.
  results['sets']['P']['ci95']['m5_map@10'] = [10.0, 40.0]  # flags come from the intervals
  tables = eval_tables.retrieval_tables(results)
  assert f"| P | {rand['m5_map@1']:.1f} [" in tables
  assert '| T | 100.0 [100.0, 100.0] |' in tables
  flagged = [line for line in tables.splitlines() if line.startswith('| P |')][0]
  assert flagged.endswith('| TOO SMALL (mAP@10) |')
  assert [line for line in tables.splitlines() if line.startswith('| T |')][0].endswith('| ok |')
  with open(os.path.join(runner.output_dir(workdir, 'coarse_retrieval'), 'results.md')) as f:
    assert 'percentile-bootstrap interval' in f.read()
  summary = results_io.summary(workdir, 'coarse_retrieval', [5])
  assert path in summary and results_io.units_path(path) in summary and 'eval set' in summary
  assert 'nothing new' in results_io.summary(workdir, 'coarse_retrieval', [])


def test_probe_accuracy_carries_its_interval_and_items(toy):
  query, gallery, _ = toy
  classes = classification.ClassIndex.of(gallery.label, query.label)
  metrics, _, units = classification.probe_set(gallery, query, ('table',), classes,
                                               normalize='center', seed=0)
  low, high = metrics['ci95']['accuracy']
  assert low < metrics['accuracy'] < high
  assert metrics['too_small_to_separate_5_points'] == ['accuracy']  # 120 test items
  assert 100 * units['correct'].mean() == pytest.approx(metrics['accuracy'])
  np.testing.assert_array_equal(units['unit'], np.arange(120))
  table = report.method_table({'a': '/nonexistent'}, 'all')
  assert table.splitlines()[0] == '| Method | Acc | mAP@1 | NMI | Purity | eval set |'


def test_compare_pairs_each_run_with_the_first(tmp_path, toy):
  query, gallery, _ = toy
  runs = {}
  for name, modality in (('random', 'table'), ('good', 'image')):
    workdir = str(tmp_path / name)
    runs[name] = workdir
    # The same eval items, scored with a good (image) or a random (table) feature, saved
    # under one row label so the two runs line up as a method comparison does.
    ret = retrieval.evaluate_sets(query, gallery, 'label', [((modality,), (modality,))])
    label = next(iter(ret['sets']))
    ret = {k: {'X': v[label]} if k in ('sets', 'units', 'curves', 'missing') else v
           for k, v in ret.items()}
    results_io.write_step(workdir, 'coarse_retrieval', 1, ret)
    metrics, _, units = classification.probe_set(
        gallery, query, (modality,), classification.ClassIndex.of(gallery.label, query.label),
        normalize='center', seed=0)
    results_io.write_step(workdir, 'classification', 1, {'sets': {'X': metrics},
                                                     'units': {'X': units}})
  table = report.paired_table(runs)
  row = [line for line in table.splitlines() if line.startswith('| good - random |')][0]
  cells = [c.strip() for c in row.strip('|').split('|')]
  assert cells[1].startswith('+') and cells[1].endswith(' win')  # Acc
  assert cells[3].startswith('+') and cells[3].endswith(' win')  # mAP@10
  assert cells[4] == '-'  # no clustering results
  with pytest.raises(ValueError, match='same items'):
    report.compare_units('classification', 'accuracy', [units],
                         [{**units, 'unit': units['unit'][::-1]}])


# Category labels are ids, not class indices: 12-digit release ids and 62-bit
# hashes of text labels (data_prep/m5product/README.md).
BIG_LABELS = np.array([617074902229, 617074902230, (1 << 61) + 12345, 7], np.int64)


def test_class_index_maps_12_digit_and_hashed_labels_densely():
  classes = classification.ClassIndex.of(BIG_LABELS[[0, 2, 2, 3]], np.array([-1, 617074902230]))
  assert classes.num_classes == 4
  np.testing.assert_array_equal(classes.labels, np.sort(BIG_LABELS))
  encoded = classes.encode(np.array([617074902230, (1 << 61) + 12345, 7, -1, 617074902231]))
  np.testing.assert_array_equal(encoded, [2, 3, 0, -1, -1])  # unknown and unseen: -1
  np.testing.assert_array_equal(classes.decode(encoded[:3]), [617074902230, (1 << 61) + 12345, 7])
  assert classification.ClassIndex.of(np.array([-1])).encode(np.array([5])).tolist() == [-1]


def test_probe_and_clustering_on_12_digit_and_hashed_labels(tmp_path, toy):
  query, gallery, num_classes = toy
  # The toy's class c becomes label BIG_LABELS[c % 4] (4 classes from 8 directions).
  big = lambda split: fake_split(BIG_LABELS[split.label % 4],  # noqa: E731
                                 {'text': perfect_vectors(split.label % 4, num_classes)})
  train, test = big(gallery), big(query)
  classes = classification.ClassIndex.of(train.label, test.label)
  assert classes.num_classes == 4  # not max(label) + 1 ~ 2^61
  metrics, per_class, units = classification.probe_set(train, test, ('text',), classes,
                                                       normalize='center', seed=0)
  assert metrics['accuracy'] == pytest.approx(100.0) and units['correct'].all()
  assert set(per_class) == set(BIG_LABELS.tolist())  # keyed by the labels themselves
  result, units = clustering.cluster(train.combine(('text',)), train.label, seed=0)
  assert result['k'] == 4 and result['nmi'] > 99.0
  np.testing.assert_array_equal(units['label'], train.label)
  for png in (plots.plot_long_tail(per_class, {int(c): 10 for c in BIG_LABELS},
                                    str(tmp_path / 'tail.png')),
              plots.plot_projection(train.pooled['text'], train.label, str(tmp_path / 'x.png'))):
    with open(png, 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_report_shows_the_variant_it_finds(tmp_path, capsys):
  workdir = str(tmp_path / 'run')
  cls = {'sets': {'T': {'accuracy': 42.0}}}
  results_io.write_step(workdir, 'classification', 3, cls, variant='feature=encoder_pooled')
  results_io.write_step(workdir, 'coarse_retrieval', 3, {'sets': {'T': {'m5_map@1': 9.0}}},
                    variant='feature=encoder_pooled')
  results_io.write_step(workdir, 'classification', 3, {'sets': {'T': {'accuracy': 11.0}}})
  assert report.find_variants(workdir, ('classification', 'coarse_retrieval')) == {
      '': ['classification'], 'feature=encoder_pooled': ['classification', 'coarse_retrieval']}
  # The variant with results for the most tasks, named in the first line.
  report.main(['--workdir', workdir])
  printed = capsys.readouterr().out.splitlines()
  assert printed[0].startswith('Variant shown: feature=encoder_pooled') and 'default' in printed[0]
  assert '| T | 42.00 | 9.00 |' in '\n'.join(printed)
  # Asked for by flag: that variant, no note.
  report.main(['--workdir', workdir, '--feature', 'pooled'])
  printed = capsys.readouterr().out
  assert '| T | 11.00 | - |' in printed and 'Variant shown' not in printed
  with pytest.raises(SystemExit):
    report.main(['--workdir', workdir, '--normalize', 'none'])
  assert 'variants found: default, feature=encoder_pooled' in capsys.readouterr().err
  with pytest.raises(SystemExit):
    report.main(['--workdir', str(tmp_path / 'empty')])
  assert 'run the eval binaries first' in capsys.readouterr().err
