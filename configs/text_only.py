"""python -m m5_jax.train --config configs/text_only.py:size=base --workdir /tmp/m5_text_only

Text-only baseline (BERT-style): one text encoder, masked language modeling.

Smoke run on M5Product-mini: --config configs/text_only.py:runlocal. Args: configs/common.py.
"""
from configs import common


def get_config(arg=None):
  return common.get_config('text_only', arg)
