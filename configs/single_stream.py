"""python -m m5_jax.train --config configs/single_stream.py:size=base --workdir /tmp/m5_single_stream

Single-stream baseline (VisualBERT / UNITER / VL-BERT): one transformer over image
and text tokens, masked modeling plus image-text matching.

Smoke run on M5Product-mini: --config configs/single_stream.py:runlocal. Args: configs/common.py.
"""
from configs import common


def get_config(arg=None):
  return common.get_config('single_stream', arg)
