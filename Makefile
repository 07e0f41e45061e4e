# The two commands a fresh machine needs (see README.md):
#   make demo   set up the virtualenv, then run the whole product on the embedded broker
#   make test   set up the virtualenv (and promtool), then lint, check schemas and alert
#               rules, and run every test
# .ci/run calls `make test`, so CI proves the install steps too.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install system-deps demo test test-fast bench lint format clean

# Debian packages the tests use: prometheus (the server the dashboard queries run on,
# and promtool for the alert rules) and prometheus-alertmanager (amtool checks its config).
system-deps:
	@if ! command -v promtool >/dev/null 2>&1 || ! command -v amtool >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian packages prometheus prometheus-alertmanager"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      prometheus prometheus-alertmanager >/dev/null; \
	  else \
	    echo "missing promtool/amtool: apt-get install prometheus prometheus-alertmanager" >&2; \
	    exit 1; \
	  fi; \
	fi

install: $(STAMP)

# The onnx extra is installed too, so that the tests exercise the ONNX Runtime path.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check pip==25.3
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,onnx]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/driftline demo $(ARGS)

test: $(STAMP) system-deps
	$(BIN)/ruff check worker tests
	$(BIN)/ruff format --check worker tests
	$(BIN)/driftline schemas --check
	promtool check rules monitoring/rules/*.yml
	promtool test rules monitoring/tests/*.yml
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/driftline bench $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check worker tests

format: $(STAMP)
	$(BIN)/ruff format worker tests
	$(BIN)/ruff check --fix worker tests

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache .hypothesis
