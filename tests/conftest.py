"""Test setup: 8 fake CPU devices, quiet TF, no GPU/TPU probing, cheap XLA compiles.

The suite is compile-bound on CPU (tiny models, few steps): the two XLA flags
below halve compile time and change no result the tests compare (every
equivalence test compares runs made under the same flags). Subprocesses that the
tests start inherit this environment.
"""
import os

_FLAGS = ('--xla_force_host_platform_device_count=8', '--xla_backend_optimization_level=0',
          '--xla_llvm_disable_expensive_passes=true')
os.environ.setdefault('XLA_FLAGS', '')
for flag in _FLAGS:
  if flag.split('=')[0] not in os.environ['XLA_FLAGS']:
    os.environ['XLA_FLAGS'] += ' ' + flag
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')
