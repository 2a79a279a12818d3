#!/usr/bin/env bash
# NXP i.MX 8M Plus (NPU) and i.MX 8 / 8M (GPU) with NXP's Yocto BSP (LF 6.x, Python 3.10+/3.11).
#   runtime: NXP's tflite_runtime from the BSP (meta-imx: python3-tensorflow-lite), which is built
#   against the matching VX delegate; ai-edge-litert's aarch64 wheel runs on the CPU as well but
#   cannot load NXP's delegate built for another TFLite version.
#   delegate: the VX delegate /usr/lib/libvx_delegate.so (NPU/GPU through TIM-VX/OpenVX):
#     [model.accelerator]
#     type = "external"
#     library_path = "/usr/lib/libvx_delegate.so"
#     variant = "int8_io"
#   bundle variant: int8_io (full-integer); the first inference compiles the graph (seconds), later ones are fast.
# Yocto images have no apt: this installs into a venv that sees the BSP's tflite_runtime.
# Usage: deploy/platforms/imx8.sh (as root on the board)
source "$(dirname "$0")/common.sh"
need_root
PYTHON=python3
"$PYTHON" -c "import tflite_runtime.interpreter" 2>/dev/null || {
  echo "NXP's tflite_runtime is missing: build the image with python3-tensorflow-lite (meta-imx)" >&2; exit 1; }
[ -e /usr/lib/libvx_delegate.so ] || echo "warning: /usr/lib/libvx_delegate.so not found (tim-vx / vx-delegate)" >&2
VENV_FLAGS="--system-site-packages"
# --no-deps for the runtime: the BSP's tflite_runtime is the one that matches the VX delegate.
SRC_FLAGS="--no-deps"
EXTRA_PIP="numpy pillow click paho-mqtt cryptography"
install_venv
install_service
smoke_test
