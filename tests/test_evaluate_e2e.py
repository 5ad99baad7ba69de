"""End to end: the eval binaries on a tiny M5-MMT trained on mini -> results, done-list, plots.

The checkpoint is `mini_trained` (tests/train_fixtures.py): text+image, 24 steps,
checkpoints at 12 and 24, on the session's mini build. Each binary runs in-process
on the 8 fake devices (the run's data-parallel mesh).
"""
import json
import os
import shutil

import pytest

from m5_jax import checkpointing
from m5_jax.evaluate import (classification, clustering, coarse_retrieval, fine_retrieval,
                             features, report, results_io, runner)

pytest_plugins = ['m5_fixtures', 'train_fixtures']


@pytest.fixture(scope='module')
def workdir(mini_trained, tmp_path_factory):
  """A copy of the trained run (the binaries write eval/ and feature caches into it)."""
  path = str(tmp_path_factory.mktemp('eval_e2e') / 'run')
  shutil.copytree(mini_trained, path)
  return path


def load(workdir, task, step, variant=''):
  with open(results_io.step_path(workdir, task, step, variant)) as f:
    return json.load(f)


def test_binaries_write_results_for_every_step_and_resume(workdir, capsys):
  assert checkpointing.list_steps(workdir) == [12, 24]
  assert coarse_retrieval.main(['--workdir', workdir, '--all', '--subsets', 'T,IT,T:I']) is None
  # The binary ends by printing its table (intervals, the small-set flag) and its files.
  printed = capsys.readouterr().out
  assert '| Modalities | mAP@1 |' in printed and '| eval set |' in printed
  assert 'evaluated steps 12, 24' in printed
  assert results_io.units_path(results_io.step_path(workdir, 'coarse_retrieval', 24)) in printed
  for step in (12, 24):
    results = load(workdir, 'coarse_retrieval', step)
    assert set(results['sets']) == {'T', 'T+I', 'T->I'}
    for metrics in results['sets'].values():
      if metrics['num_queries']:  # else the metrics are undefined: null, not a number
        assert 0.0 <= metrics['m5_map@1'] <= 100.0 and 0.0 <= metrics['recall@10'] <= 100.0
        low, high = metrics['ci95']['m5_map@10']
        assert low <= metrics['m5_map@10'] <= high
      else:
        assert metrics['m5_map@1'] is None and metrics['ci95']['m5_map@10'] == [None, None]
      # Every query is ranked, or counted as without positives / features / label.
      assert (metrics['num_queries'] + metrics['queries_without_positives']
              + metrics['queries_without_features'] + metrics['queries_without_label']
              == metrics['num_query_items'] > 0)
  # The gallery was embedded once per step and cached.
  assert os.path.isdir(features.cache_dir(workdir, 24, 'coarse_gallery'))
  done = runner.DoneList(runner.output_dir(workdir, 'coarse_retrieval'))
  signature = runner.Options(subsets='T,IT,T:I').signature('coarse_retrieval')
  assert done.contains(12, signature) and done.contains(24, signature)
  # A restarted evaluator skips both finished steps: nothing is evaluated again.
  options = runner.Options(workdir=workdir, all=True, subsets='T,IT,T:I')
  assert runner.run('coarse_retrieval', options, lambda: checkpointing.list_steps(workdir),
                    lambda step: pytest.fail(f'step {step} evaluated twice')) == []

  units = report.load_units(results_io.step_path(workdir, 'coarse_retrieval', 24))
  assert set(units) == {'T', 'T+I', 'T->I'}
  for label, values in units.items():
    assert len(values['unit']) == results['sets'][label]['num_queries']
  fine_retrieval.main(['--workdir', workdir, '--subsets', 'I'])
  assert load(workdir, 'fine_retrieval', 24)['sets']['I']['num_queries'] >= 1
  classification.main(['--workdir', workdir, '--subsets', 'T,all'])
  cls = load(workdir, 'classification', 24)
  assert set(cls['sets']) == {'T', 'T+I'} and cls['mode'] == 'linear_probe'
  assert 0.0 <= cls['sets']['T+I']['accuracy'] <= 100.0
  cls_units = report.load_units(results_io.step_path(workdir, 'classification', 24))['T+I']
  assert 100 * cls_units['correct'].mean() == pytest.approx(cls['sets']['T+I']['accuracy'])
  # Another feature kind goes to its own folder; the default results stay. (Mini's
  # cls_test is a single item at this size: cluster the pretraining split.)
  clustering.main(['--workdir', workdir, '--subsets', 'all', '--split', 'pretrain'])
  clustering.main(['--workdir', workdir, '--subsets', 'all', '--split', 'pretrain',
                   '--feature', 'encoder_pooled'])
  default, other = (load(workdir, 'clustering', 24, 'split=pretrain'),
                    load(workdir, 'clustering', 24, 'feature=encoder_pooled,split=pretrain'))
  assert 0.0 <= default['sets']['T+I']['nmi'] <= 100.0
  assert 0.0 <= other['sets']['T+I']['nmi'] <= 100.0
  low, high = default['sets']['T+I']['ci95']['nmi']
  assert low <= default['sets']['T+I']['nmi'] <= high
  clu_units = report.load_units(results_io.step_path(workdir, 'clustering', 24, 'split=pretrain'))
  assert len(clu_units['T+I']['cluster']) == default['sets']['T+I']['num_examples']
  assert (default['variant'], other['variant']) == ('split=pretrain',
                                                    'feature=encoder_pooled,split=pretrain')
  for kind in ('pooled', 'encoder_pooled'):  # each feature kind embedded and cached
    assert os.path.isdir(features.cache_dir(workdir, 24, 'pretrain', kind))
  for task, variant, png in (('coarse_retrieval', '', 'precision_at_k.png'),
                             ('classification', '', 'long_tail.png'),
                             ('clustering', 'split=pretrain', 'projection.png')):
    assert os.path.isfile(os.path.join(runner.output_dir(workdir, task, variant), png))
  table = report.paper_table(report.load_step(workdir, 'classification'),
                             report.load_step(workdir, 'coarse_retrieval'))
  assert '| T |' in table and '| T+I |' in table


def test_bad_flags_exit_with_one_line(workdir, capsys):
  with pytest.raises(SystemExit) as e:
    coarse_retrieval.main(['--workdir', workdir, '--subset', 'T'])
  assert e.value.code == 2
  assert capsys.readouterr().err.strip().count('\n') == 0
  with pytest.raises(SystemExit) as e:
    coarse_retrieval.main(['--workdir', workdir, '--step', '2'])  # no such checkpoint
  assert e.value.code == 1 and 'no complete checkpoint at step 2' in capsys.readouterr().err
