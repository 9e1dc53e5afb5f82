# moat's entry points. `make` builds everything a guest boot needs; `make test` runs every test;
# `make demo` boots a guest and runs a command in it.
#
# On hosts whose /dev/kvm cannot boot ordinary guests (PVM), guests boot inside the nested
# harness (tests/nested/run): see README.md.

SHELL := /bin/bash
CARGO ?= cargo
PREFIX ?= /usr/local
BUILD := build
TARGET := x86_64-unknown-linux-gnu
AGENT := target/$(TARGET)/release/moat-agent
INITRAMFS_TOOL := target/$(TARGET)/release/moat-initramfs
MOAT := target/$(TARGET)/release/moat

# Run a command where guests can boot: directly on hardware KVM, else inside the nested harness.
HOSTKIND = $(shell tests/nested/hostkind)
GUEST_RUNNER = $(if $(filter pvm,$(HOSTKIND)),tests/nested/run --,)

.PHONY: all moat agent initramfs kernel testdisk test unit-test e2e-test microvm-test demo \
	install clean fmt clippy

all: host-deps moat initramfs kernel

# What moat needs at run time (mkfs.erofs for image root disks, mkfs.ext4 for scratch disks) and
# the sample image recipes need (busybox-static, zstd, python3), installed when missing.
HOST_DEPS := mkfs.erofs:erofs-utils mkfs.ext4:e2fsprogs busybox:busybox-static zstd:zstd python3:python3
.PHONY: host-deps
host-deps:
	@missing=""; for dep in $(HOST_DEPS); do \
		command -v $${dep%%:*} >/dev/null || missing="$$missing $${dep#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing"; \
		if [ "$$(id -u)" != 0 ]; then echo "run as root or: apt-get install$$missing" >&2; exit 1; fi; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null \
		|| { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends $$missing >/dev/null; }; \
	fi

# Linked statically too: no dynamic loader or shared libraries to map and relocate before main,
# which takes a quarter off a tiny guest's start to exit and 1.2 MiB off the VMM's RSS.
moat:
	RUSTFLAGS="-C target-feature=+crt-static" \
		$(CARGO) build --release --bin moat --target $(TARGET)

# The agent is PID 1 in a guest with no shared libraries: link it statically (glibc, crt-static).
agent:
	RUSTFLAGS="-C target-feature=+crt-static" \
		$(CARGO) build --release -p moat-guest-agent --target $(TARGET)

initramfs: agent
	@mkdir -p $(BUILD)
	$(INITRAMFS_TOOL) $(AGENT) $(BUILD)/moat-agent.cpio

kernel:
	kernel-config/build.sh $(BUILD)/vmlinux

testdisk: $(BUILD)/busybox.ext4

$(BUILD)/busybox.ext4: images/samples/busybox-disk.sh
	images/samples/busybox-disk.sh $@

# Sample image tarballs, built from Debian packages with no registry (images/samples/mkimage.py).
# test-images: the small busybox-based ones the end-to-end tests load. sample-images: those and a
# Debian one, whose debootstrap takes minutes the first time and needs root.
SAMPLES := images/samples
IMAGES_OUT := $(BUILD)/images
TEST_IMAGES := $(IMAGES_OUT)/busybox.tar $(IMAGES_OUT)/busybox-oci.tar $(IMAGES_OUT)/layers-test.tar
BUSYBOX_RECIPE := $(SAMPLES)/busybox-layers.sh $(SAMPLES)/mkimage.py

.PHONY: test-images sample-images test-mkimage

test-images: $(TEST_IMAGES)

# Hermetic unit tests of the image builder and checker itself (seconds, no root).
test-mkimage:
	python3 $(SAMPLES)/test_mkimage.py

sample-images: $(TEST_IMAGES) $(IMAGES_OUT)/debian-python.tar

$(IMAGES_OUT)/busybox.tar: $(SAMPLES)/busybox-image.sh $(BUSYBOX_RECIPE)
	$(SAMPLES)/busybox-image.sh $@ --format docker

$(IMAGES_OUT)/busybox-oci.tar: $(SAMPLES)/busybox-image.sh $(BUSYBOX_RECIPE)
	$(SAMPLES)/busybox-image.sh $@ --format oci --compress gzip

$(IMAGES_OUT)/layers-test.tar: $(SAMPLES)/layers-test-image.sh $(BUSYBOX_RECIPE)
	$(SAMPLES)/layers-test-image.sh $@

$(IMAGES_OUT)/debian-python.tar: $(SAMPLES)/debian-python-image.sh $(SAMPLES)/debian-rootfs.sh \
		$(SAMPLES)/mkimage.py
	$(SAMPLES)/debian-python-image.sh $@

# Unit tests everywhere; then the end-to-end suite (which moves itself into the nested harness
# on PVM hosts) and the cross-check of kernel and agent under plain QEMU.
test: all testdisk test-images
	$(CARGO) test --release --workspace --exclude moat
	$(CARGO) test --release -p moat --bins
	$(CARGO) test --release -p moat --test images
	$(CARGO) test --release -p moat --test microvm
	$(CARGO) test --release -p moat --test tiny
	$(CARGO) test --release -p moat --test e2e

demo: all $(IMAGES_OUT)/busybox.tar
	$(GUEST_RUNNER) $(MOAT) launch --boot-report $(IMAGES_OUT)/busybox.tar \
		sh -c 'echo "Hello from $$(hostname), a moat micro-VM: kernel $$(uname -r), $$(nproc) vCPU"'

# The standard benchmarks (README.md, "Benchmarks"): serial boots, 8 at once, `launch` of the
# busybox image with a warm and a cold image cache, and the tiny guest (the VMM alone, serial and
# 8 at once) on the host's own /dev/kvm; tables on stdout, charts and raw data in build/bench. FIRECRACKER=PATH and
# QEMU=PATH add those runtimes to the serial and tiny boots, interleaved with moat; nothing is
# ever downloaded. On PVM hosts the Linux sets run in the nested harness, which shares build/bench
# so the files come back, with nested paging on as on real hardware (a run that dies of the
# emulation's triple faults is counted as failed and left out).
BENCH_OUT := $(BUILD)/bench
BENCH_RUNNER = $(if $(filter pvm,$(HOSTKIND)),tests/nested/run --npt on --share $(BENCH_OUT) --,)
BENCH_PEERS = $(strip $(if $(FIRECRACKER),firecracker=$(FIRECRACKER)) $(if $(QEMU),qemu=$(QEMU)))
comma := ,
space := $(subst x, ,x)
BENCH_COMPARE = $(if $(BENCH_PEERS),--compare $(subst $(space),$(comma),$(BENCH_PEERS)))
# TODO(#5): QEMU has no way for the tiny guest to end it with status 0 (microvm has no i8042 to
# reset through, and isa-debug-exit always exits odd), and on PVM hosts `-cpu host` fails on
# IA32_ARCH_CAPABILITIES; the tiny guest is compared with Firecracker only until then.
BENCH_TINY_COMPARE = $(if $(FIRECRACKER),--compare firecracker=$(FIRECRACKER))
BENCH = $(BENCH_RUNNER) $(MOAT) bench

.PHONY: bench
bench: all testdisk $(IMAGES_OUT)/busybox.tar
	@mkdir -p $(BENCH_OUT)
	$(BENCH) --runs 10 $(BENCH_COMPARE) \
		--svg $(BENCH_OUT)/serial.svg --json $(BENCH_OUT)/serial.json
	$(BENCH) --runs 16 --parallel 8 --memory-runs 0 \
		--svg $(BENCH_OUT)/parallel.svg --json $(BENCH_OUT)/parallel.json
	$(BENCH) --runs 10 --memory-runs 0 --image $(IMAGES_OUT)/busybox.tar \
		--svg $(BENCH_OUT)/launch-warm.svg --json $(BENCH_OUT)/launch-warm.json
	$(BENCH) --runs 5 --memory-runs 0 --image $(IMAGES_OUT)/busybox.tar --cold \
		--svg $(BENCH_OUT)/launch-cold.svg --json $(BENCH_OUT)/launch-cold.json
	$(MOAT) bench --tiny --runs 30 $(BENCH_TINY_COMPARE) \
		--svg $(BENCH_OUT)/tiny.svg --json $(BENCH_OUT)/tiny.json
	$(MOAT) bench --tiny --runs 32 --parallel 8 --memory-runs 0 \
		--svg $(BENCH_OUT)/tiny-parallel.svg --json $(BENCH_OUT)/tiny-parallel.json

install: all
	install -D -m 0755 $(MOAT) $(DESTDIR)$(PREFIX)/bin/moat
	install -D -m 0644 $(BUILD)/vmlinux $(DESTDIR)$(PREFIX)/share/moat/vmlinux
	install -D -m 0644 $(BUILD)/moat-agent.cpio $(DESTDIR)$(PREFIX)/share/moat/moat-agent.cpio

fmt:
	$(CARGO) fmt --all

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean
	rm -rf $(BUILD)
