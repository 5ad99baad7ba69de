"""Test helpers for sharded train states: create one, feed it a batch, compare two."""
from typing import Any, Callable

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh

from m5_jax import sharding


def create_sharded(init_fn: Callable[[], Any], mesh: Mesh, rules) -> tuple[Any, Any]:
  """(state, shardings): `init_fn`'s result created directly sharded on `mesh`."""
  _, shardings = sharding.state_shardings(init_fn, mesh, rules)
  with nn.logical_axis_rules(rules):
    return sharding.init_sharded(init_fn, shardings), shardings


def global_batch(local_batch: Any, mesh: Mesh) -> Any:
  """Per-process numpy batch -> global jax.Arrays split on the batch dim over the mesh."""
  batch_sharding = sharding.batch_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(batch_sharding, np.asarray(x)),
      local_batch)


def tree_equal(a: Any, b: Any) -> bool:
  """Bitwise equality of two pytrees of arrays (resume tests)."""
  leaves_a, tree_a = jax.tree.flatten(a)
  leaves_b, tree_b = jax.tree.flatten(b)
  return tree_a == tree_b and all(
      np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(leaves_a, leaves_b))
