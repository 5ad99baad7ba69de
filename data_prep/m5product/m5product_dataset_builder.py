"""TFDS builder for the M5Product release: five modalities, two forms.

A further modality is stored by naming its module (one file defining `DATA`, see
data_prep/modalities) in the config field `extra_modalities`, under a config name
of its own, e.g. `--config '{"name": "features_rating", "form": "features",
"extra_modalities": ["toy_rating_modality"]}'`.

    tfds build data_prep/m5product --manual_dir RELEASE --data_dir D --config raw
    tfds build data_prep/m5product --manual_dir RELEASE --data_dir D --config features \
        --file_format array_record --beam_pipeline_options=runner=DirectRunner,direct_num_workers=2

or from Python: `import data_prep.m5product` then `tfds.builder('m5product',
config='raw', data_dir=D).download_and_prepare(download_config=
tfds.download.DownloadConfig(manual_dir=RELEASE))`.

The annotations JSON is parsed once for all splits (`splits.route_annotations`:
counts, label vocabulary, and one records file per split inside the build
folder). Two generation paths then produce the same examples (tested):
  * plain: one process reads each split's records and decodes media in order;
    fine for small releases such as M5Product-mini.
  * Apache Beam, chosen when the download config carries Beam options or a
    runner (`--beam_pipeline_options` on the CLI): one worker reads a split's
    records file (cheap), `Reshuffle` spreads the items, and media
    decoding - the expensive part - runs in parallel on every worker
    (DirectRunner processes, Dataflow, Spark, Flink). Rates and the
    extrapolation to the full release: benchmarks/results/conversion.md.

The build report (items in / written / rejected by reason / absent modalities by
reason, per split and total) is printed and written as JSON to
`<data_dir>/m5product/<config>/<version>/build_report.json`. Release file names
are config fields (see `M5ProductConfig`); a config that changes them needs its
own name (TFDS refuses to reuse 'raw'), e.g. `--config '{"name": "raw_train",
"form": "raw", "annotations": "train.json"}'`. The dataset card is README.md
beside this file.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import time

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from data_prep import decode
from data_prep import modalities
from data_prep import release
from data_prep.m5product import examples
from data_prep.m5product import splits as splits_lib
from data_prep.m5product import token_ids

_DESCRIPTION = """M5Product: Chinese e-commerce products with image, title, property
table (pv), video and audio; any modality may be absent (see `present`)."""

_CITATION = """@inproceedings{dong2022m5product,
  title={M5Product: Self-harmonized Contrastive Learning for E-commercial Multi-modal Pretraining},
  author={Dong, Xiao and Zhan, Xunlin and Wu, Yangxin and Wei, Yunchao and Kampffmeyer, Michael C and
          Wei, Xiaoyong and Lu, Minlong and Wang, Yaowei and Liang, Xiaodan},
  booktitle={CVPR}, year={2022}}"""

REPORT_NAME = 'build_report.json'
RECORDS_DIR = 'annotations_by_split.tmp'  # the one annotations pass's output, deleted after


class ExamplesLost(RuntimeError):
  """The writer stored fewer examples than the build converted (the runner dropped some)."""


@dataclasses.dataclass
class M5ProductConfig(tfds.core.BuilderConfig):
  """A form ('raw' decodes media, 'features' reads pre-extracted .npy) plus the
  release's file names (defaults: `release.ReleaseLayout`) and decode sizes."""
  form: str = 'raw'
  annotations: str = release.ReleaseLayout.annotations
  image_dir: str = release.ReleaseLayout.image_dir
  image_ext: str = release.ReleaseLayout.image_ext
  video_dir: str = release.ReleaseLayout.video_dir
  video_ext: str = release.ReleaseLayout.video_ext
  audio_dir: str = release.ReleaseLayout.audio_dir
  audio_ext: str = release.ReleaseLayout.audio_ext
  split_dir: str = release.ReleaseLayout.split_dir
  instances: str = release.ReleaseLayout.instances
  image_regions_dir: str = 'features/image_regions'
  image_boxes_dir: str = 'features/image_boxes'
  video_s3d_dir: str = 'features/video_s3d'
  audio_mel_dir: str = 'features/audio_mel'
  image_size: int = 224
  video_size: int = 112
  max_video_frames: int = 12
  max_image_pixels: int = decode.Bounds.max_image_pixels
  max_video_pixels: int = decode.Bounds.max_video_pixels
  # The sentencepiece model whose ids are stored (token_ids.py), relative to the
  # release; without the file the build stores text only.
  tokenizer: str = token_ids.DEFAULT_FILE
  splits: tuple[str, ...] = ()  # splits to build; () = every id list the release has
  # Modalities stored beyond the five: import paths of modules defining DATA, their
  # data side (data_prep/modalities), e.g. ('toy_rating_modality',).
  extra_modalities: tuple[str, ...] = ()

  def __post_init__(self):
    if self.form not in ('raw', 'features'):
      raise ValueError(f"M5ProductConfig.form must be 'raw' or 'features', got {self.form!r}")
    self.extra_modalities = tuple(self.extra_modalities)  # a JSON config gives a list
    modalities.of_build(self.extra_modalities)  # a one-line error for an unknown one, now
    unknown = set(self.splits) - set(release.SPLIT_FILES)
    if unknown:
      raise ValueError(f'M5ProductConfig.splits: unknown {sorted(unknown)}; '
                       f'known: {list(release.SPLIT_FILES)}')

  def layout(self) -> release.ReleaseLayout:
    return release.ReleaseLayout(
        annotations=self.annotations, image_dir=self.image_dir, image_ext=self.image_ext,
        video_dir=self.video_dir, video_ext=self.video_ext, audio_dir=self.audio_dir,
        audio_ext=self.audio_ext, split_dir=self.split_dir, instances=self.instances,
        feature_dirs=(('image_regions', self.image_regions_dir),
                      ('image_boxes', self.image_boxes_dir),
                      ('video_s3d', self.video_s3d_dir),
                      ('audio_mel', self.audio_mel_dir)))

  def bounds(self) -> decode.Bounds:
    return decode.Bounds(max_image_pixels=self.max_image_pixels,
                         max_video_pixels=self.max_video_pixels,
                         max_video_seconds=float(self.max_video_frames))


def features_dict(config: M5ProductConfig) -> tfds.features.FeaturesDict:
  """The example features: ids and labels, the text and table fields, then what each
  stored modality declares for config.form (data_prep/modalities)."""
  f = tfds.features
  features = {
      'item_id': f.Text(),
      'label': f.Scalar(dtype=np.int64, doc='category class (-1 unknown)'),
      'label_name': f.Text(doc="the release's label as text"),
      'instance': f.Scalar(dtype=np.int64, doc='product instance (-1 unknown)'),
      'present': {m: f.Scalar(dtype=np.bool_) for m in modalities.names(config.extra_modalities)},
      'title': f.Text(),
      'pv_keys': f.Sequence(f.Text()),
      'pv_values': f.Sequence(f.Text()),
      **token_ids.features(),
  }
  for side in modalities.of_build(config.extra_modalities):
    features.update(side.features(config))
  return f.FeaturesDict(features)


class Builder(tfds.core.GeneratorBasedBuilder):
  """M5Product (and M5Product-mini) from a release folder given as manual_dir."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Five modalities; raw and features configs; Beam path.'}
  BUILDER_CONFIGS = [
      M5ProductConfig(name='raw', form='raw',
                      description='Decoded media: 224px image, 1 fps 112px video (<=12), 80x751 log-mel.'),
      M5ProductConfig(name='features', form='features',
                      description='Pre-extracted: 36x2048 regions + boxes, 12x1024 S3D, 80x751 mel.'),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """Pass the M5Product release folder (or one written by
  `python -m data_prep.make_mini`) as --manual_dir; file names: see the dataset card."""

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=_DESCRIPTION,
        features=features_dict(self.builder_config),
        supervised_keys=None,
        homepage='https://xiaodongsuper.github.io/M5Product_dataset/',
        citation=_CITATION,
        metadata=tfds.core.MetadataDict(),  # the tokenizer of the stored ids
    )

  # TFDS chooses Beam from the download config; we need the same choice to
  # return a PTransform or a generator, so remember it here.
  def _generate_splits(self, dl_manager, download_config):
    self._use_beam = bool(download_config.beam_runner or download_config.beam_options)
    if (self._use_beam and download_config.nondeterministic_order
        and self.info.file_format == tfds.core.FileFormat.ARRAY_RECORD):
      # TFDS 4.9.10's unshuffled Beam writer has no ArrayRecord sink: it would fail deep
      # in Beam after the annotations pass.
      raise ValueError('m5product: --nondeterministic_order writes TFRecord only (TFDS has no '
                       'ArrayRecord Beam sink): build with --file_format tfrecord, then '
                       '`tfds convert_format --dataset_version_dir DIR --out_file_format '
                       'array_record`')
    self._tally = examples.Tally()  # the plain path's counts, and on both paths skipped splits'
    self._beam_counts = {}
    self._skipped: dict[str, str] = {}
    self._unlisted = 0
    return super()._generate_splits(dl_manager, download_config)

  def _download_and_prepare(self, dl_manager, download_config):
    start = time.time()
    try:
      super()._download_and_prepare(dl_manager, download_config)
    finally:
      records = epath.Path(self._records_dir())
      if records.exists():
        records.rmtree()
    counts = collections.Counter(self._tally.counts)
    counts.update(self._beam_counts)
    report = examples.summarize(counts, self._split_names(),
                                modalities.names(self.builder_config.extra_modalities))
    lost = self._lost_examples(report)
    report.update(config=self.builder_config.name, beam=self._use_beam,
                  skipped_splits=dict(self._skipped), unlisted_records=self._unlisted,
                  lost_by_writer=lost, seconds=round(time.time() - start, 2))
    path = os.path.join(self.data_dir, REPORT_NAME)
    with open(path, 'w', encoding='utf-8') as f:
      json.dump(report, f, indent=1, sort_keys=True)
    message = examples.format_report(report)
    final_dir = os.path.join(os.fspath(self.data_dir_root), self.info.full_name)
    if lost:   # TFDS removes the incomplete folder, report included, when this raises
      print(message, flush=True)
      raise ExamplesLost(
          'm5product build stored fewer examples than it converted ('
          + ', '.join(f'{s}: {n} lost' for s, n in lost.items())
          + '): the runner dropped them (seen with Beam\'s DirectRunner multi_processing, '
          'benchmarks/results/conversion.md); the incomplete build is not kept: build again')
    print(f'{message}\n  report: {os.path.join(final_dir, REPORT_NAME)}', flush=True)

  def _lost_examples(self, report) -> dict[str, int]:
    """{split: converted - stored} where the writer stored fewer examples than converted."""
    lost = {}
    for split, entry in report['splits'].items():
      if split in self.info.splits:
        stored = self.info.splits[split].num_examples
        if stored < entry['items_written']:
          lost[split] = entry['items_written'] - stored
    return lost

  def _split_names(self):
    return self.builder_config.splits or tuple(release.SPLIT_FILES)

  def _process_pipeline_result(self, pipeline_result):
    import apache_beam as beam  # pylint: disable=g-import-not-at-top
    query = pipeline_result.metrics().query(
        beam.metrics.MetricsFilter().with_namespace(examples.BeamTally.NAMESPACE))
    counts = collections.Counter()
    for counter in query['counters']:
      counts[counter.key.metric.name] += counter.committed
    self._beam_counts = counts

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = os.fspath(dl_manager.manual_dir)
    config = self.builder_config
    layout = config.layout()
    annotations = os.path.join(root, layout.annotations)
    if not os.path.isfile(annotations):
      raise FileNotFoundError(f'm5product: no annotations file {annotations} '
                              '(set the config field `annotations` for other release versions)')
    options = examples.ConvertOptions(
        root=root, form=config.form, layout=layout, image_size=config.image_size,
        video_size=config.video_size, max_video_frames=config.max_video_frames,
        bounds=config.bounds(), tokenizer=self._tokenizer(root),
        extra_modalities=config.extra_modalities)
    plans = self._split_plans(root, layout)
    routed = splits_lib.route_annotations(annotations, plans, self._records_dir(), self._tally)
    self._unlisted = routed.unlisted
    if self._unlisted:
      logging.warning('m5product: %d annotation records are in no split list built',
                      self._unlisted)
    instances_path = os.path.join(root, layout.instances)
    instances = release.read_instances(instances_path) if os.path.isfile(instances_path) else {}
    generators = {}
    for split, plan in plans.items():
      if not plan.ids and not (plan.listed_unsafe or plan.listed_duplicates):
        self._skip(split, 'empty_list', f'{layout.split_path(root, split)} lists no id')
        continue
      if split not in routed.record_files:
        # TFDS refuses a split with no example and would then fail every split; this
        # one is skipped, its listings counted by the pass (unsafe, unknown, malformed).
        self._skip(split, 'nothing_to_write', 'no listed id is an annotated item')
        continue
      split_instances = {i: instances[i] for i in plan.ids if i in instances}
      args = (routed.record_files[split], split, routed.label_vocab, split_instances, options)
      generators[split] = _beam_split(*args) if self._use_beam else self._generate_examples(*args)
    if not generators:
      raise ValueError(f'm5product: nothing to build from {root}: every split list is empty or '
                       f'lists no annotated item ({self._skipped})')
    return generators

  def _split_plans(self, root: str, layout: release.ReleaseLayout
                   ) -> dict[str, splits_lib.SplitPlan]:
    """The id list of each split to build; a one-line error when none (or a named one) exists."""
    paths = {split: layout.split_path(root, split) for split in self._split_names()}
    missing = [split for split, path in paths.items() if not os.path.isfile(path)]
    if missing and (self.builder_config.splits or len(missing) == len(paths)):
      names = ', '.join(os.path.relpath(paths[s], root) for s in missing)
      raise FileNotFoundError(f'm5product: missing split id lists in {root}: {names} '
                              '(config fields split_dir / splits)')
    plans = {}
    for split, path in paths.items():
      if split in missing:
        self._skip(split, 'missing_list', f'no id list {path}')
      else:
        plans[split] = splits_lib.plan_split(split, release.read_id_list(path))
    return plans

  def _tokenizer(self, root: str) -> bytes | None:
    """The model whose ids the build stores, recorded in the dataset's metadata."""
    path = os.path.join(root, self.builder_config.tokenizer)
    model = token_ids.read_model(path)
    identity = token_ids.identity(model, path) if model else None
    self.info.metadata[token_ids.METADATA_KEY] = identity
    if identity:
      logging.info('m5product: storing token ids of %s (sha256 %s)', path, identity['sha256'])
    else:
      logging.warning('m5product: no tokenizer at %s: storing text only, which the input '
                      'pipeline tokenises per example (slow); train it first with `python -m '
                      'data_prep.tokenizer --manual_dir %s`', path, root)
    return model

  def _skip(self, split: str, reason: str, detail: str) -> None:
    logging.warning('m5product: split %s skipped (%s): %s', split, reason, detail)
    self._skipped[split] = reason

  def _records_dir(self) -> str:
    """Where the annotations pass writes each split's records: inside the
    incomplete build folder (visible to Beam workers), removed after the build."""
    return os.path.join(os.fspath(self.data_dir), RECORDS_DIR)

  def _generate_examples(self, records_file, split, label_vocab, instances, options):
    """The plain path: read the split's records, decode and yield in this process."""
    tally = self._tally
    for item_id, record in splits_lib.iter_records(records_file):
      yield examples.convert(split, item_id, record, label_vocab, instances.get(item_id), options,
                             tally)


def _beam_split(records_file, split, label_vocab, instances, options):
  """A PTransform: read the split's records on one worker (JSON lines: cheap
  next to decoding), Reshuffle, convert in parallel.

  The DirectRunner's multi_processing mode (Beam 2.77) has at times stored fewer
  examples than this converted, on ~2.9k-item features builds, with this shape
  and with ReadFromText (benchmarks/results/conversion.md); the build report's
  items_written is the converted count, TFDS's split info the stored one, and a
  build whose writer stored fewer fails (`_lost_examples`) instead of losing them.
  """
  import apache_beam as beam  # pylint: disable=g-import-not-at-top

  def convert(line):
    item_id, record = splits_lib.parse_line(line)
    return examples.convert(split, item_id, record, label_vocab, instances.get(item_id), options,
                            examples.BeamTally())

  @beam.ptransform_fn
  def transform(pipeline):
    return (pipeline
            | 'Start' >> beam.Create([records_file])
            | 'ReadRecords' >> beam.FlatMap(splits_lib.iter_lines)
            | 'Reshuffle' >> beam.Reshuffle()
            | 'Convert' >> beam.Map(convert))

  return transform()  # pylint: disable=no-value-for-parameter
