"""python -m m5_jax.train --config configs/dual_stream.py:size=base --workdir /tmp/m5_dual_stream

Dual-stream baseline (ViLBERT / LXMERT): per-modality encoders with co-attention,
masked modeling plus image-text matching.

Smoke run on M5Product-mini: --config configs/dual_stream.py:runlocal. Args: configs/common.py.
"""
from configs import common


def get_config(arg=None):
  return common.get_config('dual_stream', arg)
