"""python -m m5_jax.train --config configs/capture.py:size=base --workdir /tmp/m5_capture

CAPTURE baseline: dual stream with co-attention plus cross-modal contrastive.

Smoke run on M5Product-mini: --config configs/capture.py:runlocal. Args: configs/common.py.
"""
from configs import common


def get_config(arg=None):
  return common.get_config('capture', arg)
