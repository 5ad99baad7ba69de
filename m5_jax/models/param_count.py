r"""Prints the parameter count of each model size, without allocating any weights.

  python -m m5_jax.models.param_count [--method m5_mmt] [--modalities itpva] \
      [--sizes tiny,small,base,large]

Shapes come from jax.eval_shape(model.init) on the paper's input sizes (each
plugin's default config), so even `large` costs no memory. The counts per part
(shared word embedding, per-modality embedders, encoders and heads, fusion) are
recorded in docs/models.md.
"""
from __future__ import annotations

import argparse
import collections

import jax
import numpy as np
from flax import linen as nn

from m5_jax import batch as batch_lib
from m5_jax import models
from m5_jax.models import presets
from m5_jax.models import sizes as sizes_lib


def depths(config) -> str:
  """'encoder+fusion' layers as this method uses them (single stream: 0+N; towers: N+0)."""
  fusion = 0 if config.model.fusion == 'none' else config.model.fusion_layers
  return f'{config.model.encoder_layers}+{fusion}'


def count(method: str, size: str, modalities=None) -> dict[str, int]:
  """{part: number of parameters} plus 'total' for one method and size."""
  config = presets.full_config(method, size, modalities)
  model = models.build(config)
  batch = batch_lib.zeros_batch(config, 1)
  abstract = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), batch)['params'])
  parts = collections.Counter()
  for path, leaf in jax.tree_util.tree_leaves_with_path(abstract):
    top = path[0].key
    part = top.split('_')[0] if top.startswith(('embedders_', 'encoders_', 'heads_',
                                                'contrastive_')) else top
    parts[part] += int(np.prod(leaf.shape))
  parts['total'] = sum(parts.values())
  return dict(parts)


def human(n: int) -> str:
  for unit, scale in (('B', 1e9), ('M', 1e6), ('K', 1e3)):
    if n >= scale:
      return f'{n / scale:.2f}{unit}'
  return str(n)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--method', default='m5_mmt', choices=list(presets.PRESETS))
  parser.add_argument('--modalities', default=None, help="letters, e.g. 'it' (default: the method's)")
  parser.add_argument('--sizes', default=','.join(sizes_lib.SIZES))
  args = parser.parse_args(argv)
  rows = []
  for size in args.sizes.split(','):
    parts = count(args.method, size, args.modalities)
    rows.append((size, presets.get(args.method, size, args.modalities), parts))
  columns = sorted({k for _, _, p in rows for k in p} - {'total'})
  header = ['size', 'hidden', 'heads', 'mlp', 'enc+fus'] + columns + ['total', 'exact']
  print(f'method={args.method} modalities={",".join(presets.get(args.method, "tiny", args.modalities).modalities)}')
  print('| ' + ' | '.join(header) + ' |')
  print('|' + '---|' * len(header))
  for size, config, parts in rows:
    s = config.model
    cells = [size, s.hidden, s.heads, s.mlp_dim, depths(config)]
    cells += [human(parts.get(c, 0)) for c in columns] + [human(parts['total']), f"{parts['total']:,}"]
    print('| ' + ' | '.join(str(c) for c in cells) + ' |')


if __name__ == '__main__':
  main()
