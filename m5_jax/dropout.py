"""Dropout, with cheaper random sources than flax's as options: model.dropout_bits
(below) and model.dropout_rng='hash' (the PRNG further down; the two combine).

32 bits is flax's nn.Dropout: one float32 uniform per element. 16 bits takes two
keep decisions from each 32-bit random word, so the PRNG (threefry) draws half the
words and no floats are made: about 3x less dropout work on XLA:CPU, where
dropout's random bits were ~10% of a small model's profiled op time; the step ran
5-9% faster (benchmarks/RESULTS.md section 7). The keep probability is exact to
2^-16 and kept values are scaled by its exact inverse, so the layer stays
unbiased; its random stream differs from 32 bits', so runs are reproducible per
setting, not across them.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.extend.random as jex_random
import jax.numpy as jnp

DROPOUT_BITS = (32, 16)


# --- model.dropout_rng='hash': a counter-hash PRNG for dropout masks -------------
# threefry2x32 spends 20 rounds of 32-bit adds, rotates and xors per 64 random
# bits; dropout alone was 7-14% of base's step on XLA:CPU (RESULTS.md section 7).
# Dropout needs no cryptographic strength, only bits with no pattern a layer can
# learn, so this impl makes the bits as a hash of each element's position: word i of
# a draw is mix(mix(i ^ k0) + k1), mix being Chris Wellons' "lowbias32" (a bijection
# of 32-bit words with ~0.17 average bias across output bits). A bijection of
# distinct positions gives distinct words, so no two elements of a draw share bits.
# Keys are split and folded with threefry (a few words per layer and step), so
# every layer and step draws from an independent key. The whole draw is ~10 integer
# ops per word, one elementwise fusion with the mask that uses it.
def _lowbias32(x):
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * jnp.uint32(0x846CA68B)
  return x ^ (x >> 16)


def _hash_words(key, n: int):
  if n >= 2**32:
    raise ValueError(f'hash PRNG: a draw of {n} words exceeds its 2^32 counters')
  position = jax.lax.iota(jnp.uint32, n)
  return _lowbias32(_lowbias32(position ^ key[0]) + key[1])


def _hash_random_bits(key, bit_width: int, shape):
  n = math.prod(shape)
  if bit_width == 64:
    words = _hash_words(key, 2 * n).reshape(2, n).astype(jnp.uint64)
    return (words[0] << 32 | words[1]).reshape(shape)
  dtype = {8: jnp.uint8, 16: jnp.uint16, 32: jnp.uint32}[bit_width]
  return _hash_words(key, n).reshape(shape).astype(dtype)  # the low bits


HASH_PRNG = jex_random.define_prng_impl(
    key_shape=(2,), seed=jex_random.threefry_prng_impl.seed,
    split=jex_random.threefry_prng_impl.split, fold_in=jex_random.threefry_prng_impl.fold_in,
    random_bits=_hash_random_bits, name='m5_hash', tag='hsh')


class Dropout16(nn.Module):
  """Inverted dropout from 16-bit random integers (see the module docstring)."""
  rate: float

  @nn.compact
  def __call__(self, x, deterministic: bool):
    if deterministic or self.rate == 0.0:
      return x
    if self.rate >= 1.0:
      return jnp.zeros_like(x)
    drop = round(self.rate * 65536)           # of 65536 equally likely 16-bit values
    last = x.shape[-1]
    words = jax.random.bits(self.make_rng('dropout'), x.shape[:-1] + ((last + 1) // 2,),
                            jnp.uint32)
    # Element 2j takes word j's low half, 2j+1 its high half: neighbours share a word,
    # so a block of the last axis (a tensor-parallel shard) needs only its own words.
    halves = jnp.stack([words & 0xFFFF, words >> 16], axis=-1)
    keep = halves.reshape(x.shape[:-1] + (-1,))[..., :last] >= drop
    return jnp.where(keep, x * (65536 / (65536 - drop)), 0).astype(x.dtype)


def dropout(rate: float, bits: int = 32) -> nn.Module:
  """The dropout layer for `model.dropout_bits`, made in the caller's scope (32: flax's
  own nn.Dropout, so its auto-name and random stream stay what they were)."""
  if bits == 32:
    return nn.Dropout(rate)
  if bits == 16:
    return Dropout16(rate)
  raise ValueError(f'model.dropout_bits must be one of {DROPOUT_BITS}, got {bits!r}')
