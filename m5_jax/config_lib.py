"""Strict ml_collections configs: `configs/x.py:k=v,...` plus `--config.a.b=value` overrides.

Conventions (big_vision style, but strict where big_vision is lenient):

  * A config file defines `get_config(arg)`; `arg` is the text after ':' in
    `--config configs/m5_mmt.py:size=tiny,modalities=itpva,runlocal`. Config files
    read it with `parse_arg(arg, size='base', modalities='itpva', runlocal=False)`,
    which rejects unknown names (a typo never passes silently).
  * `--config.optimizer.lr=3e-4` overrides one leaf. The value is parsed with the
    type of the current value (bool/int/float/str/tuple); an unknown key or a value
    of the wrong type raises `ConfigError` whose one-line message names the nearest
    valid key. Binaries print that line and exit 2, without a traceback.
  * Durations can be given in steps, epochs or examples: a node holds
    `<name>_steps`, `<name>_epochs` and `<name>_examples`, at most one of them set;
    overriding one clears the other two; `to_steps` turns it into steps.
  * The resolved config is written to `<workdir>/config.json`
    (`save_workdir_config`) and read back by eval binaries (`load_workdir_config`).
"""
from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import math
import os
import sys
from typing import Any, Iterable, Sequence

import ml_collections

CONFIG_FILENAME = 'config.json'


class ConfigError(ValueError):
  """A bad config file, argument, override or duration. Its message is one line."""


# ----------------------------------------------------------------------------- keys


def flat_keys(config: ml_collections.ConfigDict, prefix: str = '') -> list[str]:
  """Every dotted key in `config`, groups included ('optimizer', 'optimizer.lr', ...)."""
  keys = []
  for key, value in config.items():
    full = f'{prefix}{key}'
    keys.append(full)
    if isinstance(value, ml_collections.ConfigDict):
      keys.extend(flat_keys(value, full + '.'))
  return keys


def nearest(key: str, candidates: Iterable[str]) -> str | None:
  """The candidate closest to `key` (difflib), also matching on the last component."""
  candidates = list(candidates)
  match = difflib.get_close_matches(key, candidates, n=1, cutoff=0.5)
  if match:
    return match[0]
  leaf = key.rsplit('.', 1)[-1]
  by_leaf = {c.rsplit('.', 1)[-1]: c for c in candidates}
  match = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.6)
  return by_leaf[match[0]] if match else None


def _unknown(kind: str, key: str, candidates: Iterable[str]) -> ConfigError:
  guess = nearest(key, candidates)
  hint = f"; did you mean '{guess}'?" if guess else ''
  return ConfigError(f"unknown {kind} '{key}'{hint}")


# ----------------------------------------------------------------------------- values


def _parse_bool(text: str) -> bool:
  lowered = text.strip().lower()
  if lowered in ('1', 'true', 'yes', 'on'):
    return True
  if lowered in ('0', 'false', 'no', 'off'):
    return False
  raise ValueError(f'{text!r} is not a bool (true/false)')


def _parse_int(text: str) -> int:
  text = text.strip().replace('_', '')
  try:
    return int(text)
  except ValueError:
    try:
      value = float(text)  # accepts '1e6'
    except ValueError:
      raise ValueError(f'{text!r} is not an integer') from None
    if not value.is_integer():
      raise ValueError(f'{text!r} is not an integer') from None
    return int(value)


def _literal(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def parse_value(text: str, current: Any) -> Any:
  """Parses `text` as a value of the type of `current` (raises ValueError)."""
  if isinstance(current, bool):
    return _parse_bool(text)
  if isinstance(current, int):
    return _parse_int(text)
  if isinstance(current, float):
    return float(text)
  if isinstance(current, str):
    return text
  if isinstance(current, (tuple, list)):
    stripped = text.strip()
    if stripped[:1] in '([':
      value = ast.literal_eval(stripped)
      if not isinstance(value, (tuple, list)):
        raise ValueError(f'{text!r} is not a sequence')
    else:  # a,b,c
      items = [t for t in stripped.split(',') if t] if stripped else []
      kinds = {type(v) for v in current}
      if len(kinds) == 1 and kinds != {str}:
        value = [parse_value(t, current[0]) for t in items]
      else:
        value = [_literal(t) if kinds != {str} else t for t in items]
    return type(current)(value)
  return _literal(text)  # None or other: a Python literal, else the string


def _set(config: ml_collections.ConfigDict, key: str, text: str) -> None:
  node = config
  parts = key.split('.')
  for i, part in enumerate(parts):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      raise _unknown('config key', key, flat_keys(config))
    if i < len(parts) - 1:
      node = node[part]
  leaf = parts[-1]
  current = node[leaf]
  if isinstance(current, ml_collections.ConfigDict):
    children = ', '.join(f'{key}.{k}' for k in list(current.keys())[:4])
    raise ConfigError(f"config key '{key}' is a group; set one of its keys, e.g. {children}")
  try:
    value = parse_value(text, current)
    with node.unlocked():
      node[leaf] = value
      _clear_other_duration_units(node, leaf, value)
  except (ValueError, TypeError, SyntaxError) as e:
    raise ConfigError(f"bad value {text!r} for config key '{key}': {str(e).splitlines()[0]}; "
                      f"give {_kind_of(current)}, e.g. --config.{key}={_as_text(current)} "
                      "(the current value)") from None


def _kind_of(value: Any) -> str:
  if isinstance(value, bool):
    return 'a bool (true/false)'
  if isinstance(value, (tuple, list)):
    return 'a comma-separated list'
  return {int: 'an int', float: 'a float'}.get(type(value), f'a {type(value).__name__}')


def _as_text(value: Any) -> str:
  if isinstance(value, bool):
    return str(value).lower()
  if isinstance(value, (tuple, list)):
    return ','.join(str(v) for v in value)
  return str(value)


DURATION_UNITS = ('steps', 'epochs', 'examples')


def _clear_other_duration_units(node: ml_collections.ConfigDict, leaf: str, value: Any) -> None:
  """Setting `x_epochs` clears `x_steps` and `x_examples`: the last duration given wins."""
  name, _, unit = leaf.rpartition('_')
  if value is None or unit not in DURATION_UNITS:
    return
  for other in DURATION_UNITS:
    if other != unit and f'{name}_{other}' in node:
      node[f'{name}_{other}'] = None


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: Sequence[tuple[str, str]]) -> ml_collections.ConfigDict:
  """Applies (dotted key, text value) pairs in order; strict (see module doc)."""
  for key, text in overrides:
    _set(config, key, text)
  return config


# ----------------------------------------------------------------------------- files


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """`'size=tiny,runlocal'` -> ConfigDict(size='tiny', runlocal=True, ...defaults).

  A bare name sets a bool to True. Values take the type of their default. Unknown
  names raise ConfigError naming the nearest valid one.
  """
  out = ml_collections.ConfigDict(defaults)
  for item in (arg or '').split(','):
    item = item.strip()
    if not item:
      continue
    name, has_value, text = item.partition('=')
    if name not in defaults:
      raise _unknown('config argument', name, defaults)
    current = defaults[name]
    if not has_value:
      if not isinstance(current, bool):
        raise ConfigError(f"config argument '{name}' needs a value ({name}=...)")
      out[name] = True
      continue
    try:
      out[name] = parse_value(text, current)
    except (ValueError, TypeError, SyntaxError) as e:
      raise ConfigError(f"bad value {text!r} for config argument '{name}': {e}") from None
  return out


def load_config(spec: str) -> ml_collections.ConfigDict:
  """`'configs/m5_mmt.py:size=tiny'` -> the ConfigDict its `get_config(arg)` returns."""
  path, _, arg = spec.partition(':')
  if not os.path.isfile(path):
    raise ConfigError(f'config file {path!r} not found')
  module_name = '_m5_config_' + os.path.splitext(os.path.basename(path))[0]
  module_spec = importlib.util.spec_from_file_location(module_name, path)
  module = importlib.util.module_from_spec(module_spec)
  config_dir = os.path.dirname(os.path.abspath(path))
  sys.path.insert(0, os.path.dirname(config_dir))  # so `from configs import common` works
  try:
    module_spec.loader.exec_module(module)
  finally:
    sys.path.remove(os.path.dirname(config_dir))
  if not hasattr(module, 'get_config'):
    raise ConfigError(f'config file {path!r} defines no get_config(arg)')
  config = module.get_config(arg or None)
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f'{path}: get_config returned {type(config).__name__}, not a ConfigDict')
  return config


def _to_tuples(value: Any) -> Any:
  if isinstance(value, dict):
    return {k: _to_tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_to_tuples(v) for v in value)
  return value


def save_workdir_config(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Writes the resolved config to `<workdir>/config.json` (atomically)."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, CONFIG_FILENAME)
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  os.replace(tmp, path)
  return path


def load_workdir_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a training run in `workdir` resolved (lists come back as tuples)."""
  path = os.path.join(workdir, CONFIG_FILENAME)
  if not os.path.isfile(path):
    raise ConfigError(f'no {CONFIG_FILENAME} in workdir {workdir!r} (was it trained there?)')
  with open(path) as f:
    return ml_collections.ConfigDict(_to_tuples(json.load(f)))


# ----------------------------------------------------------------------------- durations


def to_steps(node: ml_collections.ConfigDict, name: str, *, batch_size: int,
             examples_per_epoch: int | None = None, default: int | None = None) -> int:
  """Resolves `<name>_steps | <name>_epochs | <name>_examples` in `node` to steps.

  At most one of the three may be set (not None); none set gives `default`.
  Epochs need `examples_per_epoch` (the train split's size).
  """
  given = {unit: node.get(f'{name}_{unit}') for unit in DURATION_UNITS}
  given = {u: v for u, v in given.items() if v is not None}
  if len(given) > 1:
    keys = ', '.join(f'{name}_{u}' for u in given)
    raise ConfigError(f'set only one of {keys} (a duration in one unit)')
  if not given:
    if default is None:
      raise ConfigError(f'no duration: set {name}_steps, {name}_epochs or {name}_examples')
    return default
  (unit, value), = given.items()
  if value < 0:
    raise ConfigError(f'{name}_{unit} must be >= 0, got {value}')
  if unit == 'steps':
    return int(value)
  if unit == 'examples':
    return int(math.ceil(value / batch_size))
  if not examples_per_epoch:
    raise ConfigError(f'{name}_epochs needs the epoch size; set config.input.num_train_examples '
                      f'or give {name}_steps')
  return int(math.ceil(value * examples_per_epoch / batch_size))


# ----------------------------------------------------------------------------- command line


def parse_command_line(argv: Sequence[str], flags: dict[str, Any] | None = None
                       ) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
  """Parses `--config FILE[:ARG] --flag=v --config.a.b=v ...` strictly.

  `flags` maps the binary's other flag names to defaults (their type parses the
  value), e.g. {'workdir': ''}. Returns (config with overrides applied, flag values).
  """
  flags = dict(flags or {})
  values = dict(flags)
  config_spec = None
  overrides = []
  args = list(argv)
  i = 0
  while i < len(args):
    token = args[i]
    if not token.startswith('--'):
      raise ConfigError(f'unexpected argument {token!r} (flags look like --name=value)')
    name, has_value, text = token[2:].partition('=')
    if not has_value:
      current = flags.get(name)
      if isinstance(current, bool):
        text = 'true'
      elif i + 1 < len(args):
        i += 1
        text = args[i]
      else:
        raise ConfigError(f'flag --{name} needs a value')
    i += 1
    if name == 'config':
      config_spec = text
    elif name.startswith('config.'):
      overrides.append((name[len('config.'):], text))
    elif name in flags:
      try:
        values[name] = parse_value(text, flags[name])
      except (ValueError, SyntaxError) as e:
        raise ConfigError(f'bad value {text!r} for --{name}: {e}') from None
    else:
      raise _unknown('flag', '--' + name, ['--config'] + [f'--{f}' for f in flags])
  if config_spec is None:
    raise ConfigError('--config configs/<method>.py[:args] is required')
  config = load_config(config_spec)
  apply_overrides(config, overrides)
  return config, values


def exit_with(error: Exception, program: str = 'm5_jax') -> None:
  """Prints `program: error: <one line>` to stderr and exits 2 (no traceback)."""
  message = str(error).splitlines()[0] if str(error) else type(error).__name__
  print(f'{program}: error: {message}', file=sys.stderr)
  sys.exit(2)
