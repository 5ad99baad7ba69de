"""End to end: a tiny checkpoint on a tiny m5product build -> every eval binary -> results.

The checkpoint holds the initial parameters of a tiny M5-MMT (saved through the
training Checkpointer, optimizer state left out). Marked slow: on the shared
2-core machine the build + four model compiles did not finish in 15 minutes.
The same binaries were run by hand on a tiny M5-MMT trained 4 steps on a
300-product mini build (`python -m m5_jax.train ... --config.total_steps=4`).
"""
import json
import os

import jax
import numpy as np
import pytest

from m5_jax import checkpointing, config_lib, sharding
from m5_jax.evaluate import (classification, clustering, coarse_retrieval, fine_retrieval,
                             features, model_features, report, runner)

from m5_fixtures import build

pytest_plugins = ['m5_fixtures']


@pytest.fixture(scope='session')
def tiny_data(tiny_release, tmp_path_factory):
  """(data_dir, tokenizer path) of the tiny release built as ArrayRecord (raw form)."""
  from data_prep import tokenizer  # pylint: disable=g-import-not-at-top
  data_dir = tmp_path_factory.mktemp('eval_e2e_data')
  build(tiny_release, data_dir, 'raw', file_format='array_record')
  sp_path = str(data_dir / 'sp.model')
  tokenizer.train(list(tokenizer.iter_training_text(str(tiny_release))) * 20, sp_path,
                  vocab_size=400)
  return str(data_dir), sp_path


def tiny_config(data_dir, sp_path):
  config = config_lib.load_config('configs/m5_mmt.py:runlocal,batch_size=8')
  config.input.data_dir, config.input.tokenizer = data_dir, sp_path
  config.input.dataset = 'm5product/raw'
  config.total_steps = 3
  return config


@pytest.fixture(scope='session')
def workdir(tiny_data, tmp_path_factory):
  """A workdir with config.json and checkpoints at steps 1 and 3 (initial parameters)."""
  path = str(tmp_path_factory.mktemp('eval_e2e_work'))
  config = tiny_config(*tiny_data)
  config_lib.save_workdir_config(config, path)
  embedder = model_features.Embedder(path, config)
  params = jax.jit(
      lambda: embedder.model.init({'params': jax.random.key(0), 'dropout': jax.random.key(0)},
                                  __import__('m5_jax.batch').batch.zeros_batch(config, 8),
                                  train=False)['params'],
      out_shardings=embedder.param_shardings)()
  params = jax.tree.map(lambda x: getattr(x, 'value', x), params,
                        is_leaf=lambda x: hasattr(x, 'value'))
  checkpointer = checkpointing.Checkpointer(path, config.checkpoint)
  for step in (1, 3):
    checkpointer.save(step, {'step': np.int32(step), 'params': params}, {'step': step},
                      force=True)
  checkpointer.close()
  return path


def load(workdir, task, step):
  with open(os.path.join(runner.output_dir(workdir, task), f'step_{step:08d}.json')) as f:
    return json.load(f)


@pytest.mark.slow
def test_binaries_write_results_for_every_step(workdir):
  assert checkpointing.list_steps(workdir) == [1, 3]
  coarse_retrieval.main(['--workdir', workdir, '--all', '--subsets', 'T,IT,T:I'])
  for step in (1, 3):
    results = load(workdir, 'coarse_retrieval', step)
    assert set(results['sets']) == {'T', 'T+I', 'T->I'}
    assert 0.0 <= results['sets']['T']['m5_map@1'] <= 100.0
    assert results['sets']['T']['num_queries'] + results['sets']['T'][
        'queries_without_positives'] + results['sets']['T']['queries_without_features'] >= 1
  # The gallery was embedded once per step and cached; a rerun skips both steps.
  assert os.path.isdir(features.cache_dir(workdir, 3, 'coarse_gallery'))
  assert runner.DoneList(runner.output_dir(workdir, 'coarse_retrieval')).contains(
      3, runner.Options(subsets='T,IT,T:I').signature('coarse_retrieval'))

  fine_retrieval.main(['--workdir', workdir, '--subsets', 'I'])
  assert 'I' in load(workdir, 'fine_retrieval', 3)['sets']
  classification.main(['--workdir', workdir, '--subsets', 'T,all'])
  cls = load(workdir, 'classification', 3)
  assert set(cls['sets']) == {'T', 'I+T+P+V+A'} and cls['mode'] == 'linear_probe'
  clustering.main(['--workdir', workdir, '--subsets', 'all'])
  assert 'nmi' in load(workdir, 'clustering', 3)['sets']['I+T+P+V+A']
  for task, png in (('coarse_retrieval', 'precision_at_k.png'),
                    ('classification', 'long_tail.png'), ('clustering', 'projection.png')):
    assert os.path.isfile(os.path.join(runner.output_dir(workdir, task), png))
  table = report.paper_table(report.load_step(workdir, 'classification'),
                             report.load_step(workdir, 'coarse_retrieval'))
  assert '| T |' in table


@pytest.mark.slow
def test_bad_flags_exit_with_one_line(workdir, capsys):
  with pytest.raises(SystemExit) as e:
    coarse_retrieval.main(['--workdir', workdir, '--subset', 'T'])
  assert e.value.code == 2
  assert capsys.readouterr().err.strip().count('\n') == 0
  with pytest.raises(SystemExit):
    coarse_retrieval.main(['--workdir', workdir, '--step', '2'])  # no such checkpoint
