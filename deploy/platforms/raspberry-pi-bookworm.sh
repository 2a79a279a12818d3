#!/usr/bin/env bash
# Raspberry Pi OS bookworm (Debian 12), Python 3.11.
#   64-bit (aarch64, Pi 3/4/5/Zero 2): ai-edge-litert wheel from PyPI (the core dependency).
#   32-bit (armv7l): no LiteRT wheel exists; tflite-runtime (2.14 is the last with armv7 wheels)
#   comes in through the core dependency's marker. numpy < 2 on armv7, where piwheels builds it.
# Optional Coral USB Accelerator: pass --coral (adds Coral's apt repository and libedgetpu1-std).
# Usage: sudo deploy/platforms/raspberry-pi-bookworm.sh [--coral]
source "$(dirname "$0")/common.sh"
need_root
. /etc/os-release
[ "${VERSION_CODENAME:-}" = bookworm ] || echo "warning: written for bookworm, this is ${VERSION_CODENAME:-unknown}" >&2
apt-get update -qq
apt-get install -y -qq python3-venv python3-dev libjpeg62-turbo libopenblas0 v4l-utils
PYTHON=python3
arch=$(uname -m)
case "$arch" in
  aarch64) EXTRA_PIP="" ;;
  armv7l)
    # piwheels has armv7 builds of numpy/pillow/cryptography for Python 3.11.
    INDEX_FLAGS="--extra-index-url https://www.piwheels.org/simple"
    EXTRA_PIP="numpy<2"
    ;;
  *) echo "unexpected architecture $arch" >&2; exit 1 ;;
esac
if [ "${1:-}" = --coral ]; then
  source "$(dirname "$0")/coral-repo.sh"
  install_coral_repo
  apt-get install -y -qq libedgetpu1-std   # the udev rule gives the USB Accelerator to group plugdev
fi
install_venv
install_service
smoke_test
