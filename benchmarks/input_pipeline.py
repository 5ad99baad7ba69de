"""Input pipeline throughput (examples/s) on M5Product-mini, host side and onto devices.

    python -m data_prep.make_mini --out /tmp/mini --num_products 400 --seed 0
    python -m benchmarks.input_pipeline --release /tmp/mini --work /tmp/ipbench \
        --modalities tp,itpva --batch_size 32 --steps 30

Builds `m5product/<config>` in ArrayRecord under --work/data (once), trains a
sentencepiece model with data_prep.tokenizer unless --tokenizer is given, then for each modality set times `steps` training batches
after `warmup` batches (tf.data tracing and the first reads excluded), through
`InputPipeline` (host numpy batches) and through `create_iterator` (global
jax.Arrays on the local devices). Appends a table row per run to --results.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time

import jax
import ml_collections
import tensorflow_datasets as tfds

from benchmarks import machine
from m5_jax import input_pipeline
from m5_jax import modalities

CODES = {'t': 'text', 'p': 'table', 'i': 'image', 'v': 'video', 'a': 'audio'}


def build(release: str, data_dir: str, form: str) -> float:
  import data_prep.m5product  # pylint: disable=g-import-not-at-top,unused-import
  builder = tfds.builder('m5product', config=form, data_dir=data_dir, file_format='array_record')
  if builder.is_prepared():
    return 0.0
  start = time.perf_counter()
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=release))
  return time.perf_counter() - start


def train_tokenizer(release: str, out_dir: str, vocab_size: int) -> str:
  """The project's tokenizer (data_prep.tokenizer) on the release's pretraining text."""
  from data_prep import tokenizer  # pylint: disable=g-import-not-at-top
  path = os.path.join(out_dir, f'spm_{vocab_size}.model')
  if not os.path.exists(path):
    tokenizer.train(tokenizer.iter_training_text(release), path, vocab_size=vocab_size)
  return path


def make_config(codes: str, dataset: str, data_dir: str, tokenizer: str, batch_size: int,
                form: str) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.modalities = tuple(CODES[c] for c in codes)
  config.modality = {}
  for name in config.modalities:
    cfg = modalities.get(name).default_config()
    if 'form' in cfg:
      cfg.form = form
    config.modality[name] = cfg
  config.input = {'data_dir': data_dir, 'dataset': dataset, 'tokenizer': tokenizer,
                  'batch_size': batch_size}
  return config


def time_iterator(it, warmup: int, steps: int, batch_size: int) -> float:
  for _ in range(warmup):
    jax.block_until_ready(next(it))
  start = time.perf_counter()
  for _ in range(steps):
    jax.block_until_ready(next(it))
  return steps * batch_size / (time.perf_counter() - start)


def measure(release: str, work: str, codes: str = 'itpva', form: str = 'raw',
            batch_size: int = 32, steps: int = 30, warmup: int = 3,
            tokenizer: str | None = None, vocab_size: int = 1000) -> dict:
  """Examples/s of the host pipeline and of the pipeline onto the local devices."""
  data_dir = os.path.join(work, 'data')
  os.makedirs(data_dir, exist_ok=True)
  build_s = build(release, data_dir, form)
  dataset = f'm5product/{form}'
  tokenizer = tokenizer or train_tokenizer(release, work, vocab_size)
  mesh = jax.sharding.Mesh(jax.devices(), ('data',))
  config = make_config(codes, dataset, data_dir, tokenizer, batch_size, form)
  load_start = machine.load_average()
  cpu0 = machine.cpu_seconds()
  host = input_pipeline.create_host_iterator(config, 'pretrain', train=True)
  host_rate = time_iterator(host, warmup, steps, batch_size)
  host_cpu = machine.cpu_seconds() - cpu0
  device = input_pipeline.create_iterator(config, 'pretrain', mesh, train=True)
  device_rate = time_iterator(device, warmup, steps, batch_size)
  host.close()
  device.host.close()
  return {'dataset': dataset, 'modalities': codes, 'batch_size': batch_size, 'steps': steps,
          'pretrain_examples': host.num_examples, 'build_s': build_s,
          'host_examples_per_s': host_rate, 'device_examples_per_s': device_rate,
          'host_cpu_s_per_example': host_cpu / ((steps + warmup) * batch_size),
          'load_avg_start': load_start, 'load_avg_end': machine.load_average(),
          'peak_rss_mib': machine.peak_rss_mib()}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--release', required=True, help='folder written by data_prep.make_mini')
  parser.add_argument('--work', required=True, help='where the TFDS build and tokenizer go')
  parser.add_argument('--form', default='raw', choices=('raw', 'features'))
  parser.add_argument('--modalities', default='tp,itpva', help='comma-separated code sets')
  parser.add_argument('--tokenizer', default=None)
  parser.add_argument('--vocab_size', type=int, default=1000,
                      help='for the tokenizer trained when --tokenizer is not given')
  parser.add_argument('--batch_size', type=int, default=32)
  parser.add_argument('--steps', type=int, default=30)
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--json', action='store_true', help='print one JSON object per set')
  parser.add_argument('--build_only', action='store_true',
                      help='only build the dataset and tokenizer (so that a later run\'s '
                      'peak memory is the pipeline\'s alone)')
  parser.add_argument('--results', default=os.path.join(os.path.dirname(__file__), 'results',
                                                         'input_pipeline.md'))
  args = parser.parse_args(argv)

  if args.build_only:
    build(args.release, os.path.join(args.work, 'data'), args.form)
    args.tokenizer or train_tokenizer(args.release, args.work, args.vocab_size)
    return 0
  rows = []
  for codes in args.modalities.split(','):
    r = measure(args.release, args.work, codes, args.form, args.batch_size, args.steps,
                args.warmup, args.tokenizer, args.vocab_size)
    if args.json:
      print(json.dumps(r), flush=True)
      continue
    rows.append(f"| {datetime.date.today()} | {r['dataset']} | {codes} | {args.batch_size} | "
                f"{r['pretrain_examples']} | {r['host_examples_per_s']:.0f} | "
                f"{r['device_examples_per_s']:.0f} | "
                f'{os.cpu_count()} cores, {platform.processor() or platform.machine()} |')
    print(f"{codes}: host {r['host_examples_per_s']:.0f} examples/s, to devices "
          f"{r['device_examples_per_s']:.0f} examples/s ({r['pretrain_examples']} pretrain "
          f"examples, build {r['build_s']:.0f}s)", flush=True)
  if args.results and rows:
    with open(args.results, 'a', encoding='utf-8') as f:
      f.write('\n'.join(rows) + '\n')
    print(f'appended {len(rows)} rows to {args.results}')


if __name__ == '__main__':
  sys.exit(main())
