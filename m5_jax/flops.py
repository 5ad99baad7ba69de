"""Model FLOPs of a train step: the numerator of MFU (train_logging, benchmarks/).

Counted on the jaxpr, not taken from XLA's cost analysis, so that a scanned layer
stack (model.scan_layers) and an unrolled one count the same.
"""
from __future__ import annotations

import collections
import math

import jax
from jax.extend import core as jax_core


def train_step_flops(compiled) -> float | None:
  """Per-device FLOPs of one compiled step from XLA's cost analysis (None if unknown)."""
  try:
    analysis = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  # not every backend implements it
    return None
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  flops = (analysis or {}).get('flops')
  return float(flops) if flops and flops > 0 else None


def matmul_flops(fn, *args) -> float:
  """FLOPs of the matrix multiplications (dot_general, conv) in `fn(*args)`'s jaxpr.

  The model-FLOPs numerator of MFU, independent of the compiler: XLA's cost
  analysis counts a scanned layer stack (model.scan_layers) once, not once per
  layer, so it cannot be compared across scan and unrolled steps. Scan bodies
  count `length` times; every other sub-jaxpr (jit, remat, custom_vjp, ...)
  once; a cond its most expensive branch. Elementwise work is not counted.
  """
  return jaxpr_matmul_flops(jax.make_jaxpr(fn)(*args))


def jaxpr_matmul_flops(closed_jaxpr) -> float:
  """matmul_flops of an already traced function (e.g. `jax.jit(f).trace(...).jaxpr`)."""
  return sum(matmul_shapes(closed_jaxpr).values())


def matmul_shapes(closed_jaxpr) -> collections.Counter:
  """The same FLOPs split by product shape: {(kind, batch, M, N, K): FLOPs}.

  kind is 'dot' or 'conv'; batch the product of the batch dimensions (1 for a
  plain matrix product); M, N the free sizes of the left and right operand and K
  the contracted size (a conv: output positions x batch, output features, and
  in-features x window). Tells GEMM-sized work from many small products.
  """
  flops = collections.Counter()
  _count(closed_jaxpr.jaxpr, 1, flops)
  return flops


def _count(jaxpr, times: int, flops: collections.Counter) -> None:
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == 'dot_general':
      (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = eqn.params['dimension_numbers']
      lhs, rhs = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
      k = math.prod(lhs[d] for d in lhs_contract)
      batch = math.prod(lhs[d] for d in lhs_batch)
      m = math.prod(n for d, n in enumerate(lhs) if d not in lhs_contract and d not in lhs_batch)
      n = math.prod(n for d, n in enumerate(rhs) if d not in rhs_contract and d not in rhs_batch)
      flops['dot', batch, m, n, k] += times * 2.0 * batch * m * n * k
    elif name == 'conv_general_dilated':
      rhs, out = eqn.invars[1].aval.shape, eqn.outvars[0].aval.shape
      spec = eqn.params['dimension_numbers'].rhs_spec  # (out feature, in feature, spatial...)
      per_output = math.prod(rhs) // rhs[spec[0]]  # in-features x window
      groups = eqn.params['feature_group_count']
      key = ('conv', groups, math.prod(out) // rhs[spec[0]], rhs[spec[0]], per_output)
      flops[key] += times * 2.0 * math.prod(out) * per_output / groups
    elif name == 'scan':
      _count(eqn.params['jaxpr'].jaxpr, times * eqn.params['length'], flops)
    elif name == 'cond':  # the most expensive branch
      branches = []
      for branch in eqn.params['branches']:
        branches.append(collections.Counter())
        _count(branch.jaxpr, times, branches[-1])
      flops.update(max(branches, key=lambda c: sum(c.values())))
    else:
      for sub in jax_core.jaxprs_in_params(eqn.params):
        _count(sub, times, flops)
