"""The model family: presets, missing modalities, masks, scan/remat, logical axes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax.core import meta

from m5_jax import modalities
from m5_jax import models
from m5_jax import objectives
from m5_jax.models import family
from m5_jax.models import layers
from m5_jax.models import presets
import model_testlib


def all_finite(tree):
  return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree))


def loss_and_grads(model, config, params, batch):
  rng = jax.random.key(0)

  def loss_fn(params):
    masked, targets = objectives.mask_batch(batch, rng, config)
    out = objectives.pretraining_outputs(model, {'params': params}, masked, batch, rng, config,
                                         targets)
    terms = objectives.losses(out, targets, config)
    return objectives.total_loss(terms, config), (terms, out)
  return jax.value_and_grad(loss_fn, has_aux=True)(params)


def mixed_presence(config):
  """Items 0, 4: everything; 1: first modality only; 2: last modality only; 3: padding."""
  names = config.modalities
  present = {m: np.array([True, i == 0, i == len(names) - 1, False, True])
             for i, m in enumerate(names)}
  batch = model_testlib.random_batch(config, 5, present=present)
  batch['example_mask'][3] = False
  return batch


@pytest.mark.parametrize('method', list(presets.PRESETS))
def test_preset_builds_and_computes_loss(method):
  dtype = 'bfloat16' if method == 'm5_mmt' else 'float32'
  cls_token = 'learned' if method == 'image_only' else 'first'  # exercise both
  config = model_testlib.tiny_config(method, 'it' if method in ('m5_mmt', 'scale') else None,
                                     dtype=dtype, cls_token=cls_token)
  model = models.build(config)
  batch = mixed_presence(config)
  params = nn.unbox(model_testlib.random_params(model, batch))
  masked, targets = objectives.mask_batch(batch, jax.random.key(1), config)
  out = jax.jit(lambda p, m, b: objectives.pretraining_outputs(
      model, {'params': p}, m, b, jax.random.key(2), config, targets))(params, masked, batch)
  terms = objectives.losses(out, targets, config)
  loss = objectives.total_loss(terms, config)
  assert loss.dtype == jnp.float32 and np.isfinite(loss) and loss > 0
  assert all(num.dtype == jnp.float32 and den.dtype == jnp.float32 for num, den in terms.values())
  for m in config.modalities:
    num_tokens = modalities.get(m).num_tokens(config.modality[m])
    assert out['tokens'][m].shape == (5, num_tokens, config.model.hidden)
    assert out['token_mask'][m].shape == targets.get(m, {'weights': out['token_mask'][m]})[
        'weights'].shape
    assert out['pooled'][m].shape == (5, config.model.hidden)
    assert out['pooled'][m].dtype == jnp.float32
    np.testing.assert_array_equal(out['present'][m], batch[m]['present'] & batch['example_mask'])
    # An absent modality's pooled vector is exactly zero, never a stale [CLS].
    assert not np.any(np.asarray(out['pooled'][m])[~np.asarray(out['present'][m])])
  if config.loss.itm_weight:
    assert out['itm']['logits'].shape == (10,) and 'itm' in terms


def test_missing_modalities_train_with_finite_gradients():
  """Single-modality items train; a modality absent from the whole batch is harmless."""
  config = model_testlib.tiny_config('scale', 'it')  # SCALE: G over 1-modality items too
  model = models.build(config)
  single = {'image': np.array([1, 1, 0, 0], bool), 'text': np.array([0, 0, 1, 1], bool)}
  batch = model_testlib.random_batch(config, 4, present=single)
  params = nn.unbox(model_testlib.random_params(model, batch))
  step = jax.jit(lambda p, b: loss_and_grads(model, config, p, b))
  (loss, (terms, _)), grads = step(params, batch)
  assert np.isfinite(loss) and loss > 0 and all_finite(grads)
  for m in config.modalities:  # each single-modality item contributes and gets gradients
    assert terms[f'masked_{m}'][1] > 0
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads[f'encoders_{m}'])) > 0
  assert terms['contrastive_image_text'][1] == 0  # no item has both sides

  no_image = model_testlib.random_batch(config, 4, present={'image': np.zeros(4, bool)})
  (loss, (terms, _)), grads = step(params, no_image)  # same shapes: no recompile
  assert np.isfinite(loss) and loss > 0 and all_finite(grads)
  assert terms['masked_image'] == (0, 0)
  assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads['encoders_image'])) == 0


@pytest.mark.parametrize('fusion', ['joint', 'co_attention'])
def test_absent_content_is_never_attended(fusion):
  """Changing what an absent modality or padding holds changes no output at all."""
  config = model_testlib.tiny_config('m5_mmt', 'tv', fusion=fusion)
  model = models.build(config)
  batch = mixed_presence(config)
  params = nn.unbox(model_testlib.random_params(model, batch))
  apply = jax.jit(lambda b: model.apply({'params': params}, b))
  ref = apply(batch)
  noisy = jax.tree.map(np.copy, batch)
  rng = np.random.default_rng(9)
  absent = ~noisy['video']['present']
  noisy['video']['frames'][absent] = rng.integers(0, 256, noisy['video']['frames'][absent].shape)
  pad = ~noisy['text']['mask']
  noisy['text']['ids'][pad] = rng.integers(5, model_testlib.VOCAB, pad.sum())
  out = apply(noisy)
  for m in config.modalities:
    np.testing.assert_allclose(out['pooled'][m], ref['pooled'][m], atol=1e-6)
    keep = np.asarray(ref['token_mask'][m])
    np.testing.assert_allclose(np.asarray(out['tokens'][m])[keep],
                               np.asarray(ref['tokens'][m])[keep], atol=1e-6)
  assert all_finite(out['tokens'])


def test_modality_dropout_never_drops_the_last_modality():
  rng = np.random.default_rng(0)
  present = {m: jnp.asarray(rng.random(256) < 0.6) for m in 'abcd'}
  stacked = np.stack([present[m] for m in 'abcd'], -1)
  for rate in (1.0, 0.5):
    kept = family.drop_modalities(jax.random.key(1), present, rate)
    kept = np.stack([kept[m] for m in 'abcd'], -1)
    assert not np.any(kept & ~stacked)                          # never adds one
    np.testing.assert_array_equal(kept.any(-1), stacked.any(-1))  # never drops the last
    if rate == 1.0:
      np.testing.assert_array_equal(kept.sum(-1), np.minimum(stacked.sum(-1), 1))
    else:
      assert 0.3 < 1 - kept.sum() / stacked.sum() < 0.5


def test_modality_dropout_only_in_training():
  config = model_testlib.tiny_config('clip', modality_dropout=1.0, encoder_layers=0)
  model = models.build(config)
  batch = model_testlib.random_batch(config, 8, present_prob=1.0)
  params = model_testlib.random_params(model, batch)
  present = jax.jit(lambda train: model.apply(
      {'params': params}, batch, train=train, heads=False, rngs={'dropout': jax.random.key(0)})['present'],
                    static_argnums=0)
  assert int(sum(present(True)[m].sum() for m in config.modalities)) == 8
  assert int(sum(present(False)[m].sum() for m in config.modalities)) == 16


def test_scan_and_remat_match_unrolled_layers():
  pre_ln = True  # post-LN unrolled layers are checked against NumPy BERT
  spec = layers.TransformerSpec(hidden=16, heads=2, mlp_dim=32, pre_ln=pre_ln)
  x = jax.random.normal(jax.random.key(0), (2, 5, 16))
  mask = jnp.array([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]], bool)  # row 2 attends to nothing
  unrolled = layers.Encoder(spec, 3)
  params = jax.jit(unrolled.init)(jax.random.key(1), x, mask)['params']
  apply = lambda module, params: jax.jit(module.apply)({'params': params}, x, mask)  # noqa: E731
  ref = apply(unrolled, params)
  assert all_finite(ref)
  remat = layers.Encoder(layers.TransformerSpec(**{**spec.__dict__, 'remat': True}), 3)
  np.testing.assert_allclose(apply(remat, params), ref, atol=1e-6)
  scanned = layers.Encoder(layers.TransformerSpec(**{**spec.__dict__, 'scan_layers': True,
                                                     'remat': True}), 3)
  stacked = jax.tree.map(lambda *a: jnp.stack(a), *[params[f'layer_{i}'] for i in range(3)])
  scan_params = {'layers': {'block': stacked}}
  if pre_ln:
    scan_params['final_ln'] = params['final_ln']
  abstract = jax.eval_shape(scanned.init, jax.random.key(1), x, mask)['params']
  assert jax.tree.map(lambda a: a.shape, nn.unbox(abstract)) == \
      jax.tree.map(lambda a: a.shape, nn.unbox(scan_params))
  # Scanned kernels carry the 'layers' axis name for the mesh rules.
  assert abstract['layers']['block']['mlp']['wi']['kernel'].names == ('layers', 'embed', 'mlp')
  np.testing.assert_allclose(apply(scanned, nn.unbox(scan_params)), ref, atol=1e-5)


def test_every_parameter_has_logical_axes():
  known = {'embed', 'mlp', 'heads', 'kv', 'vocab', 'layers', None}
  for method in ('m5_mmt', 'single_stream', 'dual_stream'):
    config = model_testlib.tiny_config(method, 'itpva' if method == 'm5_mmt' else None,
                                       scan_layers=True)
    model = models.build(config)
    batch = model_testlib.random_batch(config, 2)
    abstract = jax.eval_shape(model.init, jax.random.key(0), batch)['params']
    leaves = jax.tree.leaves(abstract, is_leaf=lambda x: isinstance(x, meta.AxisMetadata))
    for leaf in leaves:
      assert isinstance(leaf, nn.LogicallyPartitioned), leaf
      assert len(leaf.names) == len(leaf.value.shape) and set(leaf.names) <= known, leaf


def test_build_rejects_unknown_fusion_and_method():
  config = model_testlib.tiny_config('m5_mmt', 'it')
  config.model.fusion = 'late'
  with pytest.raises(ValueError, match='unknown model.fusion'):
    models.build(config)
  config = model_testlib.tiny_config('clip')
  config.loss.itm_weight = 1.0
  with pytest.raises(ValueError, match='needs a fusion that mixes'):
    models.build(config)
  with pytest.raises(ValueError, match='unknown method'):
    presets.get('vilbert')
  with pytest.raises(ValueError, match='unknown modality letter'):
    presets.get('m5_mmt', modalities='itx')
  assert presets.get('m5_mmt', 'base').model.hidden == 768
  assert presets.get('single_stream', 'base').model.fusion_layers == 12


def test_param_count_sizes():
  from m5_jax.models import param_count  # pylint: disable=g-import-not-at-top
  tiny = param_count.count('clip', 'tiny')
  config = model_testlib.tiny_config('clip')
  config.model.vocab_size = config.modality.text.vocab_size = 8000
  for m in config.modalities:
    config.modality[m] = presets.full_config('clip').modality[m]
  model = models.build(config)
  abstract = jax.eval_shape(model.init, jax.random.key(0), model_testlib.random_batch(config, 1))
  assert tiny['total'] == sum(np.prod(x.shape) for x in jax.tree.leaves(nn.unbox(abstract)))
  assert 0.9e9 < param_count.count('m5_mmt', 'large')['total'] < 1.1e9


def test_complement_view_sees_only_the_tokens_masking_hid():
  """instance_view='complement': the instance terms' second view encodes the summary
  token and the tokens the first view's masking hid, nothing else; an item whose
  masking hid nothing has no second view. 'auto' (the M5-MMT preset) takes each
  plugin's choice: complement for image and video, the clean view for text, table
  and audio."""
  five = model_testlib.tiny_config('m5_mmt', 'itpva')
  _, five_targets = objectives.mask_batch(
      model_testlib.random_batch(five, 4, present_prob=1.0), jax.random.key(1), five)
  assert set(objectives.instance_view_keep(five_targets, five)) == {'image', 'video'}
  config = model_testlib.tiny_config('m5_mmt', 'it')
  assert config.loss.instance_view == 'auto'
  model = models.build(config)
  batch = model_testlib.random_batch(config, 4, present_prob=1.0)
  params = nn.unbox(model_testlib.random_params(model, batch))
  masked, targets = objectives.mask_batch(batch, jax.random.key(1), config)
  assert set(objectives.instance_view_keep(targets, config)) == {'image'}
  config.loss.instance_view = 'clean'
  assert objectives.instance_view_keep(targets, config) is None
  config.loss.instance_view = 'complement'
  keep = objectives.instance_view_keep(targets, config)
  assert set(keep) == {'image', 'text'}
  hidden = np.asarray(targets['text']['weights']) > 0
  np.testing.assert_array_equal(keep['text'][:, 1:], hidden[:, 1:])
  assert keep['text'][:, 0].all() and hidden.any(axis=1).all()

  def second_view(clean, keep):
    out = model.apply({'params': params}, masked, train=False, clean_batch=clean, clean_keep=keep)
    return np.asarray(out['clean_encoder_pooled']['text']), out.get('clean_present')

  base, clean_present = second_view(batch, keep)
  assert np.asarray(clean_present['text']).all()
  seen = np.flatnonzero(~hidden[0] & np.asarray(batch['text']['mask'][0]))[1:]   # not BOS
  changed_seen = jax.tree.map(np.copy, batch)
  changed_seen['text']['ids'][0, seen] = 7
  np.testing.assert_allclose(second_view(changed_seen, keep)[0], base, atol=1e-6)
  changed_hidden = jax.tree.map(np.copy, batch)
  changed_hidden['text']['ids'][0, np.flatnonzero(hidden[0])] = 7
  assert np.abs(second_view(changed_hidden, keep)[0][0] - base[0]).max() > 1e-4
  # The clean view (no keep) sees every token.
  assert np.abs(second_view(changed_seen, None)[0][0] - second_view(batch, None)[0][0]).max() > 1e-4
  # Nothing hidden in item 0: no second view for it.
  nothing = {m: k.at[0, 1:].set(False) for m, k in keep.items()}
  assert not np.asarray(second_view(batch, nothing)[1]['text'])[0]
