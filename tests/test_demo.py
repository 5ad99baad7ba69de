"""The demo orchestrator's pieces (m5_jax/demo.py); the full demo is `make demo`.

The end-to-end run takes minutes (it compiles a train step and an eval forward),
so it is not a unit test: these check the stage commands parse against the real
configs and binaries' flags, the stage runner and its short view of a stage's output,
and the side-by-side table (the random-weights checkpoint is the train binary's
total_steps=0: tests/test_train.py).
"""
import io
import json
import logging
import os
import re
import sys

import numpy as np
import pytest

from m5_jax import config_lib
from m5_jax import demo
from m5_jax import demo_results
from m5_jax import stage_runner
from m5_jax import train
from m5_jax import train_logging
from m5_jax.evaluate import report, runner
from m5_jax.evaluate import results_io


def _args(tmp_path, *extra):
  return demo.parse_args(['--workdir', str(tmp_path / 'w'), '--steps', '40',
                          '--batch_size', '16', *extra])


def test_stage_commands_parse_strictly(tmp_path):
  plan = dict(demo.stages(_args(tmp_path)))
  per_seed = ['train', 'random_init'] + [f'eval_{t}_{r}' for r in ('pretrained', 'random_init')
                                         for t in demo.TASKS]
  assert list(plan) == (['make_mini', 'tokenizer', 'tfds_build']
                        + [f'{name}_seed{s}' for s in (0, 1) for name in per_seed]
                        + ['report_seeds2'])
  train_cmd, init_cmd = plan['train_seed0'], plan['random_init_seed0']
  config, flags = config_lib.parse_command_line(train_cmd[3:], {'workdir': ''})
  assert config.total_steps == 40 and config.input.batch_size == 16
  assert config.checkpoint.every_steps == 40 and config.schedule.warmup_steps == 4
  assert tuple(config.modalities) == ('image', 'text', 'table', 'video', 'audio')
  assert config.args.size == 'tiny' and config.input.dataset == 'm5product/features'
  assert config.model.vocab_size == config.modality.text.vocab_size == 1000
  assert plan['tokenizer'][-2:] == ['--vocab_size', '1000']
  # Trained before the build, where the builder looks for it (so it stores token ids).
  release = plan['make_mini'][plan['make_mini'].index('--out') + 1]
  assert plan['tokenizer'][plan['tokenizer'].index('--out') + 1] == os.path.join(release,
                                                                              'spm.model')
  assert '--features' in plan['make_mini'] and 'features' in plan['tfds_build']
  assert config.input.data_dir == str(tmp_path / 'w' / 'tfds')
  # The random-weights run: the train binary with nothing to train, with the
  # pretrained run's model, data and seed.
  assert init_cmd[1:3] == ['-m', 'm5_jax.train']
  init_config, init_flags = config_lib.parse_command_line(init_cmd[3:], {'workdir': ''})
  assert init_config.total_steps == 0
  assert init_config.model.to_dict() == config.model.to_dict()
  assert init_config.seed == config.seed == 0
  assert init_config.input.to_dict() == config.input.to_dict()
  assert flags['workdir'] != init_flags['workdir']
  # Seed 1: its own seed and workdirs, everything else the same.
  seed1, seed1_flags = config_lib.parse_command_line(plan['train_seed1'][3:], {'workdir': ''})
  init1, init1_flags = config_lib.parse_command_line(plan['random_init_seed1'][3:],
                                                     {'workdir': ''})
  assert seed1.seed == init1.seed == 1 and seed1.model.to_dict() == config.model.to_dict()
  assert len({flags['workdir'], init_flags['workdir'], seed1_flags['workdir'],
              init1_flags['workdir']}) == 4
  for name, cmd in plan.items():
    if name.startswith('eval_'):
      options, _, _ = runner.parse_flags(cmd[3:], {'finetuned': False, 'split': 'cls_test'})
      assert options.feature == 'encoder_pooled'
      run_name = 'pretrained' if '_pretrained_' in name else 'random_init'
      assert options.workdir == demo.run_dirs(str(tmp_path / 'w'), int(name[-1]))[
          run_name == 'random_init']
  compare = plan['report_seeds2'][plan['report_seeds2'].index('--compare') + 1]
  assert [item.split('=')[0] for item in compare.split(',')] == [
      'random_weights_seed0', 'pretrained_seed0', 'random_weights_seed1', 'pretrained_seed1']
  assert len(demo.stages(_args(tmp_path, '--seeds', '1'))) == 3 + len(per_seed) + 1
  with pytest.raises(SystemExit):
    _args(tmp_path, '--seeds', '0')
  assert os.path.isfile(os.path.join(plan['tfds_build'][2], 'm5product_dataset_builder.py'))


def test_run_stage_times_skips_and_fails_clearly(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  timings = {}
  cmd = [sys.executable, '-c', 'open("out.txt", "w").write("x")']
  demo.run_stage('write', cmd, str(tmp_path), timings)
  assert set(timings['write']) == {'wall_s', 'cpu_s'} and timings['write']['wall_s'] >= 0
  os.remove('out.txt')
  demo.run_stage('write', cmd, str(tmp_path), timings)  # done: skipped, timing kept
  assert not os.path.exists('out.txt') and timings['write']['skipped']
  with pytest.raises(SystemExit, match=r'stage boom failed \(exit 3\)'):
    demo.run_stage('boom', [sys.executable, '-c', 'raise SystemExit(3)'], str(tmp_path), {})
  assert not os.path.exists(tmp_path / '.done' / 'boom')


# A stage as noisy as the real ones: native banners, a 300-line dump, a nested tqdm bar,
# 40 train progress lines (the train binary's own format), then its result line.
NOISY_STAGE = r"""
import sys
print('I0000 00:00:1796520581.069787   21591 port.cc:153] oneDNN custom operations are on.',
      file=sys.stderr)
for i in range(300):
  print(f'    DatasetInfo line {i}')
print('2026-12-06 01:30:14,690 INFO compiling the train step...', file=sys.stderr)
sys.stderr.write('\rShuffling split:   0%|   | 0/105 [00:00<?, ? examples/s]\x1b[A\n')
for step in range(1, 41):
  print('2026-12-06 01:31:52,903 INFO ' + sys.argv[1].format(step=step, loss=50 - step,
        eta=40 - step), file=sys.stderr)
print(f'2026-12-06 01:31:53,003 INFO trained to step 40: checkpoints in {sys.argv[2]}/ckpt',
      file=sys.stderr)
"""
STEP_LINE = 'step {step}/40  loss {loss}  52 ex/s  ETA 0:{eta:02d}'


def test_a_stage_shows_command_compiling_progress_and_result_and_logs_the_rest(tmp_path,
                                                                                capsys):
  cmd = [sys.executable, '-c', NOISY_STAGE, STEP_LINE, str(tmp_path / 'run')]
  demo.run_stage('train', cmd, str(tmp_path), {})
  out = capsys.readouterr().out.splitlines()
  assert out[0].startswith('[demo] train: $ python -c ') and len(out[0]) <= stage_runner.LINE_WIDTH
  assert out[1] == '  compiling...'
  # Not a terminal: one progress line per 20% (every 8th of the 40 steps).
  assert out[2:7] == ['  ' + STEP_LINE.format(step=s, loss=50 - s, eta=40 - s)
                      for s in range(8, 41, 8)]
  assert re.fullmatch(r'  done in \d+ s: trained to step 40: checkpoints in \$WORKDIR/run/ckpt',
                      out[7])
  assert len(out) == 8
  with open(tmp_path / 'logs' / 'train.log') as f:
    log = f.read()
  assert log.startswith(f'$ {sys.executable} -c ') and 'oneDNN' in log
  assert 'DatasetInfo line 299' in log and 'step 40/40' in log

  demo.run_stage('train', cmd, str(tmp_path), {}, rerun=True, verbose=True)
  out = capsys.readouterr().out
  assert 'oneDNN' in out and 'DatasetInfo line 299' in out and 'step 21/40' in out
  assert f'[demo] train: $ {sys.executable} -c ' in out  # the full command


def test_the_train_binary_progress_line_is_short_and_the_demo_reads_it():
  scalars = {'loss': 31.234, 'perf/examples_per_sec': 52.3, 'perf/eta_hours': 58 / 3600,
             'loss/masked_text': 9.0, 'count/masked_text': 12.0}
  line = train_logging.progress_line(120, 300, scalars)
  assert line == 'step 120/300  loss 31.2  52 ex/s  ETA 0:58'
  assert train_logging.progress_line(1, 300, {'loss': 40.0}) == 'step 1/300  loss 40'
  assert train_logging.format_duration(3 * 3600 + 4 * 60 + 10) == '3:04:10'
  assert stage_runner._progress(f'2026-12-06 01:31:52,903 INFO {line}') == ('step', line, 0.4)


def test_the_train_binary_console_keeps_its_own_lines_and_library_warnings():
  def kept(name, level, message):
    return train._quiet_libraries(logging.LogRecord(name, level, __file__, 1, message, None, None))
  assert kept('root', logging.INFO, 'step 1/2  loss 3') and kept('absl', logging.ERROR, 'disk full')
  assert not kept('absl', logging.INFO, '[process=0] Saving checkpoint at step 20')
  assert not kept('jax._src.xla_bridge', logging.INFO, "Unable to initialize backend 'tpu'")
  assert not kept('absl', logging.WARNING, '`FeatureConnector.dtype` is deprecated. Please ...')


def test_progress_is_updated_in_place_on_a_terminal():
  stream = io.StringIO()
  view = stage_runner.StageView(stream, tty=True)
  view.width = stage_runner.LINE_WIDTH
  for segment in ('compiling the train step...\n', 'step 1/3  loss 9\n', 'noise\n',
                  '\rbar:  50%|#  | 1/2 [00:01<00:01]', '\rbar: 100%|## | 2/2 [00:02]\n'):
    view.feed(segment)
  assert stream.getvalue().count('\n') == 0  # one line, rewritten in place
  assert '\r  compiling...' in stream.getvalue() and '\r  step 1/3  loss 9' in stream.getvalue()
  # A shorter line blanks the rest of the longer one before it.
  assert stream.getvalue().endswith('\r  bar: 1/2 [00:01<00:01]\r  bar: 2/2 [00:02]' + ' ' * 6)
  view.tick(75.0)  # a progress line stays; a status gets the time so far
  assert stream.getvalue().endswith('\r  bar: 2/2 [00:02]' + ' ' * 6)
  view.feed('compiling...\n')
  view.tick(75.0)
  assert stream.getvalue().endswith('\r  compiling... 1:15')
  view.finish('done in 2 s')
  assert stage_runner._screen_lines(stream.getvalue()) == ['  done in 2 s']


def test_a_failing_stage_shows_its_log_tail(tmp_path, capsys):
  script = ('import sys\nfor i in range(50): print(f"line {i}")\n'
            'sys.stdout.write("\\rbar 10%\\rbar 50%\\n")\nsys.exit(3)')
  with pytest.raises(SystemExit, match=r'stage boom failed \(exit 3\)'):
    demo.run_stage('boom', [sys.executable, '-c', script], str(tmp_path), {})
  out = capsys.readouterr().out
  tail = [line for line in out.splitlines() if line.startswith('  | ')]
  assert tail == [f'  | line {i}' for i in range(21, 50)] + ['  | bar 50%']
  assert f'[demo] full log: {tmp_path / "logs" / "boom.log"}' in out


ITEMS = 400


def _fake(shift, seed=0):
  """Results of the four tasks with per-unit values, on sets 'I' and 'I+T+P'.

  On 'I+T+P' each per-unit value is 1 on a share 0.3 + shift of the ITEMS units (the
  same ones for every seed: pairing keeps them aligned), so pretrained (shift 0.2) is
  20 points above random (shift 0); clustering puts that share of the items in their
  label's cluster. On 'I' every value is missing (an older results file).
  """
  rng = np.random.default_rng(seed)
  good = np.arange(ITEMS) < int((0.3 + shift) * ITEMS)
  labels = np.arange(ITEMS) % 4
  clusters = np.where(good, labels, rng.integers(0, 4, ITEMS))
  out = {}
  for _, task, metric in demo_results.HEADLINE:
    results = out.setdefault(task, {'sets': {'I': {}, 'I+T+P': {}}, 'units': {}})
    results['sets']['I+T+P'][metric] = 100.0 * good.mean()
    units = results['units'].setdefault('I+T+P', {'unit': np.arange(ITEMS) * 2})
    if task == 'clustering':
      units.update(label=labels, cluster=clusters)
    else:
      units[report.UNIT_VALUES.get(metric, metric)] = good.astype(np.float32)
  return out


def test_comparison_rows_pair_each_seed_and_pool_them():
  runs = {seed: {'pretrained': _fake(0.2, seed), 'random_weights': _fake(0.0, seed)}
          for seed in (0, 1)}
  rows = demo.comparison_rows(runs, 'all')
  assert [(r['label'], r['seed']) for r in rows] == [
      (label, seed) for label, _, _ in demo_results.HEADLINE for seed in (0, 1, 'pooled')]
  for row in rows:
    if row['label'] == 'clustering NMI':
      assert row['difference'] > 10 and row['verdict'] == 'win'
      continue
    assert row['pretrained'] == pytest.approx(50.0) and row['random_weights'] == pytest.approx(30.0)
    assert row['difference'] == pytest.approx(20.0) and row['items'] == ITEMS
    low, high = row['difference_ci95']
    assert 15.0 < low < 20.0 < high < 25.0 and row['verdict'] == 'win'
    # 400 items: a 50% metric's interval is ~10 points wide, too wide for 5 points.
    assert row['too_small_to_separate_5_points']
  pooled = [r for r in rows if r['seed'] == 'pooled']
  assert all(r['every_seed_wins'] and r['seed_verdicts'] == ['win', 'win'] for r in pooled)
  table = demo.comparison_markdown(rows, 'I+T+P')
  assert table.splitlines()[0] == ('| I+T+P | seed | pretrained [95% CI] | random weights '
                                   '[95% CI] | difference [paired 95% CI] | verdict | items |')
  accuracy = [line for line in table.splitlines() if line.startswith('| linear-probe')][0]
  assert accuracy.startswith('| linear-probe accuracy % | 0 | 50.0 [') and '| +20.0 [' in accuracy
  assert accuracy.endswith(f'| win | {ITEMS} TOO SMALL |')
  assert '| pooled |' in table and 'win (every seed wins)' in table
  claim = demo.headline(rows)
  assert claim.startswith('Pretraining beat random weights in every one of the 2 seeds on: '
                          'coarse retrieval mAP@10 +20.0 points [')
  assert 'Not shown' not in claim and 'TOO SMALL' in claim


def test_a_seed_that_ties_withholds_the_claim():
  runs = {0: {'pretrained': _fake(0.2), 'random_weights': _fake(0.0)},
          1: {'pretrained': _fake(0.0), 'random_weights': _fake(0.0)}}  # no gain in seed 1
  rows = demo.comparison_rows(runs, 'I+T+P')
  accuracy = {r['seed']: r for r in rows if r['label'] == 'linear-probe accuracy %'}
  assert accuracy[0]['verdict'] == 'win' and accuracy[1]['verdict'] == 'tie'
  assert accuracy[1]['difference_ci95'] == pytest.approx([0.0, 0.0])
  assert accuracy['pooled']['difference'] == pytest.approx(10.0)
  assert accuracy['pooled']['verdict'] == 'win' and not accuracy['pooled']['every_seed_wins']
  assert 'win (seeds: win, tie)' in demo.comparison_markdown(rows, 'I+T+P')
  claim = demo.headline(rows)
  assert claim.startswith('Pretraining beat random weights on no task in every one of the 2 '
                          'seeds. Not shown')
  assert 'Not shown (some seed tied or lost): coarse retrieval mAP@10 +10.0 points' in claim
  assert 'seeds win/tie' in claim
  # Other items in one run: no pairing, a clear error.
  runs[1]['pretrained']['classification']['units']['I+T+P']['unit'] = np.arange(ITEMS)
  with pytest.raises(ValueError, match='same items'):
    demo.comparison_rows(runs, 'I+T+P')


def test_missing_per_unit_values_and_rows():
  runs = {0: {'pretrained': _fake(0.2), 'random_weights': _fake(0.0)}}
  rows = demo.comparison_rows(runs, 'I')  # the set without per-unit values
  assert all(r['verdict'] == 'n/a' and r['pretrained'] is None for r in rows)
  assert demo.headline(rows) == 'No comparison: the per-item values are missing.'
  assert '| coarse retrieval mAP@10 | 0 | n/a | n/a | n/a | n/a |  |' in (
      demo.comparison_markdown(rows, 'I'))
  with pytest.raises(KeyError, match='I\\+T'):
    demo.resolve_set(runs[0]['pretrained']['clustering'], 'I+T')
  timing = demo.timings_markdown({'a': {'wall_s': 1.0, 'cpu_s': 2.0},
                                  'b': {'wall_s': 3.0, 'cpu_s': 4.0, 'skipped': True}})
  assert '| b (earlier run) | 3 | 4 |' in timing and '| total | 4 | 6 |' in timing


def test_training_losses_first_and_last_with_pair_mean(tmp_path):
  rows = [{'step': 1, 'loss': 50.0, 'loss/masked_text': 9.0, 'loss/contrastive_image_text': 3.0,
           'loss/contrastive_image_audio': 2.0, 'lr': 0.1},
          {'step': 2, 'loss': 40.0, 'loss/masked_text': 5.0, 'loss/contrastive_image_text': 2.0,
           'loss/contrastive_image_audio': 1.0, 'lr': 0.2}]
  with open(tmp_path / 'metrics.jsonl', 'w') as f:
    f.write('\n'.join(json.dumps(r) for r in rows) + '\n')
  assert demo.training_losses(str(tmp_path)) == {
      'total': (50.0, 40.0), 'masked_text': (9.0, 5.0), 'contrastive (pair mean)': (2.5, 1.5)}


def test_main_writes_the_comparison_and_the_claim(tmp_path, monkeypatch, capsys):
  """demo.main with every stage mocked: the eval results, the report and the training
  logs are written as the stages would, for two seeds."""
  work = tmp_path / 'w'
  variant = runner.variant_of(runner.Options(feature='encoder_pooled'))
  for seed in (0, 1):
    for run_name, workdir in zip(('pretrained', 'random_weights'),
                                 demo.run_dirs(str(work), seed)):
      for task, results in _fake(0.2 if run_name == 'pretrained' else 0.0, seed).items():
        results['step'] = 300 * (run_name == 'pretrained')
        results['sets']['I+T+P'][demo_results.COUNTS[task]] = ITEMS
        path = results_io.step_path(workdir, task, results['step'], variant)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        units = results.pop('units')
        np.savez(results_io.units_path(path), **{f'{label}/{name}': v for label, values
                                             in units.items() for name, v in values.items()})
        with open(path, 'w') as f:
          json.dump(results, f)
    with open(os.path.join(demo.run_dirs(str(work), seed)[0], 'metrics.jsonl'), 'w') as f:
      f.write(json.dumps({'step': 1, 'loss': 9.0}) + '\n' + json.dumps({'step': 2, 'loss': 4.0}))
  with open(work / 'report.md', 'w') as f:
    f.write('(paper tables)\n')
  ran = []
  monkeypatch.setattr(demo, 'run_stage', lambda name, *a, **k: ran.append(name))
  assert demo.main(['--workdir', str(work), '--steps', '300']) == 0
  assert ran == [name for name, _ in demo.stages(demo.parse_args(['--workdir', str(work)]))]
  with open(work / 'results.md') as f:
    text = f.read()
  assert '**Pretraining beat random weights in every one of the 2 seeds on: ' in text
  assert '| I+T+P | seed | pretrained [95% CI] |' in text and '(paper tables)' in text
  assert '| total | 1 | 9 | 4 |' in text and 'percentile-bootstrap interval' in text
  with open(work / 'results.json') as f:
    saved = json.load(f)
  assert saved['seeds'] == 2 and set(saved['runs']) == {'seed0', 'seed1'}
  assert len(saved['comparison']) == 3 * len(demo_results.HEADLINE)
  assert saved['training_loss']['seed1'] == {'total': [9.0, 4.0]}
  out = capsys.readouterr().out
  assert 'Pretraining beat random weights' in out and '| total |' not in out  # timings: file only
  # An eval stage's result line: its headline metric, the modality set and the folder.
  pretrained = demo.run_dirs(str(work), 0)[0]
  assert demo.eval_headline(pretrained, 'classification', 'encoder_pooled', 'all') == (
      f'step 300: linear-probe accuracy % 50.0 on I+T+P (400 examples) -> '
      f'{runner.output_dir(pretrained, "classification", variant)}')


def test_realistic_release_stages(tmp_path):
  """--release realistic: the real-media generator, raw form, a tokenizer that covers
  its characters; features form is refused (the release has no pre-extracted features)."""
  plan = dict(demo.stages(_args(tmp_path, '--release', 'realistic')))
  assert list(plan)[:3] == ['make_realistic', 'tokenizer', 'tfds_build']
  assert plan['make_realistic'][1:3] == ['-m', 'data_prep.make_realistic']
  assert 'raw' in plan['tfds_build'] and plan['tokenizer'][-2:] == ['--character_coverage', '0.995']
  config, _ = config_lib.parse_command_line(plan['train_seed0'][3:], {'workdir': ''})
  assert config.input.dataset == 'm5product/raw'
  with pytest.raises(SystemExit):
    _args(tmp_path, '--release', 'realistic', '--form', 'features')
