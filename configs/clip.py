"""python -m m5_jax.train --config configs/clip.py:size=base --workdir /tmp/m5_clip

CLIP baseline: two towers (image, text), contrastive loss only.

Smoke run on M5Product-mini: --config configs/clip.py:runlocal. Args: configs/common.py.
"""
from configs import common


def get_config(arg=None):
  return common.get_config('clip', arg)
