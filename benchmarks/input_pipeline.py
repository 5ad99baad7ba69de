"""Input pipeline throughput (examples/s) on M5Product-mini, host side and onto devices.

    python -m data_prep.make_mini --out /tmp/mini --num_products 400 --seed 0 --features
    python -m benchmarks.input_pipeline --release /tmp/mini --work /tmp/ipbench \
        --form features --modalities tp,itpva --batch_size 256 --steps 20 --gil_profiler py-spy

Trains the release's sentencepiece model with data_prep.tokenizer into
`<release>/spm.model` unless it is there or --tokenizer is given (the builder
stores token ids of the model it finds there), builds `m5product/<form>` in
ArrayRecord under --work/data (once), then for each modality set times `steps`
training batches after `warmup` batches (tf.data tracing and the first reads
excluded), through `InputPipeline` (host numpy batches) and through
`create_iterator` (global jax.Arrays on the local devices).

Per example it reports CPU-ms (this process's user + system CPU over the timed
host batches only) and, with --gil_profiler (a py-spy binary: `pip install
py-spy`), GIL-held ms: a second pass of the same batches is sampled by
`py-spy record --gil --nonblocking`, which records a sample only when a thread
of the process holds the GIL, so samples / rate is the time the GIL was held
(Python on the hot path: it bounds one process's rate whatever its cores). The
leaf functions holding it most are listed. Appends a table row per run to --results.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
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


def train_tokenizer(release: str, vocab_size: int) -> str:
  """The project's tokenizer (data_prep.tokenizer) on the release's pretraining text,
  where the builder looks for it (so that it stores token ids)."""
  from data_prep import tokenizer  # pylint: disable=g-import-not-at-top
  path = os.path.join(release, tokenizer.DEFAULT_FILE)
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


def time_iterator(it, warmup: int, steps: int, batch_size: int) -> tuple[float, float]:
  """(examples/s, CPU seconds of this process) over `steps` batches after `warmup`."""
  for _ in range(warmup):
    jax.block_until_ready(next(it))
  start, cpu0 = time.perf_counter(), machine.cpu_seconds()
  for _ in range(steps):
    jax.block_until_ready(next(it))
  return steps * batch_size / (time.perf_counter() - start), machine.cpu_seconds() - cpu0


class GilSampler:
  """py-spy sampling this process, recording only samples in which a thread holds the GIL."""

  def __init__(self, py_spy: str, rate_hz: int = 250):
    self.rate_hz = rate_hz
    self._out = tempfile.NamedTemporaryFile(suffix='.txt', delete=False).name
    self._proc = subprocess.Popen(
        [py_spy, 'record', '--pid', str(os.getpid()), '--gil', '--nonblocking', '--rate',
         str(rate_hz), '--format', 'raw', '--output', self._out],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(2.0)  # attach before the timed window
    self._start = time.perf_counter()

  def stop(self) -> dict:
    """{'gil_s', 'window_s', 'top': [(leaf function, share of GIL samples)]}."""
    window = time.perf_counter() - self._start
    self._proc.send_signal(signal.SIGINT)
    _, err = self._proc.communicate(timeout=60)
    stacks = {}
    with open(self._out, encoding='utf-8') as f:
      for line in f:
        stack, _, count = line.rstrip().rpartition(' ')
        leaf = stack.split(';')[-1]
        stacks[leaf] = stacks.get(leaf, 0) + int(count)
    os.remove(self._out)
    samples = sum(stacks.values())
    if not samples and self._proc.returncode:
      raise RuntimeError(f'py-spy failed: {err.strip()[-300:]}')
    top = sorted(stacks.items(), key=lambda kv: -kv[1])[:6]
    return {'gil_s': samples / self.rate_hz, 'window_s': window,
            'top': [(leaf, round(n / samples, 3)) for leaf, n in top]}


def measure(release: str, work: str, codes: str = 'itpva', form: str = 'raw',
            batch_size: int = 32, steps: int = 30, warmup: int = 3,
            tokenizer: str | None = None, vocab_size: int = 1000,
            gil_profiler: str | None = None) -> dict:
  """Examples/s, CPU-ms and GIL-held ms per example of the host pipeline, and
  examples/s of the pipeline onto the local devices."""
  data_dir = os.path.join(work, 'data')
  os.makedirs(data_dir, exist_ok=True)
  tokenizer = tokenizer or train_tokenizer(release, vocab_size)
  build_s = build(release, data_dir, form)
  dataset = f'm5product/{form}'
  mesh = jax.sharding.Mesh(jax.devices(), ('data',))
  config = make_config(codes, dataset, data_dir, tokenizer, batch_size, form)
  load_start = machine.load_average()
  examples = steps * batch_size
  host = input_pipeline.create_host_iterator(config, 'pretrain', train=True)
  host_rate, host_cpu = time_iterator(host, warmup, steps, batch_size)
  gil = None
  if gil_profiler:
    sampler = GilSampler(gil_profiler)
    time_iterator(host, 0, steps, batch_size)
    gil = sampler.stop()
  host.close()
  device = input_pipeline.create_iterator(config, 'pretrain', mesh, train=True)
  device_rate, _ = time_iterator(device, warmup, steps, batch_size)
  device.host.close()
  row = {'dataset': dataset, 'modalities': codes, 'batch_size': batch_size, 'steps': steps,
         'pretrain_examples': host.num_examples, 'build_s': build_s,
         'host_examples_per_s': host_rate, 'device_examples_per_s': device_rate,
         'host_cpu_s_per_example': host_cpu / examples,
         'host_cpu_ms_per_example': 1e3 * host_cpu / examples,
         'load_avg_start': load_start, 'load_avg_end': machine.load_average(),
         'peak_rss_mib': machine.peak_rss_mib()}
  if gil:
    row.update(gil_ms_per_example=1e3 * gil['gil_s'] / examples, gil_top=gil['top'],
               gil_share_of_window=gil['gil_s'] / gil['window_s'])
  return row


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
  parser.add_argument('--gil_profiler', default=None,
                      help="py-spy binary (or 'py-spy' on PATH): also measure GIL-held ms per example")
  parser.add_argument('--json', action='store_true', help='print one JSON object per set')
  parser.add_argument('--build_only', action='store_true',
                      help='only build the dataset and tokenizer (so that a later run\'s '
                      'peak memory is the pipeline\'s alone)')
  parser.add_argument('--results', default=os.path.join(os.path.dirname(__file__), 'results',
                                                         'input_pipeline.md'))
  args = parser.parse_args(argv)

  if args.build_only:
    args.tokenizer or train_tokenizer(args.release, args.vocab_size)
    build(args.release, os.path.join(args.work, 'data'), args.form)
    return 0
  gil_profiler = args.gil_profiler and shutil.which(args.gil_profiler)
  if args.gil_profiler and not gil_profiler:
    parser.error(f'--gil_profiler {args.gil_profiler}: not found (pip install py-spy)')
  rows = []
  for codes in args.modalities.split(','):
    r = measure(args.release, args.work, codes, args.form, args.batch_size, args.steps,
                args.warmup, args.tokenizer, args.vocab_size, gil_profiler)
    if args.json:
      print(json.dumps(r), flush=True)
      continue
    rows.append(f"| {datetime.date.today()} | {r['dataset']} | {codes} | {args.batch_size} | "
                f"{r['pretrain_examples']} | {r['host_examples_per_s']:.0f} | "
                f"{r['device_examples_per_s']:.0f} | "
                f'{os.cpu_count()} cores, {platform.processor() or platform.machine()} |')
    gil = (f", GIL held {r['gil_ms_per_example']:.3f} ms/example (top: {r['gil_top'][:3]})"
           if 'gil_ms_per_example' in r else '')
    print(f"{codes}: host {r['host_examples_per_s']:.0f} examples/s, "
          f"{r['host_cpu_ms_per_example']:.2f} CPU-ms/example{gil}, to devices "
          f"{r['device_examples_per_s']:.0f} examples/s ({r['pretrain_examples']} pretrain "
          f"examples, build {r['build_s']:.0f}s, load {r['load_avg_start']})", flush=True)
  if args.results and rows:
    with open(args.results, 'a', encoding='utf-8') as f:
      f.write('\n'.join(rows) + '\n')
    print(f'appended {len(rows)} rows to {args.results}')


if __name__ == '__main__':
  sys.exit(main())
