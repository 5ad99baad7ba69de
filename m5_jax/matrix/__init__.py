"""The benchmark matrix (m5_jax/benchmark_matrix.py): its cells and its tables."""
