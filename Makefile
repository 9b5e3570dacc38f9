# llmpipe: `make demo` runs the whole pipeline on configs/demo.yaml; `make test` runs the suite.
# Both create .venv on first use. torch is installed from its CPU wheel first, so nothing later pulls
# a multi-GB CUDA build; constraints.txt pins the rest to a set known to install together.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_SPEC ?= torch==2.13.0
export RAY_USAGE_STATS_ENABLED := 0
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0

.PHONY: demo test install install-dev bench clean serve stop browser

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.installed: pyproject.toml constraints.txt | $(PY)
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -c constraints.txt -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install -q -c constraints.txt -e ".[dev]"
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

demo: install
	$(VENV)/bin/llmpipe run configs/demo.yaml

# Prefect server + worker + MLflow server on 127.0.0.1, deployments registered (see README, "Serving
# locally"); SERVE_ARGS passes flags, e.g. make serve SERVE_ARGS="--prefect-port 4300".
serve: install
	$(VENV)/bin/llmpipe serve $(SERVE_ARGS)

stop:
	@if [ -x $(VENV)/bin/llmpipe ]; then $(VENV)/bin/llmpipe stop $(STOP_ARGS); else echo "no $(VENV): nothing to stop"; fi

# The UI tests drive Debian's chromium, headless; installed here where apt can (root), else they skip.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  echo "installing Debian's chromium and chromium-driver for the UI tests"; \
	  apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; } || \
	  echo "could not install chromium: the UI tests will skip"; \
	else echo "no chromium (apt-get install chromium chromium-driver): the UI tests will skip"; fi

test: install-dev browser
	$(PY) -m pytest -q --durations=25

# Every CPU benchmark in bench/ (bench/README.md lists them and the GPU one), with their peers installed.
bench: install-dev
	$(PIP) install -q -c constraints.txt -e ".[dev,peer]"
	$(PY) bench/extract_vs_datatrove.py
	$(PY) bench/filters_vs_datatrove.py
	$(PY) bench/minhash_vs_datatrove.py --docs 20000
	$(PY) bench/train_step_vs_bare_torch.py
	$(PY) bench/checkpointing_memory.py
	$(PY) bench/refresh_vs_full.py
	$(PY) bench/pii_vs_datatrove.py
	$(PY) bench/extract_quality.py
	$(PY) bench/lora_vs_peft.py
	$(PY) bench/lora_vs_full.py
	$(PY) bench/tokenizer_train_vs_spm.py --repeat 3
	$(PY) bench/tokenizer_train_vs_hf.py --repeat 3
	$(PY) bench/tokenize_vs_hf_datatrove.py

clean:
	rm -rf work/demo
