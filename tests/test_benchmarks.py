"""The benchmark suite runs and reports sane numbers (smoke mode; speed is never asserted).

The train-step part compiles a model (tens of seconds on 2 cores), so it is in
the slow test; the cheap parts run here.
"""
import cProfile
import json
import os
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks import conversion  # noqa: E402  pylint: disable=wrong-import-position
from benchmarks import retrieval  # noqa: E402  pylint: disable=wrong-import-position
from benchmarks import suite  # noqa: E402  pylint: disable=wrong-import-position


def _positive(*values):
  return all(isinstance(v, (int, float)) and np.isfinite(v) and v > 0 for v in values)


def test_suite_smoke_writes_json_and_table(tmp_path, capsys):
  out = tmp_path / 'suite.json'
  assert suite.main(['--mode', 'smoke', '--parts', 'retrieval', '--work', str(tmp_path),
                     '--out', str(out)]) == 0
  results = json.loads(out.read_text())
  assert results['mode'] == 'smoke' and results['machine']['cores'] >= 1
  assert results['gpu']['run'] is False
  row, = results['retrieval']
  assert _positive(row['ours_qps'], row['peak_rss_mib'], row['load_avg_end'] + 1)
  if 'faiss_qps' in row:  # faiss is a benchmark-only dependency
    assert _positive(row['faiss_qps'], row['time_ratio_ours_over_faiss'])
    assert row['untied_mismatches'] == 0 and row['ranks'] == 64 * 10
  printed = capsys.readouterr().out
  assert 'retrieval' in printed and f'wrote {out}' in printed


def test_compare_counts_ties_and_untied_mismatches():
  # Reference lists have K + 1 = 4 ranks; ours have K = 3.
  ref_s = np.array([[0.9, 0.8, 0.7, 0.6],      # no ties
                    [0.9, 0.5, 0.5, 0.1],      # ranks 2 and 3 tied with each other
                    [0.9, 0.8, 0.3, 0.3]])     # rank 3 tied with the first left out
  ref_i = np.array([[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4]])
  ours_i = np.array([[1, 3, 2],                # two untied ranks differ
                     [1, 3, 2],                # the tied pair swapped: fine
                     [1, 2, 4]])               # rank 3 swapped with rank 4: fine
  got = retrieval.compare(ref_s[:, :3], ours_i, ref_s, ref_i)
  assert got['ranks'] == 9 and got['tied_ranks'] == 3
  assert got['untied_mismatches'] == 2
  assert got['identical_ids_share'] == pytest.approx(4 / 9)


def log_mel():  # named like the builder's stages so that they are bucketed by name
  total = 0
  for i in range(400_000):
    total += i * i
  return total


def decode_video():
  total = 0
  for i in range(100_000):
    total += i * i
  return total


def test_profile_buckets_group_time_by_stage():
  profile = cProfile.Profile()
  profile.enable()
  log_mel()
  decode_video()
  profile.disable()
  stages = conversion.profile_buckets(profile)
  assert {'mel', 'decode'} <= set(stages)
  assert stages['mel']['seconds'] > stages['decode']['seconds'] > 0
  assert sum(s['share'] for s in stages.values()) == pytest.approx(1.0)
  assert stages['mel']['top'][0][0].endswith(':log_mel')


@pytest.mark.slow
def test_suite_smoke_train_step(tmp_path):
  out = tmp_path / 'suite.json'
  assert suite.main(['--mode', 'smoke', '--parts', 'train', '--out', str(out)]) == 0
  row, = json.loads(out.read_text())['train']
  assert _positive(row['examples_per_s'], row['step_gflop'], row['matmul_peak_gflops'],
                   row['mfu'], row['mfu_per_cpu_second'], row['peak_rss_mib'])
  assert row['tokens_per_example'] == {'text': 36, 'table': 64}


def test_matmul_flops_counts_dots_scans_and_convs():
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from m5_jax import flops  # pylint: disable=g-import-not-at-top
  a, b = jnp.ones((4, 8)), jnp.ones((8, 16))
  assert flops.matmul_flops(lambda x, y: jnp.tanh(x @ y), a, b) == 2 * 4 * 8 * 16

  def stack(x, w):  # the same layer 3 times through lax.scan (what scan_layers does)
    return jax.lax.scan(lambda c, _: (c @ w, None), x, None, length=3)[0]
  assert flops.matmul_flops(stack, a, jnp.ones((8, 8))) == 3 * 2 * 4 * 8 * 8
  # Forward + backward of a dense layer: the forward matmul and two gradient matmuls.
  loss = lambda x, y: jnp.sum(jax.jit(lambda p, q: p @ q)(x, y))  # noqa: E731
  assert flops.matmul_flops(jax.grad(loss, argnums=(0, 1)), a, b) == 3 * 2 * 4 * 8 * 16
  conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), 'VALID')  # noqa: E731
  # [2, 3, 8, 8] * [5, 3, 2, 2] -> [2, 5, 7, 7]: each output sums 3 x 2 x 2 products.
  assert flops.matmul_flops(conv, jnp.ones((2, 3, 8, 8)),
                                    jnp.ones((5, 3, 2, 2))) == 2 * (2 * 5 * 7 * 7) * 12
  # By shape: a dense product and an attention-like one (batch 2 x 3 heads).
  attention = lambda x, q, k: (x @ jnp.ones((8, 16)),  # noqa: E731
                               jnp.einsum('bhld,bhmd->bhlm', q, k))
  shapes = flops.matmul_shapes(jax.make_jaxpr(attention)(
      a, jnp.ones((2, 3, 4, 5)), jnp.ones((2, 3, 6, 5))))
  assert shapes == {('dot', 1, 4, 16, 8): 2 * 4 * 16 * 8, ('dot', 6, 4, 6, 5): 2 * 6 * 4 * 6 * 5}


def test_op_profile_classifies_compiled_hlo_and_sums_thunk_events():
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from benchmarks import op_profile  # pylint: disable=g-import-not-at-top

  def layers(x, ws):  # a scanned stack (while loop) of dense + layer norm, then softmax
    def body(h, w):
      h = jax.nn.relu(h @ w)
      return (h - h.mean(-1, keepdims=True)) / (h.std(-1, keepdims=True) + 1e-6), None
    return jax.nn.logsumexp(jax.lax.scan(body, x, ws)[0])
  compiled = jax.jit(jax.grad(layers, argnums=1)).lower(
      jnp.ones((16, 8)), jnp.ones((3, 8, 8))).compile()
  categories = op_profile.instruction_categories(compiled.as_text())
  kinds = set(categories.values())
  assert {'matmul', 'exp', 'reduce'} <= kinds <= set(op_profile.CATEGORIES)
  instructions, _ = op_profile.parse_hlo(compiled.as_text())
  loops = [name for name, (op, _) in instructions.items() if op == 'while']
  assert loops and not set(loops) & set(categories)  # control flow: its bodies' thunks count
  # Known answer for the event sums: two thunks of one matmul, one exp, unknown names ignored.
  matmul = next(n for n, c in categories.items() if c == 'matmul')
  exp = next(n for n, c in categories.items() if c == 'exp')
  events = [{'ph': 'X', 'name': matmul, 'dur': 30.0}, {'ph': 'X', 'name': matmul, 'dur': 10.0},
            {'ph': 'X', 'name': f'end: {matmul}', 'dur': 1.0},
            {'ph': 'X', 'name': exp, 'dur': 5.0}, {'ph': 'X', 'name': 'Foo::Bar', 'dur': 99.0},
            {'ph': 'M', 'name': exp, 'dur': 7.0}]
  times = op_profile.thunk_times(events, categories)
  assert times['matmul'] == {'us': 40.0, 'events': 2} and times['exp'] == {'us': 5.0, 'events': 1}
  assert sum(t['us'] for c, t in times.items() if c in op_profile.CATEGORIES) == 45.0
  assert times['_by_instruction'] == {matmul: 40.0, exp: 5.0}
  described = op_profile.describe_instructions(compiled.as_text())
  assert described[matmul].startswith('f32[') and '<-' in described[matmul]
  assert op_profile.classify({'dot', 'exponential'}) == 'matmul'
  assert op_profile.classify({'xor', 'shift-right-logical', 'add'}) == 'rng'
  assert op_profile.classify({'transpose', 'parameter'}) == 'layout'
  assert op_profile.classify({'add', 'multiply'}) == 'elementwise'


def test_gpu_lever_arms_build_and_reach_train_step_and_are_skipped_without_a_gpu(
    tmp_path, monkeypatch):
  """Each GPU arm's config set is valid and builds the model (tiny, shapes only); the
  suite hands train_step one --set per lever and the arm's XLA flag in XLA_FLAGS; without
  a GPU the part is recorded as not run."""
  from benchmarks import train_step  # pylint: disable=g-import-not-at-top
  for name, arm in suite.GPU_LEVER_ARMS.items():
    overrides = dict(item.split('=', 1) for item in arm['set'])
    overrides = {k: {'true': True}.get(v, v) for k, v in overrides.items()}
    config = train_step.make_config('tiny', 'features', 8, 'itpva', overrides)
    assert train_step.sequence_lengths(config)['image'] > 0, name
  calls = []
  monkeypatch.setattr(suite, 'run_json', lambda module, args, env=None: calls.append(
      (module, args, env)) or [{'loss': 1.0}])
  row, = suite.run_train([dict(suite.GPU_LEVER_ARMS['levers_cublas'], arm='levers_cublas')])
  (module, args, env), = calls
  assert module == 'benchmarks.train_step' and '--batch_size=256' in args
  assert [a for a in args if a.startswith('--set=')] == [
      '--set=model.scan_layers=true'] + [f'--set={lever}' for lever in suite.GPU_LEVERS]
  assert env['XLA_FLAGS'].endswith('--xla_gpu_enable_triton_gemm=false')
  assert row == {'loss': 1.0, 'arm': 'levers_cublas',
                 'xla_flags': '--xla_gpu_enable_triton_gemm=false'}
  monkeypatch.undo()
  out = tmp_path / 'suite.json'
  assert suite.main(['--mode', 'smoke', '--parts', 'gpu_levers', '--gpu_arms', 'plain,levers',
                     '--out', str(out)]) == 0
  levers = json.loads(out.read_text())['gpu_levers']
  assert levers['run'] is False and 'no GPU visible' in levers['why']
