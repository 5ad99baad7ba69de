"""The model's speed options give the numbers they promise (no timing here).

model.activation=gelu_tanh stays within its documented distance of the exact GELU;
model.attention=dot_product equals the einsum attention (zeros for rows with no
key); model.heads_at=masked gives the same loss as heads at every position;
model.dropout_rng=rbg draws real dropout masks, and =hash draws the words of a
reference implementation, uniform and the same under any sharding; model.dropout_bits=16 drops the
promised share, unbiased, and 32 is flax's own dropout, stream for stream.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flax.linen as nn

from m5_jax import config_lib
from m5_jax import dropout as dropout_lib
from m5_jax import models
from m5_jax import objectives
from m5_jax.models import layers
from tests import model_testlib

TANH_GELU_MAX_ABS_DIFF = 4.8e-4  # layers.py's docstring says 4.7e-4


def test_option_choices_match_the_code():
  assert config_lib.ACTIVATIONS == tuple(layers.ACTIVATIONS)
  assert config_lib.ATTENTION == layers.ATTENTION
  assert config_lib.DROPOUT_RNGS == objectives.DROPOUT_RNGS
  assert config_lib.DROPOUT_BITS == dropout_lib.DROPOUT_BITS


def test_tanh_gelu_close_to_exact():
  x = jnp.linspace(-8.0, 8.0, 20001)
  exact, tanh = layers.ACTIVATIONS['gelu'](x), layers.ACTIVATIONS['gelu_tanh'](x)
  diff = float(jnp.max(jnp.abs(exact - tanh)))
  assert 1e-4 < diff < TANH_GELU_MAX_ABS_DIFF  # different, and by the documented amount
  with pytest.raises(ValueError, match='model.activation'):
    layers.make_spec({'hidden': 8, 'heads': 2, 'mlp_dim': 8, 'activation': 'relu6'})
  assert layers.make_spec({'hidden': 8, 'heads': 2, 'mlp_dim': 8,
                           'gelu_approximate': True}).activation == 'gelu_tanh'


def test_dot_product_attention_matches_einsum():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(3, 5, 16)), jnp.float32)
  mask = np.ones((3, 5), bool)
  mask[1, 3:] = False
  mask[2] = False  # an item with nothing to attend to: zeros, not an average
  outs = {}
  for impl in layers.ATTENTION:
    spec = layers.TransformerSpec(hidden=16, heads=2, mlp_dim=32, attention=impl)
    attention = layers.Attention(spec)
    params = attention.init(jax.random.key(0), x, mask[:, None, None, :])
    outs[impl] = attention.apply(params, x, mask[:, None, None, :])
  np.testing.assert_allclose(outs['dot_product'], outs['einsum'], atol=1e-5)
  bias = outs['einsum'][2]  # the out projection's bias only
  np.testing.assert_allclose(outs['dot_product'][2], bias, atol=1e-6)


def _loss(config, params, batch, rng):
  model = models.build(config)

  @jax.jit
  def loss(params, batch):
    masked, targets = objectives.mask_batch(batch, rng, config)
    outputs = model.apply({'params': params}, masked, train=False)
    return objectives.total_loss(objectives.losses(outputs, targets, config), config)

  return loss(params, batch)


def test_heads_at_masked_positions_give_the_same_loss():
  config = model_testlib.tiny_config('m5_mmt', 'tpi')
  config.loss.instance_weight = 0.0
  config.model.heads_at = 'all'
  batch = model_testlib.random_batch(config, 4, seed=3)
  model = models.build(config)
  params = model_testlib.random_params(model, batch)
  masked_config = config.copy_and_resolve_references()
  masked_config.model.heads_at = 'masked'
  rows = objectives.head_rows(masked_config)
  assert set(rows) == {'text', 'image'}  # the table's whole spans have no useful bound
  assert rows['text'] == 2  # round(0.15 * 11)
  rng = jax.random.key(1)
  full, gathered = _loss(config, params, batch, rng), _loss(masked_config, params, batch, rng)
  assert float(full) > 0
  np.testing.assert_allclose(float(gathered), float(full), rtol=1e-5)


def test_rbg_dropout_key():
  config = model_testlib.tiny_config('m5_mmt')
  config.model.dropout_rng = 'rbg'
  key = objectives.dropout_key(jax.random.key(0), config)
  assert 'rbg' in str(jax.random.key_impl(key))
  keep = jax.random.bernoulli(key, 0.9, (10_000,))
  assert 0.88 < float(keep.mean()) < 0.92
  config.model.dropout_rng = 'philox'
  with pytest.raises(ValueError, match='dropout_rng'):
    objectives.dropout_key(jax.random.key(0), config)


def _lowbias32_reference(x: int) -> int:
  """Chris Wellons' lowbias32 in plain Python integers."""
  x ^= x >> 16
  x = (x * 0x7FEB352D) & 0xFFFFFFFF
  x ^= x >> 15
  x = (x * 0x846CA68B) & 0xFFFFFFFF
  return x ^ (x >> 16)


def test_hash_dropout_key_draws_the_reference_words_uniform_and_shard_invariant():
  key = jax.random.wrap_key_data(jnp.array([0x12345678, 0x9ABCDEF0], jnp.uint32),
                                 impl=dropout_lib.HASH_PRNG)
  # Known answers: word i is mix(mix(i ^ k0) + k1), from a plain-Python reference.
  want = [_lowbias32_reference((_lowbias32_reference(i ^ 0x12345678) + 0x9ABCDEF0) & 0xFFFFFFFF)
          for i in range(1000)]
  np.testing.assert_array_equal(np.asarray(jax.random.bits(key, (1000,), jnp.uint32)),
                                np.array(want, np.uint32))
  assert _lowbias32_reference(1) != 1 and _lowbias32_reference(0) == 0
  # A draw never repeats a word (a bijection of positions); its bits are fair.
  words = np.asarray(jax.random.bits(key, (1 << 20,), jnp.uint32))
  assert len(np.unique(words)) == words.size
  bit_means = np.unpackbits(words.view(np.uint8)).reshape(-1, 32).mean(0)
  assert np.all(np.abs(bit_means - 0.5) < 6 * 0.5 / np.sqrt(words.size))  # every bit, 6 sigma
  # Keys folded per layer give unrelated masks: agreement p^2 + (1-p)^2 = 0.82 at p = 0.9.
  first = np.asarray(jax.random.bernoulli(jax.random.fold_in(key, 0), 0.9, (200_000,)))
  second = np.asarray(jax.random.bernoulli(jax.random.fold_in(key, 1), 0.9, (200_000,)))
  assert abs(first.mean() - 0.9) < 0.004 and abs(second.mean() - 0.9) < 0.004
  assert abs(np.mean(first == second) - 0.82) < 0.005
  # The words follow the global position: a draw split over 8 devices is the same draw.
  mesh = jax.make_mesh((len(jax.devices()),), ('x',),
                       axis_types=(jax.sharding.AxisType.Auto,))
  sharded = jax.jit(lambda k: jax.random.bits(k, (64, 1000), jnp.uint32),
                    out_shardings=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('x')))
  np.testing.assert_array_equal(np.asarray(sharded(key)),
                                np.asarray(jax.random.bits(key, (64, 1000), jnp.uint32)))
  # Through the config, as the train step makes it.
  config = model_testlib.tiny_config('m5_mmt')
  config.model.dropout_rng = 'hash'
  step_key = objectives.dropout_key(jax.random.key(0), config)
  assert jax.random.key_impl(step_key) == dropout_lib.HASH_PRNG
  x = jnp.ones((4, 50, 1001), jnp.float32)
  dropped = _TwoDropouts(0.1, 16).apply({}, x, rngs={'dropout': step_key})[0]
  assert abs(float(np.mean(np.asarray(dropped) != 0)) - 0.9) < 0.003


class _TwoDropouts(nn.Module):
  """Two dropout layers in one scope, as a transformer block has them."""
  rate: float
  bits: int | None  # None: flax's nn.Dropout written directly (what m5_jax did before)

  @nn.compact
  def __call__(self, x):
    make = (lambda: nn.Dropout(self.rate)) if self.bits is None else (
        lambda: dropout_lib.dropout(self.rate, self.bits))
    return make()(x, deterministic=False), make()(x, deterministic=False)


def test_dropout_bits():
  x = jnp.ones((4, 50, 1001), jnp.float32)  # an odd last axis: the last word's high half unused
  rngs = {'dropout': jax.random.key(3)}
  # 32 bits is flax's nn.Dropout, made in the caller's scope: the same names, the same masks.
  for got, want in zip(_TwoDropouts(0.1, 32).apply({}, x, rngs=rngs),
                       _TwoDropouts(0.1, None).apply({}, x, rngs=rngs)):
    np.testing.assert_array_equal(got, want)
  first, second = _TwoDropouts(0.1, 16).apply({}, x, rngs=rngs)
  assert first.shape == x.shape and not np.array_equal(first, second)  # each layer its own mask
  values = np.unique(np.asarray(first))
  scale = 65536 / (65536 - round(0.1 * 65536))
  np.testing.assert_allclose(values, [0.0, scale], rtol=1e-6)  # dropped, or kept and rescaled
  kept = float(np.mean(np.asarray(first) != 0))
  assert abs(kept - 0.9) < 0.003                                 # 200k decisions: 6 sigma
  assert abs(float(np.mean(first)) - 1.0) < 0.004               # unbiased
  layer = dropout_lib.Dropout16(0.1)
  np.testing.assert_array_equal(layer.apply({}, x, deterministic=True), x)
  np.testing.assert_array_equal(dropout_lib.Dropout16(1.0).apply({}, x, False, rngs=rngs), 0 * x)
  with pytest.raises(ValueError, match='model.dropout_bits'):
    dropout_lib.dropout(0.1, 8)
