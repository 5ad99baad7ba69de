"""TFDS dataset `m5product` (importing this package registers it)."""
from data_prep.m5product.m5product_dataset_builder import Builder, M5ProductConfig

__all__ = ['Builder', 'M5ProductConfig']
