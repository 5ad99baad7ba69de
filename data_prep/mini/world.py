"""The latent world of M5Product-mini: vocabularies, category cue maps, products.

A `World` is a pure function of the seed. It fixes, for every modality, a map
from the 24 categories to that modality's category cue (one-to-one for text,
table and audio, many-to-one for image and video; see the scheme in
data_prep/make_mini.py), and the random projections that turn latent
attributes into pre-extracted features. A `Product` is one latent product; its
listings (items) share all product-level attributes.
"""
from __future__ import annotations

import dataclasses

import numpy as np

CATEGORIES = (
    '连衣裙', 'T恤', '运动鞋', '双肩包', '蓝牙耳机', '手机壳', '保温杯', '口红',
    '面霜', '台灯', '抱枕', '收纳盒', '零食礼包', '茶叶', '儿童玩具', '宠物用品',
    '瑜伽垫', '机械键盘', '充电宝', '电饭煲', '床上四件套', '太阳镜', '手表', '雨伞',
)

# --- category cues: one per modality. Text, table and audio name the category
# (one cue value per category, like a real title names the product), image and
# video only narrow it down (many-to-one: 3-4 categories per shape / direction).
TITLE_CUES = ('潮流', '爆款', '经典', '高端', '百搭', '便携', '家用', '网红', '轻奢', '国潮',
              '极简', '日系', '韩版', '欧美', '原装', '智能', '迷你', '升级款', '旗舰',
              '专业', '手工', '定制', '复古风', '北欧')                          # text
STYLE_CUES = ('简约', '复古', '运动', '商务', '可爱', '科技', '田园', '工业', '学院', '街头',
              '优雅', '休闲', '民族', '朋克', '森系', '中性', '甜美', '通勤', '户外',
              '极光', '波普', '古典', '清新', '摩登')                              # table '风格'
SHAPES = ('circle', 'square', 'triangle', 'diamond', 'star', 'hexagon')       # image
DIRECTIONS = 8                                   # video: motion direction, 45 degree steps
# audio: 24 tones 60 Hz apart (one Slaney mel bin each below 1 kHz; the 5th
# harmonic of the highest stays under the 8 kHz Nyquist frequency)
PITCHES_HZ = tuple(200.0 + 60.0 * k for k in range(24))
CUE_SIZES = {'text': len(TITLE_CUES), 'table': len(STYLE_CUES), 'image': len(SHAPES),
             'video': DIRECTIONS, 'audio': len(PITCHES_HZ)}

# --- product-level attributes, each visible in one modality only ---
BRANDS = ('LUMO', '禾木', 'Kawa', '北极光', 'NOVA', '良品铺', 'Zenith', '小森林',
          'AURA', '云朵', 'Pinecone', '青木', 'MORI', '山海', 'Vela', '初见')     # title
SELLING_POINTS = ('加厚', '防水', '透气', '轻薄', '大容量', '静音', '无线', '耐磨',
                  '速干', '保暖', '防摔', '可折叠', '免安装', '长续航', '高颜值', '抗菌',
                  '环保', '原创设计', '正品', '限量')                                # title
MATERIALS = ('纯棉', '涤纶', '真皮', '304不锈钢', 'PP塑料', 'ABS', '硅胶', '实木',
             '玻璃', '铝合金')                                                   # table
COLOURS = ((220, 40, 40), (240, 140, 30), (235, 210, 40), (60, 170, 70), (40, 170, 180),
           (40, 80, 200), (130, 60, 190), (230, 110, 170), (120, 80, 50), (40, 40, 40))  # image
PATTERNS = ('plain', 'stripes', 'dots')                                         # image
TIMBRES = ('sine', 'bright', 'hollow')           # audio: harmonics mix
TEMPOS = 3                                       # video speed == audio beat rate (shared)

# --- listing-level filler (noise, no signal) ---
TITLE_FILLERS = ('新款', '2024新款', '包邮', '官方旗舰店', '热卖', '特价', '促销', '现货',
                 '顺丰', '送礼', '男女通用', '学生', '情侣', '春夏', '秋冬', '亲测好用')
SPEC_TOKENS = ('500ml', 'XL', 'USB-C', '1.5m', '2kg', 'Type-C', 'LED', '4K', 'PRO',
               'MAX', '3D', '20000mAh', 'iPhone15', 'S/M/L')
PV_FILLERS = {
    '产地': ('浙江杭州', '广东深圳', '江苏苏州', '福建泉州', '上海', '日本', 'Korea'),
    '适用人群': ('男士', '女士', '儿童', '通用', '学生'),
    '季节': ('春季', '夏季', '秋季', '冬季', '四季通用'),
    '尺码': ('S', 'M', 'L', 'XL', 'XXL', '均码'),
    '包装': ('盒装', '袋装', '礼盒装', '散装'),
    '保修期': ('无', '三个月', '一年', '两年'),
    '是否进口': ('是', '否'),
    '功能': ('防水', '透气', '保暖', '降噪', '快充', '抗菌'),
    '上市时间': tuple(f'{y}年{s}季' for y in range(2019, 2025) for s in '春夏秋冬'),
}
PV_GENERATED = ('货号', '重量')   # values drawn per listing (model number, weight)
STYLE_KEY, MATERIAL_KEY = '风格', '材质'
NUM_PV_KEYS = 2 + len(PV_FILLERS) + len(PV_GENERATED)

# Latent vectors that the feature projections read (one-hot blocks).
IMAGE_LATENT = len(SHAPES) + len(COLOURS) + len(PATTERNS)
VIDEO_LATENT = DIRECTIONS + TEMPOS


@dataclasses.dataclass(frozen=True)
class Product:
  """One latent product; all its listings share these attributes."""
  index: int
  category: int
  brand: int
  selling_points: tuple[int, int]
  material: int
  colour: int
  pattern: int
  tempo: int
  timbre: int


def zipf_probs(num: int, exponent: float) -> np.ndarray:
  p = 1.0 / np.arange(1, num + 1) ** exponent
  return p / p.sum()


def _balanced_map(rng: np.random.Generator, num_categories: int, num_cues: int) -> np.ndarray:
  """A random many-to-one map category -> cue using every cue about equally."""
  cues = np.arange(num_categories) % num_cues
  return rng.permutation(cues)


@dataclasses.dataclass(frozen=True)
class World:
  """Everything fixed by the seed: cue maps and feature projections."""
  seed: int
  num_categories: int
  category_probs: np.ndarray
  cue_maps: dict            # modality -> int[num_categories] category -> cue
  image_proj: np.ndarray    # [IMAGE_LATENT, 2048]
  video_proj: np.ndarray    # [VIDEO_LATENT, 1024]

  @classmethod
  def create(cls, seed: int, num_categories: int = len(CATEGORIES),
             zipf_exponent: float = 1.0) -> 'World':
    if not 2 <= num_categories <= len(CATEGORIES):
      raise ValueError(f'num_categories must be in [2, {len(CATEGORIES)}], got {num_categories}')
    rng = np.random.default_rng([seed, 0xC0FFEE])
    # Redraw until the joint cue of all five modalities identifies the category
    # (image and video maps are many-to-one by construction).
    for _ in range(1000):
      maps = {m: _balanced_map(rng, num_categories, k) for m, k in CUE_SIZES.items()}
      joint = set(zip(*(maps[m].tolist() for m in CUE_SIZES)))
      if len(joint) == num_categories:
        break
    else:
      raise RuntimeError('could not draw identifying cue maps')
    return cls(
        seed=seed,
        num_categories=num_categories,
        category_probs=zipf_probs(num_categories, zipf_exponent),
        cue_maps=maps,
        image_proj=rng.normal(size=(IMAGE_LATENT, 2048)).astype(np.float32),
        video_proj=rng.normal(size=(VIDEO_LATENT, 1024)).astype(np.float32),
    )

  def cue(self, modality: str, category: int, rng: np.random.Generator, noise: float) -> int:
    """The category's cue in `modality`, replaced by a random cue with prob. `noise`."""
    if rng.random() < noise:
      return int(rng.integers(CUE_SIZES[modality]))
    return int(self.cue_maps[modality][category])

  def sample_products(self, rng: np.random.Generator, num: int) -> list[Product]:
    cats = rng.choice(self.num_categories, size=num, p=self.category_probs)
    out = []
    for i in range(num):
      sp = rng.choice(len(SELLING_POINTS), size=2, replace=False)
      out.append(Product(
          index=i, category=int(cats[i]), brand=int(rng.integers(len(BRANDS))),
          selling_points=(int(sp[0]), int(sp[1])), material=int(rng.integers(len(MATERIALS))),
          colour=int(rng.integers(len(COLOURS))), pattern=int(rng.integers(len(PATTERNS))),
          tempo=int(rng.integers(TEMPOS)), timbre=int(rng.integers(len(TIMBRES)))))
    return out
