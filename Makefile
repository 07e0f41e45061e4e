# The two commands a fresh machine needs (see README.md):
#   make demo   set up the virtualenv, then run the whole product on the embedded broker
#   make test   set up the virtualenv (and promtool, and Apache Kafka's jars), then lint,
#               type-check (mypy),
#               check schemas and alert rules, and run every test on Apache Kafka
# .ci/run calls `make test`, so CI proves the install steps too.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install system-deps kafka-jars demo test test-fast bench lint format clean

# Debian packages the tests use: prometheus (the server the dashboard queries run on,
# and promtool for the alert rules), prometheus-alertmanager (amtool checks its config),
# Java 17 with Maven for the Apache Kafka broker the integration tests run on, and
# Chromium, in which the report tests open the HTML reports (headless, a screenshot).
SYSTEM_PACKAGES := prometheus prometheus-alertmanager openjdk-17-jre-headless maven chromium
system-deps:
	@missing=""; \
	for tool in promtool amtool java mvn chromium; do \
	  command -v $$tool >/dev/null 2>&1 || missing="$$missing $$tool"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "missing$$missing: installing Debian packages $(SYSTEM_PACKAGES)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      $(SYSTEM_PACKAGES) >/dev/null; \
	  else \
	    echo "missing$$missing: apt-get install $(SYSTEM_PACKAGES)" >&2; \
	    exit 1; \
	  fi; \
	fi

# Apache Kafka's jars, fetched once with Maven (the version is pinned in
# worker/driftline/data/kafka-broker-pom.xml); the test session starts the broker itself.
kafka-jars: $(STAMP) system-deps
	$(BIN)/driftline broker --kind kafka --fetch

install: $(STAMP)

# The onnx extra is installed too, so that the tests exercise the ONNX Runtime path, the
# report extra (matplotlib), so that they draw the reports, the mlflow extra (~145 MB,
# ~15 s from cached wheels), so that `train --mlflow` is tested on a real tracking store,
# and the serve extra (FastAPI, uvicorn), so that they run `driftline serve`.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check pip==25.3
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,onnx,report,mlflow,serve]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/driftline demo $(ARGS)

# Two pytest processes, each with its own broker; worksteal evens out the long fault tests.
PYTEST_WORKERS ?= 2

test: $(STAMP) system-deps kafka-jars
	$(BIN)/ruff check worker tests
	$(BIN)/ruff format --check worker tests
	$(BIN)/mypy
	$(BIN)/driftline schemas --check
	promtool check rules monitoring/rules/*.yml
	promtool test rules monitoring/tests/*.yml
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/driftline bench $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check worker tests
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format worker tests
	$(BIN)/ruff check --fix worker tests

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache .hypothesis
