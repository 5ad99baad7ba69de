r"""Conversion speed of the m5product builder on M5Product-mini: products/s per core.

    python -m benchmarks.conversion --num_products 200 [--configs raw,features] [--beam]

Generates mini (data_prep.make_mini, with --features) into a temporary folder
unless --manual_dir is given, then builds each config from scratch with the
plain path (one Python process) or, with --beam, the DirectRunner on all cores.
"Per core" divides by the CPU seconds the build used (user + sys of this process
and its children), so it does not depend on how busy the machine is; wall-clock
rates are printed too. A listing is one example written (an item listed in two
splits is converted twice); a product is a distinct item_id.

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


def _unique_written(builder) -> int:
  ids = set()
  for split in builder.info.splits:
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


def measure(manual_dir: str, config: str, beam: bool, workdir: str,
            profile: bool = False) -> dict:
  import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  import data_prep.m5product  # pylint: disable=g-import-not-at-top,unused-import
  # TFDS imports TensorFlow lazily while writing: import it first so that the
  # one-off import (several CPU seconds) is not counted as conversion time.
  data_dir = os.path.join(workdir, f'data_{config}_{"beam" if beam else "plain"}')
  shutil.rmtree(data_dir, ignore_errors=True)
  builder = tfds.builder('m5product', config=config, data_dir=data_dir)
  download_config = tfds.download.DownloadConfig(manual_dir=manual_dir)
  workers = 1
  if beam:
    import apache_beam as beam_lib  # pylint: disable=g-import-not-at-top
    workers = os.cpu_count() or 1
    download_config.beam_options = beam_lib.options.pipeline_options.PipelineOptions(flags=[
        '--runner=DirectRunner', f'--direct_num_workers={workers}',
        '--direct_running_mode=multi_processing'])
  # CPU time, not wall time: the shares must not depend on other jobs on the machine.
  profiler = cProfile.Profile(time.process_time) if profile else None
  load_start = round(os.getloadavg()[0], 2)
  cpu0, wall0 = _cpu_seconds(), time.time()
  if profiler:
    profiler.enable()
  builder.download_and_prepare(download_config=download_config)
  if profiler:
    profiler.disable()
  cpu, wall = _cpu_seconds() - cpu0, time.time() - wall0
  with open(os.path.join(builder.data_dir, 'build_report.json')) as f:
    report = json.load(f)
  listings = report['total']['items_written']
  products = _unique_written(builder)
  return {'config': config, 'path': 'beam' if beam else 'plain', 'workers': workers,
          'products': products, 'listings': listings, 'wall_s': wall, 'cpu_s': cpu,
          'products_per_cpu_s': products / cpu, 'listings_per_cpu_s': listings / cpu,
          'products_per_wall_s': products / wall, 'profiled': profile,
          'load_avg_start': load_start, 'load_avg_end': round(os.getloadavg()[0], 2),
          'stages': profile_buckets(profiler) if profiler else None}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--manual_dir', help='an existing release (default: generate mini)')
  parser.add_argument('--num_products', type=int, default=200)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--configs', default='raw,features')
  parser.add_argument('--beam', action='store_true', help='DirectRunner, all cores')
  parser.add_argument('--profile', action='store_true', help='cProfile, grouped into stages')
  parser.add_argument('--json', action='store_true', help='print one JSON object per config')
  parser.add_argument('--record', action='store_true', help='append to benchmarks/results/conversion.md')
  args = parser.parse_args(argv)
  workdir = tempfile.mkdtemp(prefix='m5_conversion_')
  manual_dir = args.manual_dir
  if not manual_dir:
    manual_dir = os.path.join(workdir, 'mini')
    subprocess.run([sys.executable, '-m', 'data_prep.make_mini', '--out', manual_dir,
                    '--num_products', str(args.num_products), '--seed', str(args.seed),
                    '--features'], check=True)
  rows = []
  for config in args.configs.split(','):
    row = measure(manual_dir, config, args.beam, workdir, args.profile)
    rows.append(row)
    if args.json:
      row['peak_rss_mib'] = _peak_rss_mib()
      print(json.dumps(row), flush=True)
      continue
    print(f"{config:9s} {row['path']:5s} products {row['products']}, listings {row['listings']}: "
          f"{row['products_per_cpu_s']:.1f} products/s per core ({row['listings_per_cpu_s']:.1f} "
          f"listings/s), wall {row['wall_s']:.1f}s = {row['products_per_wall_s']:.1f} products/s",
          flush=True)
    for stage, b in (row['stages'] or {}).items():
      print(f"  {stage:9s} {100 * b['share']:5.1f}%  {b['seconds']:6.2f} s  "
            + ', '.join(f'{f} {t:.2f}s' for f, t in b['top']))
  if args.record:
    command = 'python -m benchmarks.conversion ' + ' '.join(argv if argv is not None else sys.argv[1:])
    machine = f'{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or platform.system()}'
    lines = [f'\n### {datetime.date.today()} - `{command}`\n', f'Machine: {machine}.\n',
             '| config | path | products | listings | products/s per core | listings/s per core '
             '| wall s | products/s wall |', '|---|---|---|---|---|---|---|---|']
    for r in rows:
      lines.append(f"| {r['config']} | {r['path']} ({r['workers']} worker) | {r['products']} "
                   f"| {r['listings']} | {r['products_per_cpu_s']:.1f} | {r['listings_per_cpu_s']:.1f} "
                   f"| {r['wall_s']:.1f} | {r['products_per_wall_s']:.1f} |")
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results', 'conversion.md')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'a', encoding='utf-8') as f:
      f.write('\n'.join(lines) + '\n')
  shutil.rmtree(workdir, ignore_errors=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
