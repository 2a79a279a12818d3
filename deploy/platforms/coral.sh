#!/usr/bin/env bash
# Coral Edge TPU: the USB Accelerator on any Debian/Ubuntu host (x86-64, aarch64, armv7), M.2/PCIe
# cards, and the Coral Dev Board. Python >= 3.9 is required: Mendel Linux 5 on the Dev Board ships
# 3.7, so there the daemon needs a newer Python (e.g. a Debian bookworm arm64 container with
# --device /dev/apex_0); the script stops with that message.
#   runtime: ai-edge-litert on Python >= 3.10 (x86-64, aarch64), tflite-runtime on 3.9 and armv7.
#   delegate library: libedgetpu.so.1 (libedgetpu1-std; -max runs faster and hotter)
#   config: [model.accelerator] type = "edgetpu", device = "usb" (USB) or "pci" (Dev Board, M.2/PCIe)
#   bundle variant: int8_edgetpu (made by edge-train export when edgetpu_compiler is installed)
# PCIe/M.2 and the Dev Board expose /dev/apex_0 (gasket-dkms; group apex). Usage: sudo coral.sh [--pcie]
source "$(dirname "$0")/common.sh"
need_root
source "$(dirname "$0")/coral-repo.sh"
apt-get update -qq && apt-get install -y -qq curl gpg python3-venv
if ! grep -q "Mendel" /etc/os-release 2>/dev/null; then
  install_coral_repo
fi
apt-get install -y -qq libedgetpu1-std
if [ "${1:-}" = --pcie ]; then
  apt-get install -y -qq gasket-dkms   # /dev/apex_0
fi
PYTHON=python3
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 9))' || {
  echo "edge-detect needs Python >= 3.9; this is $("$PYTHON" -V 2>&1) (Mendel: see the header)" >&2; exit 1; }
EXTRA_PIP=""
install_venv
install_service
smoke_test
"$PREFIX/venv/bin/python" - <<'PY'
from edge_detect.delegates import delegate_from_dict
from edge_detect.runtime import interpreter_backend
name, _, load_delegate = interpreter_backend()
try:
    load_delegate("libedgetpu.so.1")
    print(f"Edge TPU delegate loads with {name}")
except Exception as e:  # no accelerator plugged in: the daemon falls back to the CPU and says so
    print(f"Edge TPU delegate did not load ({e}); is the accelerator plugged in?")
PY
