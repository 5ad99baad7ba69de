"""A tiny partitioned flax model and its train state, for sharding/checkpoint tests."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from m5_jax import optimizer as optimizer_lib


def _p(init, axes):
  return nn.with_logical_partitioning(init, axes)


class Toy(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.Embed(64, 16, embedding_init=_p(nn.initializers.normal(1.0), ('vocab', 'embed')),
                 name='embed')(x).mean(1)
    h = nn.Dense(32, kernel_init=_p(nn.initializers.lecun_normal(), ('embed', 'mlp')),
                 bias_init=_p(nn.initializers.zeros, ('mlp',)), name='up')(x)
    h = nn.LayerNorm(scale_init=_p(nn.initializers.ones, ('mlp',)),
                     bias_init=_p(nn.initializers.zeros, ('mlp',)), name='norm')(nn.gelu(h))
    return nn.Dense(3, kernel_init=_p(nn.initializers.lecun_normal(), ('mlp', 'embed')),
                    bias_init=_p(nn.initializers.zeros, ('embed',)), name='out')(h)


def optimizer_config(**overrides):
  c = ml_collections.ConfigDict(dict(
      optimizer=dict(name='adamw', lr=1e-2, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.1,
                     no_decay=r'(bias|scale)$', grad_clip_norm=1.0, lr_multipliers=(), freeze=''),
      schedule=dict(name='cosine', end_lr_factor=0.0)))
  for k, v in overrides.items():
    c.optimizer[k] = v
  return c


def init_fn(tx, seed=0):
  def init():
    params = Toy().init(jax.random.key(seed), jnp.zeros((2, 5), jnp.int32))['params']
    return {'step': jnp.zeros((), jnp.int32), 'params': params, 'opt_state': tx.init(params)}
  return init


def make_tx(**overrides):
  return optimizer_lib.make_optimizer(optimizer_config(**overrides), 100, 10)[0]
