"""The five modality plugins: preprocess -> batch_spec, embedders, masking, heads, losses."""
import io

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import sentencepiece as spm
import tensorflow as tf

from m5_jax import batch as batch_lib
from m5_jax import modalities
from m5_jax.modalities import base
from m5_jax.modalities import text as text_lib

NAMES = ('text', 'table', 'image', 'video', 'audio')
HIDDEN = 16
SENTENCES = ['红色连衣裙 夏季新款 Nike', '男士运动鞋 透气 跑步鞋 Adidas', '颜色', '红色', '材质',
             '纯棉', '品牌', '耐克', 'iPhone 手机壳 硅胶 防摔', 'cotton shirt for men', '尺码 XL']


@pytest.fixture(scope='session')
def sp():
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(SENTENCES * 5), model_writer=model, vocab_size=400,
      pad_id=0, unk_id=1, bos_id=2, eos_id=3, user_defined_symbols=['[MASK]'],
      byte_fallback=True, character_coverage=1.0, hard_vocab_limit=False, minloglevel=2)
  return spm.SentencePieceProcessor(model_proto=model.getvalue())


def tiny_config(vocab_size, form='raw'):
  config = ml_collections.ConfigDict()
  config.modalities = NAMES
  config.modality = ml_collections.ConfigDict()
  for name in NAMES:
    config.modality[name] = modalities.get(name).default_config()
  m = config.modality
  m.text.max_len, m.table.max_len, m.table.max_span_len = 12, 16, 4
  m.text.vocab_size = m.table.vocab_size = vocab_size
  m.image.update(form=form, image_size=16, patch_size=8, num_regions=4, region_dim=6)
  m.video.update(form=form, num_frames=3, frame_size=16, patch_size=8, s3d_dim=5)
  m.audio.update(form=form, mel_bins=4, mel_frames=10, patch_frames=4)
  return config


def example(present=True, frames=2, audio_frames=7, form='raw'):
  rng = np.random.default_rng(0)
  decoded = {'present': {n: tf.constant(present) for n in NAMES},
             'title': tf.constant('红色连衣裙 Nike 跑步鞋' if present else ''),
             'pv_keys': tf.constant(['颜色', '材质', '品牌'] if present else [], tf.string),
             'pv_values': tf.constant(['红色', '纯棉', '耐克'] if present else [], tf.string),
             'audio_mel': tf.constant(rng.normal(size=(4, 10)), tf.float16),
             'audio_frames': tf.constant(audio_frames, tf.int32)}
  if form == 'raw':
    decoded['image'] = tf.constant(rng.integers(0, 255, (24, 24, 3)), tf.uint8)
    decoded['video'] = tf.constant(rng.integers(0, 255, (frames, 20, 20, 3)), tf.uint8)
  else:
    regions = np.pad(rng.normal(size=(3, 6)), [(0, 1), (0, 0)])
    decoded['image_regions'] = tf.constant(regions, tf.float16)
    decoded['image_boxes'] = tf.constant(rng.uniform(size=(4, 5)), tf.float32)
    decoded['video_s3d'] = tf.constant(rng.normal(size=(3, 5)), tf.float16)
    decoded['video_frames'] = tf.constant(frames, tf.int32)
  return decoded


def preprocess_all(config, examples, sp):
  """Runs every plugin's preprocess inside one tf.data map (graph mode) -> a numpy batch."""
  def one(decoded):
    return {n: modalities.get(n).preprocess(decoded, config.modality[n], sp)
            for n in config.modalities}
  ds = tf.data.Dataset.from_tensors(examples[0])
  for decoded in examples[1:]:
    ds = ds.concatenate(tf.data.Dataset.from_tensors(decoded))
  outs = list(ds.map(one).as_numpy_iterator())
  return jax.tree.map(lambda *xs: np.stack(xs), *outs)


class Harness(nn.Module):
  """What the model does with a plugin: a shared word embedding, embedder, head."""
  config: ml_collections.ConfigDict
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.word_embed = nn.Embed(self.config.modality.text.vocab_size, HIDDEN, embedding_init=(
        nn.with_logical_partitioning(nn.initializers.normal(0.02), ('vocab', 'embed'))))
    shared = {'word_embed': self.word_embed, 'dtype': self.dtype, 'dropout_rate': 0.1}
    plugins = {n: modalities.get(n) for n in self.config.modalities}
    self.embedders = {n: p.embedder(self.config.modality[n], HIDDEN, shared) for n, p in plugins.items()}
    self.heads = {n: p.head(self.config.modality[n], HIDDEN, shared) for n, p in plugins.items()}

  def __call__(self, batch, deterministic=True):
    out = {}
    for n in self.config.modalities:
      tokens, mask = self.embedders[n](batch[n], deterministic=deterministic)
      out[n] = (tokens, mask, self.heads[n](tokens))
    return out


@pytest.fixture(scope='session', params=['raw', 'features'])
def setup(request, sp):
  """(config, batch of [present item, absent item], jitted apply, variables) for one media form."""
  form = request.param
  config = tiny_config(sp.get_piece_size(), form)
  if form == 'features':  # text and table do not depend on the form: compile them once
    config.modalities = ('image', 'video', 'audio')
  batch = preprocess_all(config, [example(form=form),
                                  example(present=False, frames=0, audio_frames=0, form=form)], sp)
  harness = Harness(config)
  variables = jax.jit(harness.init)(jax.random.key(0), batch)
  return config, batch, jax.jit(harness.apply), variables


def test_preprocess_matches_batch_spec_and_embedders_mask_absent(setup):
  config, batch, apply_fn, variables = setup
  spec = batch_lib.batch_spec(config)
  for name in config.modalities:
    assert set(batch[name]) == set(spec[name]), name
    for key, (shape, dtype) in spec[name].items():
      assert batch[name][key].shape == (2, *shape) and batch[name][key].dtype == dtype, (name, key)
    assert batch[name]['present'].tolist() == [True, False], name

  out = apply_fn(variables, batch)
  for name in config.modalities:
    tokens, mask, _ = out[name]
    num_tokens = modalities.get(name).num_tokens(config.modality[name])
    assert tokens.shape == (2, num_tokens, HIDDEN) and mask.shape == (2, num_tokens), name
    assert mask[0, 0] and not mask[1].any(), name   # summary token valid iff present
    assert np.isfinite(tokens).all(), name
  # The zeros batch the model is initialised with has the same shapes.
  zeros = batch_lib.zeros_batch(config, 2)
  assert jax.tree.map(np.shape, zeros) == jax.tree.map(np.shape, {**zeros, **batch})


def test_text_and_table_known_answers(sp):
  config = tiny_config(sp.get_piece_size())
  batch = preprocess_all(config, [example()], sp)
  title_ids = sp.encode('红色连衣裙 Nike 跑步鞋')
  want = ([text_lib.BOS_ID] + title_ids)[:12]
  assert batch['text']['ids'][0].tolist() == want + [0] * (12 - len(want))
  assert batch['text']['mask'][0].tolist() == [True] * len(want) + [False] * (12 - len(want))

  # Table: BOS, then spans of at most 4 tokens; cut between (key, value) pairs.
  spans = [sp.encode(s)[:4] for s in ['颜色', '红色', '材质', '纯棉', '品牌', '耐克']]
  ids, span_ids, is_value, length = [2], [0], [False], 1
  for pair in range(3):
    k, v = spans[2 * pair], spans[2 * pair + 1]
    if length + len(k) + len(v) > 16:
      break
    for i, s in ((2 * pair + 1, k), (2 * pair + 2, v)):
      ids += s
      span_ids += [i] * len(s)
      is_value += [i % 2 == 0] * len(s)
    length += len(k) + len(v)
  pad = 16 - len(ids)
  table = {k: v[0].tolist() for k, v in batch['table'].items()}
  assert len(ids) < 16 and span_ids[-1] % 2 == 0   # the tiny model cuts this table
  assert table['ids'] == ids + [0] * pad
  assert table['span'] == span_ids + [0] * pad
  assert table['is_value'] == is_value + [False] * pad
  assert table['mask'] == [True] * len(ids) + [False] * pad


def test_tokenizer_rejects_wrong_special_ids():
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(sentence_iterator=iter(SENTENCES * 5), model_writer=model,
                                 vocab_size=400, byte_fallback=True, hard_vocab_limit=False,
                                 character_coverage=1.0, minloglevel=2)
  with pytest.raises(ValueError, match='special ids'):
    text_lib.SentencePieceTokenizer(model.getvalue())
  with pytest.raises(ValueError, match='tokenizer'):
    text_lib.as_tokenizer(None)


def random_text_batch(batch_size, max_len, vocab, seed=0):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(1, max_len + 1, batch_size)
  mask = np.arange(max_len)[None] < lengths[:, None]
  ids = np.where(mask, rng.integers(5, vocab, (batch_size, max_len)), 0)
  ids[:, 0] = text_lib.BOS_ID
  present = rng.uniform(size=batch_size) < 0.9
  mask &= present[:, None]
  ids = np.where(mask, ids, 0)
  return {'present': present, 'ids': ids.astype(np.int32), 'mask': mask}


def test_text_masking_is_bert_15_percent_80_10_10():
  cfg = modalities.get('text').default_config()
  inputs = random_text_batch(4000, 36, cfg.vocab_size)
  masked, targets = jax.jit(lambda x, rng: modalities.get('text').mask_for_pretraining(x, rng, cfg))(
      inputs, jax.random.key(0))
  selected = np.asarray(targets['weights']) > 0
  real = inputs['mask'] & (inputs['ids'] != text_lib.BOS_ID)
  assert not (selected & ~real).any()                     # never pad, BOS or absent items
  assert abs(selected.sum() / real.sum() - 0.15) < 0.01
  assert (selected.sum(1) >= 1)[real.any(1)].all()        # every real item gets one
  new, old = np.asarray(masked['ids'])[selected], inputs['ids'][selected]
  as_mask = (new == text_lib.MASK_ID).mean()
  kept = (new == old).mean()
  assert abs(as_mask - 0.8) < 0.02 and abs(kept - 0.1) < 0.015
  assert abs(1 - as_mask - kept - 0.1) < 0.015             # random replacements
  assert (new >= text_lib.FIRST_ORDINARY_ID).sum() + (new == text_lib.MASK_ID).sum() == new.size
  assert (np.asarray(masked['ids'])[~selected] == inputs['ids'][~selected]).all()
  assert (np.asarray(targets['ids']) == inputs['ids']).all()


def test_table_masking_covers_whole_spans_only(sp):
  config = tiny_config(sp.get_piece_size())
  config.modality.table.max_len, config.modality.table.mask_prob = 40, 0.3
  batch = preprocess_all(config, [example(), example(present=False)], sp)['table']
  batch = jax.tree.map(lambda x: np.concatenate([x] * 50), batch)
  plugin = modalities.get('table')
  masked, targets = jax.jit(lambda x, rng: plugin.mask_for_pretraining(
      x, rng, config.modality.table))(batch, jax.random.key(3))
  selected = np.asarray(targets['weights']) > 0
  assert (np.asarray(masked['ids'])[selected] == text_lib.MASK_ID).all()
  assert (np.asarray(masked['ids'])[~selected] == batch['ids'][~selected]).all()
  assert not selected[~batch['present']].any() and not selected[:, 0].any()
  num_spans = batch['span'].max()
  assert num_spans == 6
  chosen_counts = []
  for row in range(len(selected)):
    if not batch['present'][row]:
      continue
    chosen = set()
    for s in range(1, num_spans + 1):
      in_span = selected[row][batch['span'][row] == s]
      assert in_span.all() or not in_span.any()           # a span is masked whole or not at all
      if in_span.all():
        chosen.add(s)
    chosen_counts.append(len(chosen))
    assert len(chosen) == 2                                # round(0.3 * 6)
  assert len(chosen_counts) == 50


@pytest.mark.parametrize('name', ['text', 'table'])
def test_mlm_nothing_masked_is_zero_without_nan(name):
  logits = jnp.full((2, 5, 7), -jnp.inf).at[..., 0].set(0.0)  # extreme but legal logits
  targets = {'ids': jnp.ones((2, 5), jnp.int32), 'weights': jnp.zeros((2, 5))}
  plugin = modalities.get(name)
  num, den = plugin.masked_loss(logits, targets, plugin.default_config())
  assert float(num) == 0.0 and float(den) == 0.0
  grad = jax.grad(lambda x: plugin.masked_loss(x, targets, plugin.default_config())[0])(
      jnp.zeros((2, 5, 7)))
  assert np.isfinite(grad).all() and not grad.any()


def test_mlm_known_answer():
  logits = jnp.log(jnp.array([[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]]))
  targets = {'ids': jnp.array([[1, 2]]), 'weights': jnp.array([[1.0, 0.0]])}
  num, den = modalities.get('text').masked_loss(logits, targets, None)
  np.testing.assert_allclose([num, den], [-np.log(0.25), 1.0], rtol=1e-6)


def test_regression_loss_known_answer():
  predictions = jnp.array([[[0., 0.], [1., 2.], [3., 3.]]])
  features = jnp.array([[[9., 9.], [1., 0.], [0., 3.]]])
  weights = jnp.array([[0., 1., 1.]])
  cfg = modalities.get('image').default_config()
  num, den = modalities.get('image').masked_loss(predictions, {'features': features,
                                                               'weights': weights}, cfg)
  # token 1: mean((0, 2)^2) = 2; token 2: mean((3, 0)^2) = 4.5; token 0 not masked.
  np.testing.assert_allclose([num, den], [6.5, 2.0])
  zero = modalities.get('image').masked_loss(predictions, {'features': features,
                                                           'weights': 0 * weights}, cfg)
  assert [float(x) for x in zero] == [0.0, 0.0]


def test_classification_loss_known_answer():
  """In-batch NCE: each masked prediction must pick its own original among the masked ones."""
  predictions = jnp.array([[[5., 5.], [1., 0.], [0., 1.]], [[7., 7.], [1., 1.], [0., 0.]]])
  features = jnp.array([[[0., 0.], [2., 0.], [0., 3.]], [[0., 0.], [-1., 0.], [4., 4.]]])
  weights = jnp.array([[0., 1., 1.], [0., 1., 0.]])
  num, den = base.contrastive_token_loss(predictions, features, weights, max_per_row=2,
                                         temperature=0.5)
  unit = lambda v: np.asarray(v) / np.linalg.norm(v)
  preds = [unit([1, 0]), unit([0, 1]), unit([1, 1])]
  cands = [unit([2, 0]), unit([0, 3]), unit([-1, 0])]
  want = 0.0
  for i, p in enumerate(preds):
    logits = np.array([p @ c for c in cands]) / 0.5
    want += -(logits[i] - np.log(np.exp(logits).sum()))
  np.testing.assert_allclose([num, den], [want, 3.0], rtol=1e-5)


def test_media_masking_zeroes_inputs_and_targets_originals(setup):
  config, batch, apply_fn, variables = setup
  masked_batch, all_targets = dict(batch), {}
  for name in ('image', 'video', 'audio'):
    plugin, cfg = modalities.get(name), config.modality[name]
    mask_fn = jax.jit(lambda inputs, rng, p=plugin, c=cfg: p.mask_for_pretraining(inputs, rng, c))
    masked, targets = mask_fn(batch[name], jax.random.key(1))
    weights = np.asarray(targets['weights'])
    assert weights.shape == (2, plugin.num_tokens(cfg)), name
    assert weights[0].sum() >= 1 and not weights[1].any() and not weights[:, 0].any(), name
    features = np.asarray(plugin.content_features(batch[name], cfg))
    if plugin.should_normalize_target(cfg):
      features = np.asarray(base.normalize_per_token(features))
    np.testing.assert_allclose(targets['features'][:, 1:], features, rtol=1e-5, atol=1e-5)
    # The masked tokens' inputs are blanked (zero pixels/features), the others untouched.
    after = np.asarray(plugin.content_features(masked, cfg))
    blank = {k: v if k in ('present', 'mask') else np.zeros_like(v)
             for k, v in batch[name].items()}
    chosen = weights[:, 1:] > 0
    np.testing.assert_allclose(after[chosen],
                               np.asarray(plugin.content_features(blank, cfg))[chosen], atol=1e-6)
    original = np.asarray(plugin.content_features(batch[name], cfg))
    np.testing.assert_allclose(after[~chosen], original[~chosen], atol=1e-6)
    masked_batch[name], all_targets[name] = masked, targets

  out = apply_fn(variables, masked_batch)
  for name in ('image', 'video', 'audio'):
    for target in ('regression', 'classification'):
      cfg = ml_collections.ConfigDict(config.modality[name].to_dict())
      cfg.target = target
      num, den = modalities.get(name).masked_loss(out[name][2], all_targets[name], cfg)
      assert float(den) == all_targets[name]['weights'].sum(), (name, target)
      # NCE with a single masked token has one candidate: its loss is exactly 0.
      assert np.isfinite(float(num)) and (num > 0) == (target == 'regression' or den > 1), name


MEDIA_FEATURES = {'image': 'regions', 'video': 's3d', 'audio': 'mel'}


def reference_mel(decoded, cfg):
  """The mel as the float32 pipeline made it: stored float16 -> float32, invalid frames
  zeroed, standardised over the valid ones in float64 (numpy)."""
  mel = np.asarray(decoded['audio_mel'], np.float32)
  valid = np.arange(cfg.mel_frames) < int(decoded['audio_frames'])
  values = mel[:, valid].astype(np.float64)
  out = np.where(valid[None], (mel - values.mean()) / np.sqrt(values.var() + 1e-5), 0.0)
  return out.astype(np.float32)


def test_features_travel_in_float16_and_the_model_matches_float32(setup):
  """Features form: regions, S3D and mel leave preprocess in float16 (no host cast),
  masking keeps them float16, the targets are float32, and the model's tokens, heads
  and losses on that batch equal those on the float32 batch the pipeline sent before
  (exactly where the stored float16 was only widened; within float16 rounding for the
  standardised mel)."""
  config, batch, apply_fn, variables = setup
  if config.modality.image.form != 'features':
    pytest.skip('raw pixels and frames are uint8')
  for name, key in MEDIA_FEATURES.items():
    assert batch[name][key].dtype == np.float16, name
  got_mel = batch['audio']['mel'][0].astype(np.float32)
  want_mel = reference_mel(example(form='features'), config.modality.audio)
  np.testing.assert_allclose(got_mel, want_mel, rtol=2.0**-11, atol=1e-7)
  assert np.abs(got_mel - want_mel).max() > 0  # float16 really rounded it
  wide = jax.tree.map(lambda x: x.astype(np.float32) if x.dtype == np.float16 else x, batch)
  old = dict(wide, audio=dict(wide['audio'], mel=np.stack([want_mel, wide['audio']['mel'][1]])))

  def run(inputs):
    masked, targets = {}, {}
    for name in MEDIA_FEATURES:
      plugin, cfg = modalities.get(name), config.modality[name]
      masked[name], targets[name] = plugin.mask_for_pretraining(inputs[name], jax.random.key(2),
                                                                cfg)
    out = apply_fn(variables, masked)
    losses = {n: modalities.get(n).masked_loss(out[n][2], targets[n], config.modality[n])
              for n in MEDIA_FEATURES}
    return masked, targets, out, losses

  masked16, targets16, out16, losses16 = run(batch)
  _, targets32, out32, losses32 = run(wide)
  _, targets_old, _, losses_old = run(old)
  for name, key in MEDIA_FEATURES.items():
    assert masked16[name][key].dtype == jnp.float16, name
    assert targets16[name]['features'].dtype == jnp.float32, name
    np.testing.assert_array_equal(targets16[name]['features'], targets32[name]['features'])
    for got, want in zip(out16[name], out32[name]):
      np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(losses16[name], losses32[name], rtol=1e-6)
    assert losses16[name][0] > 0, name
  # Against the float32 standardisation: float16 rounding of inputs and targets only.
  np.testing.assert_allclose(targets16['audio']['features'], targets_old['audio']['features'],
                             rtol=1e-2, atol=2e-3)
  np.testing.assert_allclose(losses16['audio'], losses_old['audio'], rtol=5e-3)


def test_bf16_compute_with_fp32_params_and_logical_axes(sp):
  config = tiny_config(sp.get_piece_size())
  batch = batch_lib.zeros_batch(config, 2)
  harness = Harness(config, dtype=jnp.bfloat16)
  # Shapes and dtypes only: tracing checks them without compiling.
  variables = jax.eval_shape(harness.init, jax.random.key(0), batch)
  out = jax.eval_shape(harness.apply, variables, batch)
  for name in NAMES:
    assert out[name][0].dtype == jnp.bfloat16, name
  params = nn.meta.unbox(variables['params'])
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  specs = nn.get_partition_spec(variables['params'])
  flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(
      specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))}
  assert flat["['word_embed']['embedding']"] == jax.sharding.PartitionSpec('vocab', 'embed')
  assert flat["['heads_text']['bias']"] == jax.sharding.PartitionSpec('vocab')
  assert flat["['embedders_image']['patch']['kernel']"] == jax.sharding.PartitionSpec(None, 'embed')
  # Every parameter the plugins create is annotated (a bare array would have no spec).
  boxed = jax.tree.leaves(variables['params'], is_leaf=lambda x: isinstance(x, nn.Partitioned))
  unannotated = [x for x in boxed if not isinstance(x, nn.Partitioned)]
  assert not unannotated


def test_unknown_modality_and_bad_form_fail_clearly():
  with pytest.raises(ValueError, match="unknown modality 'smell'"):
    modalities.get('smell')
  cfg = modalities.get('image').default_config()
  cfg.form = 'pixels'
  with pytest.raises(ValueError, match='raw|features'):
    modalities.get('image').batch_spec(cfg)


def test_audio_utterance_normalization_known_answer():
  """Valid frames -> mean 0, std 1 over the clip; padding stays 0; offsets cancel."""
  from m5_jax.modalities import audio
  rng = np.random.default_rng(0)
  mel = rng.normal(-10.0, 3.0, (4, 6)).astype(np.float32)
  mask = np.array([True, True, True, False, False, False])
  mel[:, ~mask] = 0.0
  out = audio.normalize_utterance(tf.constant(mel), tf.constant(mask), 'utterance').numpy()
  valid = mel[:, mask]
  np.testing.assert_allclose(out[:, mask], (valid - valid.mean()) / np.sqrt(valid.var() + 1e-5),
                             rtol=1e-5, atol=1e-5)
  assert (out[:, ~mask] == 0).all()
  # A constant offset (the log floor) does not change the result.
  shifted = np.where(mask[None], mel + 7.0, 0.0).astype(np.float32)
  np.testing.assert_allclose(
      audio.normalize_utterance(tf.constant(shifted), tf.constant(mask), 'utterance').numpy(),
      out, atol=1e-4)
  np.testing.assert_array_equal(
      audio.normalize_utterance(tf.constant(mel), tf.constant(mask), 'none').numpy(), mel)
  with pytest.raises(ValueError, match='normalize_input'):
    audio.normalize_utterance(tf.constant(mel), tf.constant(mask), 'global')


def test_register_then_unregister_forgets_the_plugin_and_its_letter():
  class Rating:  # codes() and get() read only the name and the code
    name, code = 'zz_rating', 'Z'
  plugin = Rating()
  assert modalities.register(plugin) is plugin and modalities.get('zz_rating') is plugin
  assert modalities.codes()['Z'] == 'zz_rating'
  with pytest.raises(ValueError, match='already registered'):
    modalities.register(Rating())
  modalities.unregister('zz_rating')
  assert 'Z' not in modalities.codes()
  with pytest.raises(ValueError, match="unknown modality 'zz_rating'"):
    modalities.get('zz_rating')
