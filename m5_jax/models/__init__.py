"""The M5-MMT model family: encoders, fusion, heads; baselines as configurations.

  models.build(config) -> flax Module (see family.py for the outputs)
  models.presets.get(method, size, modalities) -> the model/loss/modalities fields
"""
from m5_jax.models.family import build  # noqa: F401
