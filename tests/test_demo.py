"""The demo orchestrator's pieces (m5_jax/demo.py); the full demo is `make demo`.

The end-to-end run takes minutes (it compiles a train step and an eval forward),
so it is not a unit test: these check the stage commands parse against the real
configs and binaries' flags, the stage runner and the side-by-side table (the
random-weights checkpoint is the train binary's total_steps=0: tests/test_train.py).
"""
import json
import os
import sys

import pytest

from m5_jax import config_lib
from m5_jax import demo
from m5_jax.evaluate import runner


def _args(tmp_path, *extra):
  return demo.parse_args(['--workdir', str(tmp_path / 'w'), '--steps', '40',
                          '--batch_size', '16', *extra])


def test_stage_commands_parse_strictly(tmp_path):
  plan = dict(demo.stages(_args(tmp_path)))
  assert list(plan)[:5] == ['make_mini', 'tfds_build', 'tokenizer', 'train', 'random_init']
  assert len(plan) == 5 + 2 * len(demo.TASKS) + 1
  train_cmd, init_cmd = plan['train'], plan['random_init']
  config, flags = config_lib.parse_command_line(train_cmd[3:], {'workdir': ''})
  assert config.total_steps == 40 and config.input.batch_size == 16
  assert config.checkpoint.every_steps == 40 and config.schedule.warmup_steps == 4
  assert tuple(config.modalities) == ('image', 'text', 'table', 'video', 'audio')
  assert config.args.size == 'tiny' and config.input.dataset == 'm5product/features'
  assert config.model.vocab_size == config.modality.text.vocab_size == 1000
  assert plan['tokenizer'][-2:] == ['--vocab_size', '1000']
  assert '--features' in plan['make_mini'] and 'features' in plan['tfds_build']
  assert config.input.data_dir == str(tmp_path / 'w' / 'tfds')
  # The random-weights run: the train binary with nothing to train, with the
  # pretrained run's model, data and seed.
  assert init_cmd[1:3] == ['-m', 'm5_jax.train']
  init_config, init_flags = config_lib.parse_command_line(init_cmd[3:], {'workdir': ''})
  assert init_config.total_steps == 0
  assert init_config.model.to_dict() == config.model.to_dict()
  assert init_config.seed == config.seed and init_config.input.to_dict() == config.input.to_dict()
  assert flags['workdir'] != init_flags['workdir']
  for name, cmd in plan.items():
    if name.startswith('eval_'):
      options, _, _ = runner.parse_flags(cmd[3:], {'finetuned': False, 'split': 'cls_test'})
      assert options.feature == 'encoder_pooled'
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


def _fake(value):
  """Results of the four tasks: every HEADLINE metric = value on 'I+T+P', value/2 on 'I'."""
  out = {}
  for _, task, metric in demo.HEADLINE:
    sets = out.setdefault(task, {'sets': {'I': {}, 'I+T+P': {}}})['sets']
    sets['I'][metric], sets['I+T+P'][metric] = value / 2, value
    sets['I+T+P'][demo.COUNTS[task]] = 25
  return out


def test_comparison_rows_pick_the_full_set_and_both_runs():
  pretrained, random_weights = _fake(60.0), _fake(20.0)
  results = {'pretrained': pretrained, 'random_weights': random_weights}
  rows = demo.comparison_rows(results, 'all')
  assert [r[0] for r in rows] == [label for label, _, _ in demo.HEADLINE]
  assert all(a == 60.0 and b == 20.0 and n == 25 for _, a, b, n in rows)
  assert all(b == 10.0 and n is None for _, _, b, n in demo.comparison_rows(results, 'I'))
  table = demo.comparison_markdown(rows, 'I+T+P')
  assert '| linear-probe accuracy % | 60 | 20 | 25 |' in table
  with pytest.raises(KeyError, match='I\\+T'):
    demo.resolve_set(pretrained['clustering'], 'I+T')
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
