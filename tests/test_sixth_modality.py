"""A sixth modality is one new file (tests/toy_rating_modality.py) plus config lines.

The file declares its model side (PLUGIN) and its data side (DATA); nothing else
knows about 'rating'. The end-to-end test goes from a release carrying rating
files through the TFDS build, the input pipeline, training and an eval binary.
"""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from data_prep import modalities as data_modalities
from data_prep import release
from data_prep import tokenizer as tokenizer_lib
from m5_jax import batch as batch_lib
from m5_jax import input_pipeline
from m5_jax import models
from m5_jax import modalities
from m5_jax import objectives
from m5_jax import train
from m5_jax import train_logging
from m5_jax.evaluate import coarse_retrieval
from m5_jax.evaluate import results_io
from m5_jax.models import presets
import m5_tiny_release as tiny
from m5_fixtures import build, read_split
import toy_rating_modality
from train_fixtures import REPO, parse

pytest_plugins = ['m5_fixtures', 'train_fixtures']


def rating_config():
  # The config lines: reach the plugin by module path once, then use its name.
  plugin = modalities.get('toy_rating_modality')
  config = presets.full_config('m5_mmt', 'tiny', modalities=('text', 'rating'))
  assert config.modality.rating.to_dict() == plugin.default_config().to_dict()
  return config


def test_plugin_found_by_module_path_then_by_name():
  plugin = modalities.get('toy_rating_modality')
  assert modalities.get('rating') is plugin and plugin.code == 'r'
  assert modalities.codes()['r'] == 'rating' and presets.parse_modalities('tr') == ('text', 'rating')
  assert data_modalities.get('toy_rating_modality') is toy_rating_modality.DATA
  # A dotted path to a module without the attribute, and no module at all: one-line errors.
  with pytest.raises(ValueError, match='module data_prep.release defines no PLUGIN'):
    modalities.get('data_prep.release')
  with pytest.raises(ValueError, match='module data_prep.release defines no DATA'):
    data_modalities.get('data_prep.release')
  with pytest.raises(ValueError, match="unknown modality 'no_such.rating'"):
    modalities.get('no_such.rating')
  with pytest.raises(ValueError, match="no importable module 'no_such.rating'"):
    data_modalities.get('no_such.rating')


def test_preprocess_batch_spec_and_masked_loss():
  config = rating_config()
  cfg = config.modality.rating
  plugin = modalities.get('rating')
  decoded = {'present': {'rating': tf.constant(True)}, 'rating_values': tf.constant([4.5, 2.0])}
  fields = next(iter(tf.data.Dataset.from_tensors(decoded).map(
      lambda e: plugin.preprocess(e, cfg, None)))).items()
  fields = {k: v.numpy() for k, v in fields}
  np.testing.assert_array_equal(fields['values'], [4.5, 2.0, 0.0])
  np.testing.assert_array_equal(fields['mask'], [True, True, False])
  spec = batch_lib.batch_spec(config)['rating']
  assert {k: (v.shape, v.dtype.name) for k, v in fields.items()} == spec

  inputs = {k: np.stack([v, np.zeros_like(v)]) for k, v in fields.items()}   # item 2 absent
  masked, targets = plugin.mask_for_pretraining(inputs, jax.random.key(0), cfg)
  # round(0.34 * 2) = 1 of the 2 real numbers is hidden; the absent item has none.
  np.testing.assert_array_equal(np.asarray(targets['weights']).sum(1), [1, 0])
  hidden_at = int(np.argmax(targets['weights'][0])) - 1                    # token 0 is [CLS]
  assert masked['values'][0, hidden_at] == 0 and fields['values'][hidden_at] != 0
  predictions = jnp.zeros((2, 4, 1))
  num, den = plugin.masked_loss(predictions, targets, cfg)
  np.testing.assert_allclose([num, den], [fields['values'][hidden_at] ** 2, 1.0])


def test_model_forward_and_losses_with_the_new_modality():
  config = rating_config()
  batch = batch_lib.zeros_batch(config, 4)
  batch['example_mask'][:] = True
  rng = np.random.default_rng(0)
  batch['text']['present'][:] = [True, True, False, True]
  batch['text']['ids'][:, :5] = rng.integers(5, 100, (4, 5))
  batch['text']['ids'][:, 0] = 2
  batch['text']['mask'][:, :5] = True
  batch['rating']['present'][:] = [True, False, True, True]   # item 2: rating only
  batch['rating']['values'][:] = rng.normal(size=(4, 3))
  batch['rating']['mask'][:] = True
  for m in ('text', 'rating'):
    absent = ~batch[m]['present']
    for k, v in batch[m].items():
      if k != 'present':
        v[absent] = 0

  model = models.build(config)
  variables = jax.jit(lambda b: model.init(jax.random.key(0), b, train=False))(batch)

  @jax.jit
  def loss_fn(params, batch, rng):
    masked, targets = objectives.mask_batch(batch, rng, config)
    out = objectives.pretraining_outputs(model, {**variables, 'params': params}, masked, batch,
                                         jax.random.key(1), config, targets)
    terms = objectives.losses(out, targets, config)
    return objectives.total_loss(terms, config), (terms, out)

  (loss, (terms, out)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      variables['params'], batch, jax.random.key(2))
  assert out['pooled']['rating'].shape == (4, config.model.hidden)
  assert not np.asarray(out['pooled']['rating'][1]).any()           # absent: zero vector
  num, den = terms['masked_rating']
  assert float(den) == 3 and np.isfinite(float(num)) and float(num) > 0
  assert 'contrastive_text_rating' in terms
  assert np.isfinite(float(loss))
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  rating_grads = jax.tree.leaves(grads['embedders_rating'])
  assert any(np.abs(g).sum() > 0 for g in rating_grads)             # the new modality learns


# ---------------------------------------------------------------- end to end

# The rating file of each tiny-release item ('no_media' has none; NaN is a bad feature).
RATINGS = {item_id: [1.0 + i, 0.5 * i + 0.25, 2.0] for i, item_id in enumerate(tiny.ITEMS)}
RATINGS['good1'] = [3.0, 1.5]  # two numbers: one token short
RATINGS['trunc_jpg'] = [float('nan'), 1.0, 2.0]
del RATINGS['no_media']
RATING_ABSENT = {'no_media': 'missing_file', 'trunc_jpg': 'bad_features'}
VOCAB = 320


@pytest.fixture(scope='module')
def rating_build(tiny_release, tmp_path_factory):
  """(data_dir, tokenizer, report): the tiny release plus rating files, built as
  m5product/features_rating with the toy modality, token ids of its own tokenizer."""
  from data_prep.m5product import M5ProductConfig  # pylint: disable=g-import-not-at-top
  base = tmp_path_factory.mktemp('rating')
  root = str(base / 'release')
  shutil.copytree(tiny_release, root)
  os.makedirs(os.path.join(root, toy_rating_modality.FOLDER))
  for item_id, values in RATINGS.items():
    np.save(release.safe_path(root, toy_rating_modality.FOLDER, item_id, '.npy'),
            np.asarray(values, np.float32))
  spm = tokenizer_lib.train(tokenizer_lib.iter_training_text(root),
                            os.path.join(root, 'spm.model'), vocab_size=VOCAB)
  config = M5ProductConfig(name='features_rating', form='features',
                           extra_modalities=('toy_rating_modality',))
  builder, report = build(root, base / 'data', config, file_format='array_record')
  return str(base / 'data'), spm, report, builder


def test_build_stores_the_new_modality_and_counts_its_absences(rating_build):
  _, _, report, builder = rating_build
  assert data_modalities.names(('toy_rating_modality',))[-1] == 'rating'
  expected = tiny.expected_pretrain('features')
  expected['absent']['rating'] = {r: 1 for r in RATING_ABSENT.values()}
  assert report['splits']['pretrain'] == expected
  examples = read_split(builder, 'pretrain')
  for item_id, example in examples.items():
    assert example['present']['rating'] == (item_id not in RATING_ABSENT), item_id
    want = RATINGS[item_id] if item_id not in RATING_ABSENT else []
    np.testing.assert_array_equal(example['rating_values'], want)
  # The five built-in modalities are stored as in a build without it.
  assert examples['good1']['video_frames'] == 5
  assert not examples['no_media']['present']['image']


def rating_train_args(data_dir, spm, steps=3):
  modalities.get('toy_rating_modality')  # config lines reach it by module path once...
  return ['--config', 'configs/m5_mmt.py:runlocal,modalities=tr,form=features',  # ...then 'r'
          '--config.input.dataset=m5product/features_rating',
          f'--config.input.data_dir={data_dir}', f'--config.input.tokenizer={spm}',
          f'--config.model.vocab_size={VOCAB}', f'--config.modality.text.vocab_size={VOCAB}',
          '--config.modality.text.max_len=16', '--config.model.dropout=0.0',
          '--config.model.encoder_layers=0', f'--config.total_steps={steps}',
          f'--config.checkpoint.every_steps={steps}']


def test_input_pipeline_reads_the_new_modality(rating_build):
  data_dir, spm, _, builder = rating_build
  config = parse(rating_train_args(data_dir, spm))
  assert config.modalities == ('text', 'rating')
  item_ids = list(read_split(builder, 'pretrain'))  # in split order: row `index`
  with input_pipeline.create_host_iterator(config, 'pretrain', train=False,
                                           batch_size=16) as pipeline:
    batch = next(pipeline)
  for row, index in enumerate(batch['index']):
    rating = {k: v[row] for k, v in batch['rating'].items()}
    if index < 0:  # padding
      assert not rating['present'] and not rating['mask'].any()
      continue
    item_id = item_ids[index]
    values = RATINGS[item_id] if item_id not in RATING_ABSENT else []
    assert rating['present'] == (item_id not in RATING_ABSENT), item_id
    np.testing.assert_array_equal(rating['mask'], np.arange(3) < len(values))
    np.testing.assert_array_equal(rating['values'], np.pad(values, (0, 3 - len(values))))
  assert batch['text']['present'][:len(item_ids)].sum() == 7  # bad_bytes, no_title: no title


def test_train_then_eval_binary_with_the_new_modality(rating_build, tmp_path, capsys):
  data_dir, spm, _, _ = rating_build
  workdir = str(tmp_path / 'run')
  cwd = os.getcwd()
  os.chdir(REPO)
  try:
    train.train(parse(rating_train_args(data_dir, spm)), workdir)
  finally:
    os.chdir(cwd)
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['modalities'] == ['text', 'rating']
  rows = train_logging.read_metrics(workdir)
  assert [r['step'] for r in rows] == [1, 2, 3]
  assert all(np.isfinite(r['loss']) and r['count/masked_rating'] > 0 for r in rows)
  coarse_retrieval.main(['--workdir', workdir, '--subsets', 'R,TR,T:R'])
  assert '| R |' in capsys.readouterr().out
  with open(results_io.step_path(workdir, 'coarse_retrieval', 3)) as f:
    results = json.load(f)
  assert set(results['sets']) == {'R', 'T+R', 'T->R'}
  # Coarse query good0 and trunc_jpg; only good0 has a rating (trunc_jpg's is NaN).
  assert results['sets']['R']['num_query_items'] == 2
  assert results['sets']['R']['queries_without_features'] == 1
