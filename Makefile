# Build, install and test the Python CNI plugins. Targets relied upon: zipapps, install, test, demo.
SHELL := /bin/bash
PYTHON ?= /usr/bin/python3
VENV ?= .venv
CNI_BIN_DIR ?= /opt/cni/bin
INSPECT_BIN_DIR ?= /usr/local/sbin
DESTDIR ?=
EXTRACT_ROOT ?= /var/cache/cni-python
IPTC_VERSION := 1.2.0
PYROUTE2_VERSION := 0.9.7
SHIV_VERSION := 1.0.8
# The CRI test's client (tests/e2e/cri.py): gRPC and protobuf messages, no code generator.
GRPCIO_VERSION := 1.85.3
PROTOBUF_VERSION := 7.36.2

# What the plugins, their build and the demo need.
APT_PACKAGES := python3-venv python3-dev gcc make iproute2 iptables nftables conntrack ethtool \
	bridge-utils iputils-ping time
# What only the tests and benchmarks need: the Go plugins to compare with, and the runtimes that
# drive the plugins end to end. Without recommends: podman's would pull in ~12 more packages.
# (Debian's podman package itself puts 87-podman-bridge.conflist into /etc/cni/net.d.)
TEST_APT_PACKAGES := busybox-static containernetworking-plugins containerd runc podman

PROTOCOL := $(shell find cni_protocol -name '*.py')
HOST_LOCAL_SRC := $(PROTOCOL) $(shell find host_local_ipam -name '*.py')
# The bridge carries host-local too: it runs a host-local of its own build in-process.
BRIDGE_SRC := $(HOST_LOCAL_SRC) $(shell find cni_bridge -name '*.py')
# Both zipapps of one build carry one build id, a hash over these (tools/build_zipapp.py).
BUILD_ID_FROM := cni_protocol host_local_ipam cni_bridge
NAMING_SRC := cni_bridge/__init__.py cni_bridge/masquerade/__init__.py cni_bridge/masquerade/naming.py
# cni-inspect reads leases through host-local's own store, as host-local reads them.
STORE_SRC := cni_protocol/__init__.py cni_protocol/errors.py cni_protocol/request.py \
	cni_protocol/ip.py host_local_ipam/__init__.py host_local_ipam/store.py
INSPECT_SRC := $(NAMING_SRC) $(STORE_SRC) $(shell find cni_inspect -name '*.py')

.PHONY: all deps test-deps venv zipapps install install-inspect test unit demo demo-clean bench bench-ipam bench-cri clean

all: zipapps

# Debian packages; apt runs only when one is missing. $(1): the packages, $(2): apt's options.
define apt_install
	@missing=$$(for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(2) $$missing; \
	fi
endef

deps:
	$(call apt_install,$(APT_PACKAGES),)

test-deps: deps
	$(call apt_install,$(TEST_APT_PACKAGES),--no-install-recommends)

venv: $(VENV)/.ready
$(VENV)/.ready: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check shiv==$(SHIV_VERSION) pytest \
		python-iptables==$(IPTC_VERSION) hypothesis==6.170.15 pyroute2==$(PYROUTE2_VERSION) \
		grpcio==$(GRPCIO_VERSION) protobuf==$(PROTOBUF_VERSION)
	touch $@

build/site-host-local: $(HOST_LOCAL_SRC)
	rm -rf $@ && mkdir -p $@
	cp -r cni_protocol host_local_ipam $@/
	find $@ -name __pycache__ -prune -exec rm -rf {} +

build/site-bridge: $(BRIDGE_SRC) | venv
	rm -rf $@ && mkdir -p $@
	$(VENV)/bin/pip install -q --disable-pip-version-check --no-deps --target $@ \
		python-iptables==$(IPTC_VERSION)
	cp -r cni_protocol cni_bridge host_local_ipam $@/
	find $@ -name __pycache__ -prune -exec rm -rf {} +

# cni-inspect: pyroute2 and the names of the bridge plugin's netfilter objects (naming.py and
# the package files it needs to import), none of the plugins' own work.
build/site-cni-inspect: $(INSPECT_SRC) | venv
	rm -rf $@ && mkdir -p $@/cni_bridge/masquerade $@/cni_protocol $@/host_local_ipam
	$(VENV)/bin/pip install -q --disable-pip-version-check --no-deps --target $@ \
		pyroute2==$(PYROUTE2_VERSION)
	cp -r cni_inspect $@/
	for f in $(NAMING_SRC) $(STORE_SRC); do cp $$f $@/$$f; done
	find $@ -name __pycache__ -prune -exec rm -rf {} +

# Either zipapp changes when any source does: the build id they share covers both plugins.
dist/host-local: VERBS := host_local_ipam.plugin
dist/bridge: VERBS := cni_bridge.plugin
dist/host-local dist/bridge: dist/%: build/site-% $(BRIDGE_SRC) tools/build_zipapp.py | venv
	mkdir -p dist
	$(PYTHON) tools/build_zipapp.py --shiv $(VENV)/bin/shiv --root $(EXTRACT_ROOT) \
		--plugin $* --verbs $(VERBS) --site-packages $< --id-from $(BUILD_ID_FROM) --out $@

dist/cni-inspect: build/site-cni-inspect tools/build_zipapp.py | venv
	mkdir -p dist
	$(PYTHON) tools/build_zipapp.py --shiv $(VENV)/bin/shiv --root $(EXTRACT_ROOT) \
		--tool cni-inspect --entry cni_inspect.__main__:main --site-packages $< \
		--id-from cni_inspect cni_bridge/masquerade cni_protocol host_local_ipam --out $@

zipapps: dist/host-local dist/bridge dist/cni-inspect

# Install into $(DESTDIR)$(CNI_BIN_DIR) (atomically: a runtime may be exec'ing the old one).
# On this machine (no DESTDIR), also extract each app once so that the first pod does not pay
# for it, and drop the extractions of builds before the previous one.
install: zipapps
	install -d $(DESTDIR)$(CNI_BIN_DIR)
	for app in host-local bridge; do \
		install -m 0755 dist/$$app $(DESTDIR)$(CNI_BIN_DIR)/$$app.new && \
		mv -f $(DESTDIR)$(CNI_BIN_DIR)/$$app.new $(DESTDIR)$(CNI_BIN_DIR)/$$app || exit 1; \
		if [ -z "$(DESTDIR)" ]; then \
			env -i $(CNI_BIN_DIR)/$$app && \
			$(PYTHON) tools/build_zipapp.py --prune $(CNI_BIN_DIR)/$$app --root $(EXTRACT_ROOT) \
			|| exit 1; \
		fi; \
	done
	@echo "installed: $$(ls $(DESTDIR)$(CNI_BIN_DIR)/bridge $(DESTDIR)$(CNI_BIN_DIR)/host-local)"
	$(MAKE) --no-print-directory install-inspect

# cni-inspect, a tool for people, into $(DESTDIR)$(INSPECT_BIN_DIR) (extracted as the plugins).
install-inspect: dist/cni-inspect
	install -d $(DESTDIR)$(INSPECT_BIN_DIR)
	install -m 0755 dist/cni-inspect $(DESTDIR)$(INSPECT_BIN_DIR)/cni-inspect.new
	mv -f $(DESTDIR)$(INSPECT_BIN_DIR)/cni-inspect.new $(DESTDIR)$(INSPECT_BIN_DIR)/cni-inspect
	if [ -z "$(DESTDIR)" ]; then \
		env -i $(INSPECT_BIN_DIR)/cni-inspect --help >/dev/null && \
		$(PYTHON) tools/build_zipapp.py --prune $(INSPECT_BIN_DIR)/cni-inspect --root $(EXTRACT_ROOT); \
	fi
	@echo "installed: $(DESTDIR)$(INSPECT_BIN_DIR)/cni-inspect"

unit: venv
	$(VENV)/bin/python -m pytest -q tests/unit

# Every test: the README's test command, and what CI runs.
test: test-deps zipapps
	$(VENV)/bin/python -m pytest tests

# The main job: build, install into $(CNI_BIN_DIR), and show the plugins at work in a
# two-node "Kubernetes The Hard Way" cluster built in network namespaces.
# DEMO_FLAGS=--keep leaves the cluster up; `make demo-clean` removes it.
demo: deps install
	$(PYTHON) tools/cluster.py demo --plugin-dir $(DESTDIR)$(CNI_BIN_DIR) \
		--inspect $(DESTDIR)$(INSPECT_BIN_DIR)/cni-inspect $(DEMO_FLAGS)

demo-clean:
	$(PYTHON) tools/cluster.py clean

# ../shared/cnibench against the Go plugins of Debian (containernetworking-plugins).
CNIBENCH ?= ../shared/cnibench
BENCH_FLAGS ?= --n 100 --parallel 16
bench: test-deps zipapps
	$(PYTHON) $(CNIBENCH) --plugin-dir dist --compare /usr/lib/cni $(BENCH_FLAGS) \
		--json build/bench.json | tee build/bench.txt

# Our host-local under the reference bridge, against the Go pair.
bench-ipam: test-deps zipapps
	rm -rf build/ipam-mix && mkdir -p build/ipam-mix
	cp /usr/lib/cni/bridge build/ipam-mix/ && cp dist/host-local build/ipam-mix/
	$(PYTHON) $(CNIBENCH) --plugin-dir build/ipam-mix --compare /usr/lib/cni $(BENCH_FLAGS) \
		--json build/bench-ipam.json | tee build/bench-ipam.txt

# Pods through containerd's CRI (what kubelet calls), ours against the Go plugins.
CRI_BENCH_FLAGS ?= --pods 30 --parallel 10 --rounds 3
bench-cri: test-deps zipapps venv
	$(VENV)/bin/python bench/cri.py --plugin-dir dist --compare /usr/lib/cni $(CRI_BENCH_FLAGS) \
		| tee build/bench-cri.txt

clean:
	rm -rf build dist $(VENV) .pytest_cache
