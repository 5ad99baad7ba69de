"""What every benchmark records next to its numbers: the machine, its load, peak memory,
and this machine's fp32 matmul peak measured through the same XLA (jit) as the model.

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


def describe() -> dict:
  """The machine in one dict: where and when the numbers were taken."""
  return {
      'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
      'cpu': cpu_model(),
      'cores': os.cpu_count(),
      'memory_gib': round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30, 1),
      'python': platform.python_version(),
      'load_avg_1m': load_average(),
  }


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
