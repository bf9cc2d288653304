# Two commands do everything:
#   make book   build the HTML book into _build/html, in the full run profile (installs what it needs first)
#   make test   run the whole test suite: build the book in the small ci profile into _build/ci/_build/html, then
#               pytest over tests/ (bnlab's unit tests, the book in a headless browser, a Colab-like run) and
#               every notebook in chapters/ under nbval
#
# Data: where the official MNIST files lie beside the checkout ($(MNIST_TRAIN) and $(MNIST_T10K); machines
# without internet), the full MNIST is built from them offline into data/mnist (python -m bnlab build-mnist) and
# every notebook reads it there. With the test-set files alone, the offline "MNIST-10k subset" is built instead
# (data/mnist-10k). With neither, torchvision downloads MNIST into ./data.
#
# Browser assets: the book serves MathJax, the Jupyter widgets HTML manager and Vega (vega, vega-lite, vega-embed:
# the interactive figures) itself, so that it renders offline and without third-party CDNs. npm installs the
# versions pinned in book/package-lock.json; the files the book loads are copied into $(VENDOR), which _config.yml
# hands to Sphinx as a static folder.
#
# The two builds keep separate MyST-NB execution caches (under their output paths), because the cache keys on the
# notebooks' code, not on BNLAB_PROFILE: ci-profile outputs must never reach the full book.

PYTHON ?= python3
NPM ?= npm
VENV ?= .venv
BIN := $(VENV)/bin
MNIST_TRAIN ?= ../shared/data/mnist-train
MNIST_T10K ?= ../shared/data/mnist-t10k
FULL_ROOT := data/mnist
SUBSET_ROOT := data/mnist-10k
STAMP := $(VENV)/.installed
VENDOR := _build/vendor
CI_BUILD := _build/ci
TEST_CACHE := _build/test-cache
JB_BUILD := $(BIN)/jupyter-book build --all -W -n --keep-going

.PHONY: book test install vendor data clean

install: $(STAMP)

$(STAMP): requirements.txt code/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

vendor: $(VENDOR)/.installed

$(VENDOR)/.installed: book/package.json book/package-lock.json
	$(NPM) ci --prefix book --ignore-scripts --no-audit --no-fund
	rm -rf $(VENDOR)
	mkdir -p $(VENDOR)/mathjax $(VENDOR)/jupyter-widgets $(VENDOR)/vega
	cp -R book/node_modules/mathjax/es5/. book/node_modules/mathjax/LICENSE $(VENDOR)/mathjax/
	cd book/node_modules/@jupyter-widgets/html-manager/dist && \
		cp embed.js embed.js.LICENSE.txt *.woff2 *.woff *.ttf *.eot *.svg $(abspath $(VENDOR))/jupyter-widgets/
	cd book/node_modules && \
		cp vega/build/vega.min.js vega-lite/build/vega-lite.min.js vega-embed/build/vega-embed.min.js \
			$(abspath $(VENDOR))/vega/ && \
		cp vega-view/LICENSE $(abspath $(VENDOR))/vega/LICENSE-vega && \
		cp vega-lite/LICENSE $(abspath $(VENDOR))/vega/LICENSE-vega-lite && \
		cp vega-embed/LICENSE $(abspath $(VENDOR))/vega/LICENSE-vega-embed
	touch $@

ifneq ($(wildcard $(MNIST_TRAIN)/train-images-idx3-ubyte.gz)$(wildcard $(MNIST_T10K)/t10k-images-idx3-ubyte.gz),)
ifneq ($(wildcard $(MNIST_TRAIN)/train-images-idx3-ubyte.gz),)
export BNLAB_DATA ?= $(abspath $(FULL_ROOT))
data: $(FULL_ROOT)/MNIST/raw/train-images-idx3-ubyte
$(FULL_ROOT)/MNIST/raw/train-images-idx3-ubyte: $(STAMP)
	$(BIN)/python -m bnlab build-mnist --train-source $(MNIST_TRAIN) --test-source $(MNIST_T10K) --root $(FULL_ROOT)
else
export BNLAB_DATA ?= $(abspath $(SUBSET_ROOT))
data: $(SUBSET_ROOT)/MNIST/bnlab-subset.json
$(SUBSET_ROOT)/MNIST/bnlab-subset.json: $(STAMP)
	$(BIN)/python -m bnlab build-subset --source $(MNIST_T10K) --root $(SUBSET_ROOT)
endif
else
export BNLAB_DATA ?= $(abspath data)
data:
endif

book: install data vendor
	BNLAB_PROFILE=full $(JB_BUILD) .

# A failed notebook's traceback is in the build's reports/ folder: print it, so that CI logs show it.
test: install data vendor
	rm -rf $(TEST_CACHE) $(CI_BUILD)
	BNLAB_PROFILE=ci BNLAB_CACHE=$(abspath $(TEST_CACHE)) $(JB_BUILD) --path-output $(CI_BUILD) . || \
		{ find $(CI_BUILD)/_build/html/reports -name '*.err.log' -exec cat {} + 2>/dev/null; exit 1; }
	BNLAB_PROFILE=ci BNLAB_CACHE=$(abspath $(TEST_CACHE)) MPLBACKEND=Agg \
		BNLAB_BOOK_HTML=$(abspath $(CI_BUILD))/_build/html \
		$(BIN)/python -m pytest tests chapters --nbval-lax

clean:
	rm -rf _build
