"""python -m m5_jax.train --config configs/m5_mmt.py:size=base --workdir /tmp/m5_m5_mmt

M5-MMT: a transformer per modality, joint cross-modal fusion, masked modeling on
every modality and InfoNCE between every pair of present modalities.

Smoke run on M5Product-mini: --config configs/m5_mmt.py:runlocal. Args: configs/common.py.
"""
from configs import common


def get_config(arg=None):
  return common.get_config('m5_mmt', arg)
