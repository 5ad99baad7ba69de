"""The launch scripts' dry-run mode prints the exact commands they would run."""
import os
import shlex
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def dry_run(script, *args, **env):
  full_env = {**os.environ, 'DRY_RUN': '1', **env}
  out = subprocess.run(['bash', os.path.join(ROOT, 'launch', script), *args], env=full_env,
                       capture_output=True, text=True, check=True, cwd=ROOT)
  return [shlex.split(line[2:]) for line in out.stdout.splitlines() if line.startswith('+ ')]


def test_local_dry_run_trains_then_evaluates_all_tasks():
  cmds = dry_run('local.sh', '--config', 'configs/m5_mmt.py:size=tiny,runlocal',
                 '--workdir', '/tmp/w', '--config.total_steps=5')
  assert cmds[0][1:] == ['-m', 'm5_jax.train', '--config', 'configs/m5_mmt.py:size=tiny,runlocal',
                         '--workdir', '/tmp/w', '--config.total_steps=5']
  assert [c[2] for c in cmds[1:]] == [
      'm5_jax.evaluate.coarse_retrieval', 'm5_jax.evaluate.fine_retrieval',
      'm5_jax.evaluate.classification', 'm5_jax.evaluate.clustering']


def test_launches_tune_malloc_unless_the_caller_did():
  """launch/common.sh exports GLIBC_TUNABLES for the input pipeline; a value already in
  the environment is kept."""
  show = ['bash', '-c', 'source launch/common.sh && echo "$GLIBC_TUNABLES"']
  env = {k: v for k, v in os.environ.items() if k != 'GLIBC_TUNABLES'}
  ours = subprocess.run(show, env=env, cwd=ROOT, capture_output=True, text=True, check=True)
  assert ours.stdout.split() == ['glibc.malloc.mmap_threshold=33554432:glibc.malloc.'
                                 'trim_threshold=1073741824:glibc.malloc.top_pad=67108864']
  theirs = subprocess.run(show, env={**env, 'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'},
                          cwd=ROOT, capture_output=True, text=True, check=True)
  assert theirs.stdout.split() == ['glibc.malloc.arena_max=2']


def test_launches_preload_tcmalloc_once_and_refuse_a_missing_one(tmp_path, monkeypatch):
  """launch/common.sh's preload_tcmalloc (launch/local.sh) preloads the tcmalloc
  that M5_TCMALLOC names (once, however often it is called), leaves LD_PRELOAD alone when M5_TCMALLOC is empty, and stops with one line
  when the named library is missing."""
  from benchmarks import machine  # pylint: disable=g-import-not-at-top
  lib = tmp_path / 'libtcmalloc_minimal.so.4'
  lib.write_bytes(b'')  # never loaded: the shell only exports the variable
  show = ['bash', '-c', 'source launch/common.sh && preload_tcmalloc && preload_tcmalloc && '
          'echo "$LD_PRELOAD" && echo "$TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"']
  env = {k: v for k, v in os.environ.items()
         if k not in ('LD_PRELOAD', 'TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD')}

  def source(**extra):
    return subprocess.run(show, env={**env, **extra}, cwd=ROOT, capture_output=True, text=True)

  named = source(M5_TCMALLOC=str(lib), LD_PRELOAD='/other.so')
  assert named.returncode == 0
  assert named.stdout.split() == [f'{lib}:/other.so', '1099511627776']
  off = source(M5_TCMALLOC='')
  assert off.returncode == 0 and off.stdout.split() == [] and off.stderr == ''
  missing = source(M5_TCMALLOC=str(tmp_path / 'gone.so'))
  assert missing.returncode == 2 and missing.stdout == ''
  assert missing.stderr.strip() == f'error: M5_TCMALLOC={tmp_path}/gone.so does not exist'
  # The benchmarks start their arms with the same environment.
  monkeypatch.setenv('M5_TCMALLOC', str(lib))
  assert machine.tcmalloc_env() == {'LD_PRELOAD': str(lib),
                                    'TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD': '1099511627776'}
  monkeypatch.setenv('M5_TCMALLOC', '')
  assert machine.tcmalloc_env() == {}
  assert machine.malloc() in ('glibc', 'tcmalloc')


def test_tpu_pod_dry_run_ships_installs_and_trains_on_all_workers():
  cmds = dry_run('tpu_pod.sh', '--config', 'configs/m5_mmt.py:size=base', '--workdir', 'gs://b/run',
                 '--config.input.batch_size=4096', TPU_NAME='pod', ZONE='us-central2-b', EVAL='1',
                 ALLOW_DIRTY='1')  # the checkout under test may have uncommitted changes
  gcloud = [c for c in cmds if c[0] == 'gcloud']
  evals = [c for c in gcloud if 'm5_jax.evaluate.' in c[-1]]
  assert all('--worker=all' in c for c in gcloud if c not in evals)
  # Evaluators are single-process: one on worker 0, not one per worker writing the same files.
  assert len(evals) == 4 and all('--worker=0' in c and '--worker=all' not in c for c in evals)
  assert gcloud[0][:4] == ['gcloud', 'compute', 'tpus', 'tpu-vm'] and gcloud[0][4] == 'scp'
  remote = [c[c.index('--command') + 1] for c in gcloud[1:]]
  assert 'pip install' in remote[0] and 'jax[tpu]' in remote[0]
  train = shlex.split(remote[1].split('&&', 1)[1])
  assert train[train.index('-m') + 1] == 'm5_jax.train'
  assert any(a.startswith('GLIBC_TUNABLES=glibc.malloc.mmap_threshold=') for a in train)
  assert train[-5:] == ['--config', 'configs/m5_mmt.py:size=base', '--workdir', 'gs://b/run',
                        '--config.input.batch_size=4096']
  assert sum('m5_jax.evaluate.' in r for r in remote) == 4


def test_tpu_pod_refuses_uncommitted_changes_unless_allowed(tmp_path):
  """It ships `git archive HEAD`: what is not committed would silently not reach the pod."""
  repo = tmp_path / 'repo'
  (repo / 'launch').mkdir(parents=True)
  for name in ('tpu_pod.sh', 'common.sh'):
    (repo / 'launch' / name).write_text(open(os.path.join(ROOT, 'launch', name)).read())
  for command in (['init', '-q'], ['add', '.'], ['commit', '-q', '-m', 'init']):
    subprocess.run(['git', '-c', 'user.name=t', '-c', 'user.email=t@t', *command], cwd=repo,
                   check=True, capture_output=True)
  args = ['bash', 'launch/tpu_pod.sh', '--config', 'c.py', '--workdir', 'gs://b/w']
  env = {**os.environ, 'DRY_RUN': '1', 'TPU_NAME': 'pod', 'ZONE': 'z'}
  env.pop('ALLOW_DIRTY', None)
  clean = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True)
  assert clean.returncode == 0 and 'git archive' in clean.stdout and clean.stderr == ''
  with open(repo / 'launch' / 'common.sh', 'a') as f:
    f.write('# edited\n')
  (repo / 'new_module.py').write_text('')
  dirty = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True)
  assert dirty.returncode == 1 and dirty.stdout == ''  # nothing shipped, not even in a dry run
  assert 'launch/common.sh' in dirty.stderr and 'new_module.py' in dirty.stderr
  assert 'ALLOW_DIRTY=1' in dirty.stderr
  allowed = subprocess.run(args, cwd=repo, env={**env, 'ALLOW_DIRTY': '1'}, capture_output=True,
                           text=True)
  assert allowed.returncode == 0 and 'git archive' in allowed.stdout
  assert 'WARNING: 2 uncommitted change(s) will NOT reach the pod' in allowed.stderr


def test_tpu_pod_requires_its_environment():
  out = subprocess.run(['bash', 'launch/tpu_pod.sh', '--config', 'c.py', '--workdir', 'gs://x'],
                       cwd=ROOT, capture_output=True, text=True,
                       env={k: v for k, v in os.environ.items() if k not in ('TPU_NAME', 'ZONE')})
  assert out.returncode != 0 and 'TPU_NAME' in out.stderr


def test_slurm_dry_run_uses_srun_per_node():
  cmds = dry_run('gpu_slurm.sbatch', '--config', 'configs/scale.py:size=base', '--workdir', '/shared/w',
                 SLURM_JOB_NUM_NODES='4', EVAL='0')
  assert len(cmds) == 1
  assert cmds[0][:3] == ['srun', '--nodes=4', '--ntasks-per-node=1']
  assert cmds[0][-4:] == ['--config', 'configs/scale.py:size=base', '--workdir', '/shared/w']


def test_slurm_dry_run_trains_on_every_node_and_evaluates_on_one():
  """N evaluators (one per node) would each evaluate every step and write the same files;
  the eval binaries are single-process, so they run once, on one node."""
  cmds = dry_run('gpu_slurm.sbatch', '--config', 'configs/scale.py:size=base', '--workdir',
                 '/shared/w', SLURM_JOB_NUM_NODES='4')
  assert cmds[0][:3] == ['srun', '--nodes=4', '--ntasks-per-node=1']
  evals = cmds[1:]
  assert [c[c.index('-m') + 1] for c in evals] == [
      'm5_jax.evaluate.coarse_retrieval', 'm5_jax.evaluate.fine_retrieval',
      'm5_jax.evaluate.classification', 'm5_jax.evaluate.clustering']
  assert all(c[:3] == ['srun', '--nodes=1', '--ntasks=1'] for c in evals)


@pytest.mark.parametrize('script', ['local.sh', 'tpu_pod.sh', 'gpu_slurm.sbatch'])
def test_usage_error_without_workdir(script):
  out = subprocess.run(['bash', f'launch/{script}', '--config', 'c.py'], cwd=ROOT, capture_output=True,
                       text=True, env={**os.environ, 'TPU_NAME': 't', 'ZONE': 'z', 'DRY_RUN': '1'})
  assert out.returncode == 2 and 'usage' in out.stderr
