"""The real public media the realistic release is made from, and where they come from.

  pictures   Noto Color Emoji (Debian fonts-noto-color-emoji, SIL OFL 1.1): colour
             bitmaps at their native size 109, rendered with Pillow
  categories Unicode emoji subgroups (Debian unicode-data, emoji-test.txt,
             Unicode licence): e.g. 'food-fruit' -> 水果
  names      Chinese CLDR emoji names (PyPI emoji, BSD; CLDR data, Unicode licence)
  words      Faker zh_CN company prefixes (brands, shops) and provinces / cities
             (PyPI Faker, MIT)
  speech     espeak-ng, voice cmn (Debian espeak-ng, GPL-3; run as a tool, its
             output is not covered by its licence)

Everything is read from installed packages: the generator never uses the network.
A missing Debian package fails with one line naming it and the install command.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import shutil

EMOJI_FONT = '/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf'
EMOJI_TEST = '/usr/share/unicode/emoji/emoji-test.txt'
EMOJI_BITMAP_SIZE = 109       # the font's only strike: other sizes do not load
ESPEAK = 'espeak-ng'
# what the generator needs from Debian: (package, a file or program it provides)
DEBIAN = (('fonts-noto-color-emoji', EMOJI_FONT), ('unicode-data', EMOJI_TEST),
          ('espeak-ng', ESPEAK))


class MissingSource(RuntimeError):
  """A Debian package the generator needs is not installed (one-line message)."""


def require_debian() -> None:
  """Raises MissingSource naming every missing package and the install command."""
  missing = [pkg for pkg, what in DEBIAN
             if not (os.path.exists(what) if what.startswith('/') else shutil.which(what))]
  if missing:
    names = ' '.join(missing)
    raise MissingSource(f'missing Debian package(s) {names}: install with '
                        f'`apt-get install -y {names}` (or `make venv`, which runs the apt target)')


@dataclasses.dataclass(frozen=True)
class Picture:
  """One emoji: a real picture, its Chinese CLDR name and its Unicode subgroup."""
  char: str
  name: str            # Chinese, e.g. 红苹果
  subgroup: str        # e.g. food-fruit


@functools.lru_cache(maxsize=None)
def read_emoji_test(path: str = EMOJI_TEST) -> dict[str, list[str]]:
  """subgroup -> fully-qualified emoji (no skin-tone variants), in file order."""
  out: dict[str, list[str]] = {}
  subgroup = None
  with open(path, encoding='utf-8') as f:
    for line in f:
      if line.startswith('# subgroup:'):
        subgroup = line.split(':', 1)[1].strip()
        out.setdefault(subgroup, [])
      elif line.strip() and not line.startswith('#'):
        codes, rest = line.split(';', 1)
        if rest.split('#', 1)[0].strip() == 'fully-qualified' and 'skin tone' not in rest:
          out[subgroup].append(''.join(chr(int(c, 16)) for c in codes.split()))
  return out


@functools.lru_cache(maxsize=None)
def chinese_names() -> dict[str, str]:
  """emoji -> Chinese CLDR name (PyPI emoji, language 'zh'), colons stripped."""
  import emoji  # pylint: disable=g-import-not-at-top
  emoji.config.load_language('zh')
  return {ch: data['zh'].strip(':').replace('_', '')
          for ch, data in emoji.EMOJI_DATA.items() if 'zh' in data}


def pictures(subgroups: tuple[str, ...]) -> list[Picture]:
  """The emoji of `subgroups` that have a Chinese name, in Unicode order."""
  by_subgroup = read_emoji_test()
  unknown = [s for s in subgroups if s not in by_subgroup]
  if unknown:
    raise ValueError(f'{EMOJI_TEST} has no emoji subgroup {unknown[0]!r}')
  names = chinese_names()
  return [Picture(ch, names[ch], s) for s in subgroups for ch in by_subgroup[s] if ch in names]


@functools.lru_cache(maxsize=None)
def emoji_font():
  from PIL import ImageFont  # pylint: disable=g-import-not-at-top
  return ImageFont.truetype(EMOJI_FONT, EMOJI_BITMAP_SIZE)


@dataclasses.dataclass(frozen=True)
class Words:
  """Chinese word lists from Faker's zh_CN providers (read once, drawn with numpy)."""
  brands: tuple[str, ...]      # company prefixes, e.g. 华泰通安
  provinces: tuple[str, ...]
  cities: tuple[str, ...]


def faker_words() -> Words:
  from faker.providers.address import zh_CN as address  # pylint: disable=g-import-not-at-top
  from faker.providers.company import zh_CN as company  # pylint: disable=g-import-not-at-top
  brands = tuple(dict.fromkeys(p for p in company.Provider.company_prefixes
                               if not p.endswith('公司')))
  return Words(brands=brands, provinces=tuple(address.Provider.provinces),
               cities=tuple(dict.fromkeys(c.rstrip('市') for c in address.Provider.cities)))
