"""optimizer.py's docstring names parameter paths: they must exist in a real model."""
import re

import jax

from configs import m5_mmt
from m5_jax import batch as batch_lib
from m5_jax import models, optimizer


def test_docstring_paths_and_regexes_match_m5_mmt_parameters():
  config = m5_mmt.get_config('size=tiny,runlocal')
  model = models.build(config)
  shapes = jax.eval_shape(lambda: model.init(
      {'params': jax.random.key(0), 'dropout': jax.random.key(1)},
      batch_lib.zeros_batch(config, 2)))
  paths = jax.tree.leaves(optimizer.param_paths(shapes['params']))
  doc = optimizer.__doc__
  example = re.search(r"dict keys such as\s+'([^']+)'", doc).group(1)
  assert example in paths
  regexes = re.findall(r"\br'([^']+)'", doc)  # the r'...' literals
  assert len(regexes) == 3  # no_decay, lr_multipliers, freeze
  for regex in regexes:
    assert any(re.search(regex, p) for p in paths), regex
  assert regexes[0] == config.optimizer.no_decay  # the default
