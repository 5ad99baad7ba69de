"""m5_jax.input_pipeline: exact resume, disjoint process shards, eval padding, schema, sharding.

Runs on a tiny TFDS dataset with the m5product example features (built once per
session in ArrayRecord) and two small toy modality plugins registered for the
test, so these tests only depend on the pipeline's own logic.
"""
import glob
import hashlib
import os
import re
import shutil
import sys
import types

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from m5_jax import batch as batch_lib
from m5_jax import input_pipeline

NUM_PRETRAIN, NUM_EVAL = 37, 11
MODALITY_NAMES = ('text', 'table', 'image', 'video', 'audio')


class _Fixture(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """The m5product example features (image/video shrunk), deterministic contents."""
  name = 'm5fixture'
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    f = tfds.features
    return tfds.core.DatasetInfo(builder=self, features=f.FeaturesDict({
        'item_id': f.Text(), 'label': np.int64, 'label_name': f.Text(), 'instance': np.int64,
        'present': f.FeaturesDict({m: np.bool_ for m in MODALITY_NAMES}),
        'title': f.Text(), 'pv_keys': f.Sequence(f.Text()), 'pv_values': f.Sequence(f.Text()),
        'image': f.Tensor(shape=(4, 4, 3), dtype=np.uint8),
    }))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'pretrain': self._generate_examples(NUM_PRETRAIN),
            'cls_test': self._generate_examples(NUM_EVAL)}

  def _generate_examples(self, n):
    for i in range(n):
      present = {m: (i + k) % 4 != 0 for k, m in enumerate(MODALITY_NAMES)}
      yield f'id{i}', {
          'item_id': f'id{i}', 'label': i % 5, 'label_name': f'类{i % 5}',
          # 12-digit ids as in the release (> 2^31), and a 62-bit one.
          'instance': (617074902229 + i // 3 if i % 4 != 3 else 2**62 + i) if i % 2 else -1,
          'present': present,
          'title': f'红色 连衣裙 dress {i}' if present['text'] else '',
          'pv_keys': ['颜色', 'size'], 'pv_values': ['红', str(i)],
          'image': np.full((4, 4, 3), i, np.uint8)}


class _ToyText:
  """Title -> sentencepiece ids with BOS, padded to max_len (what a text plugin does)."""
  name, code = 'toy_text', 'x'

  def default_config(self):
    return ml_collections.ConfigDict({'max_len': 8})

  def batch_spec(self, cfg):
    return {'present': ((), 'bool'), 'ids': ((cfg.max_len,), 'int32'),
            'mask': ((cfg.max_len,), 'bool')}

  def preprocess(self, example, cfg, tokenizer):
    def encode(title):
      ids = [2] + tokenizer.encode(title.decode('utf-8'))[:cfg.max_len - 1]
      return np.pad(np.asarray(ids, np.int32), (0, cfg.max_len - len(ids)))
    present = example['present']['text']
    ids = tf.numpy_function(encode, [example['title']], tf.int32, stateful=False)
    ids = tf.where(present, tf.reshape(ids, [cfg.max_len]), 0)
    return {'present': present, 'ids': ids, 'mask': ids > 0}


class _ToyImage:
  name, code = 'toy_image', 'y'

  def default_config(self):
    return ml_collections.ConfigDict({'size': 4})

  def batch_spec(self, cfg):
    return {'present': ((), 'bool'), 'pixels': ((cfg.size, cfg.size, 3), 'uint8')}

  def preprocess(self, example, cfg, tokenizer):
    del cfg, tokenizer
    return {'present': example['present']['image'], 'pixels': example['image']}


for _plugin in (_ToyText(), _ToyImage()):
  _module = types.ModuleType(f'm5_jax.modalities.{_plugin.name}')
  _module.PLUGIN = _plugin
  sys.modules[_module.__name__] = _module


@pytest.fixture(autouse=True, scope='module')
def _forget_toy_plugins():
  """The toy plugins' letters (x, y) join modalities.codes() once reached; later
  test modules expect 'x' to be unknown, so they leave the registry with this one."""
  from m5_jax import modalities  # pylint: disable=g-import-not-at-top
  yield
  for plugin in (_ToyText, _ToyImage):
    modalities.unregister(plugin.name)
    sys.modules.pop(f'm5_jax.modalities.{plugin.name}', None)


@pytest.fixture(scope='session')
def data(tmp_path_factory):
  """(data_dir, tokenizer path) of the fixture dataset, built once."""
  root = tmp_path_factory.mktemp('input_pipeline')
  builder = _Fixture(data_dir=str(root / 'data'), file_format='array_record')
  builder.download_and_prepare()
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  corpus = root / 'corpus.txt'
  corpus.write_text('\n'.join(f'红色 连衣裙 dress {i} 颜色 红' for i in range(200)),
                    encoding='utf-8')
  spm.SentencePieceTrainer.Train(
      input=str(corpus), model_prefix=str(root / 'sp'), vocab_size=300, byte_fallback=True,
      pad_id=0, unk_id=1, bos_id=2, eos_id=3, user_defined_symbols=['[MASK]'],
      character_coverage=1.0, minloglevel=2)
  return str(root / 'data'), str(root / 'sp.model')


@pytest.fixture
def config(data):
  data_dir, tokenizer = data
  cfg = ml_collections.ConfigDict()
  cfg.seed = 3
  cfg.modalities = ('toy_text', 'toy_image')
  cfg.modality = {name: sys.modules[f'm5_jax.modalities.{name}'].PLUGIN.default_config()
                  for name in cfg.modalities}
  cfg.input = {'data_dir': data_dir, 'dataset': 'm5fixture', 'tokenizer': tokenizer,
               'batch_size': 8}
  return cfg


def _pipeline(config, split='pretrain', train=True, **kwargs):
  kwargs.setdefault('process_index', 0)
  kwargs.setdefault('process_count', 1)
  return input_pipeline.create_host_iterator(config, split, train=train,
                                             num_parallel_calls=2, **kwargs)


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_batches_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_restart_at_step_gives_identical_batches(config):
  it = _pipeline(config)
  assert it.steps_per_epoch == NUM_PRETRAIN // 8
  uninterrupted = _take(it, 7)  # crosses two epoch boundaries
  resumed = _pipeline(config, start_step=3)
  _assert_batches_equal(_take(resumed, 4), uninterrupted[3:])
  # restore() on a live iterator, from a state saved mid-run.
  it = _pipeline(config)
  _take(it, 5)
  state = it.get_state()
  assert state['step'] == 5 and state['epoch'] == 1
  fresh = _pipeline(config)
  fresh.restore(state)
  _assert_batches_equal(_take(fresh, 2), uninterrupted[5:7])


def test_epochs_are_permutations_reshuffled_each_epoch(config):
  it = _pipeline(config)
  epochs = [np.concatenate([b['index'] for b in _take(it, it.steps_per_epoch)])
            for _ in range(2)]
  for indices in epochs:
    assert len(set(indices)) == len(indices) == it.steps_per_epoch * 8  # no repeats
    assert indices.min() >= 0 and indices.max() < NUM_PRETRAIN
  assert not np.array_equal(epochs[0], epochs[1])
  other_seed = config.copy_and_resolve_references()
  other_seed.seed = 4
  assert not np.array_equal(
      np.concatenate([b['index'] for b in _take(_pipeline(other_seed), 4)]), epochs[0])


def test_fields_follow_the_example(config, data):
  """index points at the example whose label/instance/image the row carries."""
  source = tfds.builder('m5fixture', data_dir=data[0]).as_data_source('pretrain')
  batch = next(_pipeline(config))
  for row, index in enumerate(batch['index']):
    example = source[int(index)]
    assert batch['label'][row] == example['label']
    assert batch['instance'][row] == example['instance']  # exact int64
    np.testing.assert_array_equal(batch['toy_image']['pixels'][row], example['image'])
    assert batch['toy_text']['present'][row] == example['present']['text']
    assert batch['toy_text']['ids'][row, 0] == (2 if example['present']['text'] else 0)


def test_two_processes_get_disjoint_shards_covering_the_split(config):
  # Eval: each example exactly once over both processes.
  seen = []
  for p in range(2):
    for batch in _pipeline(config, 'cls_test', train=False, process_index=p, process_count=2,
                           batch_size=4):
      seen.append(batch['index'][batch['example_mask']])
  seen = np.concatenate(seen)
  assert sorted(seen.tolist()) == list(range(NUM_EVAL))
  # Training: the two halves are disjoint and together equal the 1-process batch.
  single = _take(_pipeline(config), 3)
  halves = [_take(_pipeline(config, process_index=p, process_count=2), 3) for p in range(2)]
  for step in range(3):
    a, b = halves[0][step], halves[1][step]
    assert not set(a['index']) & set(b['index'])
    _assert_batches_equal(jax.tree.map(lambda x, y: np.concatenate([x, y]), a, b), single[step])


def test_read_workers_give_the_batches_of_an_in_process_read(config):
  """Records read in worker processes (m5_jax/record_reader.py) make the same batches,
  train and eval, resumed too; the workers and their spool folder are gone after."""
  in_process = _take(_pipeline(config), 5)
  it = _pipeline(config, read_workers=2)
  _assert_batches_equal(_take(it, 5), in_process)
  it.close()  # batches in flight are dropped: their files go too
  assert not os.listdir(it._reader._spool) and it._reader.slots_in_use == 0
  it.restore({'step': 2})
  _assert_batches_equal(_take(it, 3), in_process[2:5])
  workers, spool = [w.process for w in it._reader._workers], it._reader._spool
  it.shutdown()
  assert all(w.poll() is not None for w in workers) and not os.path.exists(spool)
  evaluation = _pipeline(config, 'cls_test', train=False, read_workers=1)
  _assert_batches_equal(list(evaluation), list(_pipeline(config, 'cls_test', train=False)))
  assert evaluation._reader.slots_in_use == 0  # each batch freed its record files


def test_a_dead_read_worker_is_a_one_line_error(config):
  it = _pipeline(config, read_workers=1, prefetch=1)
  next(it)
  worker = it._reader._workers[0].process
  worker.kill()
  worker.wait()
  with pytest.raises(Exception, match=r'record reader worker 0 \(pid \d+\) exited with code -9'):
    _take(it, 10)  # a few batches may already be prefetched
  it.shutdown()


def test_eval_last_batch_is_padded_and_masked(config):
  it = _pipeline(config, 'cls_test', train=False)
  batches = list(it)
  assert len(batches) == it.num_steps == 2  # 11 examples, batch 8
  last = batches[-1]
  valid = last['example_mask']
  np.testing.assert_array_equal(valid, np.arange(8) < NUM_EVAL - 8)
  np.testing.assert_array_equal(last['index'], np.where(valid, np.arange(8, 16), -1))
  assert (last['label'][~valid] == -1).all() and (last['instance'][~valid] == -1).all()
  for name in config.modalities:
    assert not last[name]['present'][~valid].any()
    assert all(not v[~valid].any() for v in last[name].values())
  first = batches[0]
  np.testing.assert_array_equal(first['index'], np.arange(8))
  assert first['example_mask'].all()


def test_shapes_and_dtypes_equal_batch_spec(config):
  batch = next(_pipeline(config))
  assert batch['instance'].dtype == np.int64 and batch['instance'].max() > 2**31
  spec = batch_lib.host_batch_spec(config)
  got = jax.tree.map(lambda x: (x.shape, x.dtype.name), batch)
  want = jax.tree.map(lambda s: ((8, *s[0]), s[1]), spec, is_leaf=lambda s: isinstance(s, tuple))
  assert got == want


def test_global_batch_on_8_devices_has_the_data_sharding(config):
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]).reshape(4, 2, 1),
                           ('data', 'fsdp', 'tensor'))
  it = input_pipeline.create_iterator(config, 'pretrain', mesh, train=True,
                                      num_parallel_calls=2)
  host = _take(_pipeline(config), 3)
  for step in range(3):
    batch = next(it)
    ids = batch['toy_text']['ids']
    assert ids.shape == (8, 8)
    assert ids.sharding.spec == jax.sharding.PartitionSpec(('data', 'fsdp'))
    assert len({s.device for s in ids.addressable_shards}) == 8
    assert all(s.data.shape == (1, 8) for s in ids.addressable_shards)
    # Devices get int32 ids (-1 where they do not fit); nothing wraps.
    device = batch_lib.device_view(host[step])
    assert (device['instance'] == np.where(host[step]['instance'] < 2**31,
                                           host[step]['instance'], -1)).all()
    assert batch['instance'].dtype == np.int32
    _assert_batches_equal(jax.device_get(batch), device)
  # Batches wait on the devices ahead of use, but the state is the consumer's step.
  assert it.host.step == 3 + it.size - 1 and it.get_state()['step'] == 3
  it.restore(it.get_state())
  _assert_batches_equal(jax.device_get(next(it)),
                        batch_lib.device_view(_take(_pipeline(config, start_step=3), 1)[0]))


def test_exact_ids_reach_the_host_through_int32_halves(config):
  """Eval batches carry the int64 ids as int32 words; joined, they equal the host's."""
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]).reshape(8, 1, 1),
                           ('data', 'fsdp', 'tensor'))
  it = input_pipeline.create_iterator(config, 'pretrain', mesh, train=False, exact_ids=True,
                                      num_parallel_calls=2)
  host = next(_pipeline(config, train=False))
  batch = next(it)
  for key in ('label', 'instance'):
    words = batch['exact_ids'][key]
    assert words.dtype == np.int32 and words.shape == (8, 2)
    np.testing.assert_array_equal(batch_lib.join_int64(jax.device_get(words)), host[key])
  assert host['instance'].max() > 2**31 and (host['instance'] == -1).any()
  words = batch_lib.split_int64(np.array([-1, 2**63 - 1, -2**63, 617074902229]))
  np.testing.assert_array_equal(batch_lib.join_int64(words), [-1, 2**63 - 1, -2**63, 617074902229])


def test_state_round_trips_through_orbax(config, tmp_path):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  it = _pipeline(config)
  _take(it, 2)
  with ocp.CheckpointManager(tmp_path / 'ckpt') as manager:
    manager.save(2, args=ocp.args.Composite(data=ocp.args.JsonSave(it.get_state())))
    manager.wait_until_finished()
    restored = manager.restore(2, args=ocp.args.Composite(data=ocp.args.JsonRestore()))
  fresh = _pipeline(config)
  fresh.restore(restored['data'])
  _assert_batches_equal(next(fresh), next(it))


def test_restore_rejects_a_state_from_another_setup(config):
  state = _pipeline(config).get_state()
  with pytest.raises(ValueError, match='global_batch_size=8'):
    _pipeline(config, batch_size=4).restore(state)


def test_tfrecord_build_gives_a_clear_error(tmp_path, config):
  _Fixture(data_dir=str(tmp_path), file_format='tfrecord').download_and_prepare()
  config.input.data_dir = str(tmp_path)
  with pytest.raises(ValueError, match='--file_format array_record'):
    _pipeline(config)


# --- end to end: M5Product-mini -> the m5product builder -> the real plugins -------
@pytest.fixture(scope='session')
def mini(tmp_path_factory):
  """(data_dir, tokenizer) of a 40-item mini release built as m5product/raw in ArrayRecord,
  its tokenizer trained first, where the builder finds it (so the build stores token ids)."""
  from data_prep import make_mini, tokenizer  # pylint: disable=g-import-not-at-top
  import data_prep.m5product  # pylint: disable=g-import-not-at-top,unused-import
  root = tmp_path_factory.mktemp('input_pipeline_mini')
  release = str(root / 'release')
  assert make_mini.main(['--out', release, '--num_products', '40', '--seed', '0']) in (0, None)
  spm_path = tokenizer.train(tokenizer.iter_training_text(release),
                             os.path.join(release, tokenizer.DEFAULT_FILE), vocab_size=1000)
  tfds.builder('m5product', config='raw', data_dir=str(root / 'data'),
               file_format='array_record').download_and_prepare(
                   download_config=tfds.download.DownloadConfig(manual_dir=release))
  return str(root / 'data'), spm_path


def _mini_config(data_dir, spm_path, names=MODALITY_NAMES):
  from m5_jax import modalities  # pylint: disable=g-import-not-at-top
  cfg = ml_collections.ConfigDict()
  cfg.seed = 0
  cfg.modalities = names
  cfg.modality = {name: modalities.get(name).default_config() for name in names}
  cfg.input = {'data_dir': data_dir, 'dataset': 'm5product/raw', 'tokenizer': spm_path,
               'batch_size': 4}
  return cfg


def test_mini_end_to_end_with_the_real_plugins(mini):
  cfg = _mini_config(*mini)
  data_dir = mini[0]
  it = _pipeline(cfg, 'pretrain')
  assert it.token_ids  # the build stores ids of this very tokenizer
  batches = _take(it, 3)
  # Schema: exactly batch_spec.
  got = jax.tree.map(lambda x: (x.shape, x.dtype.name), batches[0])
  want = jax.tree.map(lambda s: ((4, *s[0]), s[1]), batch_lib.host_batch_spec(cfg),
                      is_leaf=lambda s: isinstance(s, tuple))
  assert got == want
  # Presence and content come from the example at `index`.
  source = tfds.builder('m5product/raw', data_dir=data_dir).as_data_source('pretrain')
  for row, index in enumerate(batches[0]['index']):
    example = source[int(index)]
    for name in MODALITY_NAMES:
      assert batches[0][name]['present'][row] <= example['present'][name]
    assert batches[0]['label'][row] == example['label']
  assert batches[0]['text']['present'].any() and batches[0]['text']['ids'][:, 0].max() == 2
  # Restart at step 2 and the 2-process split, on the real data.
  _assert_batches_equal(next(_pipeline(cfg, 'pretrain', start_step=2)), batches[2])
  halves = [next(_pipeline(cfg, 'pretrain', process_index=p, process_count=2)) for p in range(2)]
  _assert_batches_equal(jax.tree.map(lambda x, y: np.concatenate([x, y]), *halves), batches[0])


def test_stored_token_ids_are_what_tokenising_the_text_gives(mini):
  """Known answer: the build's ids are the model's encoding of the stored text, and
  batches read from them equal batches tokenised per example (no tokenizer_path)."""
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  data_dir, spm_path = mini
  builder = tfds.builder('m5product/raw', data_dir=data_dir)
  with open(spm_path, 'rb') as f:
    assert builder.info.metadata['tokenizer']['sha256'] == hashlib.sha256(f.read()).hexdigest()
  processor = spm.SentencePieceProcessor(model_file=spm_path)
  source = builder.as_data_source('pretrain')
  tables = 0
  for i in range(len(source)):
    example = source[i]
    assert example['title_ids'].tolist() == processor.encode(example['title'].decode())
    spans = [s.decode() for pair in zip(example['pv_keys'], example['pv_values']) for s in pair]
    encoded = processor.encode(spans)
    assert example['pv_lengths'].tolist() == [len(ids) for ids in encoded]
    assert example['pv_ids'].tolist() == [t for ids in encoded for t in ids]
    tables += len(spans) > 0
  assert tables > 10
  cfg = _mini_config(data_dir, spm_path, ('text', 'table'))
  stored = _pipeline(cfg, 'pretrain')
  tokenised = input_pipeline.InputPipeline(
      dataset=cfg.input.dataset, split='pretrain', data_dir=data_dir, config=cfg,
      global_batch_size=4, train=True, tokenizer=input_pipeline.load_tokenizer(spm_path),
      process_index=0, process_count=1)
  assert stored.token_ids and not tokenised.token_ids
  for a, b in zip(_take(stored, 3), _take(tokenised, 3)):
    _assert_batches_equal(a, b)


def test_another_tokenizer_than_the_builds_is_a_one_line_error(mini, tmp_path):
  from data_prep import tokenizer  # pylint: disable=g-import-not-at-top
  data_dir, _ = mini
  other = tokenizer.train([f'红色 连衣裙 {i}' for i in range(300)],
                          str(tmp_path / 'other.model'), vocab_size=300)
  with pytest.raises(ValueError, match=r'other.model .* is not the tokenizer whose ids '
                     r'm5product/raw/1.0.0 stores \(spm.model,') as e:
    _pipeline(_mini_config(data_dir, other, ('text',)), 'pretrain')
  assert '\n' not in str(e.value)


def test_a_bert_vocabulary_tokenises_the_text_of_a_build_with_ids(mini, tmp_path):
  """Stored ids are sentencepiece's: a WordPiece vocab.txt reads the text instead."""
  vocab = tmp_path / 'vocab.txt'
  vocab.write_text('\n'.join(['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', '红', '色']) + '\n',
                   encoding='utf-8')
  it = _pipeline(_mini_config(mini[0], str(vocab), ('text',)), 'pretrain')
  assert not it.token_ids
  ids = next(it)['text']['ids']
  assert (ids[:, 0] == 2).any() and ids.max() <= 6  # BOS, then ids of this 7-word vocabulary


def test_recompressed_build_gives_the_same_batches_and_a_bad_shard_is_named(config, tmp_path,
                                                                            monkeypatch):
  """data_prep/recompress rewrites every shard uncompressed (a rerun finds nothing to do),
  the pipeline reads the same batches from it; a shard it cannot read is a one-line
  error naming it, and that shard is left as it was."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  from data_prep import recompress  # pylint: disable=g-import-not-at-top
  copy = tmp_path / 'data'
  shutil.copytree(config.input.data_dir, copy)
  version = str(copy / 'm5fixture' / '1.0.0')
  shards = recompress.shards(version)
  first = recompress.recompress(version, 'group_size:1,uncompressed', workers=2)
  assert first['rewritten'] == len(shards) and first['records'] == NUM_PRETRAIN + NUM_EVAL
  for path in shards:
    reader = array_record_module.ArrayRecordReader(path)
    assert 'uncompressed' in reader.writer_options_string()
    reader.close()
  assert recompress.recompress(version, 'group_size:1,uncompressed')['skipped'] == len(shards)
  recompressed = config.copy_and_resolve_references()
  recompressed.input.data_dir = str(copy)
  _assert_batches_equal(_take(_pipeline(recompressed), 4), _take(_pipeline(config), 4))
  _assert_batches_equal(list(_pipeline(recompressed, 'cls_test', train=False)),
                        list(_pipeline(config, 'cls_test', train=False)))

  assert recompress.recompress(version, 'group_size:1,zstd:3')['rewritten'] == len(shards)
  bad = shards[0]  # a zstd shard with a third of it overwritten
  size = os.path.getsize(bad)
  with open(bad, 'r+b') as f:
    f.seek(size // 3)
    f.write(b'\xff' * (size // 3))
  before = open(bad, 'rb').read()
  with pytest.raises(SystemExit, match=rf'^error: {re.escape(bad)}: .*\(\d+ of {len(shards)} '
                     r'shards done\)$'):
    recompress.recompress(version, 'group_size:1,uncompressed')
  assert open(bad, 'rb').read() == before
  assert not glob.glob(os.path.join(version, '*.recompress-tmp'))
  with pytest.raises(SystemExit, match='must keep group_size:1'):
    recompress.recompress(version, 'group_size:64,uncompressed')

  # A writer that loses a byte: the read-back check refuses the new file.
  real_writer = array_record_module.ArrayRecordWriter

  class Lossy:
    def __init__(self, *args):
      self._writer = real_writer(*args)

    def write(self, record):
      self._writer.write(record[:-1])

    def close(self):
      self._writer.close()

  good = shards[1]
  before = open(good, 'rb').read()
  monkeypatch.setattr(array_record_module, 'ArrayRecordWriter', Lossy)
  with pytest.raises(RuntimeError, match='does not read back the same records'):
    recompress.recompress_shard(good, 'group_size:1,snappy')  # options no shard has yet
  assert open(good, 'rb').read() == before
  assert not glob.glob(os.path.join(version, '*.recompress-tmp'))
