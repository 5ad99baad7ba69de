"""Chinese title, property table (pv) and speech script of one listing.

Product-level words (shared by all listings of a product): brand, product name
(the picture's CLDR name), model number, colour variant, department attributes,
selling points, origin. Listing-level: which of them a listing shows, their
order, shop name, promotional filler and the listing-only pv keys.
"""
from __future__ import annotations

from data_prep.realistic import world as world_lib

TITLE_FILLERS = ('新款', '2024新款', '包邮', '官方旗舰店', '热卖', '特价', '促销', '现货', '顺丰',
                 '送礼', '男女通用', '学生', '情侣', '春夏', '秋冬', '亲测好用', '厂家直销', '爆款',
                 '网红同款', '正品保障', '限时抢购', '一件代发')
SHOP_SUFFIXES = ('旗舰店', '专营店', '官方店', '专卖店', '优选店')
SPEC_TOKENS = ('XL', 'PRO', 'MAX', 'Plus', 'mini', '2.0', 'S/M/L', 'LED', '4K', 'Type-C')
# listing-only pv keys: (key, values) or (key, None) for generated values
LISTING_KEYS = (('包装', ('盒装', '袋装', '礼盒装', '散装', '瓶装')),
                ('上市时间', tuple(f'{y}年{s}季' for y in range(2019, 2025) for s in '春夏秋冬')),
                ('售后服务', ('七天无理由退换', '全国联保', '店铺三包', '无')),
                ('是否进口', ('是', '否')),
                ('发货地', None),
                ('重量', None),
                ('库存', None))
SPEECH_INTROS = ('新品推荐', '欢迎选购', '限时特价', '今日爆款', '店长推荐', '好物分享')


def _join(words: list[str], rng) -> str:
  """Chinese words run together (sometimes a space); ASCII is set off by spaces."""
  out = words[0]
  for w in words[1:]:
    out += ' ' if (w.isascii() or out[-1].isascii() or rng.random() < 0.25) else ''
    out += w
  return out


def product_name(world: world_lib.World, product: world_lib.Product) -> str:
  return world.pictures[product.picture].name


def colour_name(product: world_lib.Product) -> str | None:
  return world_lib.COLOURS[product.colour][0] if product.colour else None


def title(world: world_lib.World, product: world_lib.Product, rng) -> str:
  """Brand first (mostly), then product words and listing filler, shuffled."""
  words = []
  if colour_name(product) and rng.random() < 0.7:
    words.append(colour_name(product))
  if rng.random() < 0.95:
    words.append(product_name(world, product))
  if rng.random() < 0.5:
    words.append(world.label_names[product.category])
  words += [p for p in product.selling_points if rng.random() < 0.8]
  if rng.random() < 0.4:
    words.append(product.attributes[int(rng.integers(len(product.attributes)))][1])
  if rng.random() < 0.4:
    words.append(product.model)
  words += [TITLE_FILLERS[k] for k in rng.choice(len(TITLE_FILLERS), int(rng.integers(1, 4)), replace=False)]
  if rng.random() < 0.3:
    words.append(SPEC_TOKENS[int(rng.integers(len(SPEC_TOKENS)))])
  words = [words[k] for k in rng.permutation(len(words))] or [product_name(world, product)]
  words.insert(0 if rng.random() < 0.85 else int(rng.integers(len(words) + 1)), product.brand)
  if rng.random() < 0.2:   # a shop name: another brand-like word + 旗舰店 (listing-level)
    shops = world.words.brands
    words.append(shops[int(rng.integers(len(shops)))] + SHOP_SUFFIXES[int(rng.integers(len(SHOP_SUFFIXES)))])
  return _join(words, rng)


def pv_pairs(world: world_lib.World, product: world_lib.Product, rng) -> list[tuple[str, str]]:
  """Product keys (each shown with some probability) among listing-only keys."""
  pairs = [('品牌', product.brand)]
  optional = [('品名', product_name(world, product), 0.6), ('货号', product.model, 0.7),
              ('产地', product.origin, 0.5)]
  if colour_name(product):
    optional.append(('颜色分类', colour_name(product), 0.9))
  optional += [(k, v, 0.85) for k, v in product.attributes]
  pairs += [(k, v) for k, v, p in optional if rng.random() < p]
  for k in rng.choice(len(LISTING_KEYS), int(rng.integers(2, 6)), replace=False):
    key, values = LISTING_KEYS[k]
    if key == '发货地':
      value = world.words.cities[int(rng.integers(len(world.words.cities)))]
    elif key == '重量':
      value = f'{rng.integers(50, 950)}g' if rng.random() < 0.6 else f'{rng.integers(1, 9)}.{rng.integers(10)}kg'
    elif key == '库存':
      value = f'{int(rng.integers(1, 5000))}件'
    else:
      value = values[int(rng.integers(len(values)))]
    pairs.append((key, value))
  return [pairs[k] for k in rng.permutation(len(pairs))]


def speech_script(world: world_lib.World, product: world_lib.Product, rng) -> str:
  """What the listing's narrator says: [intro,] brand [colour] product name."""
  words = [product.brand]
  if colour_name(product) and rng.random() < 0.5:
    words.append(colour_name(product))
  words.append(product_name(world, product))
  script = ''.join(words)
  if rng.random() < 0.5:
    script = SPEECH_INTROS[int(rng.integers(len(SPEECH_INTROS)))] + '，' + script
  return script
