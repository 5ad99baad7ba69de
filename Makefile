# make test: creates .venv (once per requirements change), installs everything, runs pytest.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Debian packages: the real media of the realistic release (data_prep/make_realistic.py),
# and tcmalloc, which launch/common.sh preloads for the train binary on CPU.
APT_PACKAGES ?= fonts-noto-color-emoji unicode-data espeak-ng libtcmalloc-minimal4
PYTEST_ARGS ?=
WORKDIR ?= demo

.PHONY: test venv apt clean demo

$(VENV)/.installed: requirements.txt requirements-test.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-test.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

venv: apt $(VENV)/.installed

apt:
	@if [ -n "$(APT_PACKAGES)" ]; then \
	  missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi; \
	fi

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

# End to end on M5Product-mini (m5_jax/demo.py): results in $(WORKDIR)/results.md.
# VERBOSE=1 (or ARGS=-v) shows every stage's full output; ARGS passes any demo flag.
VERBOSE ?=
ARGS ?=
demo: venv
	$(PY) -m m5_jax.demo --workdir $(WORKDIR) $(if $(VERBOSE),--verbose) $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
