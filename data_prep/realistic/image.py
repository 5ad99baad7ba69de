"""Listing images (and video stages) from a product's real picture.

The product level is the picture and its colour variant (a tint toward the
named colour, keeping the picture's shading). A listing varies the rest: scale,
position (the picture may be cropped by the frame), small rotation, background
(white, a flat or a gradient colour), an optional promotion badge and the JPEG
quality.
"""
from __future__ import annotations

import functools
import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from data_prep.realistic import sources
from data_prep.realistic import world as world_lib

IMAGE_SIZE = 224        # the builder's default image_size: no resampling there
BADGES = ('HOT', 'NEW', 'SALE', '-20%', '-50%', 'TOP', '2024')
TINT = 0.55             # share of the colour variant in a tinted picture


@functools.lru_cache(maxsize=None)
def glyph(char: str) -> Image.Image:
  """The emoji's colour bitmap (RGBA), cropped to its content."""
  font = sources.emoji_font()
  canvas = Image.new('RGBA', (160, 160), (0, 0, 0, 0))
  ImageDraw.Draw(canvas).text((4, 4), char, font=font, embedded_color=True)
  box = canvas.getbbox()
  if box is None:
    raise ValueError(f'{sources.EMOJI_FONT} draws nothing for {char!r}')
  return canvas.crop(box)


@functools.lru_cache(maxsize=256)
def product_picture(char: str, colour: int) -> Image.Image:
  """The picture in the product's colour variant (RGBA)."""
  picture = glyph(char)
  tint = world_lib.COLOURS[colour][1]
  if tint is None:
    return picture
  grey = picture.convert('L')
  dark = tuple(int(c * 0.25) for c in tint)
  light = tuple(int(c + (255 - c) * 0.6) for c in tint)
  tinted = ImageOps.colorize(grey, dark, light, mid=tint).convert('RGBA')
  out = Image.blend(picture, tinted, TINT)
  out.putalpha(picture.getchannel('A'))
  return out


def _background(rng, size: int) -> Image.Image:
  kind = rng.random()
  if kind < 0.4:
    return Image.new('RGB', (size, size), (255, 255, 255))
  a = rng.integers(150, 256, 3)
  if kind < 0.75:
    return Image.new('RGB', (size, size), tuple(int(v) for v in a))
  b = rng.integers(150, 256, 3)
  t = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]
  rows = (a[None, None, :] * (1.0 - t) + b[None, None, :] * t).astype(np.uint8)
  return Image.fromarray(np.ascontiguousarray(np.broadcast_to(rows, (size, size, 3))))


@functools.lru_cache(maxsize=None)
def _badge_font():
  return ImageFont.load_default(size=15)


def compose(world: world_lib.World, product: world_lib.Product, rng, size: int = IMAGE_SIZE,
            scale=(0.5, 0.9), badge_prob: float = 0.3) -> Image.Image:
  """The product picture on a listing background (RGB, size x size)."""
  canvas = _background(rng, size)
  picture = product_picture(world.pictures[product.picture].char, product.colour)
  longest = float(rng.uniform(*scale)) * size
  factor = longest / max(picture.size)
  picture = picture.resize((max(1, round(picture.width * factor)), max(1, round(picture.height * factor))),
                           Image.BICUBIC)
  picture = picture.rotate(float(rng.uniform(-10.0, 10.0)), Image.BICUBIC, expand=True)
  # off-centre by up to 60% of the slack that would keep 80% of the picture in the
  # frame: large pictures are cropped a little at an edge, small ones move freely
  slack_x = max(0.0, (size - 0.8 * picture.width) / 2)
  slack_y = max(0.0, (size - 0.8 * picture.height) / 2)
  cx = size / 2 + float(rng.uniform(-slack_x, slack_x)) * 0.6
  cy = size / 2 + float(rng.uniform(-slack_y, slack_y)) * 0.6
  canvas.paste(picture, (round(cx - picture.width / 2), round(cy - picture.height / 2)), picture)
  if rng.random() < badge_prob:
    draw = ImageDraw.Draw(canvas)
    text = BADGES[int(rng.integers(len(BADGES)))]
    x0 = 6 if rng.random() < 0.5 else size - 56
    colour = tuple(int(v) for v in rng.integers(0, 200, 3))
    draw.rounded_rectangle([x0, 6, x0 + 50, 26], radius=5, fill=colour)
    draw.text((x0 + 25, 16), text, fill=(255, 255, 255), font=_badge_font(), anchor='mm')
  return canvas


def listing_jpeg(world: world_lib.World, product: world_lib.Product, rng) -> bytes:
  image = compose(world, product, rng)
  buf = io.BytesIO()
  image.save(buf, format='JPEG', quality=int(rng.integers(60, 96)))
  return buf.getvalue()
