"""The PyTorch peer (benchmarks/peer_model.py) is the same model as m5_jax's M5-MMT:
same parameter count, matmul FLOPs within the benchmark's 3%, at tiny dims and
short inputs (no timing here: benchmarks/peer_torch.py times them)."""
from __future__ import annotations

import pytest

torch = pytest.importorskip('torch')  # benchmarks/requirements.txt, not the test venv's

from benchmarks import peer_model  # noqa: E402  pylint: disable=g-import-not-at-top
from benchmarks import peer_torch  # noqa: E402  pylint: disable=g-import-not-at-top
from m5_jax import synthetic_input  # noqa: E402  pylint: disable=g-import-not-at-top

SHORT = {'text': dict(max_len=12, vocab_size=64), 'table': dict(max_len=16, vocab_size=64),
         'image': dict(num_regions=6, region_dim=32), 'video': dict(num_frames=4, s3d_dim=16),
         'audio': dict(mel_bins=8, mel_frames=64, patch_frames=16)}


@pytest.fixture
def one_torch_thread():
  """Tiny ops: one thread, no OpenMP spin-waiting against the other tests' threads."""
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)


@pytest.mark.parametrize('heads_at', ['all', 'masked'])
def test_peer_matches_m5_jax(heads_at, one_torch_thread):
  del one_torch_thread
  config = peer_torch.make_config('tiny', 4, {'model.heads_at': heads_at,
                                              'model.vocab_size': 64})
  for m, short in SHORT.items():
    config.modality[m].update(short)
  torch.manual_seed(0)
  model = peer_model.M5Peer(config, peer_torch.head_rows(config)).train()
  batch = peer_model.to_torch(synthetic_input.make_batch(config, 0, 4, 0))
  ours, peer = peer_torch.jax_counts(config, 4), peer_torch.torch_counts(model, batch, config)
  assert peer['params'] == ours['params']
  ratios = peer_torch.check_match(ours, peer)  # raises past 3%
  assert ratios['flops'] == pytest.approx(1.0, abs=peer_torch.TOLERANCE)
  if heads_at == 'masked':
    assert set(peer_torch.head_rows(config)) == {'text', 'image', 'video', 'audio'}
