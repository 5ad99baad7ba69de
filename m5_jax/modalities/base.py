"""The modality plugin contract: everything one modality needs, in one file.

A modality (text, table, image, video, audio, or a new one) is a module
`m5_jax/modalities/<name>.py` that defines a module-level `PLUGIN` object
implementing `Modality` below. `m5_jax.modalities.get(name)` imports it by name,
so a sixth modality is one new file plus config lines (`config.modalities` and
`config.modality.<name>`).

Data flow for one modality `m` (B = batch, L = that modality's token count):

  TFDS example --preprocess (tf.data, host)--> batch[m] (fields of batch_spec)
  batch[m] --mask_for_pretraining (jax)--> masked batch[m], targets
  masked batch[m] --Embedder (flax)--> tokens [B, L, D], token_mask [B, L]
  ... per-modality encoder, fusion (m5_jax/models) ...
  fused tokens [B, L, D] --Head (flax)--> predictions --masked_loss--> (sum, count)

Conventions every plugin follows:
  * `batch[m]['present']` bool[B] says whether the item has this modality at all.
    An absent modality has all-False token masks; the model excludes it by
    attention masks (never attends to zeros).
  * `token_mask` is False for padding tokens and for every token of an absent
    modality.
  * `masked_loss` returns an fp32 (numerator, denominator) pair of *sums* over the
    global batch; the caller divides once (global count of masked tokens) and
    accumulates both across microbatches.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Protocol

import ml_collections

# (shape without the batch dim, numpy dtype name). E.g. {'ids': ((36,), 'int32')}.
FieldSpec = tuple[tuple[int, ...], str]


class Modality(Protocol):
  """What a modality plugin provides. See the module docstring for the flow."""

  name: str  # key in the batch and in configs, e.g. 'text'
  code: str  # one letter for modality-set strings, e.g. 't' in 'itpva'

  def default_config(self) -> ml_collections.ConfigDict:
    """This modality's config (lengths, input form, encoder depth, masking)."""

  def batch_spec(self, cfg: ml_collections.ConfigDict) -> Mapping[str, FieldSpec]:
    """The fields of batch[name] (always includes 'present': ((), 'bool'))."""

  def preprocess(self, example: Mapping[str, Any], cfg: ml_collections.ConfigDict,
                 tokenizer: Any) -> dict[str, Any]:
    """tf.data side: a decoded TFDS example -> batch_spec fields (tf tensors, padded)."""

  def embedder(self, cfg: ml_collections.ConfigDict, hidden: int, shared: Mapping[str, Any]):
    """A flax module: __call__(inputs: dict, *, deterministic: bool) -> (tokens, token_mask).

    `shared` holds modules shared across modalities, e.g. shared['word_embed']
    (text and table share the vocabulary embeddings).
    """

  def mask_for_pretraining(self, inputs: Mapping[str, Any], rng, cfg: ml_collections.ConfigDict
                           ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(masked inputs, targets). targets['weights'] is float32[B, L] over tokens: 1 where
    the masked-modeling loss applies, 0 elsewhere (never on padding/absent tokens)."""

  def head(self, cfg: ml_collections.ConfigDict, hidden: int, shared: Mapping[str, Any]):
    """A flax module mapping fused tokens [B, L, D] to masked-modeling predictions."""

  def masked_loss(self, predictions, targets: Mapping[str, Any], cfg: ml_collections.ConfigDict):
    """(numerator, denominator) fp32 scalars summed over the (global) batch."""


@dataclasses.dataclass(frozen=True)
class ModalityOutputs:
  """What the model returns per modality (see m5_jax/models)."""
  tokens: Any      # [B, L, D] fused token outputs
  token_mask: Any  # [B, L] bool
  pooled: Any      # [B, D] one vector per item for this modality
  present: Any     # [B] bool
