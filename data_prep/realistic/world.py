"""The catalogue of the realistic release: categories, pictures, products.

A category is one or two Unicode emoji subgroups that read like a shop
category (food-fruit -> 水果); its pictures are the subgroup's emoji. A
`Product` is one picture plus product-level attributes (brand, model number,
colour variant, department attributes, selling points, origin) that all its
listings share. Several products may show the same picture (the same goods from
different brands); they differ in brand, model number and colour.

`World` has what data_prep/mini/plan.py `make_plan` asks of a world
(`num_categories`, `sample_products`), so the plan, splits and defect manifest
are mini's.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from data_prep.realistic import sources

# label | emoji subgroups | department, the head of the long tail first.
CATEGORY_TABLE = """
服饰鞋包 | clothing                                        | apparel
手机电脑 | phone, computer                                 | digital
家居日用 | household                                       | home
零食甜点 | food-sweet                                      | food
运动户外 | sport                                           | toy
水果生鲜 | food-fruit                                      | food
玩具游戏 | game                                            | toy
酒水饮料 | drink                                           | food
速食熟食 | food-prepared                                   | food
五金工具 | tool                                            | home
办公文具 | office, writing                                 | home
影音摄影 | light & video                                   | digital
蔬菜     | food-vegetable                                  | food
中华美食 | food-asian, food-marine                         | food
动物公仔 | animal-mammal                                   | toy
汽车单车 | transport-ground                                | vehicle
节庆礼品 | event                                           | toy
图书纸品 | book-paper                                      | home
乐器     | musical-instrument                              | toy
音响耳机 | music, sound                                    | digital
鲜花     | plant-flower                                    | plant
绿植盆栽 | plant-other                                     | plant
鸟类摆件 | animal-bird                                     | toy
医疗实验 | medical, science                                | home
航模船模 | transport-air, transport-water                  | vehicle
昆虫标本 | animal-bug                                      | toy
海洋生物 | animal-marine, animal-reptile, animal-amphibian | toy
厨房餐具 | dishware                                        | home
"""
CATEGORIES = tuple((label.strip(), tuple(g.strip() for g in groups.split(',')), department.strip())
                   for label, groups, department in
                   (line.split('|') for line in CATEGORY_TABLE.strip().splitlines()))

# Department: pv keys with product-level values, and whether products come in
# colour variants (tinted pictures, 颜色分类 in the table).
DEPARTMENTS = {
    'apparel': ({'材质': ('纯棉', '涤纶', '真皮', '羊毛', '真丝', '牛仔布', '帆布'),
                 '适用性别': ('男', '女', '中性'),
                 '风格': ('简约', '复古', '运动', '商务', '甜美', '街头')}, True),
    'digital': ({'接口': ('USB-C', 'Lightning', 'Micro-USB', '无线蓝牙', '3.5mm'),
                 '电池容量': ('2000mAh', '3000mAh', '5000mAh', '10000mAh', '无电池'),
                 '保修期': ('一年', '两年', '三年')}, True),
    'home': ({'材质': ('实木', '304不锈钢', 'PP塑料', '陶瓷', '玻璃', '铝合金', '竹子'),
              '风格': ('简约', '北欧', '日式', '中式', '工业风', '美式'),
              '规格': ('单只装', '两件套', '三件套', '家庭装')}, True),
    'food': ({'口味': ('原味', '香辣', '甜味', '咸味', '麻辣', '奶香', '果味'),
              '净含量': ('250g', '500g', '1kg', '6瓶装', '12袋装', '礼盒装'),
              '保质期': ('7天', '6个月', '12个月', '18个月'),
              '储存方式': ('常温', '冷藏', '冷冻', '阴凉干燥处')}, False),
    'toy': ({'材质': ('毛绒', 'ABS塑料', '木质', '硅胶', '合金', 'PVC'),
             '适用年龄': ('3岁以上', '6岁以上', '14岁以上', '成人')}, True),
    'vehicle': ({'比例': ('1:12', '1:18', '1:24', '1:32', '1:64'),
                 '材质': ('合金', 'ABS塑料', '木质', '碳纤维')}, True),
    'plant': ({'规格': ('单株', '三株', '盆栽', '花束', '种子'),
               '养护难度': ('容易', '中等', '较难'),
               '光照': ('喜阳', '半阴', '耐阴')}, False),
}

# Colour variants: (name, RGB tint); index 0 is the picture's own colours.
COLOURS = (('原色', None), ('红色', (215, 40, 40)), ('橙色', (240, 140, 30)),
           ('黄色', (240, 215, 40)), ('绿色', (50, 170, 70)), ('蓝色', (40, 90, 210)),
           ('紫色', (135, 60, 195)), ('粉色', (240, 120, 175)), ('棕色', (125, 80, 45)),
           ('黑色', (35, 35, 35)), ('白色', (245, 245, 245)), ('灰色', (130, 130, 130)),
           ('金色', (210, 170, 60)))
OWN_COLOUR_PROB = 0.35          # products without a colour variant
SELLING_POINTS = ('加厚', '防水', '透气', '轻薄', '大容量', '静音', '耐磨', '速干', '保暖',
                  '防摔', '可折叠', '免安装', '长续航', '高颜值', '抗菌', '环保', '原创设计',
                  '正品', '限量', '进口', '手工', '新鲜', '便携', '家用', '商用')
MODEL_LETTERS = 'ABCDEFGHJKLMNPQRSTUVWXYZ'


@dataclasses.dataclass(frozen=True)
class Product:
  """One product; all its listings share these attributes."""
  index: int
  category: int
  picture: int                         # index into World.pictures
  brand: str
  model: str                           # 货号, e.g. HT-2931
  colour: int                          # index into COLOURS (0: own colours)
  attributes: tuple[tuple[str, str], ...]   # department pv pairs
  selling_points: tuple[str, str]
  origin: str                          # 产地 (province)


def category_probs(num: int, zipf_exponent: float = 1.0, floor: float = 0.2) -> np.ndarray:
  """Zipf(exponent) mixed with `floor` of a uniform: a long tail whose rarest
  category still gets ~1.4% of the items at 28 categories (>= 10 items at 700+)."""
  p = 1.0 / np.arange(1, num + 1) ** zipf_exponent
  return (1.0 - floor) * p / p.sum() + floor / num


@dataclasses.dataclass(frozen=True)
class World:
  """The catalogue (from the installed sources) and the category prior."""
  num_categories: int
  label_names: tuple[str, ...]
  departments: tuple[str, ...]          # per category
  pictures: tuple[sources.Picture, ...]
  pictures_of: tuple[tuple[int, ...], ...]   # category -> picture indices
  words: sources.Words
  category_probs: np.ndarray

  @classmethod
  def create(cls, num_categories: int = len(CATEGORIES)) -> 'World':
    if not 2 <= num_categories <= len(CATEGORIES):
      raise ValueError(f'--num_categories must be in [2, {len(CATEGORIES)}], got {num_categories}')
    sources.require_debian()
    cats = CATEGORIES[:num_categories]
    pictures, pictures_of = [], []
    for label, subgroups, _ in cats:
      found = sources.pictures(subgroups)
      if len(found) < 5:
        raise ValueError(f'category {label} has {len(found)} pictures, want >= 5')
      pictures_of.append(tuple(range(len(pictures), len(pictures) + len(found))))
      pictures += found
    return cls(num_categories=num_categories, label_names=tuple(c[0] for c in cats),
               departments=tuple(c[2] for c in cats), pictures=tuple(pictures),
               pictures_of=tuple(pictures_of), words=sources.faker_words(),
               category_probs=category_probs(num_categories))

  def sample_products(self, rng: np.random.Generator, num: int) -> list[Product]:
    cats = rng.choice(self.num_categories, size=num, p=self.category_probs)
    out = []
    for i, cat in enumerate(cats.tolist()):
      keys, coloured = DEPARTMENTS[self.departments[cat]]
      choices = self.pictures_of[cat]
      brand = self.words.brands[int(rng.integers(len(self.words.brands)))]
      model = (''.join(MODEL_LETTERS[k] for k in rng.integers(len(MODEL_LETTERS), size=2))
               + f'-{int(rng.integers(100, 10000))}')
      colour = 0 if not coloured or rng.random() < OWN_COLOUR_PROB else int(rng.integers(1, len(COLOURS)))
      attributes = tuple((k, v[int(rng.integers(len(v)))]) for k, v in keys.items())
      points = rng.choice(len(SELLING_POINTS), 2, replace=False)
      out.append(Product(
          index=i, category=cat, picture=choices[int(rng.integers(len(choices)))], brand=brand,
          model=model, colour=colour, attributes=attributes,
          selling_points=(SELLING_POINTS[points[0]], SELLING_POINTS[points[1]]),
          origin=self.words.provinces[int(rng.integers(len(self.words.provinces)))]))
    return out
