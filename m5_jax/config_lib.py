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
  * Enum-like fields and ranges are checked in one place, the declarative `SCHEMA`
    table, once the overrides are applied (`validate`; config args: `validate_args`):
    a bad choice is one line naming the key and its valid choices or range, before
    any data is read or anything compiled.
  * The resolved config is written to `<workdir>/config.json`
    (`save_workdir_config`) and read back by eval binaries (`load_workdir_config`).
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib.util
import json
import math
import os
import re
import sys
from typing import Any, Iterable, Mapping, Sequence

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


# ----------------------------------------------------------------------------- schema


@dataclasses.dataclass(frozen=True)
class Rule:
  """What one field may hold: one of `choices` (`aliases` map old names to them), each
  character one of `letters`, a non-empty value, a match of `pattern`, or a number in
  [minimum, maximum]."""
  choices: tuple[str, ...] = ()
  aliases: Mapping[str, str] = dataclasses.field(default_factory=dict)
  letters: Mapping[str, str] = dataclasses.field(default_factory=dict)
  minimum: float | None = None
  maximum: float | None = None
  nonempty: bool = False
  pattern: str = ''          # a full-match regex, with `form` saying it in words
  form: str = ''

  def problem(self, value: Any) -> str | None:
    """None when `value` is valid, else what is expected (one phrase)."""
    if self.choices:
      if value not in self.choices and value not in self.aliases:
        return f'expected one of {", ".join(self.choices)}'
    if self.letters:
      unknown = [c for c in str(value) if c not in self.letters]
      if unknown or not value:
        known = ', '.join(f'{k} ({v})' for k, v in self.letters.items())
        head = f'{"".join(unknown)!r} unknown; ' if unknown else ''
        return f'{head}expected letters from {known}'
    if self.nonempty and not value:
      return 'expected a non-empty value'
    if self.pattern and not re.fullmatch(self.pattern, str(value)):
      return f'expected {self.form}'
    if self.minimum is not None and (value is None or value < self.minimum):
      return f'must be >= {self.minimum:g}' + (f' and <= {self.maximum:g}'
                                                if self.maximum is not None else '')
    if self.maximum is not None and (value is None or value > self.maximum):
      return f'must be <= {self.maximum:g}'
    return None

  def canonical(self, value: Any) -> Any:
    return self.aliases.get(value, value)


class _ModalityCodes(Mapping):
  """The plugins' one-letter codes (m5_jax.modalities.codes), read when a value is
  checked: no copy of the letters here, and no flax import until one is."""

  def _codes(self) -> dict[str, str]:
    from m5_jax import modalities  # pylint: disable=g-import-not-at-top
    return modalities.codes()

  def __getitem__(self, code: str) -> str:
    return self._codes()[code]

  def __iter__(self):
    return iter(self._codes())

  def __len__(self) -> int:
    return len(self._codes())


MODALITY_LETTERS = _ModalityCodes()

MODEL_SIZES = ('tiny', 'small', 'base', 'large')   # m5_jax/models/sizes.py (a test checks)
# Logical-axis rule presets (m5_jax/sharding.py); the long names are older aliases.
SHARDING_PRESETS = ('dp', 'fsdp', 'fsdp_tp')
SHARDING_ALIASES = {'data_parallel': 'dp', 'fsdp_tensor': 'fsdp_tp'}
# Datasets: 'synthetic', or a TFDS build of data_prep/m5product, `m5product/<builder
# config>[:version]` (raw and features, or a config of the release's own file names);
# whether that build exists in data_dir is checked at start-up (train.check_input).
DATASET_PATTERN = r'synthetic|m5product/[A-Za-z0-9_]+(:\d+\.\d+\.\d+)?'
EVAL_FEATURES = ('pooled', 'encoder_pooled')        # m5_jax/evaluate/model_features.py
EVAL_NORMALIZE = ('center', 'modality', 'none')      # m5_jax/evaluate/features.py
EVAL_FUSION = ('sum', 'concat', 'sum_dot')           # m5_jax/evaluate/features.py
INSTANCE_VIEWS = ('clean', 'complement', 'auto')     # m5_jax/objectives.py
# init_from.format: m5_jax/models/public_checkpoints.FORMATS (a test checks)
INIT_FORMATS = ('m5_jax', 'hf_bert', 'hf_vit', 'big_vision_vit', 'hf_clip')
# Speed options of the model (configs/common.py says what each does; a test checks
# these against m5_jax/models/layers.py and m5_jax/objectives.py).
ACTIVATIONS = ('gelu', 'gelu_tanh', 'quick_gelu')
ATTENTION = ('einsum', 'dot_product')
DROPOUT_RNGS = ('threefry', 'rbg', 'unsafe_rbg', 'hash')
DROPOUT_BITS = (32, 16)                              # m5_jax/dropout.py
HEADS_AT = ('all', 'masked')

# The validated fields, in one place: `validate` checks every key present in a
# config after its overrides (config args: `validate_args`, before the config is built).
SCHEMA: dict[str, Rule] = {
    'args.size': Rule(choices=MODEL_SIZES),
    'args.form': Rule(choices=('raw', 'features')),
    'args.modalities': Rule(letters=MODALITY_LETTERS),
    'args.batch_size': Rule(minimum=1),
    'args.vocab_size': Rule(minimum=6),
    'task': Rule(choices=('pretrain', 'classification_finetune')),
    'model.size': Rule(choices=MODEL_SIZES),
    'model.fusion': Rule(choices=('joint', 'single_stream', 'co_attention', 'none')),
    'model.vocab_size': Rule(minimum=6),   # 5 special ids (m5_jax/modalities/text.py) + 1
    'model.dropout': Rule(minimum=0, maximum=1),
    'model.attention_dropout': Rule(minimum=0, maximum=1),
    'model.modality_dropout': Rule(minimum=0, maximum=1),
    'model.activation': Rule(choices=ACTIVATIONS),
    'model.attention': Rule(choices=ATTENTION),
    'model.dropout_rng': Rule(choices=DROPOUT_RNGS),
    'model.dropout_bits': Rule(choices=DROPOUT_BITS),
    'model.heads_at': Rule(choices=HEADS_AT),
    'loss.masked_weight': Rule(minimum=0),
    'loss.contrastive_weight': Rule(minimum=0),
    'loss.itm_weight': Rule(minimum=0),
    'loss.instance_weight': Rule(minimum=0),
    'loss.instance_hard_negatives': Rule(minimum=0),
    'loss.instance_view': Rule(choices=INSTANCE_VIEWS),
    'loss.contrastive': Rule(choices=('softmax', 'sigmoid')),
    'loss.contrastive_on': Rule(choices=('encoder', 'fusion')),
    'input.dataset': Rule(pattern=DATASET_PATTERN, form='synthetic or m5product/<builder '
                          'config>, e.g. m5product/raw, m5product/features'),
    'input.batch_size': Rule(minimum=1),
    'input.read_workers': Rule(minimum=0),
    'input.train_split': Rule(nonempty=True),
    'num_microbatches': Rule(minimum=1),
    'nonfinite': Rule(choices=('stop', 'skip')),
    'optimizer.name': Rule(choices=('adamw',)),
    'optimizer.lr': Rule(minimum=0),
    'optimizer.weight_decay': Rule(minimum=0),
    'optimizer.grad_clip_norm': Rule(minimum=0),
    'schedule.name': Rule(choices=('cosine', 'linear', 'constant')),
    'schedule.end_lr_factor': Rule(minimum=0, maximum=1),
    'sharding.rules': Rule(choices=SHARDING_PRESETS, aliases=SHARDING_ALIASES),
    'checkpoint.keep': Rule(minimum=0),
    'checkpoint.keep_every': Rule(minimum=0),
    'init_from.format': Rule(choices=INIT_FORMATS),
}
FLAG_SCHEMA: dict[str, Rule] = {   # the eval binaries' flags (m5_jax/evaluate/runner.py)
    'feature': Rule(choices=EVAL_FEATURES),
    'normalize': Rule(choices=EVAL_NORMALIZE),
    'fusion': Rule(choices=EVAL_FUSION),
    'batch_size': Rule(minimum=0),
}


def _lookup(config: ml_collections.ConfigDict, key: str) -> tuple[bool, Any]:
  node: Any = config
  for part in key.split('.'):
    if not isinstance(node, (ml_collections.ConfigDict, dict)) or part not in node:
      return False, None
    node = node[part]
  return True, node


def _check(rule: Rule, value: Any, what: str) -> None:
  problem = rule.problem(value)
  if problem:
    raise ConfigError(f'bad value {_as_text(value)!r} for {what}: {problem}')


def validate_args(args: ml_collections.ConfigDict) -> None:
  """Checks config args (`configs/x.py:size=...,modalities=...`) against SCHEMA['args.*']."""
  for key, rule in SCHEMA.items():
    name = key[len('args.'):]
    if key.startswith('args.') and name in args:
      if name == 'modalities' and not args[name]:
        continue  # '' = the method's own set
      _check(rule, args[name], f"config argument '{name}'")


def validate_flags(values: Mapping[str, Any]) -> None:
  """Checks the eval binaries' enum-like flags against FLAG_SCHEMA."""
  for name, rule in FLAG_SCHEMA.items():
    if name in values:
      _check(rule, values[name], f'--{name}')


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Checks every SCHEMA field present in `config` (and the fields that depend on
  each other); aliases are replaced by their documented names. Raises ConfigError
  (one line naming the key and what it may be). Returns `config`."""
  for key, rule in SCHEMA.items():
    if key.startswith('args.'):
      continue
    present, value = _lookup(config, key)
    if not present:
      continue
    _check(rule, value, f"config key '{key}'")
    if rule.canonical(value) != value:
      node_key, _, leaf = key.rpartition('.')
      node = _lookup(config, node_key)[1] if node_key else config
      with node.unlocked():
        node[leaf] = rule.canonical(value)
  present, micro = _lookup(config, 'num_microbatches')
  batch = config.get('input', {}).get('batch_size') if present else None
  if present and batch and batch % micro:
    raise ConfigError(f"config key 'num_microbatches' ({micro}) must divide input.batch_size "
                      f'({batch}); give a divisor, e.g. --config.num_microbatches=1')
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


def usage(help_text: str, flags: Mapping[str, Any]) -> str:
  """What -h / --help prints: the binary's docstring, then its flags and their defaults."""
  listed = '\n'.join(f'  --{name}={value!r}' for name, value in flags.items())
  return (f'{help_text.strip()}\n\nflags (default):\n{listed}\n'
          '  --config.KEY=VALUE  override a config key (e.g. --config.optimizer.lr=1e-3)\n')


def parse_flags(argv: Sequence[str], flags: dict[str, Any], help_text: str = ''
                ) -> tuple[dict[str, Any], list[tuple[str, str]]]:
  """`--name=value` / `--name value` / bare `--bool` / `--config.a.b=v`, strictly.

  `flags` maps flag names to defaults (their type parses the value). Returns (every
  flag's value, the `--config.a.b=v` overrides in order, for `apply_overrides`). An
  unknown flag raises ConfigError naming the nearest valid one. -h / --help prints
  `usage(help_text, flags)` and exits 0.
  """
  if '-h' in argv or '--help' in argv:
    sys.stdout.write(usage(help_text, flags))
    sys.exit(0)
  values = dict(flags)
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
    if name.startswith('config.'):
      overrides.append((name[len('config.'):], text))
    elif name in flags:
      try:
        values[name] = parse_value(text, flags[name])
      except (ValueError, SyntaxError) as e:
        raise ConfigError(f'bad value {text!r} for --{name}: {e}') from None
    else:
      raise _unknown('flag', '--' + name, [f'--{f}' for f in flags])
  return values, overrides


def parse_command_line(argv: Sequence[str], flags: dict[str, Any] | None = None,
                       help_text: str = '') -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
  """Parses `--config FILE[:ARG] --flag=v --config.a.b=v ...` strictly (`parse_flags`).

  `flags` maps the binary's other flag names to defaults (their type parses the
  value), e.g. {'workdir': ''}. Returns (config with overrides applied, flag values).
  """
  values, overrides = parse_flags(argv, {'config': '', **(flags or {})}, help_text)
  config_spec = values.pop('config')
  if not config_spec:
    raise ConfigError('--config configs/<method>.py[:args] is required')
  config = load_config(config_spec)
  apply_overrides(config, overrides)
  validate(config)
  return config, values


def exit_with(error: Exception, program: str = 'm5_jax') -> None:
  """Prints `program: error: <one line>` to stderr and exits 2 (no traceback)."""
  message = str(error).splitlines()[0] if str(error) else type(error).__name__
  print(f'{program}: error: {message}', file=sys.stderr)
  sys.exit(2)
