# Two commands on a fresh machine:  `make demo`  and  `make test`.
# Both create .venv (pinned installs from requirements*.txt) the first time, then reuse it.

PYTHON ?= python3
VENV   ?= .venv
SHARED ?= ../shared
BIN     = $(VENV)/bin
# Install from the regular package index: the CPU-only torch wheel that some machines keep in a local
# find-links folder does not load torchvision's compiled ops (see README, "Installing PyTorch").
PIP     = env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null $(BIN)/python -m pip
STAMP   = $(VENV)/.installed
DEMO_OUT ?= runs/demo
SAMPLE  ?= sample

.PHONY: setup demo test lint clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements.txt -r requirements-dev.txt
	$(PIP) install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

# The demo needs nothing outside the clone: it runs on sample/ (real M3SVD pairs and bag, see sample/README.md).
demo: $(STAMP)
	$(BIN)/moe-fusion fuse --ir $(SAMPLE)/pairs/ir --vis $(SAMPLE)/pairs/vis --out $(DEMO_OUT)/pairs \
		--color --detections --html-report $(DEMO_OUT)/pairs_report
	$(BIN)/moe-fusion replay $(SAMPLE)/bag --out $(DEMO_OUT)/fused_bag --report $(DEMO_OUT)/replay.json \
		--html-report $(DEMO_OUT)/bag_report --overwrite
	@echo "demo outputs in $(DEMO_OUT)/: pairs/ (fused images, detections, gates), fused_bag/, replay.json"
	@echo "report, 5 sample pairs:  $(abspath $(DEMO_OUT))/pairs_report/index.html"
	@echo "report, the sample bag:  $(abspath $(DEMO_OUT))/bag_report/index.html"

# The node's tests run in a live ROS 2 graph: the ROS 2 sourced in this shell, else $(SHARED)/ros2 (see test/with_ros2.sh).
test: $(STAMP)
	$(BIN)/ruff check .
	MOE_FUSION_SHARED=$(SHARED) PATH="$(abspath $(BIN)):$$PATH" test/with_ros2.sh $(SHARED) $(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
