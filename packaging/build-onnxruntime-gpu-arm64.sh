#!/usr/bin/env bash
# Build ONNX Runtime 1.31.1 with the CUDA and TensorRT execution providers for NVIDIA DGX Spark
# (GB10, arm64, DGX OS / Ubuntu 24.04). PyPI has no arm64 GPU wheel, so this builds from source.
# Run on the Spark itself (needs CUDA 13 + cuDNN 9 + TensorRT 10 from NVIDIA's DGX OS repositories,
# ~1 hour and ~30 GB of disk). Not run by CI (no GPU here): a recipe, kept next to the package.
#
# Result: build/Linux/Release/libonnxruntime.so.1.31.1 plus libonnxruntime_providers_{shared,cuda,tensorrt}.so.
# Install them together (e.g. /usr/lib/intelligent-video/gpu/) and point the daemon at the main library:
#   IV_ONNXRUNTIME_PATH=/usr/lib/intelligent-video/gpu/libonnxruntime.so.1.31.1
set -euo pipefail
ORT_VERSION=${ORT_VERSION:-1.31.1}
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
CUDNN_HOME=${CUDNN_HOME:-/usr}
TENSORRT_HOME=${TENSORRT_HOME:-/usr}
# GB10 is compute capability 12.1 (sm_121); add others to run the same build elsewhere.
CUDA_ARCHS=${CUDA_ARCHS:-121}

sudo apt-get install -y --no-install-recommends git cmake ninja-build python3-dev python3-pip build-essential
git clone --depth 1 --branch "v${ORT_VERSION}" --recursive https://github.com/microsoft/onnxruntime.git
cd onnxruntime
./build.sh --config Release --build_shared_lib --parallel --skip_tests \
    --use_cuda --cuda_home "$CUDA_HOME" --cudnn_home "$CUDNN_HOME" \
    --use_tensorrt --tensorrt_home "$TENSORRT_HOME" \
    --cmake_extra_defines CMAKE_CUDA_ARCHITECTURES="$CUDA_ARCHS" onnxruntime_BUILD_UNIT_TESTS=OFF
ls -la build/Linux/Release/libonnxruntime*.so*
