"""m5_jax.train_logging: the input-wait scalars and their place in the progress line."""
import time

from m5_jax import train_logging


def test_input_wait_is_logged_per_step_and_shown_when_it_stalls(tmp_path):
  logger = train_logging.MetricLogger(str(tmp_path), total_steps=10, batch_size=4,
                                      flops_per_step=None, peak_flops_per_device=0)
  logger.start(0)
  for _ in range(2):  # two steps, each blocked 50 ms on its batch
    time.sleep(0.05)
    logger.input_wait(0.05)
  scalars = logger.write(2, {'loss': 1.0})
  assert abs(scalars['perf/input_wait_ms'] - 50.0) < 1e-6
  assert 0.5 < scalars['perf/input_wait_frac'] <= 1.0  # most of the 0.1 s went waiting
  assert train_logging.progress_line(2, 10, scalars).endswith(
      f"input wait {scalars['perf/input_wait_frac']:.0%}")
  scalars = logger.write(3, {'loss': 1.0})  # no step since: nothing to report
  assert 'perf/input_wait_ms' not in scalars
  logger.input_wait(0.0)
  scalars = logger.write(4, {'loss': 1.0})
  assert scalars['perf/input_wait_ms'] == 0.0
  assert 'input wait' not in train_logging.progress_line(4, 10, scalars)  # no stall, no noise
  logger.close()
  rows = train_logging.read_metrics(str(tmp_path))
  assert [r['step'] for r in rows] == [2, 3, 4] and rows[0]['perf/input_wait_ms'] == 50.0
