"""Title and table token ids, computed when the dataset is built.

Tokenising in the input pipeline means a Python call per example that holds the
GIL (sentencepiece through `tf.numpy_function`), which caps one host process at
a few hundred examples/s whatever its cores. So the builder tokenises once, with
the release's sentencepiece model (`<release>/spm.model` by default, trained by
`python -m data_prep.tokenizer` before `tfds build`), and stores per example:

  title_ids   int32[n]   the title's pieces (no BOS/EOS; the text plugin adds BOS)
  pv_ids      int32[m]   the pieces of key_1, value_1, key_2, value_2, ... end to end
  pv_lengths  int32[2k]  pieces per key or value (a value may have none), so
                         `RaggedTensor.from_row_lengths(pv_ids, pv_lengths)` is
                         what tokenising the interleaved strings in-graph gives

Nothing is cut here: max lengths are the training config's business. The model's
identity (file name, sha256 of its bytes, pieces) goes into the dataset's
metadata (`metadata.json` of the build, `builder.info.metadata['tokenizer']`);
the input pipeline uses the ids only when config.input.tokenizer has that sha256.
A build without a model stores empty ids and `tokenizer: null`, and the pipeline
tokenises the stored text per example instead.
"""
from __future__ import annotations

import functools
import hashlib
import os
from typing import Sequence

import numpy as np

# The builder's default model file, re-exported.
from data_prep.tokenizer import DEFAULT_FILE  # pylint: disable=unused-import

FIELDS = ('title_ids', 'pv_ids', 'pv_lengths')
METADATA_KEY = 'tokenizer'


def features() -> dict:
  """The TFDS features of the ids (variable length, int32)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  f = tfds.features
  return {
      'title_ids': f.Tensor(shape=(None,), dtype=np.int32, doc='title pieces (no BOS)'),
      'pv_ids': f.Tensor(shape=(None,), dtype=np.int32,
                         doc='pieces of key_1, value_1, key_2, ... end to end'),
      'pv_lengths': f.Tensor(shape=(None,), dtype=np.int32, doc='pieces per key or value'),
  }


def identity(model: bytes, path: str) -> dict:
  """What the dataset's metadata records of the model: the pipeline compares sha256."""
  return {'file': os.path.basename(path), 'sha256': hashlib.sha256(model).hexdigest(),
          'pieces': _processor(model).get_piece_size()}


def read_model(path: str) -> bytes | None:
  """The model's bytes, or None when there is no file (a build with text only)."""
  if not os.path.isfile(path):
    return None
  with open(path, 'rb') as f:
    return f.read()


@functools.lru_cache(maxsize=2)
def _processor(model: bytes):
  """One processor per model and process (Beam workers get the bytes pickled)."""
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  return spm.SentencePieceProcessor(model_proto=model)


def empty() -> dict:
  return {name: np.zeros((0,), np.int32) for name in FIELDS}


def encode(model: bytes | None, title: str, pairs: Sequence[tuple[str, str]]) -> dict:
  """The ids of one example (empty for an absent title or table, or without a model)."""
  if model is None:
    return empty()
  processor = _processor(model)
  spans = [s for pair in pairs for s in pair]
  title_ids, *span_ids = processor.encode([title, *spans], out_type=int)  # '' -> []
  flat = [t for ids in span_ids for t in ids]
  return {'title_ids': np.asarray(title_ids, np.int32), 'pv_ids': np.asarray(flat, np.int32),
          'pv_lengths': np.asarray([len(ids) for ids in span_ids], np.int32)}
