"""What every public-checkpoint converter shares: reading Hugging Face folders, the
Report, the config check, the target collector and tree helpers."""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Callable, Mapping

import numpy as np


@dataclasses.dataclass
class Report:
  """What happened to every source tensor and every target parameter."""
  mapped: dict[str, str] = dataclasses.field(default_factory=dict)   # target <- source(s)
  skipped: dict[str, str] = dataclasses.field(default_factory=dict)  # source -> why
  new: list[str] = dataclasses.field(default_factory=list)           # targets left at init

  def summary(self) -> str:
    return (f'{len(self.mapped)} parameters loaded, {len(self.new)} new (left at init), '
            f'{len(self.skipped)} source tensors skipped')


# ----------------------------------------------------------------------------
# Reading a Hugging Face folder
# ----------------------------------------------------------------------------

def read_hf_folder(path: str) -> tuple[dict, dict[str, np.ndarray]]:
  """(config.json, {name: float32 array}) of a Hugging Face model folder."""
  path = os.path.expanduser(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f'init_from.path {path}: not a folder (expected config.json + '
                            'model.safetensors or pytorch_model.bin)')
  config_file = os.path.join(path, 'config.json')
  if not os.path.exists(config_file):
    raise FileNotFoundError(f'init_from.path {path}: no config.json')
  try:
    with open(config_file) as f:
      hf_config = json.load(f)
  except ValueError as e:
    raise ValueError(f'{config_file}: not JSON ({one_line(e)})') from None
  weights = _weight_files(path)
  tensors = {}
  for file in weights:
    tensors.update(_read_weights(file))
  return hf_config, {k: np.asarray(v, np.float32) if v.dtype != np.int64 else v
                     for k, v in tensors.items()}


def _weight_files(path: str) -> list[str]:
  for name in ('model.safetensors', 'pytorch_model.bin'):
    index = os.path.join(path, name + '.index.json')
    if os.path.exists(index):  # sharded: the index names the shards
      with open(index) as f:
        return [os.path.join(path, s) for s in sorted(set(json.load(f)['weight_map'].values()))]
    if os.path.exists(os.path.join(path, name)):
      return [os.path.join(path, name)]
  raise FileNotFoundError(f'init_from.path {path}: no model.safetensors or pytorch_model.bin')


def _read_weights(file: str) -> dict[str, np.ndarray]:
  if file.endswith('.safetensors'):
    try:
      from safetensors import numpy as safetensors_numpy  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise ImportError(f'{file}: reading .safetensors needs the safetensors package '
                        '(pip install safetensors)') from None
    try:
      return safetensors_numpy.load_file(file)
    except Exception as e:  # pylint: disable=broad-except  (SafetensorError, OSError)
      raise ValueError(f'{file}: not a readable safetensors file ({one_line(e)})') from None
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError(f'{file}: reading pytorch_model.bin needs torch; convert it to '
                      'model.safetensors or install torch') from None
  try:
    state = torch.load(file, map_location='cpu', weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f'{file}: not a readable torch state dict ({one_line(e)})') from None
  return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in state.items()}


def one_line(e: BaseException) -> str:
  return ' '.join(str(e).split())[:200]


def linear(w, shape):
  """torch Linear weight [out, in] -> kernel [in..., out...] (Flax Dense's transpose)."""
  return w.T.reshape(shape)


def same(w, shape):
  return w.reshape(shape)


# One encoder layer's modules under transformer/layer_{i}/ in m5_jax: the order in
# which `layer_rows` takes a checkpoint's module names.
LAYER_DENSE = ('attention/query', 'attention/key', 'attention/value', 'attention/out',
               'mlp/wi', 'mlp/wo')
LAYER_NORMS = ('attention_ln', 'mlp_ln')


def module_rows(dense=(), norms=(), layout: str = 'torch') -> tuple:
  """(source tensor, m5_jax parameter, conversion) rows for (source module, m5_jax
  module) pairs. layout 'torch': `name.weight` / `name.bias`, a Linear's weight
  transposed into the Dense kernel and a LayerNorm's weight the scale; 'flax':
  `name/kernel` / `name/scale` / `name/bias` in m5_jax's own layout."""
  if layout == 'torch':
    sep, kernel, scale, to_kernel = '.', 'weight', 'weight', linear
  else:
    sep, kernel, scale, to_kernel = '/', 'kernel', 'scale', same
  rows = []
  for pairs, weight, name, fn in ((dense, kernel, 'kernel', to_kernel),
                                  (norms, scale, 'scale', same)):
    for source, target in pairs:
      rows += [(f'{source}{sep}{weight}', f'{target}/{name}', fn),
               (f'{source}{sep}bias', f'{target}/bias', same)]
  return tuple(rows)


def layer_rows(attention, mlp, norms, layout: str = 'torch') -> tuple:
  """module_rows of one encoder layer: the checkpoint's module names for query, key,
  value, out (`attention`), the MLP's two Dense layers (`mlp`) and the LayerNorms
  before / after attention (`norms`)."""
  return module_rows(zip(tuple(attention) + tuple(mlp), LAYER_DENSE), zip(norms, LAYER_NORMS),
                     layout)


def check_architecture(kind: str, hf_config: Mapping[str, Any], config,
                       wanted: Mapping[str, Any]) -> None:
  """Each config key (model.* / modality.*) has the checkpoint's value (one line naming it)."""
  if hf_config.get('model_type', kind) != kind:
    raise ValueError(f'init_from.format=hf_{kind} but config.json has model_type='
                     f"{hf_config.get('model_type')!r}")
  for key, value in wanted.items():
    node = config
    for part in key.split('.'):
      node = node.get(part) if part in node else None
    got = node
    differs = (got is None or abs(got - value) > 1e-15 * max(1, abs(value))
               if isinstance(value, float) else got != value)
    if differs:
      raise ValueError(f'the {kind.upper()} checkpoint needs --config.{key}={value} (got {got})')
  check_activation(kind.upper(), hf_config.get('hidden_act', 'gelu'), config)


# The activations m5_jax has (model.activation), by the name transformers gives them.
HF_ACTIVATIONS = {'gelu': 'gelu', 'gelu_pytorch_tanh': 'gelu_tanh', 'gelu_new': 'gelu_tanh',
                  'quick_gelu': 'quick_gelu'}


def check_activation(kind: str, hidden_act: str, config) -> None:
  """The model's activation (model.activation, or the older gelu_approximate) is the
  checkpoint's hidden_act (one line naming the config key)."""
  from m5_jax.models import layers  # pylint: disable=g-import-not-at-top
  if hidden_act not in HF_ACTIVATIONS:
    raise ValueError(f'the {kind} checkpoint uses hidden_act={hidden_act!r}, which m5_jax does '
                     f'not have ({", ".join(HF_ACTIVATIONS)})')
  got = layers.make_spec(config.model).activation
  if got != HF_ACTIVATIONS[hidden_act]:
    raise ValueError(f'the {kind} checkpoint needs --config.model.activation='
                     f'{HF_ACTIVATIONS[hidden_act]} (got {got})')


def transformer_fields(hf_config, pre_ln: bool) -> dict[str, Any]:
  return {'model.hidden': hf_config['hidden_size'], 'model.heads': hf_config['num_attention_heads'],
          'model.mlp_dim': hf_config['intermediate_size'], 'model.pre_ln': pre_ln,
          'model.layer_norm_eps': hf_config.get('layer_norm_eps', 1e-12)}


class Targets:
  """Collects {m5_jax path: (source names, shape -> array)}; every source used or skipped."""

  def __init__(self, kind: str, tensors: Mapping[str, np.ndarray], path: str):
    self.kind, self.tensors, self.path = kind, tensors, path
    self.targets: dict[str, tuple[str, Callable]] = {}
    self.used: set[str] = set()

  def source(self, name):
    if name not in self.tensors:
      raise ValueError(f'{self.kind} checkpoint {self.path}: tensor {name} is missing')
    return self.tensors[name]

  def add(self, target: str, names: list[str], fn: Callable) -> None:
    self.targets[target] = (' + '.join(names),
                            lambda shape: fn(*[self.source(n) for n in names], shape))
    self.used.update(names)

  def add_layers(self, stack: str, depth: int, table,
                 source: str = 'encoder.layer.{i}.{name}') -> None:
    for i in range(depth):
      for name, target, fn in table:
        self.add(f'{stack}/layer_{i}/{target}', [source.format(i=i, name=name)], fn)

  def result(self, skip_patterns) -> tuple[dict[str, tuple[str, Callable]], dict[str, str]]:
    skipped = {}
    for name in self.tensors:
      if name in self.used:
        continue
      why = next((w for pattern, w in skip_patterns if re.search(pattern, name)), None)
      if why is None:
        raise ValueError(f'{self.kind} checkpoint {self.path}: tensor {name} '
                         f'{self.tensors[name].shape} has no place in m5_jax')
      skipped[name] = why
    return self.targets, skipped


def flatten(tree, prefix=''):
  if isinstance(tree, Mapping):
    out = {}
    for k, v in tree.items():
      out.update(flatten(v, f'{prefix}{k}/'))
    return out
  return {prefix[:-1]: tree}


def replace_leaves(tree, values: Mapping[str, Any], prefix=''):
  if isinstance(tree, Mapping):
    return {k: replace_leaves(v, values, f'{prefix}{k}/') for k, v in tree.items()}
  return values.get(prefix[:-1], tree)


def unstack_scanned(flat: dict[str, tuple[int, ...]]) -> dict[str, tuple[str, int]]:
  """For scan_layers models: per-layer path -> (stacked path, layer index)."""
  out = {}
  for path, shape in flat.items():
    match = re.match(r'(.*/transformer)/layers/block/(.*)$', path)
    if match:
      for i in range(shape[0]):
        out[f'{match[1]}/layer_{i}/{match[2]}'] = (path, i)
  return out


def source_shapes(src: str, tensors) -> str:
  shapes = [tuple(tensors[n].shape) for n in src.split(' + ') if n in tensors]
  return ' + '.join(map(str, shapes))


class PythonTokenizer:
  """tokenize(tf.string[N]) -> tf.RaggedTensor int32 (text.SentencePieceTokenizer's contract)
  over a subclass's encode(list[str]) -> list[list[int]], so the input pipeline can use it."""
  op_name = 'python_encode'

  def tokenize(self, strings):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    def encode_numpy(batch):
      ids = self.encode([s.decode('utf-8', errors='replace') for s in batch.tolist()])
      return (np.array([t for x in ids for t in x], np.int32),
              np.array([len(x) for x in ids], np.int64))

    flat, lengths = tf.numpy_function(encode_numpy, [strings], (tf.int32, tf.int64),
                                      stateful=False, name=self.op_name)
    flat.set_shape([None])
    lengths.set_shape([None])
    return tf.RaggedTensor.from_row_lengths(flat, lengths)
