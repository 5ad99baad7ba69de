r"""Measures M5Product-mini generation: items/s, CPU seconds per item, bytes per item.

    python benchmarks/make_mini_rate.py --sizes 1000,10000 --workers 2 \
        [--features] [--probe] [--results benchmarks/results/make_mini.md]

Each size is generated into a fresh temporary folder (deleted afterwards). CPU
time (this process + its worker processes) is reported next to wall time
because a shared machine's load inflates wall time: the load average during
the run is printed too. Sizes beyond those measured are extrapolated linearly
from the largest measured CPU seconds per item (generation is per-item work:
the plan is O(N) and is timed separately at 100k).

--probe also checks that the data is learnable across modalities: a logistic
regression predicts the category from each modality alone and from all five
(simple bag-of-words for text/table, mean-pooled pre-extracted features for
image/video/audio; needs --features), trained on 70% of the items, tested on 30%.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import shutil
import tempfile
import time

import numpy as np

from data_prep import make_mini
from data_prep import release
from data_prep.mini import plan as plan_lib
from data_prep.mini import world as world_lib


def _cpu_seconds() -> float:
  own = resource.getrusage(resource.RUSAGE_SELF)
  kids = resource.getrusage(resource.RUSAGE_CHILDREN)
  return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _du(root: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs)


def measure(size: int, workers: int, features: bool, keep: str | None = None) -> dict:
  root = keep or tempfile.mkdtemp(prefix=f'mini{size}_')
  load0, cpu0, t0 = os.getloadavg()[0], _cpu_seconds(), time.perf_counter()
  make_mini.generate(root, size, seed=0, features=features, workers=workers, overwrite=True)
  wall, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
  row = {'size': size, 'workers': workers, 'features': features, 'wall_s': wall,
         'items_per_s': size / wall, 'cpu_s_per_item': cpu / size, 'bytes_per_item': _du(root) / size,
         'load': (load0, os.getloadavg()[0])}
  if keep is None:
    shutil.rmtree(root)
  return row


def plan_seconds(size: int) -> float:
  t0 = time.perf_counter()
  world = world_lib.World.create(0)
  plan = plan_lib.make_plan(world, size, seed=0)
  plan_lib.build_manifest(plan, world, {}, with_features=True)
  return time.perf_counter() - t0


def probe(root: str) -> dict:
  """Category accuracy of a linear probe per modality and for all five together."""
  from sklearn.feature_extraction.text import TfidfVectorizer  # pylint: disable=g-import-not-at-top
  from sklearn.linear_model import LogisticRegression  # pylint: disable=g-import-not-at-top
  from sklearn.preprocessing import StandardScaler  # pylint: disable=g-import-not-at-top
  layout = release.ReleaseLayout()
  ids, labels, texts, tables, dense = [], [], [], [], {'image': [], 'video': [], 'audio': []}
  for item_id, rec in release.iter_annotations(os.path.join(root, layout.annotations)):
    title = rec.get('title') or ''
    try:
      pv = ' '.join(v for _, v in release.parse_pv(rec.get('pv') or ''))
    except release.MalformedPV:
      pv = ''
    feats = {}
    for modality, name, axis in (('image', 'image_regions', 0), ('video', 'video_s3d', 0),
                                 ('audio', 'audio_mel', 1)):
      path = layout.feature_path(root, name, item_id)
      try:
        array = np.load(path).astype(np.float32)
        feats[modality] = array.mean(axis) if np.isfinite(array).all() else None
      except (OSError, ValueError):
        feats[modality] = None
    ids.append(item_id)
    labels.append(rec['label'])
    texts.append('' if release.has_bad_encoding(title) else title)
    tables.append(pv)
    for m, v in feats.items():
      dense[m].append(v)
  labels = np.array(labels)
  blocks = {
      'text': TfidfVectorizer(analyzer='char', ngram_range=(1, 2)).fit_transform(texts).toarray(),
      'table': TfidfVectorizer(analyzer='char', ngram_range=(1, 2)).fit_transform(tables).toarray(),
  }
  for m, rows in dense.items():
    width = next(r.shape[0] for r in rows if r is not None)
    blocks[m] = np.stack([r if r is not None and r.shape == (width,) else np.zeros(width) for r in rows])
  rng = np.random.default_rng(0)
  train = rng.random(len(labels)) < 0.7
  out = {}
  for name, x in list(blocks.items()) + [('all five', np.concatenate(list(blocks.values()), 1))]:
    x = StandardScaler().fit(x[train]).transform(x)
    clf = LogisticRegression(max_iter=2000, C=0.1).fit(x[train], labels[train])
    out[name] = float((clf.predict(x[~train]) == labels[~train]).mean())
  out['majority'] = float((labels[~train] == np.bincount(labels[train]).argmax()).mean())
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--sizes', default=str(make_mini.DEFAULT_NUM_PRODUCTS))
  parser.add_argument('--workers', type=int, default=2)
  parser.add_argument('--features', action='store_true')
  parser.add_argument('--probe', action='store_true', help='linear probe on the first size')
  parser.add_argument('--results', default=None, help='append a Markdown section here')
  args = parser.parse_args()
  sizes = [int(s) for s in args.sizes.split(',')]
  rows, probe_acc = [], None
  for k, size in enumerate(sizes):
    keep = tempfile.mkdtemp(prefix='mini_probe_') if args.probe and k == 0 else None
    rows.append(measure(size, args.workers, args.features, keep))
    print(rows[-1])
    if keep:
      probe_acc = probe(keep)
      print(probe_acc)
      shutil.rmtree(keep)
  plan_100k = plan_seconds(100_000)
  per_item = rows[-1]['cpu_s_per_item']
  lines = [
      f'## {datetime.datetime.now():%Y-%m-%d %H:%M}, {platform.node()}, {os.cpu_count()} CPUs '
      f'({_cpu_model()})', '',
      f'    python benchmarks/make_mini_rate.py {" ".join(os.sys.argv[1:])}', '',
      '| items | workers | features | wall s | items/s | CPU s/item | KB/item | load avg (start, end) |',
      '| ---: | ---: | --- | ---: | ---: | ---: | ---: | --- |']
  for r in rows:
    lines.append(f'| {r["size"]} | {r["workers"]} | {r["features"]} | {r["wall_s"]:.1f} | '
                 f'{r["items_per_s"]:.1f} | {r["cpu_s_per_item"]:.3f} | {r["bytes_per_item"] / 1024:.0f} | '
                 f'{r["load"][0]:.1f}, {r["load"][1]:.1f} |')
  lines += ['', f'Plan + manifest for 100k items: {plan_100k:.1f} s. Extrapolated from the '
            f'{rows[-1]["size"]}-item run\'s CPU time ({per_item:.3f} CPU s/item): 100k items take '
            f'{100_000 * per_item / 60:.0f} CPU-minutes, i.e. about '
            f'{100_000 * per_item / args.workers / 60:.0f} min on {args.workers} idle cores.', '']
  if probe_acc:
    lines += [f'Linear probe (category, {len(world_lib.CATEGORIES)} classes, '
              f'{sizes[0]} items, 70/30 split): ' +
              ', '.join(f'{k} {v:.2f}' for k, v in probe_acc.items()), '']
  text = '\n'.join(lines)
  print(text)
  if args.results:
    with open(args.results, 'a', encoding='utf-8') as f:
      f.write(text + '\n')


def _cpu_model() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      return next(l.split(':', 1)[1].strip() for l in f if l.startswith('model name'))
  except (OSError, StopIteration):
    return platform.processor() or 'unknown CPU'


if __name__ == '__main__':
  main()
