# The two commands a newcomer needs: `make up` (the platform) and `make test` (the tests).
# Each creates .venv and installs what it needs on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

TOOLS := .venv-tools
# Installs come from uv.lock (uv, pinned, bootstrapped from PyPI with pip: Python and make
# are all a fresh machine needs). `make lock` re-resolves after a change to pyproject.toml.
UV_VERSION := 0.13.9
UV := $(TOOLS)/uv/bin/uv
export UV_PYTHON_DOWNLOADS := never

.PHONY: up test lint setup tools artillery generate clean lock

$(UV):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "CloudRetail needs Python 3.11 or newer; found " + sys.version.split()[0])'
	@test -x $(TOOLS)/uv/bin/python || $(PYTHON) -m venv $(TOOLS)/uv
	@$(TOOLS)/uv/bin/python -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

# Everything a developer needs: the runtime, both extras (cli, local) and the dev and
# handlers groups, at the versions uv.lock pins; --locked fails if the lock is stale.
$(STAMP): pyproject.toml uv.lock | $(UV)
	@echo "installing CloudRetail and its dependencies into $(VENV) from uv.lock ..."
	@$(UV) sync --quiet --locked --all-extras --python $(PYTHON)
	@touch $@

# Mermaid, the dev console's diagram renderer (cloudretail.runtime.console), from the npm
# registry, checked against the integrity hash npm publishes: the console serves it from the
# package, never from a CDN. Python fetches it, so setup still needs only Python and make.
MERMAID_VERSION := 12.3.0
MERMAID_SHA512 := 4113TdXeLAsMruJ79OpFL5O8+LTFXhQqZ260rF3tgUmiNAtRm4Uume04I+65PRN6yZ69J4f8rVYWW8zRk65UYw==
MERMAID := runtime/console/static/vendor/mermaid.min.js

$(MERMAID):
	@echo "fetching Mermaid $(MERMAID_VERSION) from the npm registry into $(@D) ..."
	@$(PYTHON) -c 'import base64, hashlib, io, pathlib, sys, tarfile, urllib.request; \
	version, digest, out = sys.argv[1:]; \
	data = urllib.request.urlopen(f"https://registry.npmjs.org/mermaid/-/mermaid-{version}.tgz").read(); \
	base64.b64encode(hashlib.sha512(data).digest()).decode() == digest or sys.exit("mermaid: integrity check failed"); \
	tar = tarfile.open(fileobj=io.BytesIO(data)); folder = pathlib.Path(out).parent; folder.mkdir(parents=True, exist_ok=True); \
	(folder / "mermaid.LICENSE").write_bytes(tar.extractfile("package/LICENSE").read()); \
	pathlib.Path(out).write_bytes(tar.extractfile("package/dist/mermaid.min.js").read())' \
		$(MERMAID_VERSION) $(MERMAID_SHA512) $@

setup: $(STAMP) $(MERMAID)

lock: | $(UV)
	$(UV) lock

# Manifest checkers in a venv of their own: checkov pins packaging<24, pytest needs newer.
$(TOOLS)/.installed:
	@test -x $(TOOLS)/bin/python || $(PYTHON) -m venv $(TOOLS)
	@echo "installing checkov into $(TOOLS) ..."
	@$(TOOLS)/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	@$(TOOLS)/bin/python -m pip install --quiet "checkov==3.3.30"
	@touch $@

tools: $(TOOLS)/.installed

# Artillery for the load test (generated/loadtest/artillery.yaml), from npm; not part of
# `make test`. 2.0.21 is the last release whose package allows Node.js 18.16+ (2.0.22 on ask
# for 22.13+); its browser engine is not used, so Playwright's Chrome is not downloaded.
ARTILLERY_VERSION := 2.0.21
ARTILLERY := $(TOOLS)/artillery/node_modules/.bin/artillery

$(ARTILLERY):
	@echo "installing Artillery $(ARTILLERY_VERSION) into $(TOOLS)/artillery ..."
	@mkdir -p $(TOOLS)/artillery
	@PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --prefix $(TOOLS)/artillery --no-audit \
		--no-fund --save-exact --loglevel=error artillery@$(ARTILLERY_VERSION)

artillery: $(ARTILLERY)

up: setup
	$(BIN)/cloudretail generate
	$(BIN)/cloudretail up --demo

generate: setup
	$(BIN)/cloudretail generate

# mypy checks the package (cloudretail/ links the folders): one module name per file.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check generator runtime cli.py generated handlers tests
	$(BIN)/mypy cloudretail generated handlers

test: setup tools lint
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache
