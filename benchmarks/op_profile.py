"""Where a train step's time goes, op by op: why MFU is what it is.

    .venv/bin/python -m benchmarks.op_profile --size base --batch_size 8 --steps 2 \
        --set model.scan_layers=true [--json]
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python -m benchmarks.op_profile --peer --size small

Builds the real train step exactly as benchmarks/train_step.py does, runs
`--steps` steps under `jax.profiler.trace`, and reads the trace with XProf
(`pip install -r benchmarks/requirements.txt`). XLA:CPU records one trace event
per executed thunk, named after its HLO instruction ("dot.2", "ynn_fusion.13",
"broadcast_subtract_fusion"); each instruction is classified by the ops in its
body in the compiled HLO (first match wins):

  matmul      dot / convolution (incl. YNNPACK fusions of a dot and its epilogue)
  rng         random bits: rng-bit-generator, or xor + logical shifts (threefry)
  exp         exponential (softmax, log-softmax, sigmoid)
  reduce      reductions (layer-norm statistics, sums, arg-max)
  layout      copies, transposes, concatenates, slices, gathers/scatters, pads
  elementwise everything else (XLA:CPU expands the exact GELU's erf into a
              polynomial, so GELU lands here)

The table gives each category's share of the summed thunk time and, for
matmuls, the GFLOP/s they reach while running (the step's matmul FLOPs counted on
its jaxpr over the matmul thunks' time). Step MFU = matmul share x matmul
efficiency, so the table says how much of the gap to the peak is non-matmul work
and how much is matmuls running below the peak.
"""
from __future__ import annotations

import argparse
import collections
import functools
import glob
import json
import re
import sys
import tempfile
import time

from benchmarks import machine
from benchmarks import train_step as train_step_lib

CATEGORIES = ('matmul', 'rng', 'exp', 'reduce', 'layout', 'elementwise')
_LAYOUT = ('copy', 'transpose', 'concatenate', 'slice', 'dynamic-slice', 'dynamic-update-slice',
           'gather', 'scatter', 'pad', 'reshape', 'bitcast', 'broadcast', 'iota', 'reverse')
_INSTRUCTION = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*\S.*?\s([a-z][\w\-]*)\(', re.M)
_CALLS = re.compile(r'(?:calls|to_apply|body|condition)=%?([\w.\-]+)')
_COMPUTATION = re.compile(r'^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$', re.M)
_RESULT_SHAPE = re.compile(r'=\s*(\S+)\s')
_OP_NAME = re.compile(r'op_name="([^"]+)"')


def parse_hlo(text: str) -> tuple[dict[str, tuple[str, list[str]]], dict[str, list]]:
  """Compiled HLO text -> (instruction name -> (opcode, computations it calls), computation
  -> [(opcode, computations called)] of its instructions). Names can repeat across
  computations (fusion parameters): the last definition wins in the first map, which
  is the one with thunks, as the text lists fused computations before their callers."""
  instructions, members = {}, collections.defaultdict(list)
  current = None
  for line in text.splitlines():
    head = _COMPUTATION.match(line)
    if head and '=' not in line.split('{')[0]:
      current = head.group(1)
      continue
    inst = _INSTRUCTION.match(line)
    if not inst:
      continue
    entry = (inst.group(2), _CALLS.findall(line))
    instructions[inst.group(1)] = entry
    if current:
      members[current].append(entry)
  return instructions, members


def classify(ops: set[str]) -> str:
  """A category of CATEGORIES for an instruction whose (fused) body has these opcodes."""
  if ops & {'dot', 'convolution'}:
    return 'matmul'
  if 'rng-bit-generator' in ops or ('xor' in ops and ops & {'shift-right-logical',
                                                             'shift-left'}):
    return 'rng'
  if 'exponential' in ops or 'exponential-minus-one' in ops:
    return 'exp'
  if ops & {'reduce', 'reduce-window'}:
    return 'reduce'
  if ops <= set(_LAYOUT) | {'parameter', 'constant', 'tuple', 'get-tuple-element'}:
    return 'layout'
  return 'elementwise'


def instruction_categories(hlo_text: str) -> dict[str, str]:
  """HLO instruction name -> category, from its opcode and, for fusions and other
  calls, the opcodes of the computations it calls (recursively). Control flow
  (while, conditional, call) is left out: its body's thunks have their own events."""
  instructions, members = parse_hlo(hlo_text)

  @functools.cache
  def computation_ops(comp: str, depth: int = 0) -> frozenset:
    ops = set()
    for op, called in members.get(comp, ()):
      ops.add(op)
      if depth < 8:  # fusions nest a few levels at most
        for inner in called:
          ops |= computation_ops(inner, depth + 1)
    return frozenset(ops)

  out = {}
  for name, (op, called) in instructions.items():
    if op in ('while', 'conditional', 'call'):
      continue
    ops = {op} - {'fusion'}  # a fusion is what it fuses
    for comp in called:
      ops |= computation_ops(comp)
    out[name] = classify(ops)
  return out


def describe_instructions(hlo_text: str) -> dict[str, str]:
  """HLO instruction name -> 'result shape  <- the JAX op that made it' (the op_name
  metadata's last three path parts), to tell which source line a costly thunk is."""
  out = {}
  for line in hlo_text.splitlines():
    inst = _INSTRUCTION.match(line)
    if not inst:
      continue
    shape = _RESULT_SHAPE.search(line)
    op_name = _OP_NAME.search(line)
    out[inst.group(1)] = ((shape.group(1) if shape else '?') + '  <- ' +
                          ('/'.join(op_name.group(1).split('/')[-3:]) if op_name else '?'))
  return out


def thunk_times(trace_events: list[dict], categories: dict[str, str]) -> dict[str, dict]:
  """Summed duration (us) and count of the trace's thunk events per category (and,
  under '_by_instruction', per HLO instruction)."""
  out = {c: {'us': 0.0, 'events': 0} for c in CATEGORIES}
  unmatched, by_instruction = collections.Counter(), collections.Counter()
  for event in trace_events:
    name = event.get('name', '')
    if event.get('ph') != 'X' or name.startswith('end: '):
      continue
    category = categories.get(name)
    if category is None:
      if re.match(r'^[a-z][\w\-]*(\.\d+)?$', name) and '::' not in name:
        unmatched[name] += 1
      continue
    out[category]['us'] += float(event.get('dur', 0.0))
    out[category]['events'] += 1
    by_instruction[name] += float(event.get('dur', 0.0))
  out['_unmatched'] = dict(unmatched.most_common(10))
  out['_by_instruction'] = dict(by_instruction)
  return out


def profile(size: str, form: str, batch_size: int, steps: int, modalities: str = 'itpva',
            overrides: dict | None = None, top: int = 0) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from xprof.convert import raw_to_tool_data  # pylint: disable=g-import-not-at-top

  built = train_step_lib.build_step(size, form, batch_size, modalities, overrides)
  compiled, state, batches = built['compiled'], built['state'], built['batches']
  hlo_text = compiled.as_text()
  categories = instruction_categories(hlo_text)
  state, metrics = compiled(state, batches[0])  # warm-up
  jax.block_until_ready(metrics)
  trace_dir = tempfile.mkdtemp(prefix='m5_op_profile_')
  start, cpu_start = time.perf_counter(), machine.cpu_seconds()
  with jax.profiler.trace(trace_dir):
    for i in range(steps):
      state, metrics = compiled(state, batches[i % len(batches)])
      jax.block_until_ready(metrics)
  wall, cpu = time.perf_counter() - start, machine.cpu_seconds() - cpu_start
  paths = glob.glob(f'{trace_dir}/**/*.xplane.pb', recursive=True)
  data, _ = raw_to_tool_data.xspace_to_tool_data(paths, 'trace_viewer@', {})
  events = json.loads(data)['traceEvents']
  times = thunk_times(events, categories)
  unmatched, by_instruction = times.pop('_unmatched'), times.pop('_by_instruction')
  total_us = sum(t['us'] for t in times.values())
  matmul_s = times['matmul']['us'] / 1e6
  flops = built['flops'] * steps
  peak, _ = train_step_lib.matmul_peak()
  result = {
      'size': size, 'form': form, 'batch_size': batch_size, 'steps': steps,
      'overrides': overrides or {}, 'wall_s_per_step': wall / steps, 'cpu_s_per_step': cpu / steps,
      'thunk_s_per_step': total_us / 1e6 / steps,
      'shares': {c: t['us'] / total_us if total_us else 0.0 for c, t in times.items()},
      'events': {c: t['events'] for c, t in times.items()},
      'step_gflop': built['flops'] / 1e9,
      'matmul_gflops_while_running': flops / matmul_s / 1e9 if matmul_s else None,
      'matmul_peak_gflops': peak / 1e9,
      'mfu_wall': flops / wall / peak,
      'unmatched_events': unmatched,
      'load_avg': machine.load_average(), 'peak_rss_mib': machine.peak_rss_mib(),
      'trace_dir': trace_dir,
  }
  if top:  # the costliest thunks of each non-matmul category, with the JAX op behind each
    described = describe_instructions(hlo_text)
    result['top'] = {
        c: [(name, 100 * us / total_us, described.get(name, '?')) for name, us in sorted(
            ((n, us) for n, us in by_instruction.items() if categories[n] == c),
            key=lambda item: -item[1])[:top]]
        for c in CATEGORIES if c != 'matmul'}
  result['matmul_efficiency_while_running'] = (
      result['matmul_gflops_while_running'] / result['matmul_peak_gflops']
      if result['matmul_gflops_while_running'] else None)
  return result


# The torch peer's ops (benchmarks/peer_model.py) in the same categories, by aten name.
_TORCH_CATEGORIES = (
    ('matmul', ('mm', 'addmm', 'bmm', 'baddbmm', 'linear', 'matmul', 'scaled_dot_product',
                'flash_attention', 'convolution')),
    ('rng', ('bernoulli', 'rand', 'randint', 'dropout', 'native_dropout')),
    ('exp', ('softmax', 'log_softmax', 'exp', 'cross_entropy', 'nll_loss')),
    ('reduce', ('layer_norm', 'native_layer_norm', 'linalg_vector_norm', 'sum', 'mean', 'var', 'norm', 'amax', 'any', 'topk', 'sort')),
    ('layout', ('copy', 'cat', 'transpose', 'permute', 'view', 'reshape', 'clone', 'contiguous',
                'gather', 'index', 'pad', 'expand', 'slice', 'select', 'stack', 'scatter',
                'repeat', 'embedding')),
)


def torch_category(op_name: str) -> str:
  name = op_name.split('::')[-1].lstrip('_')
  for category, keys in _TORCH_CATEGORIES:
    if any(name == k or name.startswith(k + '_') for k in keys):
      return category
  return 'elementwise'


def profile_peer(size: str, batch_size: int, steps: int, overrides: dict | None = None) -> dict:
  """The torch peer's eager step under torch.profiler: self CPU time per category (the
  kernels' own time, as XLA's thunks are), to set beside m5_jax's table."""
  import torch  # pylint: disable=g-import-not-at-top
  from benchmarks import peer_torch  # pylint: disable=g-import-not-at-top
  worker = peer_torch.TorchWorker(size, batch_size, overrides or {}, compiled=False)
  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
    start = time.perf_counter()
    for _ in range(steps):
      worker.step()
    wall = time.perf_counter() - start
  totals = collections.Counter()
  for event in prof.key_averages():
    if event.key.startswith('aten::') and event.self_cpu_time_total > 0:
      totals[torch_category(event.key)] += event.self_cpu_time_total
  total = sum(totals.values())
  return {'size': size, 'batch_size': batch_size, 'steps': steps, 'peer': 'torch eager',
          'wall_s_per_step': wall / steps, 'op_s_per_step': total / 1e6 / steps,
          'shares': {c: totals[c] / total if total else 0.0 for c in CATEGORIES},
          'load_avg': machine.load_average()}


def table(r: dict) -> str:
  if r.get('peer'):
    lines = [f"torch peer ({r['peer']}) {r['size']} batch {r['batch_size']}: "
             f"{r['wall_s_per_step']:.2f} s/step wall, {r['op_s_per_step']:.2f} s of aten ops "
             f"per step (load {r['load_avg']})", '| category | share of op time |', '|---|---:|']
    lines += [f"| {c} | {100 * r['shares'][c]:.1f}% |" for c in CATEGORIES]
    return '\n'.join(lines)
  lines = [f"{r['size']}/{r['form']} batch {r['batch_size']}: {r['wall_s_per_step']:.2f} s/step "
           f"wall, {r['cpu_s_per_step']:.2f} CPU s/step, {r['thunk_s_per_step']:.2f} s of thunks "
           f"per step; MFU {100 * r['mfu_wall']:.1f}% of {r['matmul_peak_gflops']:.0f} GFLOP/s",
           '| category | share of thunk time | thunks |', '|---|---:|---:|']
  for c in CATEGORIES:
    lines.append(f"| {c} | {100 * r['shares'][c]:.1f}% | {r['events'][c]} |")
  if r['matmul_gflops_while_running']:
    lines.append(f"matmul thunks run at {r['matmul_gflops_while_running']:.0f} GFLOP/s = "
                 f"{100 * r['matmul_efficiency_while_running']:.0f}% of the in-run peak")
  for category, rows in r.get('top', {}).items():
    lines.append(f'costliest {category} thunks (share of thunk time, result, JAX op):')
    lines += [f'  {share:5.2f}%  {name}  {what}' for name, share, what in rows]
  return '\n'.join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--size', default='tiny')
  parser.add_argument('--form', default='features', choices=('raw', 'features'))
  parser.add_argument('--batch_size', type=int, default=8)
  parser.add_argument('--steps', type=int, default=2)
  parser.add_argument('--modalities', default='itpva')
  parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                      help='config override, e.g. model.scan_layers=true')
  parser.add_argument('--json', action='store_true')
  parser.add_argument('--top', type=int, default=0,
                      help='also list the N costliest thunks of each non-matmul category')
  parser.add_argument('--peer', action='store_true',
                      help='profile the torch peer (benchmarks/peer_model.py, eager, features '
                      'form) instead, by aten op')
  args = parser.parse_args(argv)
  overrides = train_step_lib.parse_overrides(args.set)
  if args.peer:
    r = profile_peer(args.size, args.batch_size, args.steps, overrides)
  else:
    r = profile(args.size, args.form, args.batch_size, args.steps, args.modalities, overrides,
                args.top)
  print(json.dumps(r) if args.json else table(r))
  return 0


if __name__ == '__main__':
  sys.exit(main())
