# imgsound — one entry point for install, demo, tests, lint and benchmarks.
#   make demo    installs into .venv (CPU torch pinned) and runs the demo on tiny models
#   make test    installs and runs the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Pins the CPU build of torch; `make install CONSTRAINTS=` keeps a torch you installed yourself (e.g. CUDA).
CONSTRAINTS ?= constraints.txt
MODELS ?= models/tiny
DEMO_OUT ?= demo-out
TABLE1_OUT ?= results/paper-table1
TABLE1_ARGS ?=

.PHONY: install demo test test-heavy drills lint format bench clean serve paper-table1

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	@echo "make: installing imgsound and its dependencies into $(VENV) (torch, diffusers, Ray, …): a few minutes the first time"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e '.[test]'
	touch $@
	@echo "make: installed into $(VENV)"

demo: install
	@echo "make: writing tiny random-weight models to $(MODELS), then generating two samples with videos"
	$(BIN)/imgsound tiny-models $(MODELS)
	$(BIN)/imgsound generate --image-model $(MODELS)/image --audio-model $(MODELS)/audio \
		--image-prompt "a painting of castle towers, grayscale" --audio-prompt "bell ringing" \
		--steps 20 --num-samples 2 --seed 1234 --crop --video --overwrite --out $(DEMO_OUT)
	$(BIN)/imgsound audio-to-spectrogram $(DEMO_OUT)/sample_000/audio.wav $(DEMO_OUT)/sample_000.respectrogram.png
	@echo "make: one more sample, started from a picture in the repository (docs/examples/make_castle.py draws it)"
	$(BIN)/imgsound generate --image-model $(MODELS)/image --audio-model $(MODELS)/audio \
		--image-prompt "a painting of castle towers, grayscale" --audio-prompt "bell ringing" \
		--init-image docs/examples/castle.png --strength 0.6 \
		--steps 20 --seed 1234 --crop --overwrite --out $(DEMO_OUT)-from-picture
	$(BIN)/imgsound gallery $(DEMO_OUT) --out $(DEMO_OUT)-gallery --overwrite
	@echo "demo: $(DEMO_OUT)/sample_000/ and sample_001/ (with video.mp4), the page $(DEMO_OUT)-gallery/index.html,"
	@echo "      and $(DEMO_OUT)-from-picture/sample_000/ (started from docs/examples/castle.png)"
	@echo "      (tiny random-weight models: the content is noise; pass --image-model/--audio-model folders from"
	@echo "      'imgsound download' for real pictures and sounds)"

test: install
	$(BIN)/python -m pytest -q

# Tests of a minute or more each (marker `heavy`), left out of `make test` to keep it short; .ci/run runs them.
test-heavy: install
	$(BIN)/python -m pytest -q -m heavy

# Fault drills on a multi-node Ray cluster on this machine (tests/test_multinode*.py): minutes, so not in `make test`.
drills: install
	$(BIN)/python -m pytest -q -m drill

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	$(BIN)/python bench/bench_sampler.py --steps 20 --batch 16

clean:
	rm -rf $(VENV) $(DEMO_OUT) $(DEMO_OUT)-gallery $(DEMO_OUT)-from-picture models/tiny .pytest_cache .ruff_cache

# The HTTP service on tiny CPU models (Ctrl-C stops it): http://127.0.0.1:8000/docs
serve: install
	$(BIN)/imgsound tiny-models $(MODELS)
	RAY_USAGE_STATS_ENABLED=0 $(BIN)/serve run serve/config.local.yaml

# The paper's Table 1: three sweeps over the 10 × 10 grid, scored, printed beside the paper's numbers.
# Needs the real weights (`imgsound download`) and a GPU; TABLE1_ARGS="--pairs 4 --steps 20" reduces the grid.
paper-table1: install
	RAY_USAGE_STATS_ENABLED=0 $(BIN)/python -m jobs.table1 jobs/specs/paper_table1.yaml --output $(TABLE1_OUT) $(TABLE1_ARGS)
