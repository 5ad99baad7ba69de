"""python -m m5_jax.train --config configs/scale.py:size=base --workdir /tmp/m5_scale

SCALE: M5-MMT plus self-harmonised per-sample weighting of the contrastive and
masked-modeling terms.

Smoke run on M5Product-mini: --config configs/scale.py:runlocal. Args: configs/common.py.
"""
from configs import common


def get_config(arg=None):
  return common.get_config('scale', arg)
