"""Throughput of the text + table preprocessing (sentencepiece inside tf.data).

    python benchmarks/modality_preprocess.py [--examples 20000] [--parallel 2]
        [--results benchmarks/results/modality_preprocess.md]

Runs the text and table plugins' preprocess over synthetic Chinese/English
titles and property tables in a tf.data map (as the input pipeline does) and
reports examples/s. With --tf_text (needs tensorflow_text importable; it is not
a project dependency) it also times tensorflow-text's SentencepieceTokenizer on
the same strings, the alternative we did not pick (see m5_jax/modalities/text.py).
"""
import argparse
import datetime
import io
import os
import platform
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
import numpy as np  # noqa: E402
import sentencepiece as spm  # noqa: E402
import tensorflow as tf  # noqa: E402

from m5_jax import modalities  # noqa: E402

WORDS = ['红色', '连衣裙', '夏季', '新款', '男士', '运动鞋', '透气', '跑步鞋', '纯棉', '手机壳', '硅胶',
         '防摔', '儿童', '玩具', '积木', 'Nike', 'Adidas', 'iPhone', 'cotton', 'XL', '大码', '女装']
KEYS = ['颜色', '材质', '品牌', '尺码', '适用人群', '风格', '产地', '货号']


def corpus(n, seed=0):
  rng = np.random.default_rng(seed)
  titles = [' '.join(rng.choice(WORDS, rng.integers(4, 14))) for _ in range(n)]
  tables = [(list(rng.choice(KEYS, k, replace=False)), list(rng.choice(WORDS, k)))
            for k in rng.integers(1, 8, n)]
  return titles, tables


def train_tokenizer(titles):
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(titles + KEYS), model_writer=model, vocab_size=1000,
      pad_id=0, unk_id=1, bos_id=2, eos_id=3, user_defined_symbols=['[MASK]'],
      byte_fallback=True, character_coverage=1.0, hard_vocab_limit=False, minloglevel=2)
  return model.getvalue()


def time_dataset(ds, n):
  """examples/s; the outputs are reduced to counts in-graph so Python iteration is not timed."""
  counts = ds.map(lambda *_: tf.constant(1, tf.int64)).batch(1024)
  start = time.perf_counter()
  count = sum(int(tf.reduce_sum(c)) for c in counts)
  assert count == n, count
  return n / (time.perf_counter() - start)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--examples', type=int, default=20000)
  parser.add_argument('--parallel', type=int, default=2)
  parser.add_argument('--tf_text', action='store_true')
  parser.add_argument('--results', default=None)
  args = parser.parse_args()

  titles, tables = corpus(args.examples)
  model = train_tokenizer(titles[:2000])
  sp = spm.SentencePieceProcessor(model_proto=model)
  text, table = modalities.get('text'), modalities.get('table')
  cfgs = {'text': text.default_config(), 'table': table.default_config()}
  ragged = lambda xs: tf.ragged.constant(xs, dtype=tf.string)
  examples = tf.data.Dataset.from_tensor_slices({
      'title': titles, 'pv_keys': ragged([k for k, _ in tables]),
      'pv_values': ragged([v for _, v in tables]),
      'present': {'text': [True] * args.examples, 'table': [True] * args.examples}})
  examples = examples.map(lambda e: dict(e, pv_keys=e['pv_keys'], pv_values=e['pv_values'])).cache()
  for _ in examples:  # materialise the cache outside the timing
    pass

  def preprocess(e):
    return {'text': text.preprocess(e, cfgs['text'], sp),
            'table': table.preprocess(e, cfgs['table'], sp)}

  rows = []
  for parallel in sorted({1, args.parallel}):
    ds = examples.map(preprocess, num_parallel_calls=parallel, deterministic=True)
    rows.append((f'plugins text+table preprocess, numpy_function sentencepiece, '
                 f'{parallel} parallel calls', time_dataset(ds, args.examples)))
  batched = tf.data.Dataset.from_tensor_slices(titles).batch(256)
  tok = modalities.text.SentencePieceTokenizer(sp)
  rows.append(('titles only, numpy_function sentencepiece, batches of 256',
               time_dataset(batched.map(tok.tokenize).unbatch(), args.examples)))
  if args.tf_text:
    import tensorflow_text as tft  # pylint: disable=g-import-not-at-top
    tft_tok = tft.SentencepieceTokenizer(model=model)
    per_example = tf.data.Dataset.from_tensor_slices(titles)
    for parallel in sorted({1, args.parallel}):
      rows.append((f'titles only, tensorflow-text {tft.__version__}, per example, '
                   f'{parallel} parallel calls',
                   time_dataset(per_example.map(tft_tok.tokenize, num_parallel_calls=parallel),
                                args.examples)))
    rows.append(('titles only, numpy_function sentencepiece, per example, 1 call',
                 time_dataset(per_example.map(lambda s: tok.tokenize(tf.reshape(s, [1]))[0]),
                              args.examples)))
    rows.append(('titles only, tensorflow-text, batches of 256',
                 time_dataset(batched.map(tft_tok.tokenize).unbatch(), args.examples)))

  load = os.getloadavg()[0]
  lines = [f'# Text + table preprocessing throughput', '',
           f'Command: `python benchmarks/modality_preprocess.py --examples {args.examples} '
           f'--parallel {args.parallel}{" --tf_text" if args.tf_text else ""}`', '',
           f'Date: {datetime.date.today()}; machine: {platform.processor() or platform.machine()}, '
           f'{os.cpu_count()} CPUs, 1-min load average at the end {load:.1f} '
           '(shared machine: other jobs were running).', '',
           '| what | examples/s |', '| --- | --- |']
  lines += [f'| {name} | {rate:,.0f} |' for name, rate in rows]
  report = '\n'.join(lines) + '\n'
  print(report)
  if args.results:
    with open(args.results, 'w') as f:
      f.write(report)


if __name__ == '__main__':
  main()
