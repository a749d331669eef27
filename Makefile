# Two commands set up a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

# a small U-Net (batch norms, 'same' padding) for 48x48 shapes: the demo's segmentation
UNET_SMALL := --set in_channels=3 --set num_classes=4 --set padding=1 --set resolution=48 \
  --set base=8 --set batch_norm=true

.PHONY: demo test check graphviz browser clean docs images tasks

# Graphviz's `dot` renders diagrams; install Debian's package when it is missing.
graphviz:
	@command -v dot >/dev/null 2>&1 || { \
	  echo "installing graphviz (for 'dot')"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq graphviz >/dev/null; }

# The tests open `archc report`'s page in Debian's headless Chromium, driven by its
# chromedriver; install both when missing (tests skip, saying why, where they cannot be).
browser:
	@{ command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; } || { \
	  echo "installing chromium and chromium-driver (for the report's browser tests)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null \
	    || echo "could not install chromium: the browser tests will be skipped"; }

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[plots]'
	@touch $@

$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	@touch $@ $(STAMP)

demo: graphviz $(STAMP)
	$(BIN)/archc check specs/lenet5.yaml
	$(BIN)/archc check specs/resnet18.yaml
	$(BIN)/archc check specs/resnet18.yaml --set "blocks=[3, 4, 6, 3]" --set num_classes=10
	$(BIN)/archc summary specs/resnet18.yaml --depth 1 --device cpu
	$(BIN)/archc run specs/lenet5.yaml --batch 4
	@mkdir -p out
	$(BIN)/archc render specs/lenet5.yaml -o out/lenet5.svg --rankdir LR
	$(BIN)/archc train specs/lenet5.yaml --data digits --epochs 12 --out out/lenet5-digits
	$(BIN)/archc eval specs/lenet5.yaml --data digits --weights out/lenet5-digits
	$(BIN)/archc report specs/lenet5.yaml --run out/lenet5-digits --data digits \
	  -o out/lenet5-report.html
	$(BIN)/archc optimize specs/resnet18.yaml -O2 --verify -o out/resnet18-O2.yaml
	$(BIN)/archc optimize specs/lenet5.yaml --weights out/lenet5-digits \
	  --passes low_rank:mode=channel:budget=0.1 --verify \
	  -o out/lenet5-lowrank.yaml --weights-out out/lenet5-lowrank.npz
	$(BIN)/archc eval out/lenet5-lowrank.yaml --data digits --weights out/lenet5-lowrank.npz
	$(BIN)/archc train specs/unet.yaml $(UNET_SMALL) --data shapes-seg:512 --epochs 10 \
	  --optimizer adam --lr 0.003 --batch-size 16 --out out/unet-shapes
	$(BIN)/archc predict specs/unet.yaml $(UNET_SMALL) --data shapes-seg:512 \
	  --weights out/unet-shapes --count 4 -o out/unet-shapes/pictures
	@echo "The LeNet-5 diagram is in out/lenet5.svg (open it in a browser);"
	@echo "its training run (log, checkpoints, curves.png) is in out/lenet5-digits/,"
	@echo "and both in one page: out/lenet5-report.html (archc report);"
	@echo "optimised specs: out/resnet18-O2.yaml, out/lenet5-lowrank.yaml (+ .npz weights);"
	@echo "a U-Net segmenting generated shapes: out/unet-shapes/pictures/*.png (docs/tasks.md)."

test: graphviz browser $(TEST_STAMP)
	$(BIN)/python -m pytest -q -n 2 --durations=15
	@echo "The CUDA kernel tests again, every GEMM through the emulated cuBLAS:"
	$(BIN)/python -m pytest -q -n 2 --emulated-cublas tests/runtime/test_cuda.py

docs: $(STAMP)
	$(BIN)/python scripts/gen_docs.py

images: graphviz $(STAMP)
	$(BIN)/python scripts/gen_images.py

# docs/tasks.md: trains a U-Net, a YOLO and a siamese network, draws what they see (~15 min)
tasks: $(STAMP)
	$(BIN)/python scripts/gen_tasks.py

clean:
	rm -rf $(VENV) build *.egg-info
