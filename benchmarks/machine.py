"""What every benchmark records next to its numbers: the machine, its load, peak memory,
and this machine's matmul peak, measured in the same run.

The MFU denominator (`best_matmul_peak`) is the best fp32 matmul rate that any of
XLA (jax.jit, the model's own backend), numpy's BLAS and torch reach at several
shapes, so an MFU cannot look good only because one library's GEMM is slow.
`matmul_rates` also times bf16 where a library offers it on CPU: bf16 is measured
against fp32, never assumed faster (python -m benchmarks.machine prints both).

The numbers of a shared machine move with the other jobs on it, so each
measurement carries the load average at its start and end, and the suite reports
ratios taken within one process (step FLOP/s over the matmul peak measured just
before and after the steps; our search time over faiss's on the same data).
"""
from __future__ import annotations

import datetime
import os
import platform
import resource
import subprocess
import time


def load_average() -> float:
  """1-minute load average (how many runnable jobs share the cores right now)."""
  return round(os.getloadavg()[0], 2)


def cpu_model() -> str:
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


# The SIMD features that decide matmul speed on x86 (from /proc/cpuinfo's flags).
SIMD_FLAGS = ('avx2', 'fma', 'avx512f', 'avx512bw', 'avx512vl', 'avx512_vnni', 'avx512_bf16',
              'amx_bf16', 'amx_tile')


def cpu_flags() -> list[str]:
  """The SIMD_FLAGS this CPU has (AVX-512 and its bf16 dot products on Zen 4)."""
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as f:
      for line in f:
        if line.startswith('flags'):
          have = set(line.split(':', 1)[1].split())
          return [flag for flag in SIMD_FLAGS if flag in have]
  except OSError:
    pass
  return []


def describe() -> dict:
  """The machine in one dict: where and when the numbers were taken."""
  return {
      'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
      'cpu': cpu_model(),
      'simd': cpu_flags(),
      'cores': os.cpu_count(),
      'memory_gib': round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30, 1),
      'python': platform.python_version(),
      'load_avg_1m': load_average(),
      'malloc': malloc(),
  }


def malloc() -> str:
  """The allocator this process runs on: 'tcmalloc' when it is preloaded (launch/common.sh
  does that), else 'glibc'. It moves the CPU train step by ~1.1x (RESULTS.md section 7)."""
  try:
    with open('/proc/self/maps', encoding='utf-8') as f:
      return 'tcmalloc' if 'libtcmalloc' in f.read() else 'glibc'
  except OSError:
    return 'unknown'


def tcmalloc_env() -> dict:
  """The environment launch/common.sh gives the train binary for tcmalloc (LD_PRELOAD and
  its report threshold), for benchmarks that start processes; {} where none is found."""
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  shown = subprocess.run(
      ['bash', '-c', 'source launch/common.sh && preload_tcmalloc 2>/dev/null && '
       'echo "$LD_PRELOAD" && echo "$TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"'],
      cwd=repo, env={k: v for k, v in os.environ.items() if k != 'LD_PRELOAD'},
      capture_output=True, text=True, check=True).stdout.splitlines()
  if not shown or 'tcmalloc' not in shown[0]:
    return {}
  return {'LD_PRELOAD': shown[0], 'TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD': shown[1]}


def peak_rss_mib() -> float:
  """This process's resident-memory high-water mark (VmHWM), MiB."""
  try:
    with open('/proc/self/status', encoding='utf-8') as f:
      for line in f:
        if line.startswith('VmHWM:'):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def cpu_seconds() -> float:
  """User + system CPU seconds of this process and its waited-for children."""
  own = resource.getrusage(resource.RUSAGE_SELF)
  kids = resource.getrusage(resource.RUSAGE_CHILDREN)
  return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def matmul_peak_flops(n: int = 2048, repeats: int = 5, dtype: str = 'float32',
                      precision: str = 'highest') -> tuple[float, float]:
  """(best FLOP/s per wall second, best FLOP/s per CPU-second) of an n x n x n
  matmul under jax.jit on the default device, both from the same timed runs.

  The same XLA backend and thread pool as the model's step, so step FLOP/s
  divided by this is an MFU against what this machine really delivers (a
  datasheet peak would mix in clock, SIMD width and load we cannot see).
  Best of `repeats` so a burst of load from other jobs does not lower it.

  Per CPU-second counts the CPU time of this process (all its threads). On a
  shared machine the share of the cores a process gets drifts from second to
  second, but the work done per CPU-second does not, so the step's FLOPs per
  CPU-second over it is an MFU that load does not move (on an idle machine it
  equals the wall MFU when the step keeps every core busy, and exceeds it by the
  step's serial, one-core parts).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  matmul = jax.jit(lambda x, y: jnp.dot(x, y, precision=precision))
  jax.block_until_ready(matmul(a, b))
  best_wall = best_cpu = float('inf')
  for _ in range(repeats):
    wall, cpu = time.perf_counter(), time.process_time()
    jax.block_until_ready(matmul(a, b))
    best_wall = min(best_wall, time.perf_counter() - wall)
    best_cpu = min(best_cpu, time.process_time() - cpu)
  return 2 * n**3 / best_wall, 2 * n**3 / best_cpu


# (M, K, N) of the timed products: squares, and the model's own tall-skinny shapes
# (base's fusion over batch 8: 1584 tokens x 768 into the 3072-wide MLP, and back).
MATMUL_SHAPES = ((1024, 1024, 1024), (2048, 2048, 2048), (1584, 768, 3072), (1584, 3072, 768))


def _best_rate(run, flops: float, repeats: int) -> tuple[float, float]:
  run()  # warm-up (compiles, allocates)
  best_wall = best_cpu = float('inf')
  for _ in range(repeats):
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    best_wall = min(best_wall, time.perf_counter() - wall)
    best_cpu = min(best_cpu, max(time.process_time() - cpu, 1e-9))
  return flops / best_wall, flops / best_cpu


def _matmul_runner(library: str, shape, dtype: str):
  """A no-argument function running one (M, K) x (K, N) product, or None where the
  library has no such dtype on this machine."""
  m, k, n = shape
  if library == 'xla':
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    a = jax.random.normal(jax.random.key(0), (m, k), dtype)
    b = jax.random.normal(jax.random.key(1), (k, n), dtype)
    fn = jax.jit(lambda x, y: jnp.dot(x, y, precision='highest'))
    return lambda: jax.block_until_ready(fn(a, b))
  if library == 'numpy':
    import numpy as np  # pylint: disable=g-import-not-at-top
    if dtype != 'float32':
      return None
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((m, k), np.float32), rng.standard_normal((k, n), np.float32)
    return lambda: a @ b
  if library == 'torch':
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError:
      return None
    a = torch.randn(m, k, dtype=getattr(torch, dtype))
    b = torch.randn(k, n, dtype=getattr(torch, dtype))
    return lambda: a @ b
  raise ValueError(f'unknown matmul library {library!r}')


def library_rates(library: str, shapes, dtypes, repeats: int = 3) -> list[dict]:
  """One row per (dtype, shape) of `library` in this process: best GFLOP/s per wall
  and per CPU-second."""
  rows = []
  for dtype in dtypes:
    for shape in shapes:
      run = _matmul_runner(library, shape, dtype)
      if run is None:
        continue
      wall, cpu = _best_rate(run, 2.0 * shape[0] * shape[1] * shape[2], repeats)
      rows.append({'library': library, 'dtype': dtype, 'shape': list(shape),
                   'gflops': wall / 1e9, 'gflop_per_cpu_s': cpu / 1e9})
  return rows


def matmul_rates(shapes=MATMUL_SHAPES, dtypes=('float32',), libraries=('xla', 'numpy', 'torch'),
                 repeats: int = 3) -> list[dict]:
  """library_rates of each library, each in its own child process: three thread pools
  (XLA's, OpenBLAS's, torch's OpenMP) in one process spin against each other on a
  small machine and slow one another by 10-100x. A library that is not installed
  gives no rows."""
  import json  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  rows = []
  for library in libraries:
    code = ('import json; from benchmarks import machine; print(json.dumps(machine.library_rates('
            f'{library!r}, {[tuple(s) for s in shapes]!r}, {tuple(dtypes)!r}, {repeats})))')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          check=False, cwd=os.path.dirname(os.path.dirname(__file__)) or '.',
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', OMP_WAIT_POLICY='PASSIVE'))
    if proc.returncode != 0:
      raise RuntimeError(f'matmul rates of {library} failed: {proc.stderr.strip()[-500:]}')
    rows += json.loads(proc.stdout.strip().splitlines()[-1])
  return rows


def best_matmul_peak(dtype: str = 'float32', shapes=MATMUL_SHAPES,
                     libraries=('xla', 'numpy', 'torch')) -> dict:
  """The MFU denominator: the best `dtype` rate over libraries and shapes, measured now.

  {'flops', 'flops_per_cpu_s', 'by': 'library MxKxN', 'rows'}.
  """
  rows = matmul_rates(shapes, (dtype,), libraries)
  best = max(rows, key=lambda r: r['gflops'])
  return {'flops': best['gflops'] * 1e9,
          'flops_per_cpu_s': max(r['gflop_per_cpu_s'] for r in rows) * 1e9,
          'by': f"{best['library']} {'x'.join(map(str, best['shape']))}", 'rows': rows}


def main() -> None:
  """python -m benchmarks.machine: the machine, and fp32 vs bf16 matmul rates per library."""
  import json  # pylint: disable=g-import-not-at-top
  print(json.dumps(describe()))
  load = load_average()
  rows = matmul_rates(dtypes=('float32', 'bfloat16'))
  print('| library | dtype | M x K x N | GFLOP/s | GFLOP per CPU-s |')
  print('|---|---|---|---:|---:|')
  for r in rows:
    print(f"| {r['library']} | {r['dtype']} | {'x'.join(map(str, r['shape']))} | "
          f"{r['gflops']:.0f} | {r['gflop_per_cpu_s']:.0f} |")
  print(f'load average {load}-{load_average()}')


if __name__ == '__main__':
  main()
