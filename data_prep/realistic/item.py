"""Writes one item of the realistic release: its media files and its annotation.

`write_item` is what a worker process runs. Each modality of item i draws from
its own RNG (seed, i, stream), so an item renders the same in any worker. The
planned defects (data_prep/mini/plan.py DEFECTS) are injected exactly as mini
injects them, so the manifest is mini's.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from data_prep import release
from data_prep.mini import plan as plan_lib
from data_prep.mini import render as mini_render
from data_prep.realistic import image as image_lib
from data_prep.realistic import speech as speech_lib
from data_prep.realistic import text as text_lib
from data_prep.realistic import video as video_lib
from data_prep.realistic import world as world_lib

STREAMS = {'text': 1, 'table': 2, 'image': 3, 'video': 4, 'narrator': 5, 'script': 6,
           'audio_noise': 7, 'record': 8}


def item_rng(seed: int, index: int, stream: str) -> np.random.Generator:
  return np.random.default_rng([seed, index, STREAMS[stream], 0x5EA1])


@dataclasses.dataclass(frozen=True)
class Context:
  root: str
  seed: int
  world: world_lib.World
  layout: release.ReleaseLayout = release.ReleaseLayout()


def _write(path: str, data: bytes):
  with open(path, 'wb') as f:
    f.write(data)


def _title(ctx: Context, index: int, product) -> str:
  return text_lib.title(ctx.world, product, item_rng(ctx.seed, index, 'text'))


def _title_and_pv(ctx: Context, item: plan_lib.ItemPlan):
  """(title, pv) for the annotation; None leaves the key out, bytes are raw."""
  record_rng = item_rng(ctx.seed, item.index, 'record')
  title = pv = None
  if 'text' in item.present:
    if item.noisy_source >= 0:    # exactly the other listing's title
      title = _title(ctx, item.noisy_source, item.noisy_product)
    else:
      title = _title(ctx, item.index, item.product)
    if item.defect == 'bad_encoding':
      title = mini_render.non_utf8(title)
  elif record_rng.random() < 0.5:
    title = ''                    # else the key is missing: both are 'missing_field'
  if 'table' in item.present:
    pairs = text_lib.pv_pairs(ctx.world, item.product, item_rng(ctx.seed, item.index, 'table'))
    pv = (mini_render.malform_pv(pairs, record_rng) if item.defect == 'malformed_pv'
          else release.format_pv(pairs))
  elif record_rng.random() < 0.5:
    pv = ''
  return title, pv


def write_item(ctx: Context, item: plan_lib.ItemPlan) -> bytes:
  """Writes the item's files; returns its annotation line (mini's format)."""
  seed, world, i = ctx.seed, ctx.world, item.index
  defect, present = item.defect, item.present
  media = lambda m: ctx.layout.media_path(ctx.root, m, item.item_id)

  if 'image' in present:
    jpeg = image_lib.listing_jpeg(world, item.product, item_rng(seed, i, 'image'))
    _write(media('image'), jpeg[:len(jpeg) // 2] if defect == 'truncated_jpeg' else jpeg)

  if 'video' in present or 'audio' in present:   # the clip lasts as long as the narration
    voice = speech_lib.narrator(item_rng(seed, i, 'narrator'))
    script = text_lib.speech_script(world, item.product, item_rng(seed, i, 'script'))
    speech = speech_lib.synthesize(script, voice)
    seconds = speech_lib.seconds_for(speech, voice)
  if 'video' in present:
    if defect == 'not_a_video':
      _write(media('video'), mini_render.NOT_A_VIDEO)
    else:
      frames = video_lib.frames(world, item.product, seconds, item_rng(seed, i, 'video'))
      _write(media('video'), video_lib.encode_mp4(frames))
  if 'audio' in present:
    if defect == 'empty_mp3':
      _write(media('audio'), b'')
    else:
      wave = speech_lib.track(speech, voice, seconds, item_rng(seed, i, 'audio_noise'))
      _write(media('audio'), mini_render.encode_mp3(wave))

  title, pv = _title_and_pv(ctx, item)
  return mini_render.annotation_line(item.item_id, title, pv, item.product.category)
