"""Objectives: known answers (NumPy references), masking of absent pairs, sharding."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from m5_jax import models
from m5_jax import objectives
from m5_jax.models import presets
import model_testlib


# ------------------------------------------------------------ NumPy references
def np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def np_infonce(za, zb, valid, log_scale, scale_ab=None, scale_ba=None):
  """Hand-written: drop invalid items, then CLIP's symmetric loss, summed over rows."""
  keep = np.flatnonzero(valid)
  a = za[keep] / np.linalg.norm(za[keep], axis=-1, keepdims=True)
  b = zb[keep] / np.linalg.norm(zb[keep], axis=-1, keepdims=True)
  logits = np.exp(log_scale) * a @ b.T
  sab = np.ones(len(keep)) if scale_ab is None else scale_ab[keep]
  sba = np.ones(len(keep)) if scale_ba is None else scale_ba[keep]
  a2b = -np.diag(np_log_softmax(logits * sab[:, None]))
  b2a = -np.diag(np_log_softmax(logits.T * sba[:, None]))
  return 0.5 * (a2b + b2a).sum(), float(len(keep))


def np_sigmoid(za, zb, valid, log_scale, bias):
  keep = np.flatnonzero(valid)
  a = za[keep] / np.linalg.norm(za[keep], axis=-1, keepdims=True)
  b = zb[keep] / np.linalg.norm(zb[keep], axis=-1, keepdims=True)
  logits = np.exp(log_scale) * a @ b.T + bias
  labels = 2 * np.eye(len(keep)) - 1
  return np.log1p(np.exp(-labels * logits)).sum(), float(len(keep))


def np_scale_weights(vectors, present):
  """SCALE's formula per item on the submatrix of present modalities (DESIGN.md §2)."""
  b, m, _ = vectors.shape
  out = np.zeros((b, m, m))
  for i in range(b):
    idx = np.flatnonzero(present[i])
    if len(idx) == 0:
      continue
    z = vectors[i, idx] / np.linalg.norm(vectors[i, idx], axis=-1, keepdims=True)
    g = z @ z.T                                    # cosine similarities
    s = np.exp(g - g.max(-1, keepdims=True))
    s /= s.sum(-1, keepdims=True)                  # row-wise softmax
    g = g @ s                                      # G <- G softmax(G)
    g /= np.linalg.norm(g, axis=-1, keepdims=True)  # rows L2-normalised
    out[i][np.ix_(idx, idx)] = g
  return out


@pytest.fixture
def pair_inputs():
  rng = np.random.default_rng(0)
  za = rng.normal(size=(7, 5)).astype(np.float32)
  zb = rng.normal(size=(7, 5)).astype(np.float32)
  valid = np.array([1, 1, 0, 1, 1, 0, 1], bool)
  return za, zb, valid


def test_infonce_matches_numpy_and_ignores_absent_items(pair_inputs):
  za, zb, valid = pair_inputs
  log_scale = np.float32(np.log(1 / 0.07))
  logits = objectives.pair_logits(za, zb, jnp.float32(log_scale))
  num, den = objectives.softmax_contrastive(logits, valid)
  ref_num, ref_den = np_infonce(za, zb, valid, log_scale)
  np.testing.assert_allclose(num, ref_num, rtol=1e-5)
  assert den == ref_den == 5
  # Changing an absent item's vectors changes nothing (masked out of rows AND columns).
  za2, zb2 = za.copy(), zb.copy()
  za2[[2, 5]] = 100.0 * np.random.default_rng(1).normal(size=(2, 5))
  zb2[[2, 5]] = za[[0, 1]]  # would be a strong hard negative if it were a column
  num2, _ = objectives.softmax_contrastive(
      objectives.pair_logits(za2, zb2, jnp.float32(log_scale)), valid)
  np.testing.assert_allclose(num2, num, rtol=1e-6)


def test_infonce_row_scaling_matches_numpy(pair_inputs):
  za, zb, valid = pair_inputs
  sab, sba = np.linspace(0.2, 1.0, 7), np.linspace(1.0, 0.3, 7)
  logits = objectives.pair_logits(za, zb, jnp.float32(1.5))
  num, _ = objectives.softmax_contrastive(logits, valid, jnp.asarray(sab), jnp.asarray(sba))
  np.testing.assert_allclose(num, np_infonce(za, zb, valid, 1.5, sab, sba)[0], rtol=1e-5)


def np_hard_negative_infonce(logits, beta):
  """Robinson et al.'s re-weighted denominator, by hand: negatives j of row i weigh
  n * exp(beta l_ij) / sum_k exp(beta l_ik), the positive weighs 1."""
  def rows(l):
    out = []
    for i in range(len(l)):
      neg = np.delete(l[i], i)
      w = len(neg) * np.exp(beta * neg) / np.exp(beta * neg).sum()
      out.append(np.log(np.exp(l[i, i]) + (w * np.exp(neg)).sum()) - l[i, i])
    return np.array(out)
  return 0.5 * (rows(logits) + rows(logits.T)).sum()


def test_hard_negative_infonce_matches_numpy_and_beta_zero_is_infonce(pair_inputs):
  za, zb, valid = pair_inputs
  logits = objectives.pair_logits(za, zb, jnp.float32(1.5))
  plain, _ = objectives.softmax_contrastive(logits, valid)
  np.testing.assert_allclose(objectives.softmax_contrastive(logits, valid, hard_negatives=0.0)[0],
                             plain, rtol=1e-6)
  keep = np.flatnonzero(valid)
  kept = np.asarray(logits)[np.ix_(keep, keep)]
  hard, den = objectives.softmax_contrastive(logits, valid, hard_negatives=0.8)
  np.testing.assert_allclose(hard, np_hard_negative_infonce(kept, 0.8), rtol=1e-5)
  assert den == 5 and hard > plain    # the hardest negatives weigh more: a larger loss
  # The weights are held constant: the gradient is InfoNCE's with re-weighted negatives.
  grad = jax.grad(lambda l: objectives.softmax_contrastive(l, valid, hard_negatives=0.8)[0])(logits)
  assert np.all(np.asarray(grad)[~valid] == 0) and np.all(np.isfinite(grad))


def test_sigmoid_matches_numpy(pair_inputs):
  za, zb, valid = pair_inputs
  logits = objectives.pair_logits(za, zb, jnp.float32(np.log(10.0)))
  num, den = objectives.sigmoid_contrastive(logits, jnp.float32(-3.0), valid)
  ref_num, ref_den = np_sigmoid(za, zb, valid, np.log(10.0), -3.0)
  np.testing.assert_allclose(num, ref_num, rtol=1e-5)
  assert den == ref_den


def test_scale_weights_match_numpy():
  rng = np.random.default_rng(0)
  vectors = rng.normal(size=(6, 5, 8)).astype(np.float32)
  present = rng.random((6, 5)) < 0.7
  present[0] = False           # nothing present
  present[1] = [1, 0, 0, 0, 0]  # one modality: G = [[1]]
  present[2] = True
  got = objectives.self_harmonised_weights(jnp.asarray(vectors), jnp.asarray(present))
  ref = np_scale_weights(vectors.astype(np.float64), present)
  np.testing.assert_allclose(got, ref, atol=1e-5)
  assert got[1, 0, 0] == pytest.approx(1.0)
  assert np.all(np.isfinite(got))


def test_total_loss_weights_and_empty_terms():
  config = model_testlib.tiny_config('m5_mmt', 'it')
  config.loss.weights.masked_text = 3.0
  terms = {'masked_text': (jnp.float32(6.0), jnp.float32(2.0)),
           'masked_image': (jnp.float32(0.0), jnp.float32(0.0)),  # nothing masked
           'contrastive_image_text': (jnp.float32(4.0), jnp.float32(4.0))}
  assert float(objectives.total_loss(terms, config)) == pytest.approx(3.0 * 3.0 + 1.0)
  config.loss.weights.masked_txt = 1.0
  with pytest.raises(ValueError, match='unknown term'):
    objectives.total_loss(terms, config)


def test_mlm_with_nothing_masked_is_zero_and_finite():
  config = model_testlib.tiny_config('text_only')
  model = models.build(config)
  batch = model_testlib.random_batch(config, 4, present_prob=1.0)
  params = model_testlib.random_params(model, batch)
  _, targets = objectives.mask_batch(batch, jax.random.key(1), config)
  targets = {m: dict(t, weights=jnp.zeros_like(t['weights'])) for m, t in targets.items()}

  def loss_fn(p):
    out = model.apply({'params': p}, batch)
    terms = objectives.losses(out, targets, config)
    return objectives.total_loss(terms, config), terms

  (loss, terms), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
  assert terms['masked_text'][0] == 0 and terms['masked_text'][1] == 0
  assert loss == 0
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(nn.unbox(grads)))


def test_mask_batch_folds_rng_per_modality():
  """Adding a modality does not change another modality's masks."""
  small = model_testlib.tiny_config('m5_mmt', 'tp')
  big = model_testlib.tiny_config('m5_mmt', 'itp')
  batch = model_testlib.random_batch(big, 8, present_prob=1.0)
  mask = lambda b, config: jax.jit(lambda b: objectives.mask_batch(b, jax.random.key(3), config))(b)
  _, t_small = mask({k: batch[k] for k in ('example_mask', 'text', 'table')}, small)
  _, t_big = mask(batch, big)
  for m in ('text', 'table'):
    np.testing.assert_array_equal(t_small[m]['weights'], t_big[m]['weights'])
  assert float(t_big['text']['weights'].sum()) > 0
  # CLIP trains on clean inputs: masked weight 0 -> no masking, no targets.
  clip = model_testlib.tiny_config('clip')
  masked, targets = objectives.mask_batch(batch, jax.random.key(3), clip)
  assert targets == {} and masked['text'] is batch['text']


# ------------------------------------------------- 8 devices == 1 device
LOGICAL_RULES = (('batch', 'data'), ('length', None), ('embed', None), ('mlp', 'model'),
                 ('heads', 'model'), ('kv', None), ('vocab', 'model'), ('layers', None))


def test_sharded_loss_equals_single_device():
  """Batch sharded 4-way, weights sharded 2-way by logical axes == one device."""
  mesh_shape = (4, 2)
  config = model_testlib.tiny_config('scale', 'it')
  config.loss.itm_weight = 1.0  # exercise the rolled negatives under sharding too
  model = models.build(config)
  batch = model_testlib.random_batch(config, 16, present_prob=0.7)
  boxed = model_testlib.random_params(model, batch)
  params = nn.unbox(boxed)

  def loss_fn(params, batch, rng):
    masked, targets = objectives.mask_batch(batch, rng, config)
    out = objectives.pretraining_outputs(model, {'params': params}, masked, batch, rng, config,
                                         targets)
    return objectives.total_loss(objectives.losses(out, targets, config), config)

  rng = jax.random.key(7)
  single = jax.jit(loss_fn)(jax.device_put(params, jax.devices()[0]),
                            jax.device_put(batch, jax.devices()[0]), rng)

  mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(mesh_shape), ('data', 'model'))
  with nn.logical_axis_rules(LOGICAL_RULES):
    param_specs = nn.get_partition_spec(boxed)
    param_shardings = jax.tree.map(
        lambda spec: jax.sharding.NamedSharding(mesh, nn.logical_to_mesh_axes(spec)), param_specs,
        is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
    sharded_params = jax.device_put(params, param_shardings)
    sharded_batch = jax.device_put(batch, batch_sharding)
    with jax.set_mesh(mesh):
      sharded = jax.jit(loss_fn)(sharded_params, sharded_batch, rng)
  assert len(sharded_batch['text']['ids'].sharding.device_set) == 8
  np.testing.assert_allclose(sharded, single, rtol=1e-5, atol=1e-5)
  assert np.isfinite(single)


def test_presets_loss_terms():
  """Each method computes exactly the terms its preset asks for."""
  expect = {'text_only': {'masked_text'}, 'clip': {'contrastive_image_text'},
            'single_stream': {'masked_image', 'masked_text', 'itm'},
            'capture': {'masked_image', 'masked_text', 'contrastive_image_text'}}
  for method, names in expect.items():
    config = model_testlib.tiny_config(method)
    assert {n for n in objectives.term_names(config)
            if objectives.term_weight(config, n) > 0} == names, method
  assert presets.get('scale').loss.scale_weighting


@pytest.mark.parametrize('kind', ['softmax', 'sigmoid'])
def test_losses_pairs_and_scale_weighting_match_numpy(kind):
  """losses() end to end on hand-made outputs: every present pair, SCALE-scaled rows."""
  config = model_testlib.tiny_config('scale', 'itp')
  config.loss.contrastive = kind
  config.loss.masked_weight = 0.0
  config.loss.instance_weight = 0.0  # hand-made outputs carry no clean view
  rng = np.random.default_rng(3)
  names, b = config.modalities, 6
  present = {m: rng.random(b) < 0.75 for m in names}
  present['table'][:] = False  # a modality absent everywhere: its pairs are empty
  encoder = {m: rng.normal(size=(b, 8)).astype(np.float32) for m in names}
  outputs = {'present': present, 'encoder_pooled': encoder,
             'pooled': {m: rng.normal(size=(b, 8)).astype(np.float32) for m in names},
             'contrastive': {'log_scale': jnp.float32(2.0), 'bias': jnp.float32(-1.0)}}
  terms = objectives.losses(outputs, {}, config)
  assert set(terms) == {'contrastive_image_text', 'contrastive_image_table',
                        'contrastive_text_table'}
  g = np_scale_weights(np.stack([encoder[m] for m in names], 1).astype(np.float64),
                       np.stack([present[m] for m in names], 1))
  valid = present['image'] & present['text']
  num, den = terms['contrastive_image_text']
  if kind == 'softmax':
    ref = np_infonce(encoder['image'], encoder['text'], valid, 2.0, g[:, 0, 1], g[:, 1, 0])[0]
  else:  # row i of image->text scaled by G_i[image, text]
    keep = np.flatnonzero(valid)
    za = encoder['image'][keep] / np.linalg.norm(encoder['image'][keep], axis=-1, keepdims=True)
    zb = encoder['text'][keep] / np.linalg.norm(encoder['text'][keep], axis=-1, keepdims=True)
    logits = np.exp(2.0) * (za @ zb.T) * g[keep, 0, 1][:, None] - 1.0
    ref = np.log1p(np.exp(-(2 * np.eye(len(keep)) - 1) * logits)).sum()
  np.testing.assert_allclose(num, ref, rtol=1e-5)
  assert den == valid.sum() > 1
  assert terms['contrastive_text_table'] == (0, 0)


def test_instance_terms_match_numpy_and_need_the_clean_view():
  """instance_<m> is InfoNCE between the masked and the clean view of modality m, over
  the items that have m; the cross-modal pairs are untouched by it."""
  config = model_testlib.tiny_config('m5_mmt', 'it')
  config.loss.masked_weight = 0.0
  config.loss.contrastive_weight = 0.0
  config.loss.instance_weight = 1.0
  assert objectives.uses_clean_view(config)
  rng = np.random.default_rng(5)
  b = 7
  present = {m: rng.random(b) < 0.7 for m in config.modalities}
  masked = {m: rng.normal(size=(b, 8)).astype(np.float32) for m in config.modalities}
  clean = {m: rng.normal(size=(b, 8)).astype(np.float32) for m in config.modalities}
  outputs = {'present': present, 'encoder_pooled': masked, 'clean_encoder_pooled': clean,
             'pooled': masked,
             'contrastive': {'log_scale': jnp.float32(1.5), 'bias': jnp.float32(0.0)}}
  terms = objectives.losses(outputs, {}, config)
  assert set(terms) == {'instance_image', 'instance_text'}
  for m in config.modalities:
    num, den = terms[f'instance_{m}']
    ref_num, ref_den = np_infonce(masked[m], clean[m], present[m], 1.5)
    np.testing.assert_allclose(num, ref_num, rtol=1e-5)
    assert den == ref_den
  del outputs['clean_encoder_pooled']
  with pytest.raises(ValueError, match='clean view'):
    objectives.losses(outputs, {}, config)
