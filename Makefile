# Build and test entry points (see README). `make test` is what .ci/run calls.
ORT_VERSION ?= 1.31.1
ORT_DIR := target/onnxruntime
ORT_LIB := $(ORT_DIR)/libonnxruntime.so.$(ORT_VERSION)
PYTHON ?= python3
CARGO ?= cargo

.PHONY: run build test ort ort-arm64 lint fmt deb deb-arm64 build-arm64 clean-ort gpu-wheels gpu-wheels-arm64 openvino-wheels \
	image-cpu image-gpu container-test

# arm64 (DGX Spark) cross build: Debian's cross toolchain and arm64 GStreamer libraries
# (`dpkg --add-architecture arm64`; see README "arm64 package"), rustup's aarch64 target.
ARM64 := aarch64-unknown-linux-gnu
ORT_ARM64_DIR := target/onnxruntime-$(ARM64)
ORT_ARM64_LIB := $(ORT_ARM64_DIR)/libonnxruntime.so.$(ORT_VERSION)
ARM64_GST := target/arm64-gst-dev
ARM64_ENV := CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
	CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc \
	PKG_CONFIG_ALLOW_CROSS=1 \
	PKG_CONFIG_LIBDIR_aarch64_unknown_linux_gnu=$(CURDIR)/$(ARM64_GST)/pkgconfig:/usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig

# ONNX Runtime's CPU shared library, taken from the PyPI wheel (no Python needed at run time).
$(ORT_LIB):
	@mkdir -p $(ORT_DIR)/wheel
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: -d $(ORT_DIR)/wheel onnxruntime==$(ORT_VERSION)
	$(PYTHON) packaging/extract-ort.py $(ORT_DIR)/wheel $(ORT_DIR)

ort: $(ORT_LIB)

# The same library for aarch64, from PyPI's manylinux aarch64 wheel of the same version.
$(ORT_ARM64_LIB):
	@mkdir -p $(ORT_ARM64_DIR)/wheel
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux_2_28_aarch64 \
		-d $(ORT_ARM64_DIR)/wheel onnxruntime==$(ORT_VERSION)
	$(PYTHON) packaging/extract-ort.py $(ORT_ARM64_DIR)/wheel $(ORT_ARM64_DIR)

ort-arm64: $(ORT_ARM64_LIB)

# A foreground daemon from this checkout: builds, installs the configured model into target/models
# (once; `model pull --if-missing`), serves on target/run/iv.sock with health on RUN_HTTP.
# `make run MODEL=DIR` serves a local model folder instead (e.g. models/fixtures/tiny-track).
RUN_CONFIG := packaging/run.toml
RUN_HTTP ?= 127.0.0.1:8000
MODEL ?=
IV := target/release/intelligent-video
run: build
	@mkdir -p target/run
	@$(if $(MODEL),,$(IV) model pull --if-missing --config $(RUN_CONFIG) >/dev/null)
	@echo "Starting the daemon in the foreground (Ctrl-C stops it). Once it logs \"ready\", from another terminal:"
	@echo "  curl -s --unix-socket target/run/iv.sock -H 'content-type: image/jpeg' --data-binary @docs/detect-input.jpg \\"
	@echo "      'http://localhost/v1/detect?query=a+red+square&query=a+blue+disc'"
	@echo "  curl -s http://$(RUN_HTTP)/api/health"
	@echo "  $(IV) ui --socket target/run/iv.sock     # the web console in your browser"
	@echo "  $(IV) detect $(if $(MODEL),--model $(MODEL),--config $(RUN_CONFIG)) --query 'a red square' --draw out.jpg docs/detect-input.jpg"
	exec $(IV) serve --config $(RUN_CONFIG) --http-addr $(RUN_HTTP)$(if $(MODEL), --model $(MODEL))

# Release binary at target/release/intelligent-video, with the library next to it. The library is
# replaced by a new file (new inode), never rewritten in place under a daemon that has it mapped.
build: $(ORT_LIB)
	$(CARGO) build --release --locked
	cp --remove-destination $(ORT_LIB) target/release/

test: $(ORT_LIB)
	mkdir -p target/debug
	cp --remove-destination $(ORT_LIB) target/debug/
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets --locked -- -D warnings
	$(CARGO) test --locked

# Debian packages: target/debian/*_amd64.deb (this machine's architecture) and
# target/aarch64-unknown-linux-gnu/debian/*_arm64.deb (cross-built for DGX Spark).
deb: build
	cargo deb --no-build
	@ls -1 target/debian/*.deb

$(ARM64_GST)/pkgconfig/gstreamer-video-1.0.pc:
	bash packaging/arm64-gst-dev.sh $(ARM64_GST)

build-arm64: $(ORT_ARM64_LIB) $(ARM64_GST)/pkgconfig/gstreamer-video-1.0.pc
	$(ARM64_ENV) $(CARGO) build --release --locked --target $(ARM64)
	cp --remove-destination $(ORT_ARM64_LIB) target/$(ARM64)/release/

deb-arm64: build-arm64
	$(ARM64_ENV) cargo deb --no-build --target $(ARM64)
	@rm -f target/debian/*_arm64.deb   # cargo-deb leaves a second copy there
	@ls -1 target/$(ARM64)/debian/*.deb

# The GPU build of ONNX Runtime from PyPI for `runtime install` (the GPU image, tests/it/runtime.rs
# through PIP_FIND_LINKS, packaging/test-install.sh): onnxruntime-gpu and the nvidia-* wheels of
# its cuda and cudnn extras (about 1.5 GB for x86_64, with TensorRT-RTX's plugin EP wheel: x86_64
# only, 146 MB; about 1.4 GB for aarch64, whose onnxruntime-gpu wheel is manylinux_2_34).
# Downloaded once per checkout (a marker file says the set is complete).
GPU_WHEELS := target/onnxruntime-gpu/wheels
GPU_WHEELS_ARM64 := target/onnxruntime-gpu/wheels-aarch64
$(GPU_WHEELS)/.complete-rtx:
	@mkdir -p $(GPU_WHEELS)
	$(PYTHON) -m pip download --quiet --only-binary=:all: -d $(GPU_WHEELS) 'onnxruntime-gpu[cuda,cudnn]==$(ORT_VERSION)' \
		onnxruntime-ep-nv-tensorrt-rtx-cu13==0.5.0
	touch $@
$(GPU_WHEELS_ARM64)/.complete:
	@mkdir -p $(GPU_WHEELS_ARM64)
	$(PYTHON) -m pip download --quiet --only-binary=:all: -d $(GPU_WHEELS_ARM64) \
		--platform manylinux_2_34_aarch64 --platform manylinux_2_28_aarch64 --platform manylinux_2_27_aarch64 \
		--platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64 'onnxruntime-gpu[cuda,cudnn]==$(ORT_VERSION)'
	touch $@
# PyPI's openvino wheel (with numpy and openvino-telemetry, which it names as dependencies) for
# `runtime install --pip openvino==…` offline: the OpenVINO tier's tests and test-install.sh.
OPENVINO_VERSION ?= 2026.4.1
OPENVINO_WHEELS := target/openvino/wheels
$(OPENVINO_WHEELS)/.complete-$(OPENVINO_VERSION):
	@mkdir -p $(OPENVINO_WHEELS)
	$(PYTHON) -m pip download --quiet --only-binary=:all: -d $(OPENVINO_WHEELS) openvino==$(OPENVINO_VERSION)
	touch $@
openvino-wheels: $(OPENVINO_WHEELS)/.complete-$(OPENVINO_VERSION)
gpu-wheels: $(GPU_WHEELS)/.complete-rtx
gpu-wheels-arm64: $(GPU_WHEELS_ARM64)/.complete

# Container images from the Debian package (README "Containers"; packaging/container/Containerfile):
# intelligent-video:cpu and intelligent-video:gpu, with an -arm64 suffix for ARCH=arm64. CONTAINER
# is podman or docker; LOCAL_BASE=1 builds the base with debootstrap instead of pulling it (a machine
# without a container registry; podman only); BUILD_FLAGS go to the build (--isolation=chroot where
# podman cannot make namespaces).
ARCH ?= amd64
CONTAINER ?= podman
LOCAL_BASE ?=
BUILD_FLAGS ?=
IMAGE ?= intelligent-video
IMAGE_SUFFIX := $(if $(filter arm64,$(ARCH)),-arm64,)
IMAGE_CTX := target/container/$(ARCH)
IMAGE_DEB := $(if $(filter arm64,$(ARCH)),target/$(ARM64)/debian/*_arm64.deb,target/debian/*_amd64.deb)
IMAGE_WHEELS := $(if $(filter arm64,$(ARCH)),$(GPU_WHEELS_ARM64),$(GPU_WHEELS))

# $(call image,FLAVOR): stages the context (the newest package; the GPU wheels, hard-linked, for gpu)
# and builds the Containerfile's FLAVOR stage.
define image
	rm -rf $(IMAGE_CTX) && mkdir -p $(IMAGE_CTX)/wheels
	cp "$$(ls -1t $(IMAGE_DEB) | head -n 1)" $(IMAGE_CTX)/intelligent-video.deb
	$(if $(filter gpu,$(1)),cp -l $(IMAGE_WHEELS)/*.whl $(IMAGE_CTX)/wheels/)
	$(if $(LOCAL_BASE),bash packaging/container/base.sh $(ARCH))
	$(CONTAINER) build $(BUILD_FLAGS) $(if $(filter podman,$(CONTAINER)),--format docker) \
		$(if $(LOCAL_BASE),--pull=never) --platform linux/$(ARCH) --target $(1) \
		--build-arg VERSION=$$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1) \
		--build-arg REVISION=$$(git rev-parse --short HEAD 2>/dev/null || echo unknown) \
		-f packaging/container/Containerfile -t $(IMAGE):$(1)$(IMAGE_SUFFIX) $(IMAGE_CTX)
	@$(CONTAINER) image inspect --format '$(IMAGE):$(1)$(IMAGE_SUFFIX): {{.Size}} bytes' $(IMAGE):$(1)$(IMAGE_SUFFIX)
endef

image-cpu: $(if $(filter arm64,$(ARCH)),deb-arm64,deb)
	$(call image,cpu)

image-gpu: $(if $(filter arm64,$(ARCH)),deb-arm64 gpu-wheels-arm64,deb gpu-wheels)
	$(call image,gpu)

# The CPU image's run test (packaging/container/test.sh): starts its entrypoint as the image says,
# without a container engine, and checks health, a detection, SIGTERM and the engine cache.
container-test: image-cpu
	bash packaging/container/test.sh $(IMAGE):cpu$(IMAGE_SUFFIX) $(ARCH)

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets --locked -- -D warnings

fmt:
	$(CARGO) fmt

clean-ort:
	rm -rf $(ORT_DIR)
