"""The cells of the benchmark matrix and the commands that make each one.

A cell is one pretraining run: a method on a modality set with a seed. Its
stages are the README's own commands, run as subprocesses (m5_jax.demo's
`run_stage`, with its done-markers):

  train            python -m m5_jax.train --config configs/<method>.py:...
  eval_<task>      python -m m5_jax.evaluate.<task> on the pretrained weights
  finetune         python -m m5_jax.train --config configs/classification.py:...
                   (classification fine-tuning from the pretrained weights)
  export_backbone  the fine-tuned backbone as a pretraining-style workdir, so the
                   frozen-feature binaries (retrieval, clustering) can read it
  ft_eval_<task>   the eval binaries on the fine-tuned model
  random_init / random_eval_<task>   (cells in cells.random_cells) the same model
                   at its initialisation, the floor pretraining must beat

Cell names are '<method>-<letters>' ('m5_mmt-tip'), '-s<seed>' appended for the
noise runs; a cell shared by two tables (m5_mmt on T+I) runs once.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
from typing import Sequence

import ml_collections

from m5_jax.models import presets

SINGLE_MODALITY_METHODS = {'image_only': 'i', 'text_only': 't'}


def config_file(name: str) -> str:
  """configs/<name>.py of this checkout (the matrix may run from any directory)."""
  spec = importlib.util.find_spec('configs')
  return os.path.join(list(spec.submodule_search_locations)[0], f'{name}.py')


@dataclasses.dataclass(frozen=True)
class Cell:
  method: str
  letters: str           # modality set, one letter per modality ('ti')
  seed: int = 0
  tables: tuple[str, ...] = ()

  @property
  def name(self) -> str:
    return f'{self.method}-{self.letters}' + (f'-s{self.seed}' if self.seed else '')

  @property
  def label(self) -> str:
    """The paper's row name ('T+I'), in the cell's own modality order."""
    return '+'.join(c.upper() for c in self.letters)

  @property
  def modalities(self) -> tuple[str, ...]:
    return presets.parse_modalities(self.letters)


def enumerate_cells(config: ml_collections.ConfigDict) -> list[Cell]:
  """Every cell of the matrix, each once, with the tables it feeds, in run order."""
  cells = config.cells
  wanted: dict[tuple[str, str, int], list[str]] = {}

  def add(method: str, letters: str, table: str, seed: int = 0) -> None:
    if method not in presets.PRESETS:
      raise ValueError(f'cells: unknown method {method!r}; expected one of '
                       f'{", ".join(presets.PRESETS)}')
    presets.parse_modalities(letters)  # clear error for a bad letter
    wanted.setdefault((method, letters, seed), [])
    if table not in wanted[(method, letters, seed)]:
      wanted[(method, letters, seed)].append(table)

  for letters in cells.sequence:
    add(cells.sequence_method, letters, 'sequence')
  for letters in cells.combinations:
    add(cells.sequence_method, letters, 'combinations')
  for letters in cells.sequence:  # the sequence's pairs and triples belong to Table 2 too
    if len(letters) in (2, 3):
      add(cells.sequence_method, letters, 'combinations')
  for method in cells.methods:
    add(method, SINGLE_MODALITY_METHODS.get(method, cells.method_modalities), 'methods')
  base = [Cell(m, l, s, tuple(t)) for (m, l, s), t in wanted.items()]
  by_name = {c.name: c for c in base}
  for name in cells.noise_cells:
    if name not in by_name:
      raise ValueError(f'cells.noise_cells: {name!r} is not a cell of this matrix '
                       f'(cells: {", ".join(by_name)})')
    for seed in cells.noise_seeds:
      add(by_name[name].method, by_name[name].letters, 'noise', seed)
  for name in cells.random_cells:
    if name not in by_name:
      raise ValueError(f'cells.random_cells: {name!r} is not a cell of this matrix '
                       f'(cells: {", ".join(by_name)})')
  # Run order: Table 1, Table 3, the noise runs, then Table 2's remaining cells
  # (a run stopped early still fills the paper's main tables first).
  priority = ('sequence', 'methods', 'noise', 'combinations')
  out = [Cell(m, l, s, tuple(t)) for (m, l, s), t in wanted.items()]
  return sorted(out, key=lambda c: min(priority.index(t) for t in c.tables))


# ----------------------------------------------------------------------------- commands


@dataclasses.dataclass(frozen=True)
class Paths:
  """Where the shared data and each cell's runs live under the matrix workdir."""
  work: str

  @property
  def release(self) -> str:
    return os.path.join(self.work, 'data', 'release')

  @property
  def tfds(self) -> str:
    return os.path.join(self.work, 'data', 'tfds')

  @property
  def tokenizer(self) -> str:
    return os.path.join(self.work, 'data', 'spm.model')

  def cell(self, cell: Cell) -> str:
    return os.path.join(self.work, 'cells', cell.name)

  def run(self, cell: Cell, kind: str) -> str:
    """kind: pretrained | finetune | finetuned (the exported backbone) | random_init."""
    return os.path.join(self.cell(cell), kind)


def data_stages(config, paths: Paths, py: str, tfds_cli: str, builder_dir: str
                ) -> list[tuple[str, list[str]]]:
  """make_mini -> tfds build (one form) -> tokenizer, shared by every cell."""
  data = config.data
  return [
      ('make_mini', [py, '-m', 'data_prep.make_mini', '--out', paths.release,
                     '--num_products', str(data.num_products), '--seed', str(data.seed),
                     '--overwrite'] + (['--features'] if data.form == 'features' else [])),
      ('tfds_build', [tfds_cli, 'build', builder_dir, '--manual_dir', paths.release,
                      '--data_dir', paths.tfds, '--config', data.form,
                      '--file_format', 'array_record', '--overwrite']),
      ('tokenizer', [py, '-m', 'data_prep.tokenizer', '--manual_dir', paths.release,
                     '--out', paths.tokenizer, '--vocab_size', str(data.vocab_size)]),
  ]


def _data_overrides(config, paths: Paths, cell: Cell) -> list[str]:
  vocab = config.data.vocab_size
  out = [f'--config.input.data_dir={paths.tfds}', f'--config.input.tokenizer={paths.tokenizer}',
         f'--config.model.vocab_size={vocab}', f'--config.seed={cell.seed}']
  out += [f'--config.modality.{m}.vocab_size={vocab}' for m in cell.modalities
          if m in ('text', 'table')]
  if 'audio' in cell.modalities and config.data.get('audio_form'):
    out.append(f'--config.modality.audio.form={config.data.audio_form}')
  return out


def _duration_overrides(steps: int, lr: float, warmup_fraction: float) -> list[str]:
  return [f'--config.total_steps={steps}', f'--config.optimizer.lr={lr}',
          f'--config.schedule.warmup_steps={max(1, int(steps * warmup_fraction))}',
          f'--config.checkpoint.every_steps={steps}',
          f'--config.log.every_steps={max(1, steps // 20)}']


def pretrain_config_spec(config, cell: Cell) -> str:
  p = config.pretrain
  return (f'{config_file(cell.method)}:size={p.size},modalities={cell.letters},'
          f'form={config.data.form},batch_size={p.batch_size}')


def _eval(py: str, task: str, workdir: str, config, subsets: str) -> list[str]:
  cmd = [py, '-m', f'm5_jax.evaluate.{task}', '--workdir', workdir,
         '--feature', config.pretrain.feature, '--batch_size', str(config.eval.batch_size)]
  return cmd + (['--subsets', subsets] if subsets else [])


def eval_tasks(config, cell: Cell, weights: str) -> tuple[str, ...]:
  """The eval binaries for the cell's `weights` ('pretrained' | 'finetuned'): those in
  eval.methods_only_tasks (clustering: only Table 3 shows it) run for Table 3's
  cells and the noise runs only."""
  tasks = config.eval.get(f'{weights}_tasks')
  if 'methods' in cell.tables or 'noise' in cell.tables:
    return tuple(tasks)
  return tuple(t for t in tasks if t not in config.eval.methods_only_tasks)


def eval_subsets(config, cell: Cell) -> str:
  """'all' (the cell's whole set) except for cells.per_modality_cells, which also
  score each modality alone (for 'text dominates'); '' = the binary's default."""
  if cell.name in config.cells.per_modality_cells and len(cell.letters) > 1:
    return ''
  return 'all'


def cell_stages(config, cell: Cell, paths: Paths, num_classes: int, py: str,
                module: str = 'm5_jax.benchmark_matrix') -> list[tuple[str, list[str]]]:
  """(stage name, command) of one cell, in order."""
  p, f = config.pretrain, config.finetune
  pretrained = paths.run(cell, 'pretrained')
  data = _data_overrides(config, paths, cell)
  subsets = eval_subsets(config, cell)
  plan = [('train', [py, '-m', 'm5_jax.train', '--config', pretrain_config_spec(config, cell),
                     '--workdir', pretrained, *data,
                     *_duration_overrides(p.steps, p.lr, p.warmup_fraction), *p.overrides])]
  pretrained_tasks = eval_tasks(config, cell, 'pretrained')
  plan += [(f'eval_{t}', _eval(py, t, pretrained, config, subsets)) for t in pretrained_tasks]
  if cell.name in config.cells.random_cells:
    random_init = paths.run(cell, 'random_init')
    # The pretrained cell's config and seed with nothing to train: a step-0
    # checkpoint of its initial (random) weights.
    plan.append(('random_init', [py, '-m', 'm5_jax.train', '--config',
                                 pretrain_config_spec(config, cell), '--workdir', random_init,
                                 *data, *p.overrides, '--config.total_steps=0']))
    plan += [(f'random_eval_{t}', _eval(py, t, random_init, config, subsets))
             for t in pretrained_tasks]
  if f.enabled:
    finetune, finetuned = paths.run(cell, 'finetune'), paths.run(cell, 'finetuned')
    spec = (f'{config_file("classification")}:method={cell.method},size={p.size},'
            f'modalities={cell.letters},form={config.data.form},batch_size={f.batch_size},'
            f'num_classes={num_classes}')
    plan.append(('finetune', [py, '-m', 'm5_jax.train', '--config', spec, '--workdir', finetune,
                              *data, *_duration_overrides(f.steps, f.lr, p.warmup_fraction),
                              f'--config.init_from.path={pretrained}',
                              f'--config.finetune.hidden={f.hidden}']))
    finetuned_tasks = eval_tasks(config, cell, 'finetuned')
    for task in finetuned_tasks:
      if task == 'classification':  # the fine-tuned head itself
        plan.append(('ft_eval_classification',
                     [py, '-m', 'm5_jax.evaluate.classification', '--workdir', finetune,
                      '--batch_size', str(config.eval.batch_size)]))
    frozen = [t for t in finetuned_tasks if t != 'classification']
    if frozen:
      plan.append(('export_backbone', [py, '-m', module, 'export_backbone', '--finetune',
                                       finetune, '--pretrained', pretrained,
                                       '--workdir', finetuned]))
      plan += [(f'ft_eval_{t}', _eval(py, t, finetuned, config, subsets)) for t in frozen]
  return plan
