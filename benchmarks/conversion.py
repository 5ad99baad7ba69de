r"""Conversion speed of the m5product builder on M5Product-mini: products/s per core.

    python -m benchmarks.conversion --num_products 200 [--configs raw,features] [--beam]
    python -m benchmarks.conversion --num_products 4000 --replicate 5 --release_out DIR \
        --configs features --beam_workers 1,2 --rounds 2 --split_builds   # Beam scaling, 20k items

Generates mini (data_prep.make_mini, with --features) into a temporary folder
unless --manual_dir is given, then builds each config from scratch with the
plain path (one Python process) or, with --beam, the DirectRunner on all cores.
"Per core" divides by the CPU seconds the build used (user + sys of this process
and its children), so it does not depend on how busy the machine is; wall-clock
rates are printed too. A listing is one example written (an item listed in two
splits is converted twice); a product is a distinct item_id.

--beam_workers 1,2 builds each config on Beam's DirectRunner
(multi_processing) once per worker count and round, rotating the order of the
counts between rounds, and times the build's one serial part, the annotations
pass (`splits.route_annotations`), alone on the same release. From these it
prints the time a 6.3M-product release would take on N workers: the pass at its
measured MB per CPU-second over the full 5.8 GB, plus the rest of the build at
its measured CPU seconds per product divided by N (the 1 -> 2 worker ratio shows
how far that division holds). --split_builds builds each split alone, once per
worker count, interleaved (split k runs the worker counts in an order rotated by
k, so both see the same load) and sums per worker count: the DirectRunner keeps
a build's whole output in its own memory (a 20k-item features build passed 9 GB,
a 2.9k-item one 6 GB), which a distributed runner does not. Every build must
store as many examples as it converted: its multi_processing mode at times
stored fewer (results/conversion.md); such a split is left out of every count's
sum, and printed.

--nondeterministic_order builds with TFDS's unshuffled Beam writer (what `tfds build
--nondeterministic_order` does): the examples are written where they are converted,
with no GroupByKey into shard groups, which is where the DirectRunner dropped
examples and held ~110 MB groups in its memory. A whole 20k-item features build
then runs in one go (results/conversion.md). The split's order on disk is not
reproducible between builds (the input pipeline's order is a function of the
positions, so a rebuilt release reshuffles the training order); TFDS 4.9.10 writes
it as TFRecord only (`tfds convert_format --out_file_format array_record
--use_beam` for the input pipeline's random access).

--replicate K makes a K times larger release for scale runs without K times the
generation cost: copy c of every item gets the id id + c * 10^8 (its instance
'<instance>r<c>'), the same annotation record (bytes kept, bad ones too) and
hard links to the same media and feature files. The split lists are the
original's, copied, then dealt round-robin over the seven splits so that each
holds a seventh of the items (a one-split build's memory, --split_builds).
Decode cost per item is unchanged; the files stay in the page cache either way
on a machine whose memory holds the release.

With --profile the build runs under cProfile and its time is grouped into
stages (`profile_buckets`): decode (JPEG/H.264/MP3 demux+decode), resample
(frame and image resize, audio resampling to 16 kHz mono), mel (log-mel STFT),
encode (JPEG encoding of image and frames by TFDS's features), write
(serialisation, shuffling, file writes), read (release annotations and paths)
and other, in CPU seconds of this process. cProfile adds overhead to
Python-heavy stages, so the shares are indicative and products/s of a profiled
build is lower than of a plain one (the suite runs both).

Appends a row to benchmarks/results/conversion.md with --record.
"""
from __future__ import annotations

import argparse
import cProfile
import datetime
import json
import os
import platform
import pstats
import resource
import shutil
import subprocess
import sys
import tempfile
import time


def _cpu_seconds() -> float:
  self_, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
  return self_.ru_utime + self_.ru_stime + kids.ru_utime + kids.ru_stime


def _peak_rss_mib() -> float:
  """Resident-memory high-water mark of this process (VmHWM), MiB."""
  with open('/proc/self/status', encoding='utf-8') as f:
    return next(int(l.split()[1]) for l in f if l.startswith('VmHWM:')) / 1024


def _unique_written(builders) -> int:
  ids = set()
  for builder, split in ((b, s) for b in builders for s in b.info.splits):
    source = builder.as_dataset(split=split, decoders={'image': _skip(), 'video': _skip()}
                                if builder.builder_config.form == 'raw' else None)
    ids.update(e['item_id'].numpy() for e in source)
  return len(ids)


def _skip():
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds.decode.SkipDecoding()


# (stage, substrings of "file:function" of cProfile entries); the first match wins.
STAGES = (
    ('resample', ("'reformat'", "'resample'", "'resize'", 'reduce')),
    ('mel', ('log_mel', 'pocketfft', 'mel_filterbank', 'scipy/fft', 'examples.py:audio')),
    ('decode', ('decode.py', 'decode_', 'av.', 'PIL/', 'vstack', 'atleast_2d', 'fractions.py')),
    ('encode', ('TFE_Py_FastPathExecute', 'image_feature', 'video_feature', 'encode')),
    ('write', ('example_serializer', 'shuffle.py', 'writer', 'array_record', 'tfrecord',
               "'write'", 'hashing', 'protobuf')),
    ('read', ('release.py', 'json', 'pathlib')),
)


def profile_buckets(profile: cProfile.Profile, top: int = 3) -> dict:
  """{stage: {'seconds', 'share', 'top': [(function, seconds)]}} from own (tottime) times."""
  stats = pstats.Stats(profile).stats  # (file, line, function) -> (cc, nc, tottime, ...)
  buckets: dict[str, dict] = {}
  total = 0.0
  for (filename, _, function), (_, _, tottime, _, _) in stats.items():
    label = f'{filename}:{function}'
    stage = next((name for name, keys in STAGES if any(k in label for k in keys)), 'other')
    bucket = buckets.setdefault(stage, {'seconds': 0.0, 'top': []})
    bucket['seconds'] += tottime
    bucket['top'].append((f'{os.path.basename(filename)}:{function}', tottime))
    total += tottime
  for bucket in buckets.values():
    bucket['share'] = bucket['seconds'] / max(total, 1e-9)
    bucket['top'] = [(f, round(t, 3)) for f, t in sorted(bucket['top'], key=lambda x: -x[1])[:top]]
  return dict(sorted(buckets.items(), key=lambda kv: -kv[1]['seconds']))


def replicate_release(source: str, out: str, copies: int) -> int:
  """Writes `copies` copies of the release `source` under `out` (see the module
  docstring); returns the number of annotation records written."""
  from data_prep import release  # pylint: disable=g-import-not-at-top
  layout = release.ReleaseLayout()
  if os.path.exists(out):
    raise FileExistsError(f'--release_out {out} exists: remove it or pick another folder')
  step = 10 ** 8

  def copy_id(item_id: str, c: int) -> str:
    if not item_id.isdigit():
      raise ValueError(f'--replicate needs numeric ids (make_mini writes them), got {item_id!r}')
    return str(int(item_id) + c * step) if c else item_id

  folders = [layout.image_dir, layout.video_dir, layout.audio_dir, *dict(layout.feature_dirs).values()]
  for folder in folders:
    src = os.path.join(source, folder)
    if not os.path.isdir(src):
      continue
    os.makedirs(os.path.join(out, folder))
    for name in os.listdir(src):
      stem, ext = name.split('.', 1)
      for c in range(copies):
        os.link(os.path.join(src, name), os.path.join(out, folder, f'{copy_id(stem, c)}.{ext}'))
  records = list(release.iter_annotations(os.path.join(source, layout.annotations)))
  if len(records) >= step:
    raise ValueError(f'--replicate: {len(records)} items would collide with their copies')
  with open(os.path.join(out, layout.annotations), 'w', encoding='utf-8',
            errors='surrogateescape') as f:  # bad bytes go back out as they came in
    f.write('{\n' + ',\n'.join(
        f'{json.dumps(copy_id(i, c))}: {json.dumps(r, ensure_ascii=False)}'
        for c in range(copies) for i, r in records) + '\n}\n')
  os.makedirs(os.path.join(out, layout.split_dir))
  listed = [copy_id(i, c) for c in range(copies) for split in release.SPLIT_FILES
            if os.path.isfile(layout.split_path(source, split))
            for i in release.read_id_list(layout.split_path(source, split))]
  for k, split in enumerate(release.SPLIT_FILES):
    with open(layout.split_path(out, split), 'w', encoding='utf-8') as f:
      f.writelines(f'{i}\n' for i in listed[k::len(release.SPLIT_FILES)])
  instances = os.path.join(source, layout.instances)
  if os.path.isfile(instances):
    pairs = release.read_instances(instances).items()
    with open(os.path.join(out, layout.instances), 'w', encoding='utf-8') as f:
      f.writelines(f'{copy_id(i, c)}\t{g}{f"r{c}" if c else ""}\n'
                   for c in range(copies) for i, g in pairs)
  return len(records) * copies


def annotations_pass(manual_dir: str, workdir: str) -> dict:
  """The build's serial part alone: one `route_annotations` over every split."""
  from data_prep import release  # pylint: disable=g-import-not-at-top
  from data_prep.m5product import examples  # pylint: disable=g-import-not-at-top
  from data_prep.m5product import splits as splits_lib  # pylint: disable=g-import-not-at-top
  layout = release.ReleaseLayout()
  cpu0, wall0 = time.process_time(), time.time()
  plans = {s: splits_lib.plan_split(s, release.read_id_list(layout.split_path(manual_dir, s)))
           for s in release.SPLIT_FILES if os.path.isfile(layout.split_path(manual_dir, s))}
  tally = examples.Tally()
  out = os.path.join(workdir, 'annotations_pass')
  annotations = os.path.join(manual_dir, layout.annotations)
  splits_lib.route_annotations(annotations, plans, out, tally)
  cpu, wall = time.process_time() - cpu0, time.time() - wall0
  shutil.rmtree(out, ignore_errors=True)
  records = sum(n for name, n in tally.counts.items() if name.endswith('/items_in'))
  return {'listings': records, 'cpu_s': cpu, 'wall_s': wall,
          'cpu_ms_per_listing': 1000 * cpu / max(records, 1),
          'mb_per_cpu_s': os.path.getsize(annotations) / 1e6 / cpu}


class LostExamples(RuntimeError):
  """A build stored fewer examples than it converted: its timing is not a rate."""


def measure(manual_dir: str, config: str, beam: bool, workdir: str,
            profile: bool = False, workers: int | None = None, split: str | None = None,
            nondeterministic_order: bool = False, num_shards: int | None = None) -> dict:
  """One build of every split, or of `split` alone. nondeterministic_order: TFDS's
  writer that skips the global shuffle (`tfds build --nondeterministic_order`; Beam
  only, TFRecord only in TFDS 4.9.10, num_shards required)."""
  import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  import data_prep.m5product  # pylint: disable=g-import-not-at-top,unused-import
  # TFDS imports TensorFlow lazily while writing: import it first so that the
  # one-off import (several CPU seconds) is not counted as conversion time.
  workers = workers if beam else 1
  data_dir = os.path.join(workdir, f'data_{config}_{"beam" if beam else "plain"}')
  shutil.rmtree(data_dir, ignore_errors=True)
  configs = [config]
  if split:
    from data_prep.m5product import M5ProductConfig  # pylint: disable=g-import-not-at-top
    configs = [M5ProductConfig(name=f'{config}_{split}', form=config, splits=(split,))]
  builders = [tfds.builder('m5product', config=c, data_dir=data_dir) for c in configs]
  download_config = tfds.download.DownloadConfig(
      manual_dir=manual_dir, nondeterministic_order=nondeterministic_order, num_shards=num_shards)
  if beam:
    import apache_beam as beam_lib  # pylint: disable=g-import-not-at-top
    workers = workers or os.cpu_count() or 1
    download_config.beam_options = beam_lib.options.pipeline_options.PipelineOptions(flags=[
        '--runner=DirectRunner', f'--direct_num_workers={workers}',
        '--direct_running_mode=multi_processing'])
  # CPU time, not wall time: the shares must not depend on other jobs on the machine.
  profiler = cProfile.Profile(time.process_time) if profile else None
  load_start = round(os.getloadavg()[0], 2)
  cpu0, wall0 = _cpu_seconds(), time.time()
  if profiler:
    profiler.enable()
  from data_prep.m5product import m5product_dataset_builder  # pylint: disable=g-import-not-at-top
  try:
    for builder in builders:
      builder.download_and_prepare(download_config=download_config)
  except m5product_dataset_builder.ExamplesLost as e:  # the builder's own check caught it
    shutil.rmtree(data_dir, ignore_errors=True)
    raise LostExamples(str(e)) from e
  if profiler:
    profiler.disable()
  cpu, wall = _cpu_seconds() - cpu0, time.time() - wall0
  listings = 0
  for builder in builders:
    with open(os.path.join(builder.data_dir, 'build_report.json')) as f:
      written = json.load(f)['total']['items_written']
    stored = sum(split.num_examples for split in builder.info.splits.values())
    if stored != written:  # the DirectRunner's multi_processing mode drops some, at times
      raise LostExamples(f'{builder.info.full_name}: converted {written} examples, stored {stored}')
    listings += written
  products = _unique_written(builders)
  shutil.rmtree(data_dir, ignore_errors=True)
  return {'config': config, 'path': 'beam' if beam else 'plain', 'workers': workers,
          'builds': len(builders), 'nondeterministic_order': nondeterministic_order,
          'products': products, 'listings': listings, 'wall_s': wall, 'cpu_s': cpu,
          'products_per_cpu_s': products / cpu, 'listings_per_cpu_s': listings / cpu,
          'products_per_wall_s': products / wall, 'profiled': profile,
          'load_avg_start': load_start, 'load_avg_end': round(os.getloadavg()[0], 2),
          'stages': profile_buckets(profiler) if profiler else None}


def measure_split_builds(manual_dir: str, config: str, worker_counts: list[int], workdir: str,
                         first: int = 0, **build_options) -> list[dict]:
  """One Beam build per split and worker count, interleaved; rows summed per count
  over the splits whose builds stored every example at every count."""
  from data_prep import release  # pylint: disable=g-import-not-at-top
  layout = release.ReleaseLayout()
  splits = [s for s in release.SPLIT_FILES if os.path.isfile(layout.split_path(manual_dir, s))]
  parts = {w: [] for w in worker_counts}
  lost = 0
  for k, split in enumerate(splits):
    r = (first + k) % len(worker_counts)
    done = {}
    for w in worker_counts[r:] + worker_counts[:r]:
      try:
        done[w] = measure(manual_dir, config, True, workdir, workers=w, split=split,
                          **build_options)
      except LostExamples as e:
        print(f'  {split} x{w}: LOST EXAMPLES ({e}); the split is left out', flush=True)
        lost += 1
        break
      print(f"  {split} x{w}: {done[w]['products']} products, wall {done[w]['wall_s']:.1f} s, "
            f"CPU {done[w]['cpu_s']:.1f} s, load {done[w]['load_avg_start']}", flush=True)
    if len(done) == len(worker_counts):
      for w, part in done.items():
        parts[w].append(part)
  rows = []
  for w, ps in parts.items():
    products, cpu, wall = (sum(p[k] for p in ps) for k in ('products', 'cpu_s', 'wall_s'))
    listings = sum(p['listings'] for p in ps)
    rows.append({**ps[0], 'builds': len(ps), 'lost_builds': lost, 'products': products,
                 'listings': listings,
                 'cpu_s': cpu, 'wall_s': wall, 'products_per_cpu_s': products / cpu,
                 'listings_per_cpu_s': listings / cpu, 'products_per_wall_s': products / wall,
                 'load_avg_end': ps[-1]['load_avg_end']})
  return rows


FULL_RELEASE = 6_313_067
FULL_ANNOTATIONS_MB = 5800  # ../shared/DESIGN.md: ~5.8 GB (mini's records are ~3x shorter)


def extrapolate(rows: list[dict], passes: list[dict]) -> list[str]:
  """The scaling rows and the full release's time on N workers (see the module docstring)."""
  pass_ms = sorted(p['cpu_ms_per_listing'] for p in passes)[len(passes) // 2]  # median
  pass_mb_s = sorted(p['mb_per_cpu_s'] for p in passes)[len(passes) // 2]
  serial_h = FULL_ANNOTATIONS_MB / pass_mb_s / 3600  # the pass is linear in bytes parsed
  lines = [f'Annotations pass (serial, in the planning process): {pass_ms:.3f} CPU-ms per listing, '
           f'{pass_mb_s:.1f} MB per CPU-s (median of {len(passes)}); the full release\'s '
           f'{FULL_ANNOTATIONS_MB / 1000:.1f} GB: {serial_h:.2f} h.']
  for config in dict.fromkeys(r['config'] for r in rows):
    mine = [r for r in rows if r['config'] == config]
    by_workers = {}
    for r in mine:
      by_workers.setdefault(r['workers'], []).append(r)
    mean = {w: sum(r['products_per_wall_s'] for r in rs) / len(rs) for w, rs in by_workers.items()}
    one = mean.get(1)
    for w, rs in sorted(by_workers.items()):
      rates = ', '.join(f"{r['products_per_wall_s']:.1f}" for r in rs)
      ratio = f' (mean {mean[w] / one:.2f}x the 1-worker mean)' if one and w != 1 else ''
      lines.append(f'{config}, {w} worker(s): {rates} products/s wall{ratio}')
    # Decode CPU per product: the build's CPU less its annotations passes (one per
    # build; a product is one listing here), median over runs.
    decode = sorted(r['cpu_s'] / r['products'] - r['builds'] * pass_ms / 1000
                    for r in mine)[len(mine) // 2]
    hours = ', '.join(f'{n}: {serial_h + FULL_RELEASE * decode / n / 3600:.1f} h'
                      for n in (1, 2, 16, 64, 256))
    lines.append(f'{config}: {1000 * decode:.2f} CPU-ms per product besides the pass; '
                 f'{FULL_RELEASE:,} products on N workers (serial pass {serial_h:.2f} h + '
                 f'decode / N): {hours}')
  return lines


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--manual_dir', help='an existing release (default: generate mini)')
  parser.add_argument('--num_products', type=int, default=200)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--configs', default='raw,features')
  parser.add_argument('--beam', action='store_true', help='DirectRunner, all cores')
  parser.add_argument('--beam_workers', default='',
                      help='comma-separated DirectRunner worker counts (multi_processing), e.g. 1,2')
  parser.add_argument('--rounds', type=int, default=1, help='repeats of --beam_workers, order rotated')
  parser.add_argument('--split_builds', action='store_true',
                      help='with --beam_workers: one build per split and worker count, interleaved '
                      '(the DirectRunner holds a whole build\'s output in its memory)')
  parser.add_argument('--nondeterministic_order', action='store_true',
                      help='Beam builds with TFDS\'s unshuffled writer (as `tfds build '
                      '--nondeterministic_order`): no GroupByKey of the examples, so the '
                      'DirectRunner neither drops examples nor holds shard groups; TFRecord only')
  parser.add_argument('--num_shards', type=int, default=None,
                      help='shards per split (required by --nondeterministic_order; default 16 then)')
  parser.add_argument('--replicate', type=int, default=1, help='copies of the release (see above)')
  parser.add_argument('--release_out', help='where --replicate writes (kept); default: temporary')
  parser.add_argument('--profile', action='store_true', help='cProfile, grouped into stages')
  parser.add_argument('--json', action='store_true', help='print one JSON object per config')
  parser.add_argument('--record', action='store_true', help='append to benchmarks/results/conversion.md')
  args = parser.parse_args(argv)
  if args.nondeterministic_order and not (args.beam or args.beam_workers):
    parser.error('--nondeterministic_order needs --beam or --beam_workers (TFDS applies it to Beam builds)')
  num_shards = args.num_shards or (16 if args.nondeterministic_order else None)
  build_options = {'nondeterministic_order': args.nondeterministic_order, 'num_shards': num_shards}
  workdir = tempfile.mkdtemp(prefix='m5_conversion_')
  manual_dir = args.manual_dir
  if not manual_dir:
    manual_dir = os.path.join(workdir, 'mini')
    subprocess.run([sys.executable, '-m', 'data_prep.make_mini', '--out', manual_dir,
                    '--num_products', str(args.num_products), '--seed', str(args.seed),
                    '--features'], check=True)
  if args.replicate > 1:
    out = args.release_out or os.path.join(workdir, 'replicated')
    items = replicate_release(manual_dir, out, args.replicate)
    print(f'replicated {manual_dir} x{args.replicate} -> {out}: {items} items', flush=True)
    manual_dir = out
  worker_counts = [int(w) for w in args.beam_workers.split(',') if w]
  configs = args.configs.split(',')
  rounds = [[(config, args.beam, None) for config in configs]]
  if worker_counts:  # each round rotates the order of the worker counts
    rounds = [[(config, True, w) for w in worker_counts[r:] + worker_counts[:r] for config in configs]
              for r in (i % len(worker_counts) for i in range(args.rounds))]
  split_builds = args.split_builds and worker_counts
  if split_builds:  # the rotation happens per split, inside measure_split_builds
    rounds = [[(config, True, None) for config in configs]] * args.rounds
  rows, passes = [], []
  for r, runs in enumerate(rounds):
    if worker_counts:  # a round starts: the serial pass, timed alone
      passes.append(annotations_pass(manual_dir, workdir))
      print(f"annotations pass: {passes[-1]['listings']} listings, "
            f"{passes[-1]['cpu_ms_per_listing']:.3f} CPU-ms per listing", flush=True)
    for config, beam, workers in runs:
      if split_builds:
        rows += measure_split_builds(manual_dir, config, worker_counts, workdir, first=r,
                                     **build_options)
      else:
        rows.append(measure(manual_dir, config, beam, workdir, args.profile, workers,
                            **build_options))
  for row in rows:
    config = row['config']
    if args.json:
      row['peak_rss_mib'] = _peak_rss_mib()
      print(json.dumps(row), flush=True)
      continue
    print(f"{config:9s} {row['path']:5s} x{row['workers']} products {row['products']}, "
          f"listings {row['listings']}: "
          f"{row['products_per_cpu_s']:.1f} products/s per core ({row['listings_per_cpu_s']:.1f} "
          f"listings/s), wall {row['wall_s']:.1f}s = {row['products_per_wall_s']:.1f} products/s, "
          f"load {row['load_avg_start']}-{row['load_avg_end']}", flush=True)
    for stage, b in (row['stages'] or {}).items():
      print(f"  {stage:9s} {100 * b['share']:5.1f}%  {b['seconds']:6.2f} s  "
            + ', '.join(f'{f} {t:.2f}s' for f, t in b['top']))
  scale_lines = extrapolate(rows, passes) if worker_counts else []
  print('\n'.join(scale_lines), flush=True)
  if args.record:
    command = 'python -m benchmarks.conversion ' + ' '.join(argv if argv is not None else sys.argv[1:])
    machine = f'{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or platform.system()}'
    lines = [f'\n### {datetime.date.today()} - `{command}`\n', f'Machine: {machine}.\n',
             '| config | path | products | listings | products/s per core | listings/s per core '
             '| wall s | products/s wall | load avg (start-end) |', '|---|---|---|---|---|---|---|---|---|']
    for r in rows:
      lines.append(f"| {r['config']} | {r['path']} ({r['workers']} worker) | {r['products']} "
                   f"| {r['listings']} | {r['products_per_cpu_s']:.1f} | {r['listings_per_cpu_s']:.1f} "
                   f"| {r['wall_s']:.1f} | {r['products_per_wall_s']:.1f} "
                   f"| {r['load_avg_start']}-{r['load_avg_end']} |")
    lines += [''] + scale_lines
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results', 'conversion.md')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'a', encoding='utf-8') as f:
      f.write('\n'.join(lines) + '\n')
  shutil.rmtree(workdir, ignore_errors=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
