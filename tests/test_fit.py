"""The ahead-of-time fit check compiles the real train step for a simulated mesh."""
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_fit(tmp_path, *args):
  out = tmp_path / 'fit.json'
  env = {**os.environ, 'XLA_FLAGS': ''}  # the tool sets its own device count
  proc = subprocess.run([sys.executable, '-m', 'm5_jax.tools.fit', '--json', str(out), *args],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  return proc, (json.loads(out.read_text()) if out.exists() else None)


def test_fit_reports_sharded_parameter_memory_and_verdict(tmp_path):
  proc, numbers = run_fit(
      tmp_path, '--config', 'configs/text_only.py:size=tiny,batch_size=8', '--devices', '4',
      '--mesh', 'data=2,fsdp=2,tensor=1', '--hbm_gib', '1e-6', '--reserve_gib', '0')
  assert proc.returncode == 3, proc.stderr[-2000:]  # nothing fits in 1 KiB
  assert 'DOES NOT FIT' in proc.stdout and 'parameters (fp32)' in proc.stdout
  assert numbers['mesh'] == {'data': 2, 'fsdp': 2, 'tensor': 1}
  full = numbers['num_params'] * 4
  # FSDP over 2 devices: each holds at least half of the fp32 parameters (leaves that
  # do not divide stay replicated) and less than all of them.
  assert full / 2 <= numbers['params_bytes'] < full
  # AdamW keeps two moments per parameter, sharded like the parameters.
  np.testing.assert_allclose(numbers['opt_state_bytes'], 2 * numbers['params_bytes'], rtol=0.01)
  assert numbers['temp_bytes'] > 0 and numbers['batch_bytes'] > 0
  assert numbers['total_bytes'] == sum(numbers[k] for k in (
      'params_bytes', 'opt_state_bytes', 'batch_bytes', 'temp_bytes'))


def test_fit_rejects_a_bad_mesh(tmp_path):
  proc, _ = run_fit(tmp_path, '--config', 'configs/text_only.py:size=tiny', '--devices', '4',
                    '--mesh', 'data=3')
  assert proc.returncode != 0
  assert proc.stderr.strip().splitlines()[-1].startswith('m5_jax')


def test_compile_shows_elapsed_time(capsys):
  import time  # pylint: disable=g-import-not-at-top
  from m5_jax.tools import fit  # pylint: disable=g-import-not-at-top
  with fit._elapsed_ticker('compiling', every_s=0.05):  # pylint: disable=protected-access
    time.sleep(0.3)
  lines = capsys.readouterr().err.splitlines()
  assert len(lines) >= 2 and all(line == '  compiling: 0:00 elapsed' for line in lines)
  time.sleep(0.15)                                      # the ticker stopped with the body
  assert capsys.readouterr().err == ''
