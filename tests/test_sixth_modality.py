"""A sixth modality is one new file (tests/toy_rating_modality.py) plus config lines."""
import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf

from m5_jax import batch as batch_lib
from m5_jax import models
from m5_jax import modalities
from m5_jax import objectives
from m5_jax.models import presets


def rating_config():
  # The config lines: reach the plugin by module path once, then use its name.
  plugin = modalities.get('toy_rating_modality')
  config = presets.full_config('m5_mmt', 'tiny', modalities=('text', 'rating'))
  assert config.modality.rating.to_dict() == plugin.default_config().to_dict()
  return config


def test_plugin_found_by_module_path_then_by_name():
  plugin = modalities.get('toy_rating_modality')
  assert modalities.get('rating') is plugin and plugin.code == 'r'


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
                                         jax.random.key(1), config)
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
