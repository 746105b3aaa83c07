# make run   - the whole pipeline on the bundled sample (creates .venv and the model cache once)
# make sweep - an example sweep (2 models x 2 resize modes)
# make test  - the test suite
# make lab   - JupyterLab on the notebooks
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run sweep test lab model install clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,scale]"
	touch $(STAMP)

install: $(STAMP)

model: $(STAMP)
	$(PY) -m helpers.models efficientnet-lite0

run: model
	$(PY) -m helpers.run --config configs/sample.yaml

sweep: model
	$(PY) -m helpers.models efficientnet-lite2
	$(PY) -m helpers.run --config configs/sweep.yaml

test: model
	$(PY) -m pytest $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$status

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

clean:
	rm -rf outputs/sample
