"""Importing a plugin module by path, where a missing module is an answer, not an error.

Shared by the model side's modality lookup (m5_jax/modalities) and the data
side's (data_prep/modalities). Standard library only: the TFDS builder imports
it without jax or flax.
"""
from __future__ import annotations

import importlib
from types import ModuleType


def import_if_exists(path: str) -> ModuleType | None:
  """The module at import path `path`, or None when it (or a package above it) does
  not exist. A module that exists but fails to import raises: a bug to see, not a miss."""
  try:
    return importlib.import_module(path)
  except ModuleNotFoundError as e:
    if e.name is None or not path.startswith(e.name):
      raise
    return None
