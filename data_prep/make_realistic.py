r"""Generates M5Product-realistic: a development release made from real public media.

    python -m data_prep.make_realistic --out /tmp/real2k --num_products 2000 --seed 0 [--workers N]

writes, in exactly the layout of data_prep/release.py (`ReleaseLayout`), the raw
form only: product5m_id_label.json, images/{id}.jpg (224x224), videos/{id}.mp4
(H.264, 24 fps, 112x112, 3-12 s, no audio stream), audios/{id}.mp3 (16 kHz mono,
the video's narration), splits/*.txt, splits/fine_instances.tsv, and
mini_manifest.json (mini's format and name, so tools that read a mini release's
manifest read this one; format 'm5product-realistic-manifest/1').
`--num_products` counts items (listings). 2000 items (139 MB) took 5 min 15 s on
the project's 2-core machine while other jobs shared it (6.4 items/s, 2 workers;
`time python -m data_prep.make_realistic --out /tmp/real2k --num_products 2000 --seed 0`).

Media (all from installed packages, no network; data_prep/realistic/sources.py):
  image   Noto Color Emoji pictures (Debian fonts-noto-color-emoji, SIL OFL 1.1)
  label   28 shop categories made of Unicode emoji subgroups (Debian unicode-data)
          e.g. food-fruit -> 水果生鲜, clothing -> 服饰鞋包; 652 pictures, 7-66 each
  text    Chinese: CLDR emoji names (PyPI emoji), brands, shops, provinces and
          cities from Faker zh_CN (PyPI Faker, MIT), attribute word lists
  audio   Mandarin speech from espeak-ng voice cmn (Debian espeak-ng, GPL-3,
          used as a tool) reading the brand and product name, with room noise
  video   a slow pan/zoom over the product picture, as long as the narration
A missing Debian package stops the generator with one line naming it and the
install command (`make venv` installs them: Makefile APT_PACKAGES).

Cross-modal structure. Each item is a listing of a product; a product is one
real picture (its category's emoji) plus product-level attributes that all its
listings share:
  picture + colour variant   image, video (tinted), title, pv 颜色分类, speech
  product name (CLDR name)   title, pv 品名, speech; the picture shows it
  brand (Faker)              title (first word mostly), pv 品牌, speech
  model number, selling points, department attributes (材质, 口味, 接口, ...),
    origin                   title and pv only
  category                   label; every modality through the picture / name,
                             the title names it in half the listings
Several products may share a picture (same goods, other brand / colour / model):
fine-grained positives are the listings of one product, not of one picture.
Listing-level noise: image scale, position, crop, rotation, background, badge,
JPEG quality; video camera path and stage; title word choice and order, shop
name, filler words, specs; listing-only pv keys (包装, 发货地, 重量, ...); the
narrator (voice variant, speed, pitch, pauses), an intro phrase, loudness,
lead-in and room noise.

What it does not model: real product photos (emoji are clean clip-art, one
style, at most 66 pictures per category and 652 in all, so an image model can
memorise them); real shop text (titles are recombined word lists, no typos,
no brand/category mismatch beyond the injected noisy titles); real narration
(espeak-ng's robotic Mandarin, no music or scene sound); real videos (no cuts,
people or hands); categories as fine as the real ~6k; heavy-tailed picture use.

Splits. As mini (data_prep/mini/plan.py), with eval splits sized to separate a
few points at 2000 items: 22% of products have 2-4 listings (2: 70%, 3: 20%,
4: 10%); half of those groups go to fine-grained retrieval (one listing in
fine_query, 1-3 positives in fine_gallery), the others to pretraining; single
listings: pretrain 27%, coarse_query 22%, coarse_gallery 14%, fine_gallery
distractors 1%, cls_train 10%, cls_test 26%. At 2000 items, seed 0: pretrain 718,
coarse_query 273, coarse_gallery 174, fine_query 159, fine_gallery 229,
cls_train 124, cls_test 323. Categories: Zipf(1) mixed with 20% uniform, so the
rarest of 28 has ~1.4% of the items (20 at 2000, seed 0).

Defects and manifest: exactly mini's (data_prep/make_mini.py), raw only:
missing modalities (--missing_rate 0.20, --unimodal_rate 0.05), noisy titles,
truncated_jpeg, not_a_video, empty_mp3, malformed_pv, bad_encoding; the
manifest's absent_raw lists every absence with its reason; absent_features is
null. No item is rejected: items in = items written.

Tokenizer: the pretraining text has ~1100 distinct characters, so a 1000-piece
model needs `python -m data_prep.tokenizer --manual_dir DIR --vocab_size 1000
--character_coverage 0.995` (the default coverage asks for every character).

Determinism: same seed and N give the same bytes for any --workers on one
machine and package set (the plan from one RNG; each modality of item i from its
own RNG; single-threaded codecs, bit-exact muxing; espeak-ng is deterministic).
"""
from __future__ import annotations

import dataclasses
import os

from data_prep import release
from data_prep import release_writer
from data_prep.mini import plan as plan_lib
from data_prep.realistic import item as item_lib
from data_prep.realistic import sources
from data_prep.realistic import world as world_lib

DEFAULT_NUM_PRODUCTS = 2000
MANIFEST = 'mini_manifest.json'
MANIFEST_FORMAT = 'm5product-realistic-manifest/1'
INSTANCE_RATE = 0.22
GROUP_SIZE_PROBS = (0.7, 0.2, 0.1)       # listings per instance group: 2, 3, 4
FINE_SHARE = 0.5
SINGLETON_SPLITS = (('pretrain', 0.27), ('coarse_query', 0.22), ('coarse_gallery', 0.14),
                    ('fine_gallery', 0.01), ('cls_train', 0.10), ('cls_test', 0.26))
DEFAULT_RATES = plan_lib.DefectRates(bad_features=0.0)   # raw only: no feature files
_CHUNK = 4

def _prepare_out(out: str, layout: release.ReleaseLayout, overwrite: bool):
  owned = [layout.annotations, layout.image_dir, layout.video_dir, layout.audio_dir,
           layout.split_dir, MANIFEST]
  release_writer.prepare_out(
      out, owned, (layout.image_dir, layout.video_dir, layout.audio_dir, layout.split_dir),
      overwrite)


def make_plan(world: world_lib.World, num_products: int, seed: int,
              rates: plan_lib.DefectRates = DEFAULT_RATES,
              fine_share: float = FINE_SHARE) -> plan_lib.Plan:
  return plan_lib.make_plan(world, num_products, seed, rates, INSTANCE_RATE, SINGLETON_SPLITS,
                            fine_share, GROUP_SIZE_PROBS)


def generate(out: str, num_products: int = DEFAULT_NUM_PRODUCTS, seed: int = 0,
             workers: int | None = None, rates: plan_lib.DefectRates = DEFAULT_RATES,
             num_categories: int = len(world_lib.CATEGORIES), overwrite: bool = False,
             progress: bool = True, fine_share: float = FINE_SHARE) -> dict:
  """Writes the release to `out`; returns the manifest (also in out/mini_manifest.json)."""
  if not 0.0 <= fine_share <= 1.0:
    raise ValueError(f'--fine_share must be in [0, 1], got {fine_share}')
  layout = release.ReleaseLayout()
  world = world_lib.World.create(num_categories)
  plan = make_plan(world, num_products, seed, rates, fine_share)
  _prepare_out(out, layout, overwrite)
  ctx = item_lib.Context(root=os.path.abspath(out), seed=seed, world=world, layout=layout)

  workers = workers or os.cpu_count() or 1
  meter = release_writer.Progress('make_realistic', len(plan.items), every=5.0, enabled=progress)
  release_writer.write_release(out, layout, plan, item_lib.write_item, ctx, workers, _CHUNK,
                               meter)

  args = {'generator': 'data_prep.make_realistic', 'seed': seed, 'num_products': num_products,
          'num_categories': num_categories, 'instance_rate': INSTANCE_RATE,
          'group_size_probs': list(GROUP_SIZE_PROBS), 'fine_share': fine_share,
          'singleton_splits': dict(SINGLETON_SPLITS), 'rates': dataclasses.asdict(rates)}
  manifest = plan_lib.build_manifest(plan, world, args, with_features=False,
                                     label_names=world.label_names, manifest_format=MANIFEST_FORMAT)
  release_writer.write_manifest(os.path.join(out, MANIFEST), manifest)
  meter.summary(out, workers, f'splits {manifest["split_sizes"]}')
  return manifest


def main(argv=None):
  rate_fields = [f for f in dataclasses.fields(plan_lib.DefectRates) if f.name != 'bad_features']
  parser = release_writer.generator_parser('make_realistic', __doc__, DEFAULT_NUM_PRODUCTS,
                                           len(world_lib.CATEGORIES), rate_fields)
  parser.add_argument('--fine_share', type=float, default=FINE_SHARE,
                      help='share of the multi-listing products that go to fine-grained '
                           'retrieval (the rest to pretraining); default %(default)s')
  args = parser.parse_args(argv)
  rates = release_writer.parsed_rates(args, rate_fields, DEFAULT_RATES)
  try:
    generate(args.out, args.num_products, args.seed, args.workers, rates, args.num_categories,
             args.overwrite, progress=not args.quiet, fine_share=args.fine_share)
  except (ValueError, sources.MissingSource) as e:
    raise SystemExit(f'make_realistic: {e}') from None


if __name__ == '__main__':
  main()
