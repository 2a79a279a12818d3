#!/usr/bin/env bash
# NVIDIA Jetson Orin (Nano, NX, AGX) with JetPack 6 (Ubuntu 22.04, L4T r36, Python 3.10, aarch64).
#   runtime: ai-edge-litert (aarch64 wheel, Python 3.10) on the Arm cores with XNNPACK;
#   GPU: the TFLite GPU delegate (OpenCL/OpenGL ES) is not in the LiteRT wheel; build
#   libtensorflowlite_gpu_delegate.so for aarch64 and set
#   [model.accelerator] type = "gpu", library_path = "/opt/edge-detect/lib/libtensorflowlite_gpu_delegate.so".
#   Otherwise the daemon runs on the CPU and reports the fallback on its stats topic.
#   cameras: CSI cameras through a GStreamer pipeline (nvarguscamerasrc) with the camera extra
#   (OpenCV); JetPack's OpenCV has GStreamer, so the venv sees it via --system-site-packages.
# Usage: sudo deploy/platforms/jetson-jetpack6.sh
source "$(dirname "$0")/common.sh"
need_root
grep -q "R36" /etc/nv_tegra_release 2>/dev/null || echo "warning: JetPack 6 (L4T R36) not detected" >&2
apt-get update -qq
apt-get install -y -qq python3-venv python3-dev python3-opencv v4l-utils
PYTHON=python3
VENV_FLAGS="--system-site-packages"
EXTRA_PIP=""
install_venv
install_service
smoke_test
