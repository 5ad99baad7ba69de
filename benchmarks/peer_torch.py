r"""m5_jax against a PyTorch build of the same model, timed A/B in one run.

    python -m benchmarks.peer_torch --size small [--rounds 3 --steps 3] [--json]
    python -m benchmarks.peer_torch --size base --jax default= \
        --jax fast=model.activation=gelu_tanh,model.dropout_rng=rbg

The peer is benchmarks/peer_model.py (M5-MMT in torch at m5_jax's dimensions,
same losses, AdamW). Each arm is its own worker process, built and compiled (or
warmed) before any timing; then `--rounds` rounds run every arm for `--steps`
steps, the order rotating by one arm per round, so drift in the machine's load
falls on every arm alike. Arms:

  jax:<name>      m5_jax's real train step (benchmarks/train_step.build_step) with
                  the arm's config overrides
  torch_eager     the peer, eager, OMP_WAIT_POLICY=PASSIVE (idle OpenMP threads
                  sleep instead of spinning while another arm runs)
  torch_compile   the same under torch.compile (inductor), OMP_WAIT_POLICY=PASSIVE

Features form, fp32, batch 8 by default; every arm gets the same synthetic
batches (m5_jax/synthetic_input.make_batch). Before timing, the run checks that
the peer's parameter count and its train-step FLOPs (torch FlopCounterMode,
forward + backward) are within 3% of m5_jax's (jaxpr matmul count, m5_jax/flops.py)
and stops if not. Reports per arm the median examples/s and CPU-s per step, and
per jax arm its examples/s over each torch arm's, per round and the median.
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
TOLERANCE = 0.03
TORCH_ARMS = ('torch_eager', 'torch_compile')


def make_config(size, batch_size, overrides=None, modalities='itpva'):
  from benchmarks import train_step  # pylint: disable=g-import-not-at-top
  return train_step.make_config(size, 'features', batch_size, modalities, overrides)


def head_rows(config) -> dict:
  """{modality: K} where m5_jax applies the head at K gathered positions (the peer does too)."""
  from m5_jax import objectives  # pylint: disable=g-import-not-at-top
  return objectives.head_rows(config)


def jax_counts(config, batch_size) -> dict:
  """m5_jax's parameter count and the matmul FLOPs of its loss gradient (the train
  step's matmuls: the optimizer has none), traced, not compiled."""
  import jax  # pylint: disable=g-import-not-at-top
  from m5_jax import batch as batch_lib  # pylint: disable=g-import-not-at-top
  from m5_jax import flops as flops_lib  # pylint: disable=g-import-not-at-top
  from m5_jax import models  # pylint: disable=g-import-not-at-top
  from m5_jax import objectives  # pylint: disable=g-import-not-at-top
  model = models.build(config)
  batch = batch_lib.zeros_batch(config, batch_size)
  rng = jax.random.key(0)
  params = jax.eval_shape(lambda: model.init({'params': rng, 'dropout': rng}, batch))['params']

  def loss(params, batch, rng):
    masked, targets = objectives.mask_batch(batch, rng, config)
    outputs = objectives.pretraining_outputs(model, {'params': params}, masked, batch, rng, config,
                                             targets)
    return objectives.total_loss(objectives.losses(outputs, targets, config), config)

  return {'params': sum(x.size for x in jax.tree.leaves(params)),
          'flops': flops_lib.matmul_flops(jax.grad(loss), params, batch, rng)}


def torch_counts(model, batch, config) -> dict:
  """The peer's parameter count and FlopCounterMode's FLOPs of one forward + backward."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch.utils import flop_counter  # pylint: disable=g-import-not-at-top
  from benchmarks import peer_model  # pylint: disable=g-import-not-at-top
  masked, targets = peer_model.mask_batch(batch, config, torch.Generator().manual_seed(0))
  aten = torch.ops.aten
  # SDPA's CPU kernel has no formula in torch 2.13's counter: it is the same attention.
  cpu_sdpa = {
      aten._scaled_dot_product_flash_attention_for_cpu:
          lambda q, k, v, *_, **__: flop_counter.sdpa_flop_count(q, k, v),
      aten._scaled_dot_product_flash_attention_for_cpu_backward:
          lambda g, q, k, v, *_, **__: flop_counter.sdpa_backward_flop_count(g, q, k, v)}
  with flop_counter.FlopCounterMode(display=False, custom_mapping=cpu_sdpa) as counter:
    model(masked, batch, targets).backward()
  model.zero_grad(set_to_none=True)
  return {'params': sum(p.numel() for p in model.parameters()),
          'flops': float(counter.get_total_flops())}


# ----------------------------------------------------------------------- workers
class JaxWorker:
  """m5_jax's compiled train step on synthetic batches."""

  def __init__(self, size, batch_size, overrides):
    import jax  # pylint: disable=g-import-not-at-top
    from benchmarks import train_step  # pylint: disable=g-import-not-at-top
    self.jax = jax
    built = train_step.build_step(size, 'features', batch_size, overrides=overrides)
    self.compiled, self.state, self.batches = built['compiled'], built['state'], built['batches']
    self.info = {'params': built['num_params'], 'flops': built['flops'],
                 'compile_s': built['compile_s'], 'head_rows': head_rows(built['config'])}
    self.step()  # warm-up: the first run allocates

  def step(self):
    self.state, metrics = self.compiled(self.state, self.batches[0])
    self.jax.block_until_ready(metrics)


class TorchWorker:
  """The peer: masking + forward + backward + clipping + AdamW, eager or compiled."""

  def __init__(self, size, batch_size, overrides, compiled):
    import torch  # pylint: disable=g-import-not-at-top
    from benchmarks import peer_model  # pylint: disable=g-import-not-at-top
    from m5_jax import synthetic_input  # pylint: disable=g-import-not-at-top
    self.torch, self.peer = torch, peer_model
    torch.manual_seed(0)
    self.config = config = make_config(size, batch_size, overrides)
    self.model = peer_model.M5Peer(config, head_rows(config)).train()
    self.opt = peer_model.optimizer(self.model, config)
    self.gen = torch.Generator().manual_seed(0)
    self.batch = peer_model.to_torch(synthetic_input.make_batch(config, 0, batch_size,
                                                                config.seed))
    self.forward = torch.compile(self.model) if compiled else self.model
    counts = torch_counts(self.model, self.batch, config)
    start = time.perf_counter()
    for _ in range(2):  # compile (torch.compile) and warm up
      self.step()
    self.info = dict(counts, compile_s=time.perf_counter() - start,
                     threads=torch.get_num_threads())

  def _loss(self):
    masked, targets = self.peer.mask_batch(self.batch, self.config, self.gen)
    return self.forward(masked, self.batch, targets)

  def step(self):
    loss = self._loss()
    loss.backward()
    self.torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.optimizer.grad_clip_norm)
    self.opt.step()
    self.opt.zero_grad(set_to_none=True)


def worker_main(kind, size, batch_size, overrides) -> int:
  """Builds one arm, prints its info, then answers 'run N' with N steps' timings."""
  if kind == 'jax':
    worker = JaxWorker(size, batch_size, overrides)
  else:
    worker = TorchWorker(size, batch_size, overrides, compiled=kind == 'torch_compile')
  print(json.dumps(worker.info), flush=True)
  for line in sys.stdin:
    if not line.startswith('run'):
      break
    walls, cpus = [], []
    for _ in range(int(line.split()[1])):
      wall, cpu = time.perf_counter(), time.process_time()
      worker.step()
      walls.append(time.perf_counter() - wall)
      cpus.append(time.process_time() - cpu)
    print(json.dumps({'wall': walls, 'cpu': cpus}), flush=True)
  return 0


# -------------------------------------------------------------------- controller
class Arm:
  def __init__(self, name, kind, size, batch_size, overrides, malloc_env=None):
    self.name, self.kind, self.overrides = name, kind, overrides
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', **(malloc_env or {}))
    if kind != 'jax':
      env['OMP_WAIT_POLICY'] = 'PASSIVE'
    cmd = [sys.executable, '-m', 'benchmarks.peer_torch', '--worker', kind, '--size', size,
           '--batch_size', str(batch_size)] + [f'--set={k}={json.dumps(v)}'
                                               for k, v in overrides.items()]
    self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
    self.info, self.rounds = None, []

  def read(self) -> dict:
    for line in self.proc.stdout:
      if line.startswith('{'):
        return json.loads(line)
    raise RuntimeError(f'arm {self.name} exited (code {self.proc.wait()}); see its stderr')

  def run(self, steps):
    self.proc.stdin.write(f'run {steps}\n')
    self.proc.stdin.flush()
    self.rounds.append(self.read())

  def close(self):
    if self.proc.poll() is None:
      self.proc.stdin.write('quit\n')
      self.proc.stdin.close()
      self.proc.wait()


def median(values):
  values = sorted(values)
  mid = len(values) // 2
  return values[mid] if len(values) % 2 else 0.5 * (values[mid - 1] + values[mid])


def check_match(jax_info, torch_info) -> dict:
  """Parameter and FLOP ratios peer / m5_jax; raises if either is off by more than 3%."""
  ratios = {k: torch_info[k] / jax_info[k] for k in ('params', 'flops')}
  bad = {k: r for k, r in ratios.items() if abs(r - 1) > TOLERANCE}
  if bad:
    raise SystemExit(f'the peer does not match m5_jax within {TOLERANCE:.0%}: '
                     + ', '.join(f'{k} ratio {r:.4f}' for k, r in bad.items())
                     + f' (m5_jax {jax_info}, torch {torch_info})')
  return ratios


def run(size, batch_size, rounds, steps, jax_arms: dict, torch_arms=TORCH_ARMS,
        peer_of: str | None = None, peer_set: dict | None = None,
        malloc: str = 'glibc') -> dict:
  """The A/B. The torch arms take the config overrides of jax arm `peer_of` (default
  the first): the same heads, so the same model and objective; `peer_set` changes
  what does not move FLOPs (e.g. the peer keeps the exact GELU: model.activation=gelu).
  `malloc`: every arm runs on 'glibc' or on 'tcmalloc' (preloaded as launch/common.sh
  does), so both sides always share the allocator."""
  load_start = machine.load_average()
  malloc_env = machine.tcmalloc_env() if malloc == 'tcmalloc' else {}
  if malloc == 'tcmalloc' and not malloc_env:
    raise SystemExit('--malloc tcmalloc: no tcmalloc found (apt install libtcmalloc-minimal4, '
                     'or set M5_TCMALLOC to its path)')
  peer_overrides = jax_arms[peer_of or next(iter(jax_arms))]
  reference_arm = list(jax_arms.values()).index(peer_overrides)
  peer_overrides = dict(peer_overrides, **(peer_set or {}))
  specs = [(f'jax:{name}', 'jax', overrides) for name, overrides in jax_arms.items()]
  specs += [(t, t, peer_overrides) for t in torch_arms]
  arms = []
  try:
    for name, kind, overrides in specs:  # one at a time: building and compiling is the
      arms.append(Arm(name, kind, size, batch_size, overrides, malloc_env))  # heaviest part
      arms[-1].info = arms[-1].read()
      print(f'{name}: ready {arms[-1].info}', file=sys.stderr, flush=True)
    reference = arms[reference_arm]  # the jax arm whose model they build
    match = {t.name: check_match(reference.info, t.info) for t in arms if t.kind != 'jax'}
    for r in range(rounds):
      order = arms[r % len(arms):] + arms[:r % len(arms)]
      for arm in order:
        arm.run(steps)
      print(f'round {r + 1}/{rounds}: ' + ', '.join(
          f'{a.name} {median(a.rounds[-1]["wall"]):.2f} s' for a in arms),
          file=sys.stderr, flush=True)
  finally:
    for arm in arms:
      arm.close()
  result = {'size': size, 'form': 'features', 'dtype': 'float32', 'batch_size': batch_size,
            'rounds': rounds, 'steps_per_round': steps, 'match': match, 'malloc': malloc,
            'peer_overrides': peer_overrides,
            'machine': machine.describe(), 'load_avg_start': load_start,
            'load_avg_end': machine.load_average(), 'arms': {}, 'ratios': {}}
  for arm in arms:
    walls = [median(r['wall']) for r in arm.rounds]
    result['arms'][arm.name] = {
        'overrides': arm.overrides, 'info': arm.info,
        'step_s_per_round': walls, 'examples_per_s': batch_size / median(walls),
        'cpu_s_per_step': median([c for r in arm.rounds for c in r['cpu']]),
        'gflop_per_step': arm.info['flops'] / 1e9}
  for j in (a for a in arms if a.kind == 'jax'):
    for t in (a for a in arms if a.kind != 'jax'):
      per_round = [tw / jw for jw, tw in zip(result['arms'][j.name]['step_s_per_round'],
                                             result['arms'][t.name]['step_s_per_round'])]
      result['ratios'][f'{j.name} / {t.name}'] = {'per_round': per_round,
                                                  'median': median(per_round)}
  return result


def table(r: dict) -> str:
  lines = [f"{r['size']}/features fp32 batch {r['batch_size']}, {r['rounds']} rounds x "
           f"{r['steps_per_round']} steps, malloc {r.get('malloc', 'glibc')}, "
           f"load {r['load_avg_start']}-{r['load_avg_end']}",
           '| arm | s per step (each round) | examples/s | CPU-s per step | GFLOP/step | params |',
           '|---|---|---:|---:|---:|---:|']
  for name, a in r['arms'].items():
    lines.append(f"| {name} | {', '.join(f'{s:.2f}' for s in a['step_s_per_round'])} | "
                 f"{a['examples_per_s']:.2f} | {a['cpu_s_per_step']:.2f} | "
                 f"{a['gflop_per_step']:.1f} | {a['info']['params'] / 1e6:.2f}M |")
  for name, q in r['ratios'].items():
    lines.append(f"m5_jax examples/s ratio {name}: {q['median']:.2f} "
                 f"(rounds: {', '.join(f'{x:.2f}' for x in q['per_round'])})")
  for name, m in r['match'].items():
    lines.append(f"{name} / m5_jax: params {m['params']:.4f}, FLOPs {m['flops']:.4f}")
  return '\n'.join(lines)


def parse_arm(text: str) -> tuple[str, dict]:
  """'name=key=value,key=value' -> (name, overrides)."""
  from benchmarks import train_step  # pylint: disable=g-import-not-at-top
  name, _, sets = text.partition('=')
  return name, train_step.parse_overrides([s for s in sets.split(',') if s])


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--size', default='small')
  parser.add_argument('--batch_size', type=int, default=8)
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--steps', type=int, default=3, help='steps per arm per round')
  parser.add_argument('--jax', action='append', metavar='NAME=KEY=VALUE,...',
                      help='an m5_jax arm and its config overrides (default: default=)')
  parser.add_argument('--torch', default=','.join(TORCH_ARMS), help='torch arms to run')
  parser.add_argument('--peer_of', default=None,
                      help='the jax arm whose overrides the torch arms take (default: first)')
  parser.add_argument('--peer_set', action='append', default=[], metavar='KEY=VALUE',
                      help='a config override for the torch arms only, e.g. '
                      'model.activation=gelu (the official code\'s exact GELU)')
  parser.add_argument('--json', action='store_true')
  parser.add_argument('--worker', choices=('jax',) + TORCH_ARMS, help=argparse.SUPPRESS)
  parser.add_argument('--malloc', choices=('glibc', 'tcmalloc'), default='glibc',
                      help='the allocator of every arm (tcmalloc: as launch/common.sh runs '
                      'the train binary)')
  parser.add_argument('--set', action='append', default=[], help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.worker:
    from benchmarks import train_step  # pylint: disable=g-import-not-at-top
    return worker_main(args.worker, args.size, args.batch_size,
                       train_step.parse_overrides(args.set))
  jax_arms = dict(parse_arm(a) for a in (args.jax or ['default=']))
  torch_arms = tuple(t for t in args.torch.split(',') if t)
  unknown = set(torch_arms) - set(TORCH_ARMS)
  if unknown:
    parser.error(f'unknown torch arm(s) {sorted(unknown)}; choose from {",".join(TORCH_ARMS)}')
  if args.peer_of and args.peer_of not in jax_arms:
    parser.error(f'--peer_of {args.peer_of!r} is not a --jax arm ({", ".join(jax_arms)})')
  from benchmarks import train_step  # pylint: disable=g-import-not-at-top
  r = run(args.size, args.batch_size, args.rounds, args.steps, jax_arms, torch_arms,
          args.peer_of, train_step.parse_overrides(args.peer_set), args.malloc)
  print(json.dumps(r) if args.json else table(r))
  return 0


if __name__ == '__main__':
  sys.exit(main())
