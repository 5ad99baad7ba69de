"""m5_jax: multimodal pretraining on M5Product in JAX/Flax."""
import setuptools

with open('requirements.txt') as f:
  install_requires = [l.strip() for l in f if l.strip() and not l.startswith('#')]

setuptools.setup(
    name='m5_jax',
    version='0.1.0',
    description='M5-MMT and baselines: multimodal pretraining on M5Product in JAX/Flax',
    packages=setuptools.find_packages(include=['m5_jax', 'm5_jax.*', 'data_prep', 'data_prep.*']),
    package_data={'data_prep': ['m5product/*.md', 'm5product/*.tsv']},
    python_requires='>=3.11',
    install_requires=install_requires,
)
