"""config.init_from: a run starts from another run's parameters, or a public checkpoint's.

`load_into_state` copies them into the freshly initialised train state (whole, or into
the subtree config.init_from.into), already placed on the state's shardings.
"""
from __future__ import annotations

import logging

import jax

from m5_jax import checkpointing
from m5_jax import config_lib
from m5_jax import optimizer as optimizer_lib


def load_into_state(config, state, shardings):
  """Fine-tuning: copy parameters from another run's checkpoint, or from a public
  checkpoint's folder (config.init_from.format; m5_jax/models/public_checkpoints/)."""
  init = config.init_from
  target, target_shardings = state['params'], shardings['params']
  for key in filter(None, init.into.split('/')):
    target, target_shardings = target[key], target_shardings[key]
  if init.get('format', 'm5_jax') == 'm5_jax':
    loaded, copied = checkpointing.init_params_from(
        init.path, target, target_shardings, step=init.step if init.step >= 0 else None,
        include=init.include, exclude=init.exclude)
  else:
    loaded, copied = _from_public(config, target, target_shardings)
  logging.info('init_from %s: copied %d parameters into %r', init.path, len(copied),
               init.into or '<root>')
  params = loaded
  if init.into:  # put the subtree back
    keys = init.into.split('/')
    params = dict(state['params'])
    node = params
    for key in keys[:-1]:
      node[key] = dict(node[key])
      node = node[key]
    node[keys[-1]] = loaded
  return dict(state, params=params)


def _from_public(config, params, params_shardings):
  """(params with a public checkpoint's tensors placed by `params_shardings`, their paths);
  logs every parameter left new and every source tensor skipped, with why."""
  from m5_jax.models import public_checkpoints  # pylint: disable=g-import-not-at-top
  init = config.init_from
  try:
    values, report = public_checkpoints.convert(
        init.format, init.path, params, config, towers=init.towers, include=init.include,
        exclude=init.exclude)
  except (ValueError, OSError, ImportError) as e:  # a bad path or a mismatch: one line
    raise config_lib.ConfigError(f'init_from ({init.format}): {e}') from None
  logging.info('init_from %s (%s): %s', init.path, init.format, report.summary())
  new_by_module: dict[str, int] = {}
  for path in report.new:
    module = path.split('/')[0]
    new_by_module[module] = new_by_module.get(module, 0) + 1
  logging.info('  new (left at init), parameters per module: %s',
               ', '.join(f'{m} {n}' for m, n in new_by_module.items()) or 'none')
  for source, why in report.skipped.items():
    logging.info('  skipped %s: %s', source, why)
  paths = optimizer_lib.param_paths(params)
  place = lambda p, x, s: (jax.make_array_from_callback(  # noqa: E731
      x.shape, s, lambda index, v=values[p]: v[index]) if p in values else x)
  return jax.tree.map(place, paths, params, params_shardings), sorted(values)
