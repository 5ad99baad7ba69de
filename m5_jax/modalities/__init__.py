"""Modality plugins, one file each. See base.py for the contract.

`get(name)` returns the plugin for a modality name:
  1. a plugin registered earlier (by `register`, or by `get(module_path)`);
  2. `PLUGIN` of the module `m5_jax.modalities.<name>`: a new built-in modality
     needs no registration code, just the file and the config lines;
  3. `PLUGIN` of the module at `name` taken as an import path (e.g.
     'my_project.rating'): a plugin outside this package. It is then registered
     under its own `PLUGIN.name`, which is the key to use in config.modalities
     and config.modality.

`codes()` is the one map of one-letter codes (config args `modalities=itpva`,
eval subsets `IT`): each plugin's `code`. A module's `DATA` (if any) is its data
side, what the TFDS build stores for it (data_prep/modalities).
"""
from __future__ import annotations

from m5_jax import plugin_import
from m5_jax.modalities.base import Modality

BUILTIN = ('text', 'table', 'image', 'video', 'audio')

_registry: dict[str, Modality] = {}


def register(plugin: Modality) -> Modality:
  """Makes `plugin` reachable as get(plugin.name). Re-registering the same object is a no-op."""
  known = _registry.get(plugin.name)
  if known is not None and known is not plugin:
    raise ValueError(f'modality {plugin.name!r} is already registered by {known!r}')
  _registry[plugin.name] = plugin
  return plugin


def unregister(name: str) -> None:
  """Forgets the plugin registered as `name` (and its letter in codes()); a later
  get(name) imports it afresh. For tests and notebooks that define throwaway plugins."""
  _registry.pop(name, None)


def _plugin_of(module, where: str) -> Modality:
  plugin = getattr(module, 'PLUGIN', None)
  if plugin is None:
    raise ValueError(f'{where} defines no PLUGIN')
  return plugin


def get(name: str) -> Modality:
  if name in _registry:
    return _registry[name]
  module = plugin_import.import_if_exists(f'm5_jax.modalities.{name}')
  if module is not None:
    plugin = _plugin_of(module, f'm5_jax/modalities/{name}.py')
    if plugin.name != name:
      raise ValueError(f'm5_jax/modalities/{name}.py: PLUGIN.name is {plugin.name!r}, not {name!r}')
    return register(plugin)
  module = plugin_import.import_if_exists(name)
  if module is None:
    raise ValueError(f'unknown modality {name!r}: no file m5_jax/modalities/{name}.py and no '
                     f'importable module {name!r} (built in: {", ".join(BUILTIN)})')
  return register(_plugin_of(module, f'module {name}'))


def codes() -> dict[str, str]:
  """{one-letter code: name} of the built-in modalities, then of every plugin
  registered since (a plugin outside the package has its letter once reached)."""
  out: dict[str, str] = {}
  for plugin in [get(name) for name in BUILTIN] + list(_registry.values()):
    known = out.setdefault(plugin.code, plugin.name)
    if known != plugin.name:
      raise ValueError(f'modalities {known!r} and {plugin.name!r} both have the code '
                       f'{plugin.code!r}')
  return out
