"""Parts of the M5Product-mini generator (data_prep/make_mini.py)."""
