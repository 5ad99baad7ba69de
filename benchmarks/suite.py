r"""The whole benchmark suite in one command: a table on stdout and JSON on disk.

    python -m benchmarks.suite --mode quick            # a few minutes
    python -m benchmarks.suite --mode full             # the issue's sizes (hours on 2 cores)
    python -m benchmarks.suite --parts retrieval,train --out /tmp/suite.json

Parts (each measurement runs in its own Python process, so its peak resident
memory, VmHWM, is its own; the load average is recorded at its start and end):

  train       examples/s and MFU of the real train step per model size and media
              form; MFU = XLA's step FLOPs / step time / fp32 matmul peak measured
              in the same process (benchmarks/train_step.py)
  input       the full input pipeline's examples/s on M5Product-mini (raw and
              features) and its headroom = pipeline examples/s / train step
              examples/s for the same form (benchmarks/input_pipeline.py); quick and
              full also run it with config.input.read_workers=2 (reads in worker
              processes, their CPU counted)
  retrieval   our exact sharded top-K search vs faiss IndexFlatIP in one process:
              time ratio, id agreement outside ties (benchmarks/retrieval.py)
  conversion  products/s per core of the raw-media builder on mini, profiled into
              stages (benchmarks/conversion.py)
  peer        m5_jax against the same model in PyTorch (eager and torch.compile),
              timed A/B in one run per size; prints m5_jax's examples/s over
              torch's (benchmarks/peer_torch.py)
  gpu         bf16 MFU of base and large against a bf16 matmul peak, only when JAX
              sees a GPU (the issue's H100 target); otherwise recorded as not run
  gpu_levers  base's bf16 MFU at batch 256 on a GPU with each speed lever (cuDNN
              attention, unsafe_rbg or hash dropout bits, tanh GELU, heads at masked rows,
              remat for batch 512, cuBLAS instead of Triton GEMMs): one arm per
              --gpu_arms name, each compiled in its own process (~2 min at base),
              so pick arms that fit one device call; not run without a GPU

Mini data for `input` and `conversion` is generated once into --work (reused).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from benchmarks import machine

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARTS = ('train', 'input', 'retrieval', 'conversion', 'peer', 'gpu', 'gpu_levers')
GPU_PARTS = ('gpu', 'gpu_levers')    # dicts {'run', 'train' or 'why'}, not lists of rows



def _train(size, form, batch_size, steps, modalities='itpva', matmul_n=2048, scan=False):
  """One train-step measurement. scan: model.scan_layers (one compiled layer per stack:
  several times faster to compile at base, same step time within the noise)."""
  return dict(size=size, form=form, batch_size=batch_size, steps=steps, modalities=modalities,
              matmul_n=matmul_n, set='model.scan_layers=true' if scan else None)


# What each mode measures. 'smoke' is for tests/test_benchmarks.py (seconds, not numbers
# to quote); 'quick' takes minutes; 'full' is the sizes.
MODES = {
    'smoke': {
        'train': [_train('tiny', 'features', 8, 2, modalities='tp', matmul_n=512)],
        'input': {'forms': ('features',), 'batch_size': 4, 'steps': 2, 'products': 24},
        'retrieval': {'num_queries': 64, 'gallery': 4096, 'dim': 64, 'k': 10,
                      'query_block': 32, 'gallery_block': 1024},
        'conversion': {'products': 24},
        'peer': [dict(size='tiny', rounds=1, steps=1)],
    },
    'quick': {
        'train': [_train('tiny', 'features', 8, 3), _train('small', 'features', 4, 2)],
        'input': {'forms': ('features',), 'batch_size': 8, 'steps': 5, 'products': 40,
                  'read_workers': (0, 2)},
        'retrieval': {'num_queries': 512, 'gallery': 32768, 'dim': 768, 'k': 100,
                      'query_block': 256},
        'conversion': {'products': 40},
        'peer': [dict(size='small', rounds=3, steps=2)],
    },
    'full': {
        # The target first: base at the paper's lengths.
        'train': [_train('base', 'features', 8, 3, scan=True),
                  _train('small', 'features', 16, 4, scan=True),
                  _train('tiny', 'features', 32, 10), _train('tiny', 'raw', 32, 10),
                  _train('small', 'raw', 8, 3, scan=True), _train('base', 'raw', 4, 2, scan=True)],
        'input': {'forms': ('features', 'raw'), 'batch_size': 32, 'steps': 20,
                  'products': 300, 'read_workers': (0, 2)},
        'retrieval': {'num_queries': 10_000, 'gallery': 1_000_000, 'dim': 768, 'k': 100,
                      'query_block': 1024},
        'conversion': {'products': 200},
        'peer': [dict(size='small', rounds=3, steps=3), dict(size='base', rounds=3, steps=2)],
    },
}


def run_json(module: str, args: list[str], timeout: float | None = None,
             env: dict[str, str] | None = None) -> list[dict]:
  """`python -m module args` (with `env` added to the environment); the JSON objects it
  printed (one per line), each with the process's peak RSS from wait4 (MiB) unless the
  child reported its own."""
  cmd = [sys.executable, '-m', module, *args]
  shown = [f'{k}={v!r}' for k, v in (env or {}).items()] + cmd[1:]
  print(f'$ {" ".join(shown)}', file=sys.stderr, flush=True)
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', **(env or {})))
  deadline = None if timeout is None else time.time() + timeout
  out = []
  for line in proc.stdout:  # the child's stderr (progress) goes straight through
    if line.startswith('{'):
      out.append(json.loads(line))
    if deadline and time.time() > deadline:
      proc.kill()
      raise TimeoutError(f'{module} ran past {timeout:.0f} s')
  _, status, usage = os.wait4(proc.pid, 0)
  if os.waitstatus_to_exitcode(status) != 0:
    raise RuntimeError(f'{module} {" ".join(args)} failed (exit '
                       f'{os.waitstatus_to_exitcode(status)}); see its stderr above')
  for row in out:
    row.setdefault('peak_rss_mib', usage.ru_maxrss / 1024)
  return out


def ensure_mini(work: str, products: int) -> str:
  """M5Product-mini with features under work/mini<products> (generated once)."""
  release = os.path.join(work, f'mini{products}')
  if not os.path.exists(os.path.join(release, 'mini_manifest.json')):
    subprocess.run([sys.executable, '-m', 'data_prep.make_mini', '--out', release,
                    '--num_products', str(products), '--seed', '0', '--features'],
                   cwd=REPO, check=True, stdout=subprocess.DEVNULL)
  return release


def run_train(spec, rows: list[dict] | None = None, save=lambda: None) -> list[dict]:
  """Appends one row per run to `rows`, calling save() after each (hours at base).

  A run is train_step's flags; `set` may be a list (one --set each), `xla_flags` goes
  to XLA_FLAGS and `arm` names the row."""
  rows = [] if rows is None else rows
  for run in spec:
    run = dict(run)
    arm, xla_flags = run.pop('arm', None), run.pop('xla_flags', '')
    args = []
    for key, value in run.items():
      for v in (value if isinstance(value, list) else [value]):
        if v is not None:
          args.append(f'--{key}={v}')
    env = {'XLA_FLAGS': f"{os.environ.get('XLA_FLAGS', '')} {xla_flags}".strip()} if xla_flags else None
    new = run_json('benchmarks.train_step', args + ['--json'], env=env)
    for row in new:
      if arm:
        row['arm'] = arm
      if xla_flags:
        row['xla_flags'] = xla_flags
    rows += new
    save()
  return rows


def run_input(spec, work: str, train_rows: list[dict]) -> list[dict]:
  release = ensure_mini(work, spec['products'])
  rows = []
  for form in spec['forms']:
    common = ['--release', release, '--work', os.path.join(work, f'input_{spec["products"]}'),
              '--form', form]
    run_json('benchmarks.input_pipeline', common + ['--build_only'])  # not in the RSS below
    for workers in spec.get('read_workers', (0,)):  # config.input.read_workers
      row, = run_json('benchmarks.input_pipeline', common + [
          '--modalities', 'itpva', '--batch_size', str(spec['batch_size']),
          '--steps', str(spec['steps']), '--read_workers', str(workers), '--json'])
      rows.append(row)
  add_headroom(rows, train_rows)
  return rows


def add_headroom(input_rows: list[dict], train_rows: list[dict]) -> None:
  """headroom[size] = pipeline examples/s / train step examples/s, same media form (the
  pipeline does not depend on the model size)."""
  for row in input_rows:
    form = row['dataset'].split('/')[-1]
    row['headroom'] = {t['size']: row['host_examples_per_s'] / t['examples_per_s']
                       for t in train_rows if t['form'] == form}


def merge(paths: list[str]) -> dict:
  """Several suite JSONs (parts run as separate commands) -> one."""
  merged: dict = {'mode': [], 'command': [], 'machine': [], 'wall_s': 0.0,
                  'gpu': {'run': False, 'why': 'part gpu not selected'}}
  for path in paths:
    with open(path, encoding='utf-8') as f:
      r = json.load(f)
    for key in ('mode', 'command', 'machine'):
      merged[key].append(r.get(key))
    merged['wall_s'] += r.get('wall_s', 0.0)
    gpu = r.get('gpu') or {'why': 'not selected'}
    if gpu.get('run') or 'not selected' not in gpu.get('why', ''):
      merged['gpu'] = gpu
    if r.get('gpu_levers', {}).get('run'):
      merged.setdefault('gpu_levers', {'run': True, 'train': []})
      merged['gpu_levers']['train'] += r['gpu_levers']['train']
    for part in PARTS:
      if part not in GPU_PARTS:  # the list-valued parts
        merged.setdefault(part, []).extend(r.get(part, []))
  add_headroom(merged['input'], merged['train'])
  return merged


def run_retrieval(spec) -> list[dict]:
  args = [f'--{k}={v}' for k, v in spec.items()]
  return run_json('benchmarks.retrieval', args + ['--json'])


def run_conversion(spec, work: str) -> list[dict]:
  """products/s from a plain build; where the time goes from a second, profiled one."""
  release = ensure_mini(work, spec['products'])
  common = ['--manual_dir', release, '--configs', 'raw', '--json']
  row, = run_json('benchmarks.conversion', common)
  profiled, = run_json('benchmarks.conversion', common + ['--profile'])
  row.update(stages=profiled['stages'],
             profiled_products_per_cpu_s=profiled['products_per_cpu_s'])
  return [row]


# m5_jax's arms in the peer A/B: its defaults; heads at the masked rows only (what the
# torch peer runs, as the official UNITER-style code gathers masked tokens before its
# heads) with 16-bit dropout; the tanh GELU on top (configs/common.py); and hash
# dropout bits on top of that. rbg keys and dot_product attention are left out: slower
# on XLA:CPU (RESULTS.md section 7).
PEER_JAX_ARMS = ('default=', 'masked16=model.heads_at=masked,model.dropout_bits=16',
                 'best=model.heads_at=masked,model.dropout_bits=16,model.activation=gelu_tanh',
                 'hash=model.heads_at=masked,model.dropout_bits=16,model.activation=gelu_tanh,'
                 'model.dropout_rng=hash')


def run_peer(spec) -> list[dict]:
  """One A/B per size; the torch arms build the model of the 'masked16' arm. Every arm
  runs on tcmalloc where it is installed, as launch/ runs the train binary."""
  rows = []
  malloc = 'tcmalloc' if machine.tcmalloc_env() else 'glibc'
  for run in spec:
    args = [f'--{k}={v}' for k, v in run.items()] + ['--json', '--peer_of', 'masked16',
                                                     '--malloc', malloc]
    for arm in PEER_JAX_ARMS:
      args += ['--jax', arm]
    rows += run_json('benchmarks.peer_torch', args)
  return rows


# The large batch first (the MFU figure), then the small one (how MFU falls with batch).
# Each run compiles its own step: about a minute each on an H200, so the four fit one call.
GPU_RUNS = [dict(size='base', form='features', batch_size=256, steps=10, dtype='bfloat16',
                 matmul_n=8192, set='model.scan_layers=true'),
            dict(size='large', form='features', batch_size=128, steps=10, dtype='bfloat16',
                 matmul_n=8192, set='model.scan_layers=true'),
            dict(size='base', form='features', batch_size=64, steps=10, dtype='bfloat16',
                 matmul_n=8192, set='model.scan_layers=true'),
            dict(size='large', form='features', batch_size=32, steps=10, dtype='bfloat16',
                 matmul_n=8192, set='model.scan_layers=true')]


def run_gpu(results: dict, save=lambda: None) -> None:
  """bf16 train-step MFU on a GPU into results['gpu'] (saved after each run)."""
  _run_on_gpu('gpu', GPU_RUNS, results, save)


def _run_on_gpu(part: str, runs: list[dict], results: dict, save) -> None:
  """run_train(runs) into results[part]; {'run': False, 'why'} when JAX sees no GPU."""
  probe = subprocess.run([sys.executable, '-c', 'import jax; print(jax.devices()[0].platform)'],
                         cwd=REPO, capture_output=True, text=True, check=False,
                         env=dict(os.environ, JAX_PLATFORMS=''))
  platform_name = probe.stdout.strip().splitlines()[-1] if probe.stdout.strip() else 'none'
  if platform_name != 'gpu':
    results[part] = {'run': False, 'why': f'no GPU visible to JAX here (default platform: '
                     f'{platform_name}); part {part} was not measured'}
    return
  results[part] = {'run': True, 'train': []}
  run_train(runs, results[part]['train'], save)


# Issue 19 item 6: levers for base's bf16 MFU on one GPU. cuDNN attention is
# jax.nn.dot_product_attention (model.attention=dot_product: no attention dropout,
# and base uses none); each arm compiles in its own process.
def _levers(dropout_rng: str = 'unsafe_rbg') -> list[str]:
  return ['model.attention=dot_product', f'model.dropout_rng={dropout_rng}',
          'model.activation=gelu_tanh', 'model.heads_at=masked']


GPU_LEVERS = _levers()
_SCAN = 'model.scan_layers=true'
_GPU_BASE = dict(size='base', form='features', batch_size=256, steps=10, dtype='bfloat16',
                 matmul_n=8192)
GPU_LEVER_ARMS = {
    'plain': dict(_GPU_BASE, set=[_SCAN]),
    'cudnn_attention': dict(_GPU_BASE, set=[_SCAN, GPU_LEVERS[0]]),
    'levers': dict(_GPU_BASE, set=[_SCAN, *GPU_LEVERS]),
    'levers_hash': dict(_GPU_BASE, set=[_SCAN, *_levers('hash')]),
    'levers_remat_b512': dict(_GPU_BASE, batch_size=512,
                              set=[_SCAN, 'model.remat=true', *GPU_LEVERS]),
    'levers_cublas': dict(_GPU_BASE, set=[_SCAN, *GPU_LEVERS],
                          xla_flags='--xla_gpu_enable_triton_gemm=false'),
}


def run_gpu_levers(arms: list[str], results: dict, save=lambda: None) -> None:
  """The chosen GPU_LEVER_ARMS into results['gpu_levers'] (saved after each arm)."""
  _run_on_gpu('gpu_levers', [dict(GPU_LEVER_ARMS[a], arm=a) for a in arms], results, save)


def table(results: dict) -> str:
  """The human summary: one line per measurement, with the load average beside it."""
  lines = ['part        | what                                   | result'
           '                                          | load',
           '------------|----------------------------------------|'
           '-------------------------------------------------|------']

  def add(part, what, result, row):
    load = f"{row.get('load_avg_start', '?')}-{row.get('load_avg_end', '?')}"
    lines.append(f'{part:11s} | {what:38s} | {result:47s} | {load}')

  for r in (results.get('train', []) + results['gpu'].get('train', [])
            + results.get('gpu_levers', {}).get('train', [])):
    add('train', f"{r['size']}/{r['form']} {r.get('dtype', 'float32')} batch {r['batch_size']}"
        + (f" {r['arm']}" if r.get('arm') else ''),
        f"{r['examples_per_s']:.2f} ex/s, MFU {100 * r['mfu']:.0f}% wall, "
        + (f"{100 * r['mfu_datasheet']:.0f}% of datasheet, " if r.get('mfu_datasheet')
           else '')
        + (f"{100 * r['mfu_per_cpu_second']:.0f}% per CPU-s, "
           if 'mfu_per_cpu_second' in r and r['devices'].endswith('cpu') else '')
        + f"{r['peak_rss_mib']:.0f} MiB", r)
  for r in results.get('input', []):
    headroom = ', '.join(f'{k} {v:.1f}x' for k, v in r['headroom'].items())
    add('input', f"{r['dataset']} {r['modalities']} batch {r['batch_size']}"
        f" read_workers {r.get('read_workers', 0)}",
        f"{r['host_examples_per_s']:.0f} ex/s, {r['host_cpu_ms_per_example']:.2f} CPU-ms/ex; "
        f"headroom {headroom or '-'}; "
        f"{r['peak_rss_mib']:.0f} MiB", r)
  for r in results.get('retrieval', []):
    faiss = (f"faiss {r['faiss_qps']:.1f} q/s, ratio {r['time_ratio_ours_over_faiss']:.2f}, "
             f"{r['untied_mismatches']} untied diff" if 'faiss_qps' in r else 'no faiss')
    add('retrieval', f"{r['num_queries']} x {r['gallery']} d{r['dim']} top{r['k']}",
        f"ours {r['ours_qps']:.1f} q/s; {faiss}", r)
  for r in results.get('peer', []):
    for name, q in r['ratios'].items():
      add('peer', f"{r['size']} fp32 b{r['batch_size']} {r.get('malloc', 'glibc')} {name}",
          f"m5_jax/torch examples/s {q['median']:.2f} "
          f"({', '.join(f'{x:.2f}' for x in q['per_round'])})", r)
  for r in results.get('conversion', []):
    top = max(r['stages'].items(), key=lambda kv: kv[1]['seconds'])[0] if r['stages'] else '-'
    add('conversion', f"{r['config']} builder, {r['products']} products",
        f"{r['products_per_cpu_s']:.1f} products/s/core; most time: {top}; "
        f"{r['peak_rss_mib']:.0f} MiB", r)
  return '\n'.join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--mode', default='quick', choices=tuple(MODES))
  parser.add_argument('--parts', default=','.join(PARTS))
  parser.add_argument('--work', default='/tmp/m5_benchmarks', help='mini data, TFDS builds')
  parser.add_argument('--train', default='', help='only these train runs, e.g. '
                      'base/features,tiny/raw (in the mode\'s order)')
  parser.add_argument('--gpu_arms', default='plain,levers',
                      help=f'gpu_levers arms, from {",".join(GPU_LEVER_ARMS)}')
  parser.add_argument('--retrieval_queries', type=int, default=0,
                      help='override the mode\'s number of retrieval queries')
  parser.add_argument('--merge', nargs='+', metavar='JSON',
                      help='combine suite JSONs written by separate runs into --out')
  parser.add_argument('--out', default=os.path.join(REPO, 'benchmarks', 'results', 'suite.json'))
  args = parser.parse_args(argv)
  if args.merge:
    results = merge(args.merge)
    with open(args.out, 'w', encoding='utf-8') as f:
      json.dump(results, f, indent=1)
    print(table(results))
    print(f'wrote {args.out}')
    return 0
  parts = [p for p in args.parts.split(',') if p]
  unknown = set(parts) - set(PARTS)
  if unknown:
    parser.error(f'unknown part(s) {sorted(unknown)}; choose from {",".join(PARTS)}')
  spec = dict(MODES[args.mode])
  if args.retrieval_queries:
    spec['retrieval'] = dict(spec['retrieval'], num_queries=args.retrieval_queries)
  os.makedirs(args.work, exist_ok=True)

  results: dict = {'mode': args.mode, 'machine': machine.describe(),
                   'command': 'python -m benchmarks.suite ' + ' '.join(
                       argv if argv is not None else sys.argv[1:]),
                   'gpu': {'run': False, 'why': 'part gpu not selected'}}
  start = time.time()

  def save():  # after every part: a crash or a timeout later keeps what was measured
    results['wall_s'] = time.time() - start
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w', encoding='utf-8') as f:
      json.dump(results, f, indent=1)

  if 'train' in parts or 'input' in parts:
    runs = [r for r in spec['train'] if not args.train or f"{r['size']}/{r['form']}" in args.train]
    results['train'] = []
    run_train(runs, results['train'], save)
  if 'input' in parts:
    results['input'] = run_input(spec['input'], args.work, results['train'])
    save()
  if 'retrieval' in parts:
    results['retrieval'] = run_retrieval(spec['retrieval'])
    save()
  if 'conversion' in parts:
    results['conversion'] = run_conversion(spec['conversion'], args.work)
    save()
  if 'peer' in parts:
    results['peer'] = run_peer(spec['peer'])
    save()
  if 'gpu' in parts:
    run_gpu(results, save)
  if 'gpu_levers' in parts:
    arms = [a for a in args.gpu_arms.split(',') if a]
    unknown_arms = set(arms) - set(GPU_LEVER_ARMS)
    if unknown_arms:
      parser.error(f'unknown --gpu_arms {sorted(unknown_arms)}; choose from {",".join(GPU_LEVER_ARMS)}')
    run_gpu_levers(arms, results, save)
  save()
  print(table(results))
  print(f'wrote {args.out} ({results["wall_s"]:.0f} s)')
  return 0


if __name__ == '__main__':
  sys.exit(main())
