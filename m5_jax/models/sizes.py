"""Model sizes: width, heads, MLP width and depths (per-modality encoders + fusion).

`base` is the paper's M5-MMT (768 hidden, 12 heads, 6 modality-encoder layers +
6 fusion layers). `large` is ~1B parameters with all five modalities (see
docs/models.md for the measured counts: `python -m m5_jax.models.param_count`).
"""
from __future__ import annotations

SIZES = {
    #        hidden heads mlp_dim encoder_layers fusion_layers
    'tiny': dict(hidden=64, heads=2, mlp_dim=128, encoder_layers=1, fusion_layers=1),
    'small': dict(hidden=384, heads=6, mlp_dim=1536, encoder_layers=4, fusion_layers=4),
    'base': dict(hidden=768, heads=12, mlp_dim=3072, encoder_layers=6, fusion_layers=6),
    'large': dict(hidden=1536, heads=16, mlp_dim=6144, encoder_layers=4, fusion_layers=14),
}


def get(size: str) -> dict[str, int]:
  if size not in SIZES:
    raise ValueError(f'unknown model size {size!r}; expected one of {", ".join(SIZES)}')
  return dict(SIZES[size])
