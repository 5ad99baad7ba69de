"""Test setup: 8 fake CPU devices, quiet TF, no GPU/TPU probing, cheap XLA compiles,
no log handler left behind by one test for the next.

The suite is compile-bound on CPU (tiny models, few steps): the two XLA flags
below halve compile time and change no result the tests compare (every
equivalence test compares runs made under the same flags). Subprocesses that the
tests start inherit this environment.
"""
import logging
import os

import pytest

_FLAGS = ('--xla_force_host_platform_device_count=8', '--xla_backend_optimization_level=0',
          '--xla_llvm_disable_expensive_passes=true')
os.environ.setdefault('XLA_FLAGS', '')
for flag in _FLAGS:
  if flag.split('=')[0] not in os.environ['XLA_FLAGS']:
    os.environ['XLA_FLAGS'] += ' ' + flag
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')


@pytest.fixture(autouse=True)
def _no_leftover_log_handlers():
  """The binaries' main() calls logging.basicConfig, which binds a root handler to the
  stderr of the test that ran it (a capture file, closed afterwards); a later test in
  the same process (any order: xdist) would then log into a closed stream. Each test
  leaves the root logger's handlers and level as it found them (pytest's own capture
  handlers, StreamHandler subclasses, are pytest's to remove)."""
  root = logging.getLogger()
  before, level = set(root.handlers), root.level
  yield
  for handler in set(root.handlers) - before:
    if type(handler) is logging.StreamHandler:  # pylint: disable=unidiomatic-typecheck
      root.removeHandler(handler)
  root.setLevel(level)
