# make run    - the whole pipeline on the bundled sample (creates .venv and the model cache once)
# make sweep  - an example sweep (2 models x 2 resize modes)
# make test   - the test suite
# make lab    - JupyterLab on the notebooks
# make system - the Debian packages (Fashion-MNIST, PostgreSQL, Chromium); run and test try it first
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run sweep test lab model install system debian clean

$(STAMP): pyproject.toml
	@echo "installing the project into $(VENV) (once; a few minutes)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
	@$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test,scale]" 2>&1 | grep -v "^WARNING: Location" || true
	@$(PY) -c "import importlib.util as u, sys; sys.exit(any(not u.find_spec(m) for m in ('helpers', 'tensorflow', 'papermill')))" \
		|| { echo "the install into $(VENV) failed: see the messages above" >&2; exit 1; }
	@touch $(STAMP)

install: $(STAMP)

# what the project needs from Debian, when this machine can install it (root, apt-get)
debian:
	@bash scripts/system-packages.sh

system:
	@bash scripts/system-packages.sh --retry

model: debian $(STAMP)
	@$(PY) -m helpers.models efficientnet-lite0

run: model
	@$(PY) -m helpers.run --config configs/sample.yaml

sweep: model
	@$(PY) -m helpers.models efficientnet-lite2
	@$(PY) -m helpers.run --config configs/sweep.yaml

test: model
	$(PY) -m pytest $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$status

# Jupyter refuses to start as root (common in containers) unless told it may
lab: $(STAMP)
	$(VENV)/bin/jupyter lab $$( [ "$$(id -u)" -eq 0 ] && echo --allow-root ) notebooks/

clean:
	rm -rf outputs/sample
