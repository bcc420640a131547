# The README's two commands (`make demo`, `make test`) and `make sync`. Needs only python3 and make.
PYTHON ?= python3
VENV ?= .venv
# CPU PyTorch by default; on a GPU box: make TORCH=torch test
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.minillm-installed

.PHONY: demo test sync format venv clean docs

venv: $(STAMP)

# torch first, so that the package's torch range is already met and pip pulls no other build.
$(STAMP): setup.py settings.ini
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip check
	touch $(STAMP)

# The main job: prepare the built-in corpus (once), train the demo preset for DEMO_SECONDS of training,
# then print val bits-per-byte and a sample. The run lands in runs/demo (`minillm sample --run runs/demo`).
DEMO_SECONDS ?= 300
DEMO_VOCAB ?= 4096
DEMO_DATA ?= data/builtin-$(DEMO_VOCAB)
DEMO_OUT ?= runs/demo
demo: venv
	$(BIN)/minillm env
	@test -f $(DEMO_DATA)/meta.json || $(BIN)/minillm prepare --corpus builtin --tokenizer bpe --vocab-size $(DEMO_VOCAB) --out $(DEMO_DATA)
	$(BIN)/minillm train --data $(DEMO_DATA) --preset demo --out $(DEMO_OUT) --time-budget $(DEMO_SECONDS) --overwrite

# The whole default suite: generated files in sync, notebooks (nbdev_test), tests/ (pytest).
test: venv
	$(BIN)/python tests/suite.py

# Format the exported cells of nbs/ as `ruff format` (120 columns, quotes kept); `--check` only lists them.
format: venv
	$(BIN)/python -c "import sys; from minillm.lessons import format_main; sys.exit(format_main(sys.argv[1:]))" $(FORMAT_ARGS)

# Regenerate everything derived from nbs/: format, clean notebooks, the package, lessons/, README.md.
sync: venv format
	$(BIN)/nbdev_clean
	$(BIN)/nbdev_export
	$(BIN)/minillm lessons

# The course website in _site/ (open _site/index.html, or `$(BIN)/python -m http.server -d _site`): the home page,
# every lesson run with its outputs and plots (cached in _build/docs/: an unchanged lesson is not run again), the API
# reference, search. Needs the `docs` extra, installed here once. DOCS_ARGS="--only 05_attention" builds one lesson;
# DOCS_ARGS=--fresh runs every lesson again.
DOCS_STAMP := $(VENV)/.minillm-docs-installed
$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e ".[docs]"
	$(BIN)/python -m pip check
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	$(BIN)/python -c "import sys; from minillm.docs import docs_run; sys.exit(docs_run())" $(DOCS_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info _site _build

# runs/ and data/*/ are outputs; `make clean` leaves them.
