"""python -m m5_jax.train --config configs/image_only.py:size=base --workdir /tmp/m5_image_only

Image-only baseline: one image encoder, masked region modeling.

Smoke run on M5Product-mini: --config configs/image_only.py:runlocal. Args: configs/common.py.
"""
from configs import common


def get_config(arg=None):
  return common.get_config('image_only', arg)
