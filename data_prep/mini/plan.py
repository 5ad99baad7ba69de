"""The release plan of M5Product-mini: items, splits, instance groups, defects.

The plan is drawn once, in the main process, from one RNG seeded by the seed
alone, so it does not depend on the number of workers. Rendering an item then
only needs its `ItemPlan` and per-item RNGs (data_prep/mini/render.py). The
defect manifest is derived from the plan (`build_manifest`), so it lists exactly
what the renderer injects.
"""
from __future__ import annotations

import collections
import dataclasses
import math

import numpy as np

from data_prep import release
from data_prep.mini import world as world_lib

ID_BASE = 600_000_000_000  # item ids are 12-digit numbers, like Taobao's

# Injected defect kind -> (modality, reason in the raw config, reason in the
# features config). None: that config does not see the defect. A broken media
# file has no pre-extracted features either (the extraction failed on it).
DEFECTS = {
    'truncated_jpeg': ('image', 'corrupt_file', 'missing_file'),
    'not_a_video': ('video', 'corrupt_file', 'missing_file'),
    'empty_mp3': ('audio', 'empty_file', 'missing_file'),
    'malformed_pv': ('table', 'malformed_field', 'malformed_field'),
    'bad_encoding': ('text', 'bad_encoding', 'bad_encoding'),
    'nan_image_features': ('image', None, 'bad_features'),
    'bad_shape_video_features': ('video', None, 'bad_features'),
    'inf_audio_features': ('audio', None, 'bad_features'),
}
FEATURE_DEFECTS = ('nan_image_features', 'bad_shape_video_features', 'inf_audio_features')
# A dropped modality (the item simply lacks it).
DROP_REASON = {'text': 'missing_field', 'table': 'missing_field', 'image': 'missing_file',
               'video': 'missing_file', 'audio': 'missing_file'}

# Singleton products are spread over the splits with these weights; products
# with several listings go half to the fine-grained splits, half to pretraining.
# The downstream splits get a larger share than in the real release, so that
# the demo's few thousand items give eval numbers above the noise.
SINGLETON_SPLITS = (('pretrain', 0.45), ('coarse_query', 0.08), ('coarse_gallery', 0.17),
                    ('fine_gallery', 0.05), ('cls_train', 0.15), ('cls_test', 0.10))


@dataclasses.dataclass(frozen=True)
class DefectRates:
  """Fractions of items. Broken-file kinds get at least one item when > 0."""
  missing: float = 0.20        # items that lack >= 1 modality (includes unimodal)
  unimodal: float = 0.05       # items with exactly one modality
  noisy_title: float = 0.03    # title of another product
  truncated_jpeg: float = 0.002
  not_a_video: float = 0.002
  empty_mp3: float = 0.002
  malformed_pv: float = 0.002
  bad_encoding: float = 0.002
  bad_features: float = 0.003  # split evenly over the FEATURE_DEFECTS (features only)

  def validate(self):
    for f in dataclasses.fields(self):
      v = getattr(self, f.name)
      if not 0.0 <= v <= 1.0:
        raise ValueError(f'--{f.name}_rate must be in [0, 1], got {v}')
    if self.unimodal > self.missing:
      raise ValueError(f'--unimodal_rate ({self.unimodal}) exceeds --missing_rate ({self.missing})')


@dataclasses.dataclass(frozen=True)
class ItemPlan:
  index: int
  item_id: str
  product: world_lib.Product
  split: str
  drop: tuple[str, ...] = ()          # modalities the item lacks
  defect: str = ''                    # a DEFECTS key, or ''
  noisy_source: int = -1              # item whose title this item shows, or -1
  noisy_product: world_lib.Product | None = None

  @property
  def present(self) -> tuple[str, ...]:
    return tuple(m for m in release.MODALITIES if m not in self.drop)


@dataclasses.dataclass
class Plan:
  items: list[ItemPlan]
  splits: dict[str, list[str]]        # split -> item ids (index order)
  instances: list[tuple[str, str]]    # (item_id, instance_id) of the fine splits


def item_id(index: int) -> str:
  return release.check_id(str(ID_BASE + index))


def _products_and_sizes(world, rng, num_items, instance_rate, group_size_probs=None):
  """Listing counts per product (1, or 2-4 for instance groups) summing to num_items.

  Group sizes 2, 3, 4 are equally likely unless `group_size_probs` weighs them."""
  grouped = rng.random(num_items) < instance_rate
  if group_size_probs is None:
    group_sizes = rng.integers(2, 5, num_items)
  else:
    group_sizes = rng.choice(np.arange(2, 5), num_items, p=np.asarray(group_size_probs, np.float64))
  sizes = np.where(grouped, group_sizes, 1)
  cut = int(np.searchsorted(np.cumsum(sizes), num_items))
  sizes = sizes[:cut + 1].copy()
  sizes[-1] -= sizes.sum() - num_items          # the last product may be cut short
  products = world.sample_products(rng, len(sizes))
  return products, sizes


def _split_by_weights(order, named_weights):
  """Consecutive chunks of `order` per name; every name gets >= 1 when possible."""
  n = len(order)
  weights = np.array([w for _, w in named_weights], np.float64)
  counts = np.floor(weights / weights.sum() * n).astype(int)
  if n >= len(counts):
    counts = np.maximum(counts, 1)
  while counts.sum() > n:
    counts[int(np.argmax(counts))] -= 1
  counts[0] += n - counts.sum()                 # remainder to the first (pretrain)
  bounds = np.cumsum(counts)[:-1]
  return {name: chunk for (name, _), chunk in zip(named_weights, np.split(order, bounds))}


def _count(rate, num, at_least_one):
  if rate <= 0:
    return 0
  return max(1 if at_least_one else 0, int(round(rate * num)))


def make_plan(world: world_lib.World, num_items: int, seed: int,
              rates: DefectRates = DefectRates(), instance_rate: float = 0.25,
              singleton_splits=SINGLETON_SPLITS, fine_share: float = 0.5,
              group_size_probs=None) -> Plan:
  """The plan of a release. `world` is any object with `num_categories` and
  `sample_products(rng, num)` -> products with `index` and `category` (mini's
  World, or data_prep/realistic's). `fine_share` of the instance groups go to
  the fine-grained splits, the rest to pretraining; singleton products spread
  over `singleton_splits` ((split, weight), pretrain first)."""
  rates.validate()
  if num_items < 1:
    raise ValueError(f'--num_products must be >= 1, got {num_items}')
  rng = np.random.default_rng([seed, 0x9A1])
  products, sizes = _products_and_sizes(world, rng, num_items, instance_rate, group_size_probs)

  # Products -> splits. Item indices are a random permutation, so the listings of
  # one product are not neighbours in the annotations.
  item_of = iter(rng.permutation(num_items).tolist())
  members = [[next(item_of) for _ in range(s)] for s in sizes]
  split_of = {}
  grouped = [p for p in rng.permutation(len(products)) if sizes[p] >= 2]
  singles = np.array([p for p in rng.permutation(len(products)) if sizes[p] == 1], np.int64)
  for k, p in enumerate(grouped):
    # fine-grained: one query listing, the others in the gallery (every other
    # group when fine_share is 0.5)
    if math.ceil((k + 1) * fine_share) > math.ceil(k * fine_share):
      split_of[members[p][0]] = 'fine_query'
      split_of.update((i, 'fine_gallery') for i in members[p][1:])
    else:
      split_of.update((i, 'pretrain') for i in members[p])
  for name, chunk in _split_by_weights(singles, singleton_splits).items():
    split_of.update((members[p][0], name) for p in chunk)
  product_of = {i: p for p, ms in enumerate(members) for i in ms}

  # Defects. Missing / unimodal first, then broken files among complete items.
  drop = {}
  defect = {}
  order = rng.permutation(num_items).tolist()
  n_unimodal = _count(rates.unimodal, num_items, False)
  n_missing = max(_count(rates.missing, num_items, False), n_unimodal)
  for k, i in enumerate(order[:n_missing]):
    if k < n_unimodal:
      keep = release.MODALITIES[int(rng.integers(5))]
      drop[i] = tuple(m for m in release.MODALITIES if m != keep)
    else:
      num_drop = int(rng.choice([1, 2, 3], p=[0.6, 0.3, 0.1]))
      dropped = sorted(rng.choice(5, num_drop, replace=False).tolist())
      drop[i] = tuple(release.MODALITIES[m] for m in dropped)
  complete = iter(order[n_missing:])
  kinds = [k for k in DEFECTS if k not in FEATURE_DEFECTS]
  wanted = [(k, _count(getattr(rates, k), num_items, True)) for k in kinds]
  wanted += [(k, _count(rates.bad_features / len(FEATURE_DEFECTS), num_items, True))
             for k in FEATURE_DEFECTS]
  for kind, n in wanted:    # the plan never depends on --features: same raw bytes
    for _ in range(n):
      i = next(complete, None)
      if i is not None:
        defect[i] = kind

  # Noisy titles: items whose (readable) title is rendered from another product.
  text_ok = [i for i in rng.permutation(num_items).tolist()
             if 'text' not in drop.get(i, ()) and defect.get(i) != 'bad_encoding']
  noisy = {}
  for i in text_ok[:_count(rates.noisy_title, num_items, True) if num_items > 1 else 0]:
    for _ in range(100):
      src = int(rng.integers(num_items))
      if product_of[src] != product_of[i] and (
          products[product_of[src]].category != products[product_of[i]].category
          or world.num_categories == 1):
        noisy[i] = src
        break

  items = [ItemPlan(index=i, item_id=item_id(i), product=products[product_of[i]],
                    split=split_of[i], drop=drop.get(i, ()), defect=defect.get(i, ''),
                    noisy_source=noisy.get(i, -1),
                    noisy_product=products[product_of[noisy[i]]] if i in noisy else None)
           for i in range(num_items)]
  splits = {s: [it.item_id for it in items if it.split == s] for s in release.SPLIT_FILES}
  instances = [(it.item_id, str(it.product.index)) for it in items
               if it.split in ('fine_query', 'fine_gallery') and sizes[it.product.index] >= 2]
  return Plan(items=items, splits=splits, instances=instances)


def absences(item: ItemPlan, config: str) -> list[tuple[str, str]]:
  """[(modality, reason)] a correct builder must report for `item` in `config`."""
  out = [(m, DROP_REASON[m]) for m in item.drop]
  if item.defect:
    modality, raw_reason, feat_reason = DEFECTS[item.defect]
    reason = raw_reason if config == 'raw' else feat_reason
    if reason is not None:
      out.append((modality, reason))
  order = release.MODALITIES.index
  return sorted(out, key=lambda mr: order(mr[0]))


def build_manifest(plan: Plan, world: world_lib.World, args: dict, with_features: bool,
                   label_names=None, manifest_format: str = 'm5product-mini-manifest/1') -> dict:
  """The defect manifest (format documented in data_prep/make_mini.py); label
  names default to mini's categories."""
  if label_names is None:
    label_names = world_lib.CATEGORIES[:world.num_categories]
  def section(config):
    absent = [[it.item_id, m, r] for it in plan.items for m, r in absences(it, config)]
    counts = collections.defaultdict(lambda: collections.Counter())
    for _, m, r in absent:
      counts[m][r] += 1
    per_item = collections.Counter(i for i, _, _ in absent)
    return absent, {
        'by_modality': {m: dict(sorted(counts[m].items())) for m in release.MODALITIES if counts[m]},
        'by_reason': dict(sorted(collections.Counter(r for _, _, r in absent).items())),
        'absent_total': len(absent),
        'items_missing_any': len(per_item),
        'items_unimodal': sum(1 for n in per_item.values() if n == 4),
        'items_without_any': sum(1 for n in per_item.values() if n == 5),
    }

  absent_raw, counts_raw = section('raw')
  absent_feat, counts_feat = section('features') if with_features else (None, None)
  return {
      'format': manifest_format,
      'args': args,
      'num_items': len(plan.items),
      'split_sizes': {s: len(ids) for s, ids in plan.splits.items()},
      'label_names': list(label_names),
      'absent_raw': absent_raw,
      'absent_features': absent_feat,
      'noisy_title': [[it.item_id, plan.items[it.noisy_source].item_id]
                      for it in plan.items if it.noisy_source >= 0],
      'defects': [[it.item_id, it.defect] for it in plan.items if it.defect
                  and (with_features or it.defect not in FEATURE_DEFECTS)],
      'counts': {'raw': counts_raw, 'features': counts_feat,
                 'noisy_title': sum(1 for it in plan.items if it.noisy_source >= 0)},
  }
