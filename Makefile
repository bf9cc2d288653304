# Two commands do everything:
#   make book   build the HTML book into _build/html (installs what it needs into .venv first)
#   make test   run the whole test suite: bnlab's unit tests and every notebook under nbval
#
# Data: torchvision downloads MNIST into ./data. Where the official MNIST test-set files lie in
# $(MNIST_T10K) (machines without internet), the offline "MNIST-10k subset" is built from them and used instead.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MNIST_T10K ?= ../shared/data/mnist-t10k
SUBSET_ROOT := data/mnist-10k
STAMP := $(VENV)/.installed

.PHONY: book test install data clean

install: $(STAMP)

$(STAMP): requirements.txt code/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

ifneq ($(wildcard $(MNIST_T10K)/t10k-images-idx3-ubyte.gz),)
export BNLAB_DATA ?= $(abspath $(SUBSET_ROOT))
data: $(SUBSET_ROOT)/MNIST/bnlab-subset.json
$(SUBSET_ROOT)/MNIST/bnlab-subset.json: $(STAMP)
	$(BIN)/python -m bnlab build-subset --source $(MNIST_T10K) --root $(SUBSET_ROOT)
else
data:
endif

book: install data
	$(BIN)/jupyter-book build --all -W -n --keep-going .

test: install data
	rm -rf _build/test-cache
	BNLAB_PROFILE=ci BNLAB_CACHE=$(abspath _build/test-cache) MPLBACKEND=Agg \
		$(BIN)/python -m pytest tests chapters --nbval-lax

clean:
	rm -rf _build
