# Build and test entry points (see README). `make test` is what .ci/run calls.
ORT_VERSION ?= 1.31.1
ORT_DIR := target/onnxruntime
ORT_LIB := $(ORT_DIR)/libonnxruntime.so.$(ORT_VERSION)
PYTHON ?= python3
CARGO ?= cargo

.PHONY: build test ort lint fmt deb clean-ort

# ONNX Runtime's CPU shared library, taken from the PyPI wheel (no Python needed at run time).
$(ORT_LIB):
	@mkdir -p $(ORT_DIR)/wheel
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: -d $(ORT_DIR)/wheel onnxruntime==$(ORT_VERSION)
	$(PYTHON) packaging/extract-ort.py $(ORT_DIR)/wheel $(ORT_DIR)

ort: $(ORT_LIB)

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

# Debian package (amd64 here; arm64 for DGX Spark: build on the Spark, or `cargo deb --target
# aarch64-unknown-linux-gnu` with a cross toolchain and an arm64 libonnxruntime in target/onnxruntime).
deb: build
	cargo deb --no-build
	@ls -1 target/debian/*.deb

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets --locked -- -D warnings

fmt:
	$(CARGO) fmt

clean-ort:
	rm -rf $(ORT_DIR)
