"""Modality plugins, one file each. See base.py for the contract.

`get(name)` imports `m5_jax.modalities.<name>` and returns its `PLUGIN`, so a new
modality needs no registration code: drop in the file and list it in the config.
"""
from __future__ import annotations

import functools
import importlib

from m5_jax.modalities.base import Modality

BUILTIN = ('text', 'table', 'image', 'video', 'audio')


@functools.cache
def get(name: str) -> Modality:
  try:
    module = importlib.import_module(f'm5_jax.modalities.{name}')
  except ModuleNotFoundError as e:
    if e.name != f'm5_jax.modalities.{name}':
      raise
    raise ValueError(f'unknown modality {name!r}: no file m5_jax/modalities/{name}.py '
                     f'(built in: {", ".join(BUILTIN)})') from None
  plugin = getattr(module, 'PLUGIN', None)
  if plugin is None:
    raise ValueError(f'm5_jax/modalities/{name}.py defines no PLUGIN')
  return plugin
