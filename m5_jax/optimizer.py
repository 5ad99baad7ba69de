"""The optax optimizer and learning-rate schedule, from the config.

  config.optimizer.name = 'adamw'
  config.optimizer.lr = 1e-4                  # peak learning rate
  config.optimizer.b1, b2, eps
  config.optimizer.weight_decay = 0.01
  config.optimizer.no_decay = r'(bias|scale|embedding|contrastive_log_scale|contrastive_bias)$'
  config.optimizer.grad_clip_norm = 1.0       # 0 = off
  config.optimizer.lr_multipliers = ((r'^encoders_text/', 0.1),)  # first match wins
  config.optimizer.freeze = r'^encoders_image/'                  # '' = train all
  config.schedule.name = 'cosine'             # 'cosine' | 'linear' | 'constant'
  config.schedule.warmup_steps | warmup_epochs | warmup_examples
  config.schedule.end_lr_factor = 0.0

Regexes are searched in the parameter path, '/'-joined dict keys such as
'fusion/transformer/layer_0/attention/query/kernel' (see `param_paths`; a fine-tuned
classifier's backbone is under 'backbone/'). Frozen parameters get zero updates, no
optimizer state, and do not count in the clipping norm.
The transforms work on trees whose leaves are flax partitioning boxes too (the
masks and labels are prefix trees), so `jax.eval_shape` over the boxed init gives
the optimizer state's shardings.
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable

import flax.linen as nn
import jax
import ml_collections
import optax

_is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)  # noqa: E731


def path_str(keypath) -> str:
  parts = []
  for k in keypath:
    for attr in ('key', 'name', 'idx'):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
  return '/'.join(parts)


def param_paths(params: Any) -> Any:
  """A tree like `params` (box positions count as leaves) of '/'-joined path strings."""
  return jax.tree_util.tree_map_with_path(lambda kp, _: path_str(kp), params, is_leaf=_is_box)


def map_paths(fn: Callable[[str], Any]) -> Callable[[Any], Any]:
  """params -> tree of fn(path) (a prefix tree when params hold boxes)."""
  return lambda params: jax.tree.map(fn, param_paths(params))


def make_schedule(config: ml_collections.ConfigDict, total_steps: int,
                  warmup_steps: int) -> optax.Schedule:
  peak = config.optimizer.lr
  end = peak * config.schedule.end_lr_factor
  name = config.schedule.name
  warmup_steps = min(warmup_steps, total_steps)
  decay_steps = max(total_steps - warmup_steps, 1)
  warmup = optax.linear_schedule(0.0, peak, max(warmup_steps, 1))
  if name == 'cosine':
    decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=end / peak if peak else 0.0)
  elif name == 'linear':
    decay = optax.linear_schedule(peak, end, decay_steps)
  elif name == 'constant':
    decay = optax.constant_schedule(peak)
  else:
    raise ValueError(f'unknown schedule.name {name!r}: cosine, linear or constant')
  if warmup_steps == 0:
    return decay
  return optax.join_schedules([warmup, decay], [warmup_steps])


def scale_by_multipliers(multipliers_fn: Callable[[Any], Any]) -> optax.GradientTransformation:
  """Multiplies each update by a per-parameter constant (per-module learning rates)."""

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params
    multipliers = multipliers_fn(updates)
    return jax.tree.map(lambda m, u: (u * m).astype(u.dtype), multipliers, updates), state

  return optax.GradientTransformation(init_fn, update_fn)


def _lr_multiplier(rules) -> Callable[[str], float]:
  compiled = [(re.compile(pattern), float(mult)) for pattern, mult in rules]

  def multiplier(path: str) -> float:
    for pattern, mult in compiled:
      if pattern.search(path):
        return mult
    return 1.0

  return multiplier


def make_optimizer(config: ml_collections.ConfigDict, total_steps: int, warmup_steps: int
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """(tx, learning-rate schedule) as described in the module docstring."""
  opt = config.optimizer
  if opt.name != 'adamw':
    raise ValueError(f'unknown optimizer.name {opt.name!r} (supported: adamw)')
  schedule = make_schedule(config, total_steps, warmup_steps)
  no_decay = re.compile(opt.no_decay) if opt.no_decay else None
  decay_mask = map_paths(lambda p: not (no_decay and no_decay.search(p)))
  parts = []
  if opt.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(opt.grad_clip_norm))
  parts.append(optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps,
                           weight_decay=opt.weight_decay, mask=decay_mask))
  rules = tuple(opt.lr_multipliers or ())
  if rules:
    parts.append(scale_by_multipliers(map_paths(_lr_multiplier(rules))))
  tx = optax.chain(*parts)
  if opt.freeze:
    frozen = re.compile(opt.freeze)
    labels = map_paths(lambda p: 'frozen' if frozen.search(p) else 'trained')
    tx = optax.multi_transform({'trained': tx, 'frozen': optax.set_to_zero()}, labels)
  return tx, schedule


def trained_fraction(config: ml_collections.ConfigDict, params: Any) -> tuple[int, int]:
  """(trainable parameter count, total parameter count) under config.optimizer.freeze."""
  frozen = re.compile(config.optimizer.freeze) if config.optimizer.freeze else None
  sizes = jax.tree.map(lambda p, x: (p, math.prod(x.shape)), param_paths(params), nn.unbox(params))
  pairs = jax.tree.leaves(sizes, is_leaf=lambda x: isinstance(x, tuple))
  total = sum(n for _, n in pairs)
  trained = sum(n for p, n in pairs if not (frozen and frozen.search(p)))
  return trained, total
