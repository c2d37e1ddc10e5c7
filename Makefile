# The whole setup on a fresh machine: `make test` and `make demo`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test test-fast demo install bench clean train-gpu

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch is pinned and installed first: the CPU wheel is cached locally, an unpinned torch pulls CUDA.
# constraints.txt pins every dependency to the versions tested (regenerate with pip freeze).
$(STAMP): $(PY) pyproject.toml constraints.txt
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[test,bench]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)  # everything: tests/ and the docstring examples of rayproc/ (pyproject.toml)
	RAY_AUTH_MODE=disabled $(PY) -m pytest -q

test-fast: $(STAMP)  # the pure core and the docstring examples: no Ray, no S3, nothing slow (about 80 s on 2 cores)
	RAY_AUTH_MODE=disabled $(PY) -m pytest -q -m "not slow and not ray and not s3"

demo: $(STAMP)
	RAY_AUTH_MODE=disabled $(PY) -m rayproc.demo demo-out

bench: $(STAMP)  # each prints ratios measured side by side; together about two hours on 2 cores
	RAY_AUTH_MODE=disabled $(PY) benchmarks/simulate_scaling.py
	RAY_AUTH_MODE=disabled $(PY) benchmarks/labdct_sim.py
	RAY_AUTH_MODE=disabled $(PY) benchmarks/train_throughput.py
	RAY_AUTH_MODE=disabled $(PY) benchmarks/inpaint_vs_monai.py
	RAY_AUTH_MODE=disabled $(PY) benchmarks/inpaint_stride.py
	RAY_AUTH_MODE=disabled $(PY) benchmarks/inpaint_scaling.py
	RAY_AUTH_MODE=disabled $(PY) benchmarks/labdct_denoise.py
	RAY_AUTH_MODE=disabled $(PY) benchmarks/labdct_index.py
	RAY_AUTH_MODE=disabled $(PY) benchmarks/scaling_curves.py
	RAY_AUTH_MODE=disabled $(PY) benchmarks/larger_than_memory.py
	RAY_AUTH_MODE=disabled $(PY) benchmarks/labdct_large_stack.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache

# The BCDI GPU recipe (docs/gpu_recipe.md) on the device machine: no venv there (its torch is
# preinstalled, rayproc is not installed). Needs gold_crop.npy in the working tree (make it here).
train-gpu:
	PYTHONPATH=. $(PYTHON) benchmarks/bcdi_gpu_recipe.py --out $${OUT:?set OUT}/bcdi-gpu --eval-scan gold_crop.npy --check-imports

# The gold scan's 128^3 around its Bragg peak (the device machine cannot see ../shared); never commit it.
gold_crop.npy: $(STAMP)
	$(PY) benchmarks/bcdi_gpu_recipe.py --make-crop ../shared/data/bcdi-au-34idc-s54 --eval-scan $@
