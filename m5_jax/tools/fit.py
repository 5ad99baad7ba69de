r"""Ahead-of-time fit check: does a config's train step fit a target mesh's memory?

  python -m m5_jax.tools.fit --config configs/m5_mmt.py:size=large --devices 256 \
      --mesh data=16,fsdp=16,tensor=1 --target v5p [--config.input.batch_size=4096 ...]

Compiles the real train step (m5_jax/train.py: masking, model, losses, optimizer)
for a simulated mesh of `--devices` fake CPU devices, without allocating anything
(jax.eval_shape + jit(...).lower(...).compile() on abstract, sharded inputs), and
prints per-device memory:

  parameters, optimizer state   exact: the bytes of each leaf's shard under the
                                config's logical-axis rules on that mesh
  activations + temporaries     XLA's buffer assignment for the partitioned step
                                (compiled.memory_analysis().temp_size_in_bytes)

The temporaries come from the CPU backend's schedule: a TPU/GPU compile of the same
partitioned program fuses and rematerialises differently, so treat them as an
estimate (typically within tens of percent); parameters and optimizer state are
exact. A target's usable HBM leaves headroom for the runtime (--reserve_gib).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
import time

# HBM per device (GiB) of common targets.
TARGETS = {'v4': 32.0, 'v5e': 16.0, 'v5p': 95.0, 'v6e': 32.0, 'a100-40g': 40.0, 'a100-80g': 80.0,
           'h100': 80.0, 'h200': 141.0}


@contextlib.contextmanager
def _elapsed_ticker(what: str, every_s: float = 30.0):
  """Prints '<what>: M:SS elapsed' to stderr every `every_s` seconds while the body runs
  (XLA's compile of a deep unscanned model on many fake devices is silent for minutes)."""
  done, start = threading.Event(), time.monotonic()

  def tick():
    while not done.wait(every_s):
      minutes, seconds = divmod(int(time.monotonic() - start), 60)
      print(f'  {what}: {minutes}:{seconds:02d} elapsed', file=sys.stderr, flush=True)

  thread = threading.Thread(target=tick, daemon=True)
  thread.start()
  try:
    yield
  finally:
    done.set()
    thread.join()


def parse_mesh(text: str) -> dict[str, int]:
  out = {}
  for part in filter(None, text.split(',')):
    name, _, value = part.partition('=')
    if name not in ('data', 'fsdp', 'tensor') or not value.lstrip('-').isdigit():
      raise SystemExit(f'm5_jax.tools.fit: error: --mesh wants data=N,fsdp=N,tensor=N, got {part!r}')
    out[name] = int(value)
  return out


def gib(num_bytes: float) -> float:
  return num_bytes / 2**30


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='m5_jax.tools.fit', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--devices', type=int, required=True, help='simulated device count')
  parser.add_argument('--mesh', default='', help='data=N,fsdp=N,tensor=N (-1 = the rest)')
  parser.add_argument('--target', choices=sorted(TARGETS), default=None)
  parser.add_argument('--hbm_gib', type=float, default=None, help='HBM per device (overrides --target)')
  parser.add_argument('--reserve_gib', type=float, default=1.0, help='runtime headroom per device')
  parser.add_argument('--json', default=None, help='also write the numbers (bytes) to this file')
  args, rest = parser.parse_known_args(argv)

  # Fake devices must be requested before JAX initialises its backends.
  # Buffer assignment does not depend on LLVM's optimisations: skip them (faster).
  flags = os.environ.get('XLA_FLAGS', '')
  os.environ['XLA_FLAGS'] = (f'{flags} --xla_force_host_platform_device_count={args.devices} '
                             '--xla_backend_optimization_level=0 '
                             '--xla_llvm_disable_expensive_passes=true')
  os.environ['JAX_PLATFORMS'] = 'cpu'
  import jax  # pylint: disable=g-import-not-at-top
  from m5_jax import config_lib, sharding, train  # pylint: disable=g-import-not-at-top

  try:
    config, _ = config_lib.parse_command_line(rest, {})
  except config_lib.ConfigError as e:
    config_lib.exit_with(e, 'm5_jax.tools.fit')
  for name, value in parse_mesh(args.mesh).items():
    config.mesh[name] = value
  if jax.device_count() != args.devices:
    raise SystemExit(f'm5_jax.tools.fit: error: asked for {args.devices} devices, JAX has '
                     f'{jax.device_count()} (was jax imported before this tool set XLA_FLAGS?)')

  try:
    mesh = sharding.make_mesh(config.mesh)
    sharding.axis_rules(config.sharding)
    sharding.process_batch_size(config.input.batch_size, mesh)  # fails fast on bad divisibility
  except (ValueError, config_lib.ConfigError) as e:
    raise SystemExit(f'm5_jax.tools.fit: error: {e}') from None
  setup = train.make_step_setup(config, mesh, total_steps=1000, warmup_steps=10)
  abstract_state = setup.abstract_state()

  def shard_bytes(tree) -> int:
    leaves = jax.tree.leaves(tree)
    return sum(
        int(jax.numpy.prod(jax.numpy.array(leaf.sharding.shard_shape(leaf.shape)))) *
        leaf.dtype.itemsize for leaf in leaves)

  def total_params(tree) -> int:
    return sum(leaf.size for leaf in jax.tree.leaves(tree))

  print(f'compiling the train step for mesh {dict(mesh.shape)} on {args.devices} fake CPU '
        f'devices (base/large on 256 devices: 5-10 min on 2 cores; '
        f'--config.model.scan_layers=True compiles one layer per stack, much faster) ...',
        file=sys.stderr, flush=True)
  with _elapsed_ticker('compiling'):
    compiled = setup.lower()[1].compile()
  memory = compiled.memory_analysis()

  params = shard_bytes(abstract_state['params'])
  opt_state = shard_bytes(abstract_state['opt_state'])
  # The step's arguments are the (donated) state and the batch shard.
  batch = max(0, memory.argument_size_in_bytes - params - opt_state)
  temp = memory.temp_size_in_bytes
  total = params + opt_state + batch + temp
  rows = [
      ('parameters (fp32)', gib(params)),
      ('optimizer state', gib(opt_state)),
      ('batch (inputs)', gib(batch)),
      ('activations + temporaries', gib(temp)),
      ('total per device', gib(total)),
  ]
  print(f'\n{config.model.get("method", "?")} size={config.model.get("size", "?")}: '
        f'{total_params(abstract_state["params"]) / 1e6:.1f}M parameters, global batch '
        f'{config.input.batch_size}, mesh {dict(mesh.shape)}, rules {config.sharding.rules}, '
        f'dtype {config.model.get("dtype", "float32")}, remat {config.model.get("remat", False)}')
  for name, value in rows:
    print(f'  {name:28s} {value:9.3f} GiB')
  hbm = args.hbm_gib if args.hbm_gib is not None else TARGETS.get(args.target or '')
  fits = None
  if hbm:
    usable = hbm - args.reserve_gib
    fits = gib(total) <= usable
    print(f'  {"FITS" if fits else "DOES NOT FIT"} in {hbm:g} GiB HBM ({args.target or "given"}; '
          f'{usable:g} GiB usable after {args.reserve_gib:g} GiB reserve)')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump({'mesh': dict(mesh.shape), 'num_params': total_params(abstract_state['params']),
                 'params_bytes': params, 'opt_state_bytes': opt_state, 'batch_bytes': batch,
                 'temp_bytes': temp, 'total_bytes': total, 'hbm_gib': hbm, 'fits': fits}, f, indent=1)
  return 3 if fits is False else 0


if __name__ == '__main__':
  sys.exit(main())
