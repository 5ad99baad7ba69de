r"""Train step throughput and MFU of M5-MMT on this machine, against its own matmul peak.

    python -m benchmarks.train_step --size base --form features --batch_size 8 --steps 5

The step is the real one: m5_jax.train's task (masking + model + every loss),
its jitted train step with AdamW, on synthetic batches of the configured schema
(m5_jax/synthetic_input.py), so the input pipeline is not in the measurement.

  model FLOPs   the matmul FLOPs of one step (forward + backward) counted on its
                jaxpr (m5_jax/flops.py; scanned layers count once per
                layer). XLA's cost analysis of the compiled step (what the train
                binary logs) is reported beside it as xla_gflop: it also counts
                elementwise work, and counts a scanned layer stack only once
  MFU           model FLOPs / step time / peak, where peak is the best fp32 matmul
                FLOP/s of XLA, numpy's BLAS and torch at several shapes, measured
                in this process just before and just after the steps
                (benchmarks/machine.py; on an accelerator, XLA's in its dtype)
  MFU per CPU-second   the same with CPU seconds of this process instead of wall
                seconds, for the step and for the peak: on a shared machine the
                wall MFU moves with the share of the cores we get between the
                two timings (matmul_peak_spread says by how much), this does not

Prints one JSON object (with --json) or a line of text.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time

import jax

from benchmarks import machine


def make_config(size: str, form: str, batch_size: int, modalities: str = 'itpva',
                overrides: dict | None = None):
  """The m5_mmt config the train binary would build, on synthetic data."""
  from configs import common  # pylint: disable=g-import-not-at-top
  config = common.get_config('m5_mmt', f'size={size},form={form},batch_size={batch_size},'
                             f'modalities={modalities}')
  config.input.dataset = 'synthetic'
  config.total_steps = 1000
  config.schedule.warmup_steps = 10
  for key, value in (overrides or {}).items():
    node = config
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def sequence_lengths(config) -> dict[str, int]:
  """Tokens per example per modality, as the model sees them."""
  from m5_jax import batch as batch_lib  # pylint: disable=g-import-not-at-top
  from m5_jax import models  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  model = models.build(config)
  batch = batch_lib.zeros_batch(config, 1)
  out = jax.eval_shape(lambda: model.init_with_output(
      {'params': jax.random.key(0), 'dropout': jax.random.key(0)}, batch, train=False)[0])
  return {m: int(np.prod(x.shape[1:])) for m, x in out['token_mask'].items()}


def _step_setup(config):
  """m5_jax.train's StepSetup for `config` (its mesh, task, optimizer, state shapes and
  shardings, and its train step)."""
  from m5_jax import sharding  # pylint: disable=g-import-not-at-top
  from m5_jax import train  # pylint: disable=g-import-not-at-top
  return train.make_step_setup(config, sharding.make_mesh(config.mesh), config.total_steps, 10)


def build_step(size: str, form: str, batch_size: int, modalities: str = 'itpva',
               overrides: dict | None = None, steps: int = 4) -> dict:
  """The compiled real train step, its initial state, synthetic batches and its
  matmul FLOPs: {'config', 'compiled', 'state', 'batches', 'flops', 'xla_flops',
  'compile_s', 'num_params'} (shared with benchmarks/op_profile.py)."""
  from m5_jax import flops as flops_lib  # pylint: disable=g-import-not-at-top
  from m5_jax import synthetic_input  # pylint: disable=g-import-not-at-top

  config = make_config(size, form, batch_size, modalities, overrides)
  setup = _step_setup(config)
  state = setup.init_state()
  data = synthetic_input.SyntheticIterator(config, setup.mesh, batch_size, config.seed)
  batches = [next(data) for _ in range(min(steps, 4))]  # made once: no host work timed

  start = time.perf_counter()
  traced, lowered = setup.lower(state, batches[0])
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  return {'config': config, 'compiled': compiled, 'state': state, 'batches': batches,
          'flops': flops_lib.jaxpr_matmul_flops(traced.jaxpr),
          'xla_flops': flops_lib.train_step_flops(compiled), 'compile_s': compile_s,
          'num_params': sum(x.size for x in jax.tree.leaves(setup.abstract['params']))}


def matmul_peak(matmul_n: int = 2048, dtype: str = 'float32') -> tuple[float, float]:
  """(per wall second, per CPU-second): the best `dtype` matmul FLOP/s, measured now.

  On CPU in fp32, the best of XLA, numpy's BLAS and torch at n/2 and n squares and,
  for n >= 2048, base's MLP shapes (machine.best_matmul_peak); elsewhere XLA's at
  the two squares (machine.matmul_peak_flops)."""
  if dtype == 'float32' and jax.devices()[0].platform == 'cpu':
    shapes = [(n, n, n) for n in (matmul_n // 2, matmul_n)]
    if matmul_n >= 2048:
      shapes += [s for s in machine.MATMUL_SHAPES if len(set(s)) > 1]
    best = machine.best_matmul_peak('float32', shapes)
    return best['flops'], best['flops_per_cpu_s']
  peaks = [machine.matmul_peak_flops(n, dtype=dtype) for n in (matmul_n // 2, matmul_n)]
  return max(wall for wall, _ in peaks), max(cpu for _, cpu in peaks)


# Dense bf16 tensor-core peaks from the vendor's datasheets (TFLOP/s, SXM parts): the
# denominator MFU is usually quoted against, reported beside our measured-matmul MFU.
DATASHEET_BF16_TFLOPS = {'H100': 989.4, 'H200': 989.4, 'A100': 312.0}


def datasheet_peak_flops(device_kind: str, dtype: str) -> float | None:
  if dtype != 'bfloat16':
    return None
  for name, tflops in DATASHEET_BF16_TFLOPS.items():
    if name in device_kind:
      return tflops * 1e12
  return None


def measure(size: str, form: str, batch_size: int, steps: int, modalities: str = 'itpva',
            overrides: dict | None = None, matmul_n: int = 2048,
            dtype: str = 'float32') -> dict:
  """Examples/s and MFU of `steps` train steps after one warm-up step.

  dtype: the model's matmul compute dtype (config.model.dtype) and the dtype of
  the peak matmul (bfloat16 on a GPU: the H100 MFU of the issue).
  """
  overrides = dict(overrides or {}, **{'model.dtype': dtype})
  load_start = machine.load_average()
  peak_before, cpu_peak_before = matmul_peak(matmul_n, dtype)
  built = build_step(size, form, batch_size, modalities, overrides, steps)
  config, compiled, state, batches = (built['config'], built['compiled'], built['state'],
                                      built['batches'])
  compile_s, xla_flops, flops = built['compile_s'], built['xla_flops'], built['flops']
  num_params = built['num_params']

  state, metrics = compiled(state, batches[0])  # warm-up (first run allocates)
  jax.block_until_ready(metrics)
  times, cpu_times = [], []
  for i in range(steps):
    start, cpu_start = time.perf_counter(), time.process_time()
    state, metrics = compiled(state, batches[i % len(batches)])
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
    cpu_times.append(time.process_time() - cpu_start)
  peak_after, cpu_peak_after = matmul_peak(matmul_n, dtype)
  cpu_peak = max(cpu_peak_before, cpu_peak_after)
  step_cpu_s = sorted(cpu_times)[len(cpu_times) // 2]

  step_s = sorted(times)[len(times) // 2]  # median: robust to a burst of load
  datasheet = datasheet_peak_flops(jax.devices()[0].device_kind, dtype)
  peak = max(peak_before, peak_after)
  result = {
      'size': size, 'form': form, 'modalities': modalities, 'batch_size': batch_size,
      'dtype': dtype,
      'steps': steps, 'overrides': overrides or {}, 'params_millions': num_params / 1e6,
      'tokens_per_example': sequence_lengths(config),
      'compile_s': compile_s, 'step_s_median': step_s, 'step_s_min': min(times),
      'examples_per_s': batch_size / step_s,
      'step_gflop': flops / 1e9, 'xla_gflop': xla_flops / 1e9 if xla_flops else None,
      'achieved_gflops': flops / step_s / 1e9,
      'matmul_peak_gflops': peak / 1e9,
      'matmul_peak_spread': abs(peak_before - peak_after) / peak,
      'mfu': flops / step_s / peak,
      # Load-independent version (machine.matmul_peak_flops, per CPU-second).
      'step_cpu_s_median': step_cpu_s,
      'matmul_peak_gflop_per_cpu_s': cpu_peak / 1e9,
      'mfu_per_cpu_second': flops / step_cpu_s / cpu_peak,
      'loss': float(metrics['loss']),
      'load_avg_start': load_start, 'load_avg_end': machine.load_average(),
      'devices': f'{jax.device_count()} x {jax.devices()[0].platform}',
      'device_kind': jax.devices()[0].device_kind,
      'mfu_datasheet': (flops / step_s / datasheet) if datasheet else None,
      'peak_rss_mib': machine.peak_rss_mib(),
  }
  return result


def layer_matmul_efficiency(size: str, form: str, batch_size: int, modalities: str = 'itpva',
                            matmul_n: int = 2048, repeats: int = 3) -> dict:
  """How fast this machine runs the matmuls of one transformer layer at the model's shapes.

  For each token count the model sees (each modality encoder; the fusion over all
  tokens), times the forward matmuls of one block - q, k, v, out [B*L, D] x [D, D]
  and the MLP [B*L, D] x [D, F], [B*L, F] x [F, D] - under jit, and divides their
  FLOP/s by the square-matmul peak measured now. An MFU above this is out of
  reach for that layer whatever the rest of the step does; the gap between it
  and the step's MFU is the non-matmul work (layer norms, softmax, GELU,
  dropout masks, the optimizer) plus attention's small batched matmuls.
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  config = make_config(size, form, batch_size, modalities)
  hidden, mlp = config.model.hidden, config.model.mlp_dim
  lengths = sequence_lengths(config)
  lengths['fusion (all)'] = sum(lengths.values())

  def layer(x, w_d, w_up, w_down):
    for _ in range(4):  # q, k, v, out
      x = jnp.dot(x, w_d, precision='highest')
    return jnp.dot(jnp.dot(x, w_up, precision='highest'), w_down, precision='highest')

  def best_seconds(f, *args):
    jax.block_until_ready(f(*args))
    best = float('inf')
    for _ in range(repeats):
      start = time.perf_counter()
      jax.block_until_ready(f(*args))
      best = min(best, time.perf_counter() - start)
    return best

  fn = jax.jit(layer)
  square = jax.jit(lambda a, b: jnp.dot(a, b, precision='highest'))
  key = jax.random.key(0)
  a = jax.random.normal(key, (matmul_n, matmul_n))
  w_d = jax.random.normal(key, (hidden, hidden))
  w_up, w_down = jax.random.normal(key, (hidden, mlp)), jax.random.normal(key, (mlp, hidden))
  out = {}
  for name, length in lengths.items():
    rows = batch_size * length
    x = jax.random.normal(key, (rows, hidden))
    flops = 2 * rows * hidden * (4 * hidden + 2 * mlp)
    # The peak is re-measured next to each shape: on a shared machine the share of
    # the cores we get drifts, and the ratio of two adjacent timings is what holds.
    peak = 2 * matmul_n**3 / best_seconds(square, a, a)
    layer_flops = flops / best_seconds(fn, x, w_d, w_up, w_down)
    peak = max(peak, 2 * matmul_n**3 / best_seconds(square, a, a))
    out[name] = {'rows': rows, 'gflops': layer_flops / 1e9, 'peak_gflops': peak / 1e9,
                 'of_peak': layer_flops / peak}
  return out


def step_anatomy(size: str, form: str, batch_size: int, modalities: str = 'itpva',
                 overrides: dict | None = None, top: int = 12) -> dict:
  """What the train step's jaxpr holds, without compiling or running it: its matmul
  FLOPs by product shape (flops.matmul_shapes; `top` largest), the share of plain
  (unbatched) products with M, N and K all >= 512 (GEMMs that can run near a GPU's
  peak), and the random 32-bit values drawn per step (dropout masks)."""
  from jax.extend import core as jax_core  # pylint: disable=g-import-not-at-top
  from m5_jax import batch as batch_lib  # pylint: disable=g-import-not-at-top
  from m5_jax import flops as flops_lib  # pylint: disable=g-import-not-at-top

  config = make_config(size, form, batch_size, modalities, overrides)
  setup = _step_setup(config)
  with setup.activations():
    batch = jax.eval_shape(lambda: batch_lib.zeros_batch(config, batch_size))
    jaxpr = jax.make_jaxpr(setup.train_step())(setup.abstract, batch)

  shapes = flops_lib.matmul_shapes(jaxpr)
  total = sum(shapes.values())
  gemm = sum(f for (kind, b, m, n, k), f in shapes.items()
             if kind == 'dot' and b == 1 and min(m, n, k) >= 512)

  def random_values(j, times):
    count = 0
    for eqn in j.eqns:
      if eqn.primitive.name == 'random_bits':
        count += times * sum(math.prod(v.aval.shape) for v in eqn.outvars)
      inner = times * eqn.params['length'] if eqn.primitive.name == 'scan' else times
      for sub in jax_core.jaxprs_in_params(eqn.params):
        count += random_values(sub, inner)
    return count

  return {'size': size, 'form': form, 'batch_size': batch_size,
          'overrides': overrides or {}, 'step_gflop': total / 1e9,
          'gemm_share': gemm / total,
          'random_values_per_step': random_values(jaxpr.jaxpr, 1),
          'top_shapes': [{'kind': kind, 'batch': b, 'm': m, 'n': n, 'k': k,
                          'share': f / total} for (kind, b, m, n, k), f in
                         sorted(shapes.items(), key=lambda kv: -kv[1])[:top]]}


def parse_overrides(items) -> dict:
  out = {}
  for item in items or ():
    key, _, value = item.partition('=')
    out[key] = json.loads(value) if value[:1] in '0123456789-[{tfn"' else value
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--size', default='tiny')
  parser.add_argument('--form', default='features', choices=('raw', 'features'))
  parser.add_argument('--modalities', default='itpva')
  parser.add_argument('--batch_size', type=int, default=8)
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--matmul_n', type=int, default=2048)
  parser.add_argument('--dtype', default='float32', help='matmul compute dtype (and of the peak)')
  parser.add_argument('--set', action='append', metavar='KEY=VALUE',
                      help='config override, e.g. --set model.scan_layers=true')
  parser.add_argument('--json', action='store_true', help='print one JSON object')
  parser.add_argument('--anatomy', action='store_true',
                      help='only trace the step: matmul FLOPs by shape, GEMM share, '
                      'random values per step (no compile, no timing)')
  parser.add_argument('--layer_matmuls', action='store_true',
                      help='only time one layer\'s matmuls at the model\'s shapes vs the peak')
  args = parser.parse_args(argv)
  if args.anatomy:
    overrides = dict(parse_overrides(args.set), **{'model.dtype': args.dtype})
    print(json.dumps(step_anatomy(args.size, args.form, args.batch_size, args.modalities,
                                  overrides), indent=None if args.json else 1))
    return 0
  if args.layer_matmuls:
    print(json.dumps(layer_matmul_efficiency(args.size, args.form, args.batch_size,
                                             args.modalities, args.matmul_n)))
    return 0
  result = measure(args.size, args.form, args.batch_size, args.steps, args.modalities,
                   parse_overrides(args.set), args.matmul_n, args.dtype)
  if args.json:
    print(json.dumps(result))
  else:
    print(f"{args.size}/{args.form} batch {args.batch_size}: {result['examples_per_s']:.2f} "
          f"examples/s, step {result['step_s_median']:.3f} s, {result['step_gflop']:.1f} GFLOP, "
          f"{result['achieved_gflops']:.1f} GFLOP/s vs matmul peak "
          f"{result['matmul_peak_gflops']:.1f} -> MFU {100 * result['mfu']:.1f}% "
          f"(per CPU-second: {100 * result['mfu_per_cpu_second']:.1f}%) "
          f"(compile {result['compile_s']:.0f} s, load {result['load_avg_start']}-"
          f"{result['load_avg_end']}, peak RSS {result['peak_rss_mib']:.0f} MiB)")
  return 0


if __name__ == '__main__':
  sys.exit(main())
