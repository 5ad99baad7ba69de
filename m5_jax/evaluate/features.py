"""Per-modality features of a split from a checkpoint, computed once and cached.

`SplitFeatures` holds, for every item of a split (row = the item's `index`, its
position in the TFDS split): one pooled vector per modality (`out['pooled'][m]`),
its presence flag, the label and the instance id. `combine` builds the feature
of a modality subset (the M5Product paper's): the sum of the subset's *present*
modality vectors; items with none of them present are flagged, and missing
modalities are counted.

`FeatureStore` embeds splits from one checkpoint step and caches them under
`<workdir>/eval_cache/step_<N>/<kind>/<split>/<dataset>/` (kind: pooled or
encoder_pooled; dataset: `dataset_key` of the build's identity - data_dir, name,
config, version and a fingerprint of its files - so a rebuilt or another dataset
is never scored from a stale cache) (npy per modality + meta.json, written
atomically), so the gallery is embedded once for every query set and every
evaluator. Embedding runs sharded over every device (and host): each process
loads its rows of each global eval batch, the model runs under jit on the mesh,
and the outputs are gathered; padding rows (`example_mask` False) are dropped
and every index must be seen exactly once.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import numpy as np

from m5_jax import batch as batch_lib
from m5_jax.evaluate import search

CACHE_DIR = 'eval_cache'
NORMALIZE_CHOICES = ('center', 'modality', 'none')
FUSION_CHOICES = ('sum', 'concat', 'sum_dot')


# ----------------------------------------------------------------------------- subsets


def modality_codes(names: Iterable[str]) -> dict[str, str]:
  """{one-letter code: modality name} for `names` (each plugin's `code`)."""
  from m5_jax import modalities  # pylint: disable=g-import-not-at-top
  return {modalities.get(name).code: name for name in names}


def parse_subset(text: str, available: Sequence[str]) -> tuple[str, ...]:
  """'IT' or 'i+t' -> ('image', 'text') in `available` order; errors name the codes."""
  codes = modality_codes(available)
  letters = text.replace('+', '').strip().lower()
  if letters in ('all', '*'):
    return tuple(available)
  unknown = [c for c in letters if c not in codes]
  if not letters or unknown:
    from m5_jax import config_lib  # pylint: disable=g-import-not-at-top
    raise config_lib.ConfigError(f'bad modality set {text!r}: use letters of '
                     f'{", ".join(f"{c.upper()}={n}" for c, n in codes.items())} (or "all")')
  chosen = {codes[c] for c in letters}
  return tuple(m for m in available if m in chosen)


def default_subsets(available: Sequence[str]) -> str:
  """Each modality alone, I+T when both exist, and all of them: e.g. 'T,P,I,V,A,IT,all'."""
  codes = {n: c for c, n in modality_codes(available).items()}
  parts = [codes[m].upper() for m in available]
  if 'image' in available and 'text' in available and len(available) > 2:
    parts.append('IT')
  if len(available) > 1:
    parts.append('all')
  return ','.join(parts)


def parse_subsets(text: str, available: Sequence[str]) -> list[tuple[str, ...]]:
  """--subsets of a task that scores modality sets on their own (classification,
  clustering): 'T,IT,all' -> [('text',), ('image', 'text'), available]; '' = the
  default (`default_subsets`). A retrieval pair 'Q:G' is an error here."""
  items = [item.strip() for item in (text or default_subsets(available)).split(',')]
  pairs = [item for item in items if ':' in item]
  if pairs:
    from m5_jax import config_lib  # pylint: disable=g-import-not-at-top
    raise config_lib.ConfigError(f'--subsets {", ".join(pairs)}: a query:gallery pair is for '
                                 'retrieval; this task takes modality sets, e.g. T,IT,all')
  return [parse_subset(item, available) for item in items]


def subset_label(subset: Sequence[str]) -> str:
  """('image', 'text') -> 'I+T' (the paper's row names)."""
  return '+'.join(code.upper() for code in modality_codes(subset))


# ----------------------------------------------------------------------------- features


@dataclasses.dataclass
class Combined:
  """A modality subset's features for every item of a split."""
  features: np.ndarray     # f32[N, D] (sum) or f32[N, M*D] (concat), see combine
  has_any: np.ndarray      # bool[N]: at least one modality of the subset present
  missing: dict[str, int]  # per modality of the subset: items without it


@dataclasses.dataclass
class SplitFeatures:
  """Per-modality pooled vectors of every item of one split, row = item index."""
  pooled: dict[str, np.ndarray]    # modality -> f32[N, D]
  present: dict[str, np.ndarray]   # modality -> bool[N]
  label: np.ndarray                # int64[N], -1 unknown
  instance: np.ndarray             # int64[N], -1 unknown (12-digit ids, 62-bit hashes)

  @property
  def num_items(self) -> int:
    return len(self.label)

  @property
  def modalities(self) -> tuple[str, ...]:
    return tuple(self.pooled)

  def modality_means(self) -> dict[str, np.ndarray]:
    """modality -> f32[D]: the mean vector over the items that have it (0 if none)."""
    return {m: (np.asarray(self.pooled[m][self.present[m]], np.float64).mean(0)
                if self.present[m].any() else np.zeros(self.pooled[m].shape[1]))
            .astype(np.float32) for m in self.modalities}

  def combine(self, subset: Sequence[str], normalize: str = 'center',
              means: Mapping[str, np.ndarray] | None = None, fusion: str = 'sum') -> Combined:
    """Sum over the present modalities of `subset`, each vector normalised first.

    fusion='sum' is the M5Product paper's multi-modality feature, the sum then
    L2-normalised: items are compared by the cosine of their sums. fusion='sum_dot'
    leaves the sum's norm (m5_jax before 2026-12-06): the dot product of two sums
    then grows with how many modalities a gallery item has and how much its
    modalities agree, so after pretraining (which aligns the modalities) the
    gallery items whose modalities agree most rank high for every query of their
    category (hubness). On mini that cost fine retrieval 15-17 mAP@10 points for
    pretrained weights and 2-5 for random ones (benchmarks/results/learning.md
    section 8). fusion='concat' stacks the normalised vectors (zeros for absent
    ones) and divides by sqrt(#present), so the dot product of two items is the sum of their
    per-modality similarities over the modalities both have, divided by
    sqrt(n_a * n_b): the sum's cross-modal products (text of one item against image
    of the other) drop out. At tiny width those are noise for random weights and
    the shared category for pretrained ones; on mini's fine retrieval concat scores
    ~20 mAP@10 points above the dot product of sums for both arms, and ~6
    (pretrained) / ~16 (random) above the cosine of sums (learning.md sections 6, 8).

    normalize='center' subtracts the modality's mean vector (`means`, taken from
    a reference split such as the gallery or the probe's training split; default:
    this split's own) and then L2-normalises. Without centering, every vector of
    a modality shares a large common component (transformer outputs are far from
    zero-mean), so the similarity of two sums is dominated by WHICH modalities
    are present, not by what they show: the sum of five modalities then retrieves
    worse than any one of them. 'modality' only L2-normalises (no modality
    dominates by norm; the contrastive objectives compare normalised vectors);
    'none' sums the raw pooled outputs.
    """
    if normalize not in NORMALIZE_CHOICES:
      raise ValueError(f'normalize must be one of {NORMALIZE_CHOICES}, got {normalize!r}')
    if fusion not in FUSION_CHOICES:
      raise ValueError(f'fusion must be one of {FUSION_CHOICES}, got {fusion!r}')
    missing_names = [m for m in subset if m not in self.pooled]
    if missing_names:
      raise ValueError(f'modalities {missing_names} were not embedded (have {self.modalities})')
    if normalize == 'center' and means is None:
      means = self.modality_means()
    # One output array filled in place (a 1M-item gallery must not hold every
    # modality's copy): the sum adds each modality into it, concat writes its columns.
    width = self.pooled[subset[0]].shape[1]
    total = np.zeros((self.num_items, width * (len(subset) if fusion == 'concat' else 1)),
                     np.float32)
    num_present, missing = np.zeros((self.num_items,), np.int64), {}
    for i, m in enumerate(subset):
      vectors, present = np.asarray(self.pooled[m], np.float32), self.present[m]
      if normalize == 'center':
        vectors = vectors - means[m]
      if normalize in ('center', 'modality'):
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-6)
      columns = slice(i * width, (i + 1) * width) if fusion == 'concat' else slice(None)
      total[:, columns] += np.where(present[:, None], vectors, 0.0)
      num_present += present
      missing[m] = int((~present).sum())
    if fusion == 'concat':   # unit norm already: each present block has norm 1
      total /= np.sqrt(np.maximum(num_present, 1))[:, None]
    elif fusion == 'sum' and normalize != 'none':
      total /= np.maximum(np.linalg.norm(total, axis=1, keepdims=True), 1e-6)
    return Combined(total, num_present > 0, missing)

  # --- cache files ---------------------------------------------------------
  def save(self, directory: str, dataset: Mapping[str, str] | None = None) -> None:
    """Writes npy files + meta.json (with the dataset identity) atomically (a temp
    dir renamed into place)."""
    tmp = directory.rstrip('/') + f'.tmp{os.getpid()}'
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for m in self.modalities:
      np.save(os.path.join(tmp, f'pooled_{m}.npy'), self.pooled[m])
      np.save(os.path.join(tmp, f'present_{m}.npy'), self.present[m])
    np.save(os.path.join(tmp, 'label.npy'), np.asarray(self.label, np.int64))
    np.save(os.path.join(tmp, 'instance.npy'), np.asarray(self.instance, np.int64))
    with open(os.path.join(tmp, 'meta.json'), 'w') as f:
      json.dump({'modalities': list(self.modalities), 'num_items': self.num_items,
                 'dataset': dict(dataset or {})}, f)
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(os.path.dirname(directory), exist_ok=True)
    os.replace(tmp, directory)

  @classmethod
  def load(cls, directory: str, mmap: bool = True) -> 'SplitFeatures':
    with open(os.path.join(directory, 'meta.json')) as f:
      meta = json.load(f)
    mode = 'r' if mmap else None
    load = lambda name: np.load(os.path.join(directory, name), mmap_mode=mode)
    return cls(pooled={m: load(f'pooled_{m}.npy') for m in meta['modalities']},
               present={m: np.asarray(load(f'present_{m}.npy')) for m in meta['modalities']},
               label=np.asarray(load('label.npy')), instance=np.asarray(load('instance.npy')))


# ----------------------------------------------------------------------------- embedding

# (params, global batch) -> {'pooled': {m: [B, D]}, 'present': {m: [B]}}
ApplyFn = Callable[[Any, Mapping[str, Any]], Mapping[str, Any]]


def embed_batches(apply_fn: ApplyFn, params: Any, batches: Iterable[Mapping[str, Any]],
                  num_items: int, modalities: Sequence[str], *, log_every_s: float = 30.0,
                  split: str = '') -> SplitFeatures:
  """Runs `apply_fn` over global eval batches and places each row at its `index`.

  The batches carry the exact int64 label and instance as int32 halves
  (`batch['exact_ids']`, from `create_iterator(..., exact_ids=True)`): their int32
  `label`/`instance` would lose 12-digit product ids and 62-bit hashed ids, and the
  halves are gathered across processes like every other field (m5_jax/batch.py).
  Padding rows are dropped; an index seen twice or never is an error (the eval
  iterator must cover the split exactly once).
  """
  pooled: dict[str, np.ndarray] = {}
  present = {m: np.zeros((num_items,), bool) for m in modalities}
  label = np.full((num_items,), -1, np.int64)
  instance = np.full((num_items,), -1, np.int64)
  seen = np.zeros((num_items,), bool)
  start = last_log = time.time()
  for batch in batches:
    out = apply_fn(params, batch)
    mask = search.fetch(batch['example_mask']).astype(bool)
    index = search.fetch(batch['index'])[mask]
    if (index < 0).any() or (index >= num_items).any():
      raise ValueError(f'{split}: batch index outside [0, {num_items})')
    if seen[index].any():
      raise ValueError(f'{split}: items {index[seen[index]][:5].tolist()} seen twice')
    seen[index] = True
    exact = batch[batch_lib.EXACT_IDS]
    label[index] = batch_lib.join_int64(search.fetch(exact['label']))[mask]
    instance[index] = batch_lib.join_int64(search.fetch(exact['instance']))[mask]
    for m in modalities:
      vectors = search.fetch(out['pooled'][m])[mask]
      if m not in pooled:
        pooled[m] = np.zeros((num_items, vectors.shape[1]), np.float32)
      pooled[m][index] = vectors
      present[m][index] = search.fetch(out['present'][m])[mask]
    if time.time() - last_log > log_every_s:
      last_log = time.time()
      done = int(seen.sum())
      rate = done / (last_log - start)
      logging.info('embed %s: %d/%d items, %.1f items/s, ETA %.0f s', split, done, num_items,
                   rate, (num_items - done) / max(rate, 1e-9))
  if not seen.all():
    raise ValueError(f'{split}: {int((~seen).sum())} of {num_items} items never embedded')
  logging.info('embed %s: %d items in %.1f s', split, num_items, time.time() - start)
  for m in modalities:
    pooled.setdefault(m, np.zeros((num_items, 0), np.float32))
  return SplitFeatures(pooled=pooled, present=present, label=label, instance=instance)


def dataset_key(identity: Mapping[str, str]) -> str:
  """Cache folder of a dataset build: 'm5product_raw_1.0.0-<16 hex of its fingerprint>'.

  identity: {'dataset': name/config/version, 'data_dir', 'fingerprint'} (see
  `model_features.dataset_identity`); the fingerprint covers all three.
  """
  return f"{identity['dataset'].replace('/', '_')}-{identity['fingerprint'][:16]}"


def cache_dir(workdir: str, step: int, split: str, kind: str = 'pooled',
              dataset: Mapping[str, str] | None = None) -> str:
  """The split's cache folder; with `dataset`, the folder of that build's features."""
  split_dir = os.path.join(workdir, CACHE_DIR, f'step_{step:08d}', kind, split)
  return split_dir if dataset is None else os.path.join(split_dir, dataset_key(dataset))


class FeatureStore:
  """Features of splits at one checkpoint step of one dataset build, cached on disk
  per (step, kind, dataset, split).

  `embed(split) -> SplitFeatures` is called only on a cache miss (see
  `m5_jax.evaluate.model_features.Embedder` for the model-backed one). A cache
  written for another build of the dataset (rebuilt in place, another data_dir or
  config) has another folder, and meta.json's identity is checked as well.
  """

  def __init__(self, workdir: str, step: int, embed: Callable[[str], SplitFeatures],
               dataset: Mapping[str, str], kind: str = 'pooled'):
    self.workdir, self.step, self._embed, self.kind = workdir, step, embed, kind
    self.dataset = dict(dataset)
    self._memory: dict[str, SplitFeatures] = {}

  def get(self, split: str) -> SplitFeatures:
    if split in self._memory:
      return self._memory[split]
    directory = cache_dir(self.workdir, self.step, split, self.kind, self.dataset)
    if self._cached(directory):
      logging.info('features %s at step %d: cached in %s', split, self.step, directory)
      features = SplitFeatures.load(directory)
    else:
      features = self._embed(split)
      if jax.process_index() == 0:
        features.save(directory, self.dataset)
    self._memory[split] = features
    return features

  def _cached(self, directory: str) -> bool:
    try:
      with open(os.path.join(directory, 'meta.json')) as f:
        meta = json.load(f)
    except (OSError, ValueError):
      return False
    if meta.get('dataset') != self.dataset:
      logging.warning('features in %s were made from another dataset build (%s, not %s): '
                      'embedding again', directory, meta.get('dataset'), self.dataset)
      return False
    return True
