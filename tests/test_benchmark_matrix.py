"""The benchmark matrix: cell enumeration, stage plans, resume, tables and findings.

The runner test replaces the real stages with tiny Python commands that write
the files the real binaries write (eval step JSONs, metrics.jsonl), so the
orchestration, resume and table code run for real in about a second.
"""
import json
import os
import sys

import pytest

from configs import matrix as matrix_config
from m5_jax import benchmark_matrix
from m5_jax import config_lib
from m5_jax.matrix import cells as cells_lib
from m5_jax.matrix import tables


def _config(arg=None):
  return matrix_config.get_config(arg)


# ----------------------------------------------------------------------------- cells


def test_default_matrix_cells_each_once_with_their_tables():
  cells = {c.name: c for c in cells_lib.enumerate_cells(_config())}
  assert list(cells)[:5] == ['m5_mmt-t', 'm5_mmt-ti', 'm5_mmt-tip', 'm5_mmt-tipv',
                             'm5_mmt-tipva']
  # 5 sequence + 6 combinations + 7 other methods + 1 noise seed; M5-MMT on T+I once.
  assert len(cells) == 19
  assert cells['m5_mmt-ti'].tables == ('sequence', 'combinations', 'methods')
  assert cells['m5_mmt-tip'].tables == ('sequence', 'combinations')
  assert cells['m5_mmt-tipva'].tables == ('sequence',)
  assert cells['image_only-i'].modalities == ('image',)
  assert cells['text_only-t'].modalities == ('text',)
  assert cells['clip-ti'].label == 'T+I'
  assert cells['m5_mmt-ti-s1'].seed == 1 and cells['m5_mmt-ti-s1'].tables == ('noise',)
  # Run order: Table 1, Table 3, noise, then the rest of Table 2.
  assert list(cells)[5:] == ['image_only-i', 'text_only-t', 'clip-ti', 'single_stream-ti',
                             'dual_stream-ti', 'capture-ti', 'scale-ti', 'm5_mmt-ti-s1',
                             'm5_mmt-tp', 'm5_mmt-ip', 'm5_mmt-tv', 'm5_mmt-ta', 'm5_mmt-tiv',
                             'm5_mmt-tia']


def test_bad_cells_fail_with_a_clear_message():
  config = _config()
  config.cells.noise_cells = ('m5_mmt-xyz',)
  with pytest.raises(ValueError, match='not a cell of this matrix'):
    cells_lib.enumerate_cells(config)
  config = _config()
  config.cells.methods = ('bert',)
  with pytest.raises(ValueError, match="unknown method 'bert'"):
    cells_lib.enumerate_cells(config)


def test_cell_stages_share_the_data_and_chain_pretrain_finetune_export():
  config = _config()
  paths = cells_lib.Paths('/w')
  cells = {c.name: c for c in cells_lib.enumerate_cells(config)}
  plan = dict(cells_lib.cell_stages(config, cells['m5_mmt-tip'], paths, 24, 'py'))
  assert list(plan) == ['train', 'eval_coarse_retrieval', 'eval_classification', 'finetune',
                        'ft_eval_classification', 'export_backbone', 'ft_eval_coarse_retrieval']
  # Clustering (NMI, purity) is only in Table 3: its cells and the noise runs.
  assert [n for n, _ in cells_lib.cell_stages(config, cells['clip-ti'], paths, 24, 'py')
          if 'clustering' in n] == ['eval_clustering', 'ft_eval_clustering']
  train = ' '.join(plan['train'])
  assert 'configs/m5_mmt.py:size=tiny,modalities=tip,form=features,batch_size=16' in train
  assert '--config.input.data_dir=/w/data/tfds' in train
  assert '--config.modality.table.vocab_size=8000' in train
  assert '--config.modality.image.vocab_size' not in train
  assert '--config.total_steps=300' in train
  finetune = ' '.join(plan['finetune'])
  assert 'classification.py:method=m5_mmt' in finetune and 'num_classes=24' in finetune
  assert '--config.init_from.path=/w/cells/m5_mmt-tip/pretrained' in finetune
  assert plan['ft_eval_classification'][plan['ft_eval_classification'].index('--workdir') + 1] \
      == '/w/cells/m5_mmt-tip/finetune'
  assert plan['ft_eval_coarse_retrieval'][plan['ft_eval_coarse_retrieval'].index('--workdir') + 1] \
      == '/w/cells/m5_mmt-tip/finetuned'
  assert plan['eval_coarse_retrieval'][-2:] == ['--subsets', 'all']
  # The per-modality cell lets the binaries score each modality alone; it also
  # gets the random-weights floor.
  big = dict(cells_lib.cell_stages(config, cells['m5_mmt-tipva'], paths, 24, 'py'))
  assert '--subsets' not in big['eval_coarse_retrieval']
  assert 'random_init' in big and 'random_eval_classification' in big
  # Audio cells tokenise audio as config.data.audio_form says, in every run that builds
  # the model (pretraining, random weights, fine-tuning); cells without audio do not.
  for stage in ('train', 'random_init', 'finetune'):
    assert '--config.modality.audio.form=raw' in big[stage], stage
  assert '--config.modality.audio.form' not in train + finetune
  assert '--config.seed=1' in ' '.join(
      dict(cells_lib.cell_stages(config, cells['m5_mmt-ti-s1'], paths, 24, 'py'))['train'])


# ----------------------------------------------------------------------------- runner


_FAKE_STAGE = r'''
import json, os, sys
stage, workdir, log = sys.argv[1], sys.argv[2], sys.argv[3]
with open(log, 'a') as f:
  f.write(stage + '\n')
if os.environ.get('FAIL_STAGE') == stage:
  sys.exit(3)
if stage == 'make_mini':
  os.makedirs(workdir, exist_ok=True)
  json.dump({'label_names': ['a', 'b', 'c']}, open(os.path.join(workdir, 'mini_manifest.json'), 'w'))
elif stage in ('train', 'finetune'):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
    f.write(json.dumps({'loss': 5.0, 'loss/masked_text': 3.0}) + '\n')
    f.write(json.dumps({'loss': 4.0, 'loss/masked_text': 2.0}) + '\n')
elif '_eval_' in stage or stage.startswith('eval_'):
  task = stage.split('eval_', 1)[1]
  label = os.environ['CELL_LABEL']
  value = float(len(label)) + (5.0 if 'finetune' in workdir or 'finetuned' in workdir else 0.0)
  metrics = {'accuracy': value, 'm5_map@1': value, 'm5_map@10': value, 'nmi': value,
             'num_examples': 10, 'num_queries': 7}
  prefix = 'finetuned ' if workdir.endswith('finetune') and task == 'classification' else ''
  d = os.path.join(workdir, 'eval', task) if prefix else os.path.join(
      workdir, 'eval', task, 'feature=encoder_pooled')  # the binaries' folder for --feature
  os.makedirs(d, exist_ok=True)
  json.dump({'sets': {prefix + label: metrics}}, open(os.path.join(d, 'step_00000002.json'), 'w'))
'''


@pytest.fixture
def fake_stages(tmp_path, monkeypatch):
  """Replaces every stage with _FAKE_STAGE (which logs its name to stages.log)."""
  script = tmp_path / 'fake_stage.py'
  script.write_text(_FAKE_STAGE)
  log = tmp_path / 'stages.log'

  def data_stages(config, paths, py, tfds_cli, builder_dir):
    return [(n, [sys.executable, str(script), n, paths.release, str(log)])
            for n in ('make_mini', 'tfds_build', 'tokenizer')]

  real_cell_stages = cells_lib.cell_stages

  def cell_stages(config, cell, paths, classes, py, module='m5_jax.benchmark_matrix'):
    out = []
    for name, cmd in real_cell_stages(config, cell, paths, classes, py, module):
      workdir = cmd[cmd.index('--workdir') + 1]
      out.append((name, ['env', f'CELL_LABEL={cell.label}', sys.executable, str(script), name,
                         workdir, str(log)]))
    return out

  monkeypatch.setattr(cells_lib, 'data_stages', data_stages)
  monkeypatch.setattr(cells_lib, 'cell_stages', cell_stages)
  return log


def _run(tmp_path, *extra):
  return benchmark_matrix.main(['--config', 'configs/matrix.py:size=smoke', '--workdir',
                                str(tmp_path / 'w'), *extra])


def test_matrix_runs_every_cell_then_resumes_without_rerunning(tmp_path, fake_stages,
                                                               monkeypatch):
  monkeypatch.setenv('FAIL_STAGE', 'finetune')
  assert _run(tmp_path, '--only', 'clip-ti') == 1  # the failing cell is reported
  first = fake_stages.read_text().split()
  assert first[:3] == ['make_mini', 'tfds_build', 'tokenizer']
  assert first[3:] == ['train', 'eval_coarse_retrieval', 'eval_classification',
                       'eval_clustering', 'finetune']
  monkeypatch.delenv('FAIL_STAGE')
  assert _run(tmp_path, '--parallel', '2') == 0
  second = fake_stages.read_text().split()[len(first):]
  # Data stages and clip's finished stages are not re-run; clip resumes at finetune.
  assert 'make_mini' not in second and second.count('train') == 2  # m5_mmt-t and -ti
  assert second.count('finetune') == 3 and second.count('random_init') == 1
  assert _run(tmp_path) == 0
  assert fake_stages.read_text().split()[len(first) + len(second):] == []  # all finished
  (tmp_path / 'w' / 'matrix.md').unlink()
  assert _run(tmp_path, '--tables_only') == 0  # tables from the finished cells, nothing run
  assert fake_stages.read_text().split()[len(first) + len(second):] == []

  work = tmp_path / 'w'
  result = json.loads((work / 'cells' / 'clip-ti' / 'result.json').read_text())
  assert result['pretrained']['classification']['T+I']['accuracy'] == 3.0
  assert result['finetuned']['classification']['T+I']['accuracy'] == 8.0  # prefix stripped
  assert result['finetuned']['coarse_retrieval']['T+I']['m5_map@1'] == 8.0
  assert result['pretraining_loss']['total'] == [5.0, 4.0]
  text = (work / 'matrix.md').read_text()
  assert '| T | 1.00 |' in text and '| CLIP (T+I) | 3.00 |' in text
  assert json.loads((work / 'matrix.json').read_text())['errors'] == {}


def test_stage_cpu_seconds_are_per_child_when_stages_overlap(tmp_path):
  """A stage that waits while a CPU-bound one finishes is not charged for it."""
  import threading  # pylint: disable=g-import-not-at-top
  flag = tmp_path / 'busy_done'
  busy = [sys.executable, '-c', 'import time, pathlib\nwhile time.process_time() < 0.6: pass\n'
          f'pathlib.Path({str(flag)!r}).touch()']
  idle = [sys.executable, '-c', 'import time, os\n'
          f'while not os.path.exists({str(flag)!r}): time.sleep(0.05)\ntime.sleep(0.5)']
  timings = {}
  threads = [threading.Thread(target=benchmark_matrix.run_stage,
                              args=(n, c, str(tmp_path), timings, {}))
             for n, c in (('idle', idle), ('busy', busy))]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert timings['busy']['cpu_s'] >= 0.6
  assert timings['idle']['cpu_s'] < 0.4
  assert (tmp_path / '.done' / 'busy').is_file()
  with pytest.raises(RuntimeError, match='stage bad failed'):
    benchmark_matrix.run_stage('bad', [sys.executable, '-c', 'raise SystemExit(2)'],
                               str(tmp_path), timings, {})


def test_a_cell_running_in_another_process_is_not_run_twice(tmp_path):
  import subprocess  # pylint: disable=g-import-not-at-top
  directory = tmp_path / 'cell'
  directory.mkdir()
  (directory / '.lock').write_text(str(os.getpid()))  # alive: this test's process
  with pytest.raises(RuntimeError, match='running in another process'):
    benchmark_matrix._lock_cell(str(directory), 'c')  # pylint: disable=protected-access
  gone = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'],
                        capture_output=True, text=True, check=True).stdout.strip()
  (directory / '.lock').write_text(gone)  # its process has exited: stale, taken over
  path = benchmark_matrix._lock_cell(str(directory), 'c')  # pylint: disable=protected-access
  assert open(path).read() == str(os.getpid())


def test_unknown_only_cell_and_config_key_fail_in_one_line(tmp_path, capsys):
  with pytest.raises(SystemExit):
    _run(tmp_path, '--only', 'nope')
  assert 'unknown cell' in capsys.readouterr().err
  with pytest.raises(SystemExit):
    _run(tmp_path, '--config.pretrain.stpes=3')
  assert 'pretrain.steps' in capsys.readouterr().err


def test_export_overlay_keeps_the_pretrained_heads():
  pretrained = {'encoders': {'w': 1, 'b': 2}, 'heads_text': {'w': 3}}
  backbone = {'encoders': {'w': 10, 'b': 20}}
  assert benchmark_matrix._overlay(pretrained, backbone) == {  # pylint: disable=protected-access
      'encoders': {'w': 10, 'b': 20}, 'heads_text': {'w': 3}}
  with pytest.raises(ValueError, match='not in the pretraining run'):
    benchmark_matrix._overlay(pretrained, {'head_out': {'w': 1}})  # pylint: disable=protected-access


def test_export_backbone_needs_a_finetuning_run(tmp_path):
  with pytest.raises((SystemExit, FileNotFoundError)):
    benchmark_matrix.main(['export_backbone', '--finetune', str(tmp_path / 'none'),
                           '--pretrained', str(tmp_path), '--workdir', str(tmp_path / 'out')])


# ----------------------------------------------------------------------------- tables


def _result(method, letters, seed=0, tables_=(), pt=None, ft=None, sets=None):
  label = '+'.join(c.upper() for c in letters)

  def runs(values):
    if values is None:
      return None
    acc, map10 = values
    return {'classification': {label: {'accuracy': acc, 'num_examples': 100}},
            'coarse_retrieval': {label: {'m5_map@1': map10 / 2, 'm5_map@10': map10,
                                         'm5_prec@1': 1.0, 'num_queries': 50}},
            'clustering': {label: {'nmi': 40.0, 'purity': 30.0}}}

  out = {'cell': f'{method}-{letters}' + (f'-s{seed}' if seed else ''), 'method': method,
         'letters': letters, 'seed': seed, 'label': label, 'tables': list(tables_),
         'pretrained': runs(pt)}
  if ft:
    out['finetuned'] = runs(ft)
  if sets:
    for s, (acc, map10) in sets.items():
      out['pretrained']['classification'][s] = {'accuracy': acc}
      out['pretrained']['coarse_retrieval'][s] = {'m5_map@10': map10}
  return out


@pytest.fixture
def fake_results():
  r = [
      _result('m5_mmt', 't', tables_=['sequence'], pt=(30, 20), ft=(40, 30)),
      _result('m5_mmt', 'ti', tables_=['sequence', 'combinations', 'methods'],
              pt=(35, 24), ft=(45, 33)),
      _result('m5_mmt', 'ti', seed=1, tables_=['noise'], pt=(37, 26), ft=(45, 33)),
      _result('m5_mmt', 'tip', tables_=['sequence'], pt=(34, 30), ft=(50, 40),
              sets={'T': (31, 21), 'I': (12, 8), 'P': (25, 18)}),
      _result('clip', 'ti', tables_=['methods'], pt=(33, 23)),
      _result('scale', 'ti', tables_=['methods'], pt=(40, 40)),
  ]
  return {x['cell']: x for x in r}


def test_set_table_known_answer(fake_results):
  text = tables.set_table(fake_results, 'sequence')
  lines = text.splitlines()
  assert lines[0].startswith('| Modalities | Acc (PT) | mAP@1 (PT) | mAP@5 (PT) | mAP@10 (PT)')
  assert lines[2] == ('| T | 30 | 10.00 | - | 20 | 1.00 | - | - '
                      '| 40 | 15.00 | - | 30 | 1.00 | - | - |')
  assert [l.split(' | ')[0] for l in lines[2:]] == ['| T', '| T+I', '| T+I+P']  # no seed-1 row


def test_method_table_and_noise(fake_results):
  lines = tables.method_table(fake_results).splitlines()
  assert lines[2].startswith('| M5-MMT (T+I) | 12.00 | 35 | 40.00 | 30.00 |')
  assert lines[3].startswith('| CLIP (T+I) | 11.50 | 33 | ')
  noise = tables.noise_levels(fake_results)
  # Two seeds of m5_mmt-ti: 24 and 26 -> sample std sqrt(2); fine-tuned equal -> 0.
  assert noise[('pretrained', 'mAP@10')] == pytest.approx(2 ** 0.5)
  assert noise[('finetuned', 'Acc')] == 0.0


def test_findings_verdicts_known_answer(fake_results):
  found = {(f['claim'], f['weights'], f['metric']): f for f in tables.findings(fake_results)}
  seq = found[('each added modality helps', 'pretrain features', 'mAP@10')]
  assert seq['evidence'] == 'T->T+I +4.0; T+I->T+I+P +6.0' and seq['verdict'] == 'holds'
  # Acc: 30 -> 35 -> 34: a drop of 1 inside the noise (std sqrt 2 of 35, 37).
  assert found[('each added modality helps', 'pretrain features', 'Acc')]['verdict'] \
      == 'within noise'
  text = found[('text dominates (m5_mmt-tip features per modality)', 'pretrain features',
                'mAP@10')]
  assert text['verdict'] == 'holds' and text['evidence'] == 'T 21.0, I 8.0, P 18.0'
  lift = found[('fine-tuning lifts the numbers (FT - PT per modality set)',
                'fine-tuned vs pretrain features', 'mAP@10')]
  assert lift['evidence'] == 'T +10.0, T+I +9.0, T+I+P +10.0' and lift['verdict'] == 'holds'
  scale = found[('SCALE beats the image+text baselines', 'pretrain features', 'mAP@10')]
  assert scale['verdict'] == 'holds' and 'best baseline CLIP 23.0' in scale['evidence']
  mmt = found[('M5-MMT beats the image+text baselines', 'pretrain features', 'mAP@10')]
  assert mmt['verdict'] == 'within noise'  # 24 vs 23, noise 1.4
  no_seeds = {k: v for k, v in fake_results.items() if not v['seed']}
  verdicts = {(f['claim'], f['weights'], f['metric']): f['verdict']
              for f in tables.findings(no_seeds)}
  assert verdicts[('each added modality helps', 'pretrain features', 'Acc')] \
      == 'fails (noise unknown: no seed runs)'  # 35 -> 34 with nothing to judge it by
  rendered = tables.render(fake_results, '# header')
  assert rendered.startswith('# header') and "## The paper's findings on mini" in rendered
  assert '## Per-modality features of m5_mmt-tip' in rendered


def test_smoke_config_and_bad_size():
  config = _config('size=smoke')
  assert [c.name for c in cells_lib.enumerate_cells(config)] == ['m5_mmt-t', 'm5_mmt-ti',
                                                                 'clip-ti']
  with pytest.raises(config_lib.ConfigError, match='default or smoke'):
    _config('size=huge')
  assert os.path.isfile(cells_lib.config_file('m5_mmt'))


def test_cost_table_sums_stages_and_data():
  results = {'a': {'cell': 'a', 'timings': {'train': {'wall_s': 10.0, 'cpu_s': 8.0},
                                            'eval': {'wall_s': 5.0, 'cpu_s': 4.0, 'skipped': True}}}}
  lines = tables.cost_table(results, {'make_mini': {'wall_s': 3.0, 'cpu_s': 2.0}}).splitlines()
  assert lines[2:] == ['| data: make_mini | 1 | 3 | 2 |', '| a | 2 | 15 | 12 |', '| total |  | 18 | 14 |']


def test_verdict_sign_test_known_answers():
  # P(>= 5 of 5 positive) = 1/32; P(>= 4 of 5) = 6/32.
  assert tables.sign_test_p([1, 2, 3, 4, 5]) == pytest.approx(1 / 32)
  assert tables.sign_test_p([1, 2, 3, 4, -5]) == pytest.approx(6 / 32)
  # Five small positive margins inside a noise of 3: agree in sign beyond chance.
  assert tables._verdict([1, 2, 0.5, 1, 2], 3.0) == (  # pylint: disable=protected-access
      'holds in sign (5/5 positive, sign test p=0.031); some margins within noise')
  assert tables._verdict([1, 2, -0.5, 1, 2], 3.0) == 'within noise'  # p = 6/32
  assert tables._verdict([1, 2, -4, 1, 2], 3.0) == 'fails'  # pylint: disable=protected-access
  assert tables._verdict([1.0], 3.0) == 'within noise'  # pylint: disable=protected-access


def test_help_prints_usage_and_exits_0(capsys):
  """--help went to the strict flag parser as a flag without a value (exit 2)."""
  with pytest.raises(SystemExit) as exit_info:
    benchmark_matrix.main(['--help'])
  out = capsys.readouterr().out
  assert exit_info.value.code == 0 and 'The benchmark matrix' in out and '--parallel=1' in out
