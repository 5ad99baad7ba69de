"""Writes one item of M5Product-mini: its media and feature files, and its annotation.

`write_item` is what a worker process runs. It injects the item's planned
defects (data_prep/mini/plan.py DEFECTS) exactly as the manifest describes them.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from data_prep import release
from data_prep.mini import plan as plan_lib
from data_prep.mini import render
from data_prep.mini import world as world_lib


@dataclasses.dataclass(frozen=True)
class Context:
  root: str
  seed: int
  world: world_lib.World
  cue_noise: float
  features: bool
  layout: release.ReleaseLayout = release.ReleaseLayout()


def _write(path: str, data: bytes):
  with open(path, 'wb') as f:
    f.write(data)


def _save(ctx: Context, feature: str, item_id: str, array: np.ndarray):
  with open(ctx.layout.feature_path(ctx.root, feature, item_id), 'wb') as f:
    np.save(f, array, allow_pickle=False)


def _title_and_pv(ctx: Context, item: plan_lib.ItemPlan):
  """(title, pv) for the annotation; None leaves the key out, bytes are raw."""
  seed, world, noise = ctx.seed, ctx.world, ctx.cue_noise
  record_rng = render.item_rng(seed, item.index, 'record')
  title = pv = None
  if 'text' in item.present:
    if item.noisy_source >= 0:    # exactly the other listing's title
      title = render.render_title(world, item.noisy_product,
                                  render.item_rng(seed, item.noisy_source, 'text'), noise)
    else:
      title = render.render_title(world, item.product, render.item_rng(seed, item.index, 'text'), noise)
    if item.defect == 'bad_encoding':
      title = render.non_utf8(title)
  elif record_rng.random() < 0.5:
    title = ''                    # else the key is missing: both are 'missing_field'
  if 'table' in item.present:
    pairs = render.render_pv(world, item.product, render.item_rng(seed, item.index, 'table'), noise)
    pv = render.malform_pv(pairs, record_rng) if item.defect == 'malformed_pv' else release.format_pv(pairs)
  elif record_rng.random() < 0.5:
    pv = ''
  return title, pv


def write_item(ctx: Context, item: plan_lib.ItemPlan) -> bytes:
  """Writes the item's files; returns its annotation line (see render.annotation_line)."""
  seed, world, noise, i = ctx.seed, ctx.world, ctx.cue_noise, item.index
  item_id, defect, present = item.item_id, item.defect, item.present
  media = lambda m: ctx.layout.media_path(ctx.root, m, item_id)
  feature_rng = render.item_rng(seed, i, 'features')

  if 'image' in present:
    scene = render.image_scene(world, item.product, render.item_rng(seed, i, 'image'), noise)
    jpeg = render.draw_image(scene)
    _write(media('image'), jpeg[:len(jpeg) // 2] if defect == 'truncated_jpeg' else jpeg)
    if ctx.features and defect != 'truncated_jpeg':
      regions, boxes = render.image_features(world, scene, feature_rng)
      if defect == 'nan_image_features':
        regions[0, :16] = np.nan
      _save(ctx, 'image_regions', item_id, regions)
      _save(ctx, 'image_boxes', item_id, boxes)

  if 'video' in present or 'audio' in present:
    clip = render.clip_scene(world, item.product, seed, i, noise)
  if 'video' in present:
    if defect == 'not_a_video':
      _write(media('video'), render.NOT_A_VIDEO)
    else:
      _write(media('video'), render.encode_mp4(render.video_frames(clip)))
      if ctx.features:
        s3d = render.video_features(world, clip, feature_rng)
        _save(ctx, 'video_s3d', item_id, s3d[:, :512] if defect == 'bad_shape_video_features' else s3d)
  if 'audio' in present:
    if defect == 'empty_mp3':
      _write(media('audio'), b'')
    else:
      wave = render.audio_wave(clip, render.item_rng(seed, i, 'audio_noise'))
      _write(media('audio'), render.encode_mp3(wave))
      if ctx.features:
        mel = render.log_mel(wave)
        if defect == 'inf_audio_features':
          mel[0, :4] = np.inf
        _save(ctx, 'audio_mel', item_id, mel)

  title, pv = _title_and_pv(ctx, item)
  return render.annotation_line(item_id, title, pv, item.product.category)
