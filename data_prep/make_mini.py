r"""Generates M5Product-mini: a small synthetic release in the real layout.

    python -m data_prep.make_mini --out /tmp/m5mini --num_products 1000 --seed 0 [--features]

writes, in exactly the layout of data_prep/release.py (`ReleaseLayout`):
product5m_id_label.json, images/{id}.jpg (128x128), videos/{id}.mp4 (H.264, 24
fps, 64x64, 3-12 s), audios/{id}.mp3 (16 kHz mono, the video's audio track),
splits/*.txt and splits/fine_instances.tsv, with --features also
features/{image_regions,image_boxes,video_s3d,audio_mel}/{id}.npy, plus
mini_manifest.json (below). The default demo size is 1000 items (under a minute
on 2 cores; see benchmarks/results/make_mini.md). `--num_products` counts
items (listings), as the paper counts "products".

Determinism: the plan (products, splits, defects) comes from one RNG seeded by
--seed; each modality of item i draws from its own RNG (seed, i, stream); codecs
run single-threaded with bit-exact muxing. Same seed and N give the same bytes
for any --workers (on one machine and library stack: float maths in numpy and
the codecs may differ across CPUs). --features only adds files: the raw release
is unchanged. Every split is non-empty from about N = 20 items.

Cross-modal structure. Each item is a listing of a latent product. A product has
a category, drawn from a Zipf(1) distribution over 24 categories (label =
category index; names in the manifest's `label_names`), and product-level
attributes that all its listings share, each visible in ONE modality:
  text   brand and two selling-point words         (e.g. 'LUMO', '防水 大容量')
  table  material (key 材质)                        (e.g. '304不锈钢')
  image  colour and pattern of the object          (10 colours x plain/stripes/dots)
  video  --                                        (tempo: speed of the moving disk)
  audio  timbre of the tone                        (tempo: its beat rate = video speed)
The category itself shows in every modality through a per-modality cue
(`World.cue_maps`, fixed by the seed), replaced by a random cue with
probability --cue_noise (0.15) per listing:
  text: one of 24 title words (潮流, 爆款, ...)   table: 风格 value, one of 24
  audio: tone pitch, one of 24                   (these three name the category)
  image: object shape, one of 6                  video: motion direction, one of 8
                                                 (these two narrow it to 3-4)
Each modality alone is thus a noisy witness of the category, and more modalities
outvote the noise (a model gains from each one it adds); two modalities of one
item agree on the category, which is what cross-modal pretraining can learn.
(An earlier world used many-to-one cues everywhere: the cross-modal mutual
information was ~0.4 nats, too little for contrastive pretraining to learn.)
Listing-level noise: object position/size, background,
shop logo, filler words (包邮, 新款, ...), English specs (USB-C, 500ml), filler pv
keys (13 keys in all: 产地, 尺码, 货号, 重量, ...), video start point, duration,
brightness, audio detune/phase/noise. Pre-extracted features come from the same
scene: image regions/video rows are fixed random projections of one-hot
(shape, colour, pattern) / (direction, tempo) + noise (ReLU); boxes frame the
object; audio_mel is data_prep.decode.log_mel of the clean audio track (the
builder's convention: 80 Slaney bins, n_fft 1024, hop 256, 12 s, zero columns
past the track). video_s3d has one row per second of video, rows past the
video's duration (3-12 s) are zero.

Splits (disjoint; every item in exactly one): 25% of products have 2-4 listings
(--instance_rate). Half of those groups go to fine-grained retrieval (one
listing in fine_query, the rest in fine_gallery; splits/fine_instances.tsv maps
exactly these items to their product id, so every group has 2-4 members); the
other half to pretrain. Single listings: pretrain 45%, coarse_query 8%,
coarse_gallery 17%, fine_gallery distractors 5% (no instance), cls_train 15%,
cls_test 10% (downstream shares larger than the real release's, for numbers
above the noise at demo sizes).

Defects (rates are fractions of items, flags --<name>_rate): --missing_rate 0.20
of items lack >= 1 modality, including --unimodal_rate 0.05 with exactly one;
--noisy_title_rate 0.03 show the title of another product of another category;
broken files, each kind at --<kind>_rate 0.002 but at least one item:
truncated_jpeg, not_a_video (an HTML page named .mp4), empty_mp3 (0 bytes),
malformed_pv, bad_encoding (the title as raw GBK bytes in the JSON); and with
--features, --bad_features_rate 0.003 split evenly (at least one each) over NaN
image regions, a [12, 512] video_s3d and inf in audio_mel. Broken files hit only otherwise complete items.
A dropped title or pv is either "" or a missing key. A broken or dropped media
file has no feature file either.

mini_manifest.json (format 'm5product-mini-manifest/1'):
  args             the generation arguments (seed, num_products, rates, ...)
  num_items, split_sizes, label_names
  absent_raw       [[item_id, modality, reason], ...] every modality that a
                   correct builder of the `raw` config must find absent, with the
                   reason it must count (release.ABSENT_REASONS); in item order
  absent_features  the same for the `features` config (null without --features)
  counts           {'raw'|'features': {'by_modality': {modality: {reason: n}},
                   'by_reason', 'absent_total', 'items_missing_any',
                   'items_unimodal', 'items_without_any'}, 'noisy_title': n}
  noisy_title      [[item_id, id of the item whose title it shows], ...]
  defects          [[item_id, kind], ...] the injected broken-file kinds
Reasons: dropped text/table -> missing_field; dropped media -> missing_file;
truncated_jpeg -> image corrupt_file; not_a_video -> video corrupt_file;
empty_mp3 -> audio empty_file; malformed_pv -> table malformed_field;
bad_encoding -> text bad_encoding; in `features`, broken media -> missing_file
(no feature file) and the feature defects -> bad_features.
No item is rejected (no unsafe or duplicate ids): items in = items written.
"""
from __future__ import annotations

import argparse
import dataclasses
import os

# OpenBLAS helper threads spin for up to ~0.1 s after each threaded call (the
# log-mel matmul, once per item) before they sleep: on a busy 2-core machine that
# spinning was over a third of make_mini's CPU time. Results do not depend on it
# (same thread count, same bytes). Set before numpy loads, so it holds for
# `python -m data_prep.make_mini` and for every spawned worker.
os.environ.setdefault('OPENBLAS_THREAD_TIMEOUT', '4')

from data_prep import release  # pylint: disable=g-import-not-at-top
from data_prep import release_writer  # pylint: disable=g-import-not-at-top
from data_prep.mini import item as item_lib
from data_prep.mini import plan as plan_lib
from data_prep.mini import world as world_lib

DEFAULT_NUM_PRODUCTS = 1000
MANIFEST = 'mini_manifest.json'
_CHUNK = 8   # items per task sent to a worker

def _prepare_out(out: str, layout: release.ReleaseLayout, features: bool, overwrite: bool):
  owned = [layout.annotations, layout.image_dir, layout.video_dir, layout.audio_dir,
           layout.split_dir, 'features', MANIFEST]
  dirs = [layout.image_dir, layout.video_dir, layout.audio_dir, layout.split_dir]
  if features:
    dirs += [d for _, d in layout.feature_dirs]
  release_writer.prepare_out(out, owned, dirs, overwrite)


def generate(out: str, num_products: int = DEFAULT_NUM_PRODUCTS, seed: int = 0,
             features: bool = False, workers: int | None = None,
             rates: plan_lib.DefectRates = plan_lib.DefectRates(), cue_noise: float = 0.15,
             instance_rate: float = 0.25, num_categories: int = len(world_lib.CATEGORIES),
             overwrite: bool = False, progress: bool = True,
             split_weights: tuple = plan_lib.SINGLETON_SPLITS) -> dict:
  """Writes the release to `out`; returns the manifest (also in out/mini_manifest.json)."""
  if not 0.0 <= cue_noise <= 1.0 or not 0.0 <= instance_rate <= 1.0:
    raise ValueError('--cue_noise and --instance_rate must be in [0, 1]')
  layout = release.ReleaseLayout()
  world = world_lib.World.create(seed, num_categories)
  plan = plan_lib.make_plan(world, num_products, seed, rates, instance_rate,
                            singleton_splits=tuple(split_weights))
  _prepare_out(out, layout, features, overwrite)
  ctx = item_lib.Context(root=os.path.abspath(out), seed=seed, world=world,
                         cue_noise=cue_noise, features=features, layout=layout)

  workers = workers or os.cpu_count() or 1
  meter = release_writer.Progress('make_mini', len(plan.items), enabled=progress)
  release_writer.write_release(out, layout, plan, item_lib.write_item, ctx, workers, _CHUNK,
                               meter)

  args = {'seed': seed, 'num_products': num_products, 'features': features,
          'cue_noise': cue_noise, 'instance_rate': instance_rate,
          'num_categories': num_categories, 'rates': dataclasses.asdict(rates)}
  if tuple(split_weights) != plan_lib.SINGLETON_SPLITS:  # the default leaves the manifest as it was
    args['split_weights'] = dict(split_weights)
  manifest = plan_lib.build_manifest(plan, world, args, features)
  release_writer.write_manifest(os.path.join(out, MANIFEST), manifest)
  meter.summary(out, workers, f'absent (raw): {manifest["counts"]["raw"]["by_reason"]}')
  return manifest


def parse_split_weights(text: str) -> tuple:
  """'pretrain=0.3,coarse_query=0.2,...' -> ((split, weight), ...) in SINGLETON_SPLITS order."""
  names = [name for name, _ in plan_lib.SINGLETON_SPLITS]
  weights = {}
  for part in filter(None, text.split(',')):
    name, sep, value = part.partition('=')
    if not sep or name not in names:
      raise argparse.ArgumentTypeError(f'{part!r}: expected split=weight, split one of {names}')
    try:
      weights[name] = float(value)
    except ValueError:
      raise argparse.ArgumentTypeError(f'{part!r}: weight is not a number') from None
    if weights[name] < 0:
      raise argparse.ArgumentTypeError(f'{part!r}: weight must be >= 0')
  missing = [n for n in names if n not in weights]
  if missing:
    raise argparse.ArgumentTypeError(f'--split_weights needs every split; missing {missing}')
  return tuple((n, weights[n]) for n in names)


def main(argv=None):
  rate_fields = dataclasses.fields(plan_lib.DefectRates)
  parser = release_writer.generator_parser('make_mini', __doc__, DEFAULT_NUM_PRODUCTS,
                                           len(world_lib.CATEGORIES), rate_fields)
  parser.add_argument('--features', action='store_true', help='also write features/*.npy')
  parser.add_argument('--cue_noise', type=float, default=0.15,
                      help='per-listing probability that a modality shows a random category cue')
  parser.add_argument('--instance_rate', type=float, default=0.25,
                      help='fraction of products with 2-4 listings')
  parser.add_argument('--split_weights', default=None, type=parse_split_weights,
                      help='how single-listing products spread over the splits, e.g. '
                           'pretrain=0.25,coarse_query=0.2,coarse_gallery=0.2,fine_gallery=0.05,'
                           'cls_train=0.1,cls_test=0.2 (default: '
                           + ','.join(f'{k}={w}' for k, w in plan_lib.SINGLETON_SPLITS) + ')')
  args = parser.parse_args(argv)
  rates = release_writer.parsed_rates(args, rate_fields, plan_lib.DefectRates())
  try:
    generate(args.out, args.num_products, args.seed, args.features, args.workers, rates,
             args.cue_noise, args.instance_rate, args.num_categories, args.overwrite,
             progress=not args.quiet, split_weights=args.split_weights or plan_lib.SINGLETON_SPLITS)
  except ValueError as e:
    raise SystemExit(f'make_mini: {e}') from None


if __name__ == '__main__':
  main()
