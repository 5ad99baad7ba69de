"""The fine-tuning loss counts only labels that are classes of its head."""
import jax.numpy as jnp
import numpy as np
import pytest

from m5_jax import batch as batch_lib
from m5_jax import finetune


def test_terms_skip_labels_outside_the_head():
  logits = jnp.zeros((6, 4))  # uniform: cross-entropy log(4) per counted example
  host = {'label': np.array([0, 3, 4, -1, 617074902229, 2], np.int64),
          'instance': np.full(6, -1, np.int64),
          'example_mask': np.array([True, True, True, True, True, False])}
  batch = batch_lib.device_view(host)  # the 12-digit label arrives as -1
  total, count = finetune.terms(logits, batch)[finetune.TERM]
  assert float(count) == 2.0  # labels 0 and 3; 4 is past the head, the last row padding
  assert float(total) == pytest.approx(2 * np.log(4.0), rel=1e-6)
