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
host batches only) and the time Python holds the GIL on the hot path (it bounds
one process's rate whatever its cores), two ways:
  * callback CPU-ms: the thread CPU time spent inside the graph's Python callbacks
    (every `tf.numpy_function`: the record fetch, the tokenizer), timed around each
    call. CPU time, so load on the machine does not inflate it; C++ inside a
    callback that releases the GIL counts too (an upper bound there), TF's
    conversion of a callback's outputs does not.
  * with --gil_profiler (a py-spy binary: `pip install py-spy`), GIL-held ms: a
    second pass of the same batches sampled by `py-spy record --gil --nonblocking`,
    which records a sample only when a thread of the process holds the GIL, so
    samples / rate is the wall time the GIL was held. All of it, but wall time: a
    holder waiting for a core on a loaded machine counts. The leaf functions holding
    it most are listed.
  * record read CPU-ms: the process CPU time of reading one batch of random records
    through the data source alone (`__getitems__`, one thread). ArrayRecord 0.8.6
    holds the GIL while its reader threads read (the profile shows `read_records`
    holding it), so on an idle machine this is the GIL-held floor of the record
    fetch, whatever the rest of the pipeline does.
It also reports the host batch's bytes per example, all fields and per modality
(what the host->device copy moves), and with --breakdown the CPU-ms per example of
TFDS decode + preprocess alone (no read, no batching into numpy) on 1024 records held
in memory: the pipeline's own per-example function, and each modality alone (the
decode of the fields its plugin reads, TF prunes the others, and its preprocess).
Appends a table row per run to --results.
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
import numpy as np
import tensorflow as tf
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
                form: str, read_workers: int = 0) -> ml_collections.ConfigDict:
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
                  'batch_size': batch_size, 'read_workers': read_workers}
  return config


def reader_cpu_seconds(it) -> float:
  """User + system CPU seconds of a pipeline's record reader worker processes (Linux
  /proc; they are not waited-for children, so getrusage does not see them), else 0."""
  reader = getattr(it, '_reader', None) or getattr(getattr(it, 'host', None), '_reader', None)
  if reader is None:
    return 0.0
  total = 0
  for worker in reader._workers:  # pylint: disable=protected-access
    with open(f'/proc/{worker.process.pid}/stat') as f:
      fields = f.read().rsplit(')', 1)[1].split()
    total += int(fields[11]) + int(fields[12])  # utime, stime
  return total / os.sysconf('SC_CLK_TCK')


def time_iterator(it, warmup: int, steps: int, batch_size: int,
                  callbacks: CallbackTimer | None = None) -> tuple[float, float, dict]:
  """(examples/s, CPU seconds of this process and its record readers, callback CPU
  seconds by name) over
  `steps` batches after `warmup` (the prefetched batches' callbacks are counted too:
  a few batches' worth, the same on both sides of an A/B)."""
  for _ in range(warmup):
    jax.block_until_ready(next(it))
  start, cpu0 = time.perf_counter(), machine.cpu_seconds() + reader_cpu_seconds(it)
  callbacks and callbacks.take()
  for _ in range(steps):
    jax.block_until_ready(next(it))
  seconds = callbacks.take() if callbacks else {}
  cpu = machine.cpu_seconds() + reader_cpu_seconds(it) - cpu0
  return steps * batch_size / (time.perf_counter() - start), cpu, seconds


class CallbackTimer:
  """Thread CPU seconds inside every tf.numpy_function callback built while active."""

  def __init__(self):
    self.seconds: dict[str, float] = {}
    self._original = tf.numpy_function

  def __enter__(self):
    def timed(func, inp, Tout, stateful=True, name=None):  # pylint: disable=invalid-name
      key = name or getattr(func, '__name__', 'callback')

      def call(*args):
        start = time.thread_time()
        try:
          return func(*args)
        finally:
          self.seconds[key] = self.seconds.get(key, 0.0) + time.thread_time() - start
      return self._original(call, inp, Tout, stateful=stateful, name=name)
    tf.numpy_function = timed
    return self

  def __exit__(self, *exc):
    tf.numpy_function = self._original

  def take(self) -> dict[str, float]:
    """The seconds so far, per callback, and reset."""
    seconds, self.seconds = self.seconds, {}
    return seconds


class GilSampler:
  """py-spy sampling this process, recording only samples in which a thread holds the GIL."""

  def __init__(self, py_spy: str, rate_hz: int = 250):
    self.rate_hz = rate_hz
    self._out = tempfile.NamedTemporaryFile(suffix='.txt', delete=False).name
    self._proc = subprocess.Popen(
        [py_spy, 'record', '--pid', str(os.getpid()), '--gil', '--nonblocking', '--rate',
         str(rate_hz), '--format', 'raw', '--output', self._out],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    self._start = time.perf_counter()
    time.sleep(2.0)  # attach before the timed batches (the prefetch runs meanwhile: counted)

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


def batch_bytes_per_example(batch, batch_size: int) -> dict[str, float]:
  """Bytes per example of a host batch: 'all' and each modality's sub-dict."""
  def size(tree):
    return sum(np.asarray(x).nbytes for x in jax.tree.leaves(tree)) / batch_size
  out = {name: size(value) for name, value in batch.items() if isinstance(value, dict)}
  out['all'] = size(batch)
  return out


def preprocess_cpu(host, num_records: int = 1024, repeats: int = 3) -> dict[str, float]:
  """Best CPU-ms per example of decode + preprocess on in-memory records: 'all' (the
  pipeline's per-example function) and each modality's plugin after the decode."""
  # pylint: disable=protected-access
  count = min(num_records, host.num_examples)
  records = tf.constant(np.array(host._source.__getitems__(list(range(count))), dtype=object))
  records = tf.data.Dataset.from_tensor_slices(records)

  def best_ms(fn):
    ds = records.map(fn, num_parallel_calls=2, deterministic=True).batch(256)
    for _ in ds:  # traced and warm
      pass
    best = float('inf')
    for _ in range(repeats):
      cpu0 = machine.cpu_seconds()
      for _ in ds:
        pass
      best = min(best, machine.cpu_seconds() - cpu0)
    return 1e3 * best / count

  def plugin(name):
    def fn(serialized):
      example = host._features.deserialize_example(serialized)
      return modalities.get(name).preprocess(example, host._config.modality[name],
                                             host._tokenizer)
    return fn

  out = {'all': best_ms(lambda s: host._preprocess(tf.constant(0, tf.int64),
                                                   tf.constant(True), s))}
  out.update({name: best_ms(plugin(name)) for name in host._config.modalities})
  return out


def record_read_cpu(host, batch_size: int, repeats: int = 3) -> float:
  """Best CPU seconds per record of reading a batch of random records (data source only)."""
  rng = np.random.default_rng(0)
  best = float('inf')
  for _ in range(repeats):
    indices = rng.integers(0, host.num_examples, batch_size).tolist()
    cpu0 = machine.cpu_seconds()
    host._source.__getitems__(indices)  # pylint: disable=protected-access
    best = min(best, (machine.cpu_seconds() - cpu0) / batch_size)
  return best


def measure(release: str, work: str, codes: str = 'itpva', form: str = 'raw',
            batch_size: int = 32, steps: int = 30, warmup: int = 3,
            tokenizer: str | None = None, vocab_size: int = 1000,
            gil_profiler: str | None = None, breakdown: bool = False,
            read_workers: int = 0) -> dict:
  """Examples/s, CPU-ms and GIL-held ms per example of the host pipeline, and
  examples/s of the pipeline onto the local devices."""
  data_dir = os.path.join(work, 'data')
  os.makedirs(data_dir, exist_ok=True)
  tokenizer = tokenizer or train_tokenizer(release, vocab_size)
  build_s = build(release, data_dir, form)
  dataset = f'm5product/{form}'
  mesh = jax.sharding.Mesh(jax.devices(), ('data',))
  config = make_config(codes, dataset, data_dir, tokenizer, batch_size, form, read_workers)
  load_start = machine.load_average()
  examples = steps * batch_size
  with CallbackTimer() as callbacks:
    host = input_pipeline.create_host_iterator(config, 'pretrain', train=True)
    host_rate, host_cpu, callback_s = time_iterator(host, warmup, steps, batch_size, callbacks)
  gil = None
  if gil_profiler:
    sampler = GilSampler(gil_profiler)
    time_iterator(host, 0, steps, batch_size)
    gil = sampler.stop()
  batch_bytes = batch_bytes_per_example(next(host), batch_size)
  host.close()  # its workers stop: the reads below are timed alone
  read_cpu = record_read_cpu(host, batch_size)
  decode_preprocess = preprocess_cpu(host) if breakdown else None
  device = input_pipeline.create_iterator(config, 'pretrain', mesh, train=True)
  device_rate, _, _ = time_iterator(device, warmup, steps, batch_size)
  device.host.shutdown()
  host.shutdown()
  row = {'dataset': dataset, 'modalities': codes, 'batch_size': batch_size, 'steps': steps,
         'read_workers': read_workers, 'malloc': machine.malloc(),
         'pretrain_examples': host.num_examples, 'build_s': build_s,
         'host_examples_per_s': host_rate, 'device_examples_per_s': device_rate,
         'host_cpu_s_per_example': host_cpu / examples,
         'host_cpu_ms_per_example': 1e3 * host_cpu / examples,
         'record_read_cpu_ms_per_example': 1e3 * read_cpu,
         'callback_cpu_ms_per_example': 1e3 * sum(callback_s.values()) / examples,
         'callback_cpu_ms': {k: 1e3 * v / examples for k, v in callback_s.items()},
         'host_batch_bytes_per_example': batch_bytes.pop('all'),
         'host_batch_bytes_per_example_by_modality': batch_bytes,
         'load_avg_start': load_start, 'load_avg_end': machine.load_average(),
         'peak_rss_mib': machine.peak_rss_mib()}
  if decode_preprocess:
    row['decode_preprocess_cpu_ms_per_example'] = decode_preprocess
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
                      help="py-spy binary (or 'py-spy' on PATH): also measure GIL-held ms "
                      'per example')
  parser.add_argument('--breakdown', action='store_true',
                      help='also time decode + preprocess alone, in all and per modality')
  parser.add_argument('--read_workers', type=int, default=0,
                      help='config.input.read_workers: record reads in this many worker '
                      'processes (their CPU is counted in CPU-ms/example; the GIL profile is '
                      'of the main process, whose GIL bounds its rate)')
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
                args.warmup, args.tokenizer, args.vocab_size, gil_profiler, args.breakdown,
                args.read_workers)
    if args.json:
      print(json.dumps(r), flush=True)
      continue
    rows.append(f"| {datetime.date.today()} | {r['dataset']} | {codes} | {args.batch_size} | "
                f"{r['pretrain_examples']} | {r['host_examples_per_s']:.0f} | "
                f"{r['device_examples_per_s']:.0f} | "
                f'{os.cpu_count()} cores, {platform.processor() or platform.machine()} |')
    gil = (f", Python callbacks {r['callback_cpu_ms_per_example']:.3f} CPU-ms/example, record "
           f"read {r['record_read_cpu_ms_per_example']:.3f} CPU-ms/example")
    if 'gil_ms_per_example' in r:
      gil += f", GIL held {r['gil_ms_per_example']:.3f} ms/example (top: {r['gil_top'][:3]})"
    print(f"{codes}: host {r['host_examples_per_s']:.0f} examples/s, "
          f"{r['host_cpu_ms_per_example']:.2f} CPU-ms/example, "
          f"{r['host_batch_bytes_per_example'] / 1e3:.0f} KB/example{gil}, to devices "
          f"{r['device_examples_per_s']:.0f} examples/s ({r['pretrain_examples']} pretrain "
          f"examples, build {r['build_s']:.0f}s, load {r['load_avg_start']})", flush=True)
  if args.results and rows:
    with open(args.results, 'a', encoding='utf-8') as f:
      f.write('\n'.join(rows) + '\n')
    print(f'appended {len(rows)} rows to {args.results}')


if __name__ == '__main__':
  sys.exit(main())
