# cafs — set-up, demo, tests.
#   make demo   ingest a sample tree into the embedded store, mount it, browse it
#   make test   lint, type-check and run the whole test suite
# Both install what is missing first: system packages (apt-get, as root or
# through sudo), then a virtual environment in .venv with cafs and its test extras.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SYSTEM_PACKAGES := fuse3
# The virtiofs tests boot real guests: QEMU, a distribution kernel with the
# virtiofs and 9p modules, a static busybox, and gcc to build the guest's probe.
VM_PACKAGES := qemu-system-x86 linux-image-amd64 busybox-static gcc libc6-dev
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
STAMP := $(VENV)/.installed

.PHONY: all system venv demo test lint typecheck protos protos-check bench bench-fs bench-nar bench-grpc bench-virtiofs bench-s3 bench-faults bench-layout clean system-vm fuzz

all: test

# $(call install_missing,PACKAGES): apt-get install those not installed yet.
define install_missing
	@missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi
endef

system:
	$(call install_missing,$(SYSTEM_PACKAGES))

system-vm:
	$(call install_missing,$(VM_PACKAGES))

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

venv: system $(STAMP)

demo: venv
	@bash scripts/demo.sh

lint: venv
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts

typecheck: venv
	$(BIN)/mypy src

protos: venv
	$(BIN)/python scripts/gen_protos.py

protos-check: venv
	$(BIN)/python scripts/gen_protos.py --check

test: venv system-vm lint typecheck protos-check
	$(BIN)/python -m pytest -q

bench: venv
	$(BIN)/python bench/ingest.py

bench-fs: venv
	$(BIN)/python bench/fs.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis

bench-nar: venv
	$(BIN)/python bench/nar.py

bench-layout: venv
	$(BIN)/python bench/layout_floor.py

bench-grpc: venv
	$(BIN)/python bench/grpc_castore.py

bench-virtiofs: venv system-vm
	$(BIN)/python bench/virtiofs.py

bench-s3: venv
	$(BIN)/python bench/s3.py

bench-faults: venv
	$(BIN)/python bench/faults.py

# Every fuzz target with many more examples than make test runs (minutes, not seconds).
fuzz: venv
	CAFS_FUZZ=long $(BIN)/python -m pytest -q tests/fuzz
