"""Public pretrained checkpoints (local files) into m5_jax's towers.

`load(fmt, path, params, config, towers, include, exclude)` reads a checkpoint
(no hub access: users point at files they downloaded elsewhere) and
returns m5_jax params with the mapped leaves replaced, plus a `Report` in which
every source tensor is mapped or skipped (with why) and every target parameter is
loaded or new (left at init). A shape or name mismatch is a one-line ValueError
naming the parameter.

One module per source: hf_bert (BERT into text / table), hf_vit and big_vision_vit
(ViT into the raw image tower, video frames), hf_clip (CLIP into both towers of
the clip preset); common holds what they share, wordpiece BERT's vocabulary.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from m5_jax.models.public_checkpoints.big_vision_vit import big_vision_targets, read_big_vision
from m5_jax.models.public_checkpoints.common import (Report, flatten, read_hf_folder,
                                                     replace_leaves, source_shapes,
                                                     unstack_scanned)
from m5_jax.models.public_checkpoints.clip_bpe import ClipBpeTokenizer, is_clip_vocab
from m5_jax.models.public_checkpoints.hf_clip import clip_model_config, clip_targets
from m5_jax.models.public_checkpoints.hf_bert import bert_model_config, bert_names, bert_targets
from m5_jax.models.public_checkpoints.hf_vit import vit_names, vit_targets
# bert_model_config, clip_model_config and the tokenizers are re-exported for configs and
# the input pipeline.
from m5_jax.models.public_checkpoints.wordpiece import (BERT_SPECIALS, WordPieceTokenizer,
                                                        is_wordpiece_vocab, project_vocab_order,
                                                        read_vocab, wordpiece_tokenizer)

FORMATS = ('m5_jax', 'hf_bert', 'hf_vit', 'big_vision_vit', 'hf_clip')
# The formats' towers: which configured modalities each one can fill.
TOWERS = {'hf_bert': ('text', 'table'), 'hf_vit': ('image', 'video'), 'big_vision_vit': ('image',),
          'hf_clip': ('text', 'image')}
# Filled when init_from.towers is '' (and the config has them): video only when asked,
# since its frames usually have another size than the ViT's images.
DEFAULT_TOWERS = {'hf_bert': ('text', 'table'), 'hf_vit': ('image',), 'big_vision_vit': ('image',),
                  'hf_clip': ('text', 'image')}
# format -> (reader, source name normaliser, target builder)
CONVERTERS = {'hf_bert': (read_hf_folder, bert_names, bert_targets),
              'hf_vit': (read_hf_folder, vit_names, vit_targets),
              'big_vision_vit': (read_big_vision, dict, big_vision_targets),
              'hf_clip': (read_hf_folder, dict, clip_targets)}


def resolve_towers(fmt: str, config, towers: str) -> tuple[str, ...]:
  known = TOWERS[fmt]
  chosen = tuple(t for t in towers.split(',') if t) if towers else tuple(
      m for m in DEFAULT_TOWERS[fmt] if m in config.modalities)
  bad = [t for t in chosen if t not in known or t not in config.modalities]
  if bad or not chosen:
    present = ', '.join(m for m in known if m in config.modalities) or 'none'
    raise ValueError(f'init_from.towers={towers!r}: {fmt} fills {", ".join(known)}, of which '
                     f'this config has {present}')
  return chosen


def convert(fmt: str, path: str, params: Mapping[str, Any], config, towers: str = '',
            include: str = '.*', exclude: str = '') -> tuple[dict[str, np.ndarray], Report]:
  """({'/'-joined m5_jax path: float32 array}, Report) for the checkpoint at `path`.

  `params` is the target tree; only its leaves' shapes are read (jax.Arrays of any
  sharding, or ShapeDtypeStructs). `towers`: comma-separated modalities to fill
  ('' = the format's DEFAULT_TOWERS that the config has); `include` / `exclude` are
  regexes on m5_jax paths (an excluded parameter stays at init and is listed as new).
  A scan_layers stack is filled whole: its depth must be the checkpoint's.
  """
  if fmt not in TOWERS:
    raise ValueError(f'init_from.format={fmt!r}: public formats are {", ".join(TOWERS)}')
  chosen = resolve_towers(fmt, config, towers)
  read, names, build_targets = CONVERTERS[fmt]
  hf_config, tensors = read(path)
  tensors = names(tensors)
  targets, skipped = build_targets(tensors, hf_config, config, path, chosen)
  leaves = flatten(params)
  flat = {k: tuple(np.shape(v)) for k, v in leaves.items()}
  scanned = unstack_scanned(flat)
  include_re, exclude_re = re.compile(include), re.compile(exclude) if exclude else None
  values, report = {}, Report(skipped=dict(skipped))
  stacked: dict[str, dict[int, np.ndarray]] = {}
  for target, (src, fn) in targets.items():
    if not include_re.search(target) or (exclude_re and exclude_re.search(target)):
      report.skipped[src] = f'init_from include/exclude leaves {target} at init'
      continue
    stacked_path, layer = scanned.get(target, (None, None))
    shape = flat[stacked_path][1:] if stacked_path else flat.get(target)
    if shape is None:
      raise ValueError(f'{src} maps to {target}, which this model does not have (encoder '
                       f"depth smaller than the checkpoint's {hf_config.get('num_hidden_layers')} "
                       'layers? modality.<m>.encoder_layers sets it)')
    try:
      value = np.asarray(fn(shape), np.float32)
    except ValueError:
      raise ValueError(f'{src} {source_shapes(src, tensors)} does not fit {target} '
                       f'{tuple(shape)}') from None
    if stacked_path:
      stacked.setdefault(stacked_path, {})[layer] = value
    else:
      values[target] = value
    report.mapped[target] = src
  for stacked_path, layers in stacked.items():
    depth = flat[stacked_path][0]
    if sorted(layers) != list(range(depth)):
      raise ValueError(f'{stacked_path}: a scanned stack of {depth} layers, but the checkpoint '
                       f'fills layers {sorted(layers)}; set the depth to the checkpoint\'s')
    values[stacked_path] = np.stack([layers[i] for i in range(depth)])
  report.new = sorted(p for p in flat if p not in values)
  used = {n for src in report.mapped.values() for n in src.split(' + ')}
  report.skipped = {n: why for n, why in report.skipped.items() if n not in used}
  return values, report


def load(fmt: str, path: str, params: Mapping[str, Any], config, towers: str = '',
         include: str = '.*', exclude: str = '') -> tuple[dict, Report]:
  """`params` with the converted leaves replaced (numpy), and the Report (see `convert`)."""
  values, report = convert(fmt, path, params, config, towers, include, exclude)
  return replace_leaves(params, values), report


def is_checkpoint_vocab(path: str) -> bool:
  """config.input.tokenizer names a public checkpoint's vocabulary (BERT's vocab.txt,
  CLIP's vocab.json) rather than a sentencepiece model."""
  return is_wordpiece_vocab(path) or is_clip_vocab(path)


def checkpoint_tokenizer(path: str):
  """The tokenizer of that vocabulary, ids in m5_jax's order (what `load` maps the
  embedding rows to)."""
  return wordpiece_tokenizer(path) if is_wordpiece_vocab(path) else ClipBpeTokenizer(path)
