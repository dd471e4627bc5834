# The two commands of the README: `make demo` (install + the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install browser demo test test-fast bench clean

# torch==2.14.1 / torchvision==0.29.1 are pinned in pyproject.toml; pip takes them from local files here.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# tests/wgtune/test_browser.py opens the MLflow UI in Debian's Chromium (Playwright drives it; no browser is
# downloaded). Installed only where it is missing: ~15 s, ~120 MB, as root or through sudo.
CHROMIUM := /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
APT := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=120

$(CHROMIUM):
	$(APT) update
	$(APT) install -y --no-install-recommends chromium chromium-driver

browser: $(CHROMIUM)

demo: install
	$(BIN)/wgtune launch --grid grids/quickstart.yaml

test: install browser
	$(BIN)/pytest

test-fast: install
	$(BIN)/pytest -m "not slow"

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf runs $(VENV)
