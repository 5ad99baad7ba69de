"""Parts of the M5Product-realistic generator (data_prep/make_realistic.py): the
release from real public media. sources.py (what is read from which package),
world.py (categories, pictures, products), one file per medium (text.py,
image.py, speech.py, video.py) and item.py (one item, with mini's defects)."""
