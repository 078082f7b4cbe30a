# pycni - a CNI 1.1.0 bridge plugin and host-local IPAM in Python.
# Every target works on a fresh Debian 12 machine as root once .ci/run's apt packages are present.

PYTHON      ?= python3
VENV        ?= .venv
VPY         := $(VENV)/bin/python
CNI_BIN_DIR ?= /opt/cni/bin
PYCNI_HOME  ?= /opt/pycni
BUILD       ?= build
# Go builds use the Go of /usr/local/go (not Debian's golang-go): first on PATH.
GO_PATH     := /usr/local/go/bin:$(PATH)
PYTEST_ARGS ?=
# make bench BENCH_ARGS=--update-docs: the report also goes into docs/performance.md
BENCH_ARGS  ?=
FUZZ_SECONDS ?= 300
# NATIVE_SHIM=1 (default): `make install` and `make bundle` install the native shim (src/pycni/daemon/shim.c,
# static, ~1 ms in front of the daemon, the installation's interpreter standalone when no daemon answers) as
# pycni and pycni-host-local; NATIVE_SHIM=0: Python launchers instead (no C compiler needed).
NATIVE_SHIM ?= 1

.PHONY: all deps venv build install uninstall test test-unit test-agent test-cluster test-portable kind-e2e cluster-up \
	cluster-down check demo clean bundle stress bench conformance e2e-build bench-netpol

all: venv build

# Debian packages (idempotent): reference plugins, Go + libcni source, iproute2, nftables, iptables...
deps:
	@bash integration/deps.sh

# Development venv: the package editable, plus test tools. A stamp file, not $(VPY) (a symlink: touching it
# would touch the interpreter it points at), records the pyproject.toml it was installed from.
VENV_STAMP := $(VENV)/.pycni-installed
$(VENV_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[test]' ruff
	@touch $@

venv: $(VENV_STAMP)

# From the Go modules pinned in integration/cni/go.mod + go.sum: upstream cnitool (build/bin/cnitool), our
# libcni driver for what cnitool cannot do (build/bin/pycni-cnitool) and the current reference plugins
# (build/ref/). Cached in /var/cache/pycni; the first build fills the Go module cache.
build:
	PATH="$(GO_PATH)" BUILD=$(BUILD) bash integration/cni/build.sh

# Self-contained bundle for nodes without Python (and without glibc): build/bundle/ and
# build/pycni-bundle.tar.gz = pycni, pycni-host-local (the static native shim; NATIVE_SHIM=0: sh launchers)
# and pycni.d/ (see integration/bundle/README.md).
bundle: venv
	VENV=$(VENV) OUT=$(BUILD) NATIVE_SHIM=$(NATIVE_SHIM) bash integration/bundle/build.sh

# Install both plugins into $(CNI_BIN_DIR) so that they run without this checkout and without any
# pyenv shim: a private venv in $(PYCNI_HOME) holds the package, and each executable is the static native
# shim (integration/shim/build.sh), whose standalone fallback runs that venv's interpreter isolated (-I:
# PYTHON* variables from the runtime are ignored) - or, with NATIVE_SHIM=0, a two-line Python launcher
# doing the same in Python.
install:
	$(PYTHON) -m venv --clear $(PYCNI_HOME)
	$(PYCNI_HOME)/bin/python -m pip install -q --no-cache-dir .
	install -d $(CNI_BIN_DIR)
	@if [ "$(NATIVE_SHIM)" = 1 ]; then \
	  bash integration/shim/build.sh $(CNI_BIN_DIR)/pycni "$(abspath $(PYCNI_HOME))/bin/python" || exit 1; \
	  cp $(CNI_BIN_DIR)/pycni $(CNI_BIN_DIR)/pycni-host-local.tmp && mv $(CNI_BIN_DIR)/pycni-host-local.tmp $(CNI_BIN_DIR)/pycni-host-local; \
	  echo "installed $(CNI_BIN_DIR)/pycni $(CNI_BIN_DIR)/pycni-host-local (native shim, static; fallback $(abspath $(PYCNI_HOME))/bin/python)"; \
	else \
	  for pair in pycni:main_bridge pycni-host-local:main_host_local; do \
	    exe=$${pair%%:*}; fn=$${pair##*:}; \
	    printf '#!%s -I\nfrom pycni.cli import %s\n%s()\n' "$(abspath $(PYCNI_HOME))/bin/python" $$fn $$fn \
	      > $(CNI_BIN_DIR)/$$exe.tmp && chmod 0755 $(CNI_BIN_DIR)/$$exe.tmp && mv $(CNI_BIN_DIR)/$$exe.tmp $(CNI_BIN_DIR)/$$exe; \
	    echo "installed $(CNI_BIN_DIR)/$$exe (Python launcher)"; \
	  done; \
	fi

uninstall:
	rm -f $(CNI_BIN_DIR)/pycni $(CNI_BIN_DIR)/pycni-host-local
	rm -rf $(PYCNI_HOME)

# The test suite (root tests create their own network namespaces and skip without root).
test: deps venv build
	$(VPY) -m pytest -q $(PYTEST_ARGS) tests integration/runtimes integration/kindlab

# Subsets: the node agent; the three-node docker cluster; a real kind cluster (needs kind, kubectl, images).
test-agent: venv
	$(VPY) -m pytest -q tests/test_agent_unit.py tests/test_agent_netns.py tests/test_kind_packaging.py \
	  tests/test_netpol_unit.py tests/test_netpol_netns.py

test-cluster: deps venv
	$(VPY) -m pytest -q -m cluster integration/kindlab

# A real kind cluster (1 control plane + 2 workers) whose pod network is pycni (integration/kind/README.md).
# PYCNI_KIND_MODE=offline (default): Kubernetes, kind and the node image built here (integration/k8s), our own
# dockerd; PYCNI_KIND_MODE=registry: the docker, kind and kubectl on PATH and kind's published node image.
cluster-up: bundle
	bash integration/kind/cluster.sh up

cluster-down:
	bash integration/kind/cluster.sh down

# cluster-up, every e2e check (integration/kind/e2e.py), cluster-down - also on failure.
kind-e2e: bundle
	bash integration/kind/run-e2e.sh

# Kubernetes' own e2e suites (integration/e2e): e2e.test and its images built here (cached under /var/cache/pycni),
# then sig-network conformance and NetworkPolicy against the cluster of `make cluster-up`; JUnit in build/e2e/.
e2e-build:
	bash integration/e2e/build.sh all

conformance: e2e-build
	bash integration/e2e/run.sh all

# Portable builds: `make venv`, `make install` and `make bundle` from another CPython >= 3.11 - by default
# Debian 12's own /usr/bin/python3 (static libpython, dist-packages) - then the bundle tests run on that
# bundle (tests/conftest.py: PYCNI_BUNDLE). CI runs this after `make test`.
PORTABLE_PYTHON ?= /usr/bin/python3
PORTABLE        := $(abspath $(BUILD))/portable
test-portable: deps venv
	rm -rf $(PORTABLE)
	$(MAKE) bundle PYTHON=$(PORTABLE_PYTHON) VENV=$(PORTABLE)/venv BUILD=$(PORTABLE)
	$(MAKE) install PYTHON=$(PORTABLE_PYTHON) CNI_BIN_DIR=$(PORTABLE)/bin PYCNI_HOME=$(PORTABLE)/home
	@for exe in pycni pycni-host-local; do \
	  out=$$(echo '{"cniVersion":"1.1.0"}' | env -i CNI_COMMAND=VERSION $(PORTABLE)/bin/$$exe); \
	  case $$out in *supportedVersions*) echo "$$exe (installed from $(PORTABLE_PYTHON)): $$out" ;; \
	    *) echo "$$exe installed from $(PORTABLE_PYTHON) answers: $$out" >&2; exit 1 ;; esac; \
	done
	$(PORTABLE)/home/bin/python -I -c 'import pycni.cli, pycni.bridge.verbs, pycni.ipam.verbs, pycni.daemon.server'
	PYCNI_BUNDLE=$(PORTABLE)/pycni-bundle.tar.gz PYCNI_BUNDLE_PYTHON=$(PORTABLE_PYTHON) \
	  $(VPY) -m pytest -q $(PYTEST_ARGS) tests/test_bundle.py tests/test_agent_netns.py::test_installs_the_bundle

# pycni against the Go reference plugins, same machine, same run (docs/performance.md); as root.
bench: venv build
	$(VPY) bench/bench.py $(BENCH_ARGS)

# NetworkPolicy: compile and load cost for synthetic clusters (docs/networkpolicy.md "Cost"); root.
bench-netpol: venv
	$(VPY) bench/netpol_scale.py

# Reliability at scale (docs/reliability.md): crash sweep + a 5,000-operation storm with SIGKILLs; root.
STRESS_ARGS ?=
stress: venv
	$(VPY) integration/stress.py $(STRESS_ARGS)
	mkdir -p $(BUILD)/fuzz/protocol $(BUILD)/fuzz/store
	cd $(BUILD)/fuzz && $(abspath $(VPY)) $(CURDIR)/tests/fuzz.py protocol -max_total_time=$(FUZZ_SECONDS) -timeout=30 protocol
	cd $(BUILD)/fuzz && PYCNI_FUZZ_WORK=$(abspath $(BUILD))/fuzz $(abspath $(VPY)) $(CURDIR)/tests/fuzz.py store -max_total_time=$(FUZZ_SECONDS) -timeout=30 store

# Every test that needs no root (no namespaces): the protocol layer, the config models, the allocator,
# host-local exec'd against the reference... Root tests carry the `root` mark (tests/conftest.py adds
# it to any test that skips without root).
test-unit: venv build
	$(VPY) -m pytest -q -m "not root" tests

# Lint (ruff) everything; type-check (mypy) the pure layers spec/ and ipam/ (files: pyproject.toml).
check: venv
	$(VPY) -m ruff check src tests integration bench
	$(VPY) -m mypy

# The main job, end to end: node namespace, pods, ADD through libcni, connectivity, CHECK, DEL, cleanup.
demo: deps venv build
	bash integration/demo.sh

clean:
	rm -rf $(BUILD) .pytest_cache
