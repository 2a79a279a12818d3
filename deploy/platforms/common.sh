# Shared steps of the platform installers (sourced, not run). Set by the caller: PYTHON; optional
# VENV_FLAGS, INDEX_FLAGS, EXTRA_PIP (pins installed first), SRC_FLAGS; SRC is a wheel or a source
# checkout of edge-detect (default: this checkout).
set -euo pipefail
PREFIX=${PREFIX:-/opt/edge-detect}
SRC=${SRC:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

need_root() { [ "$(id -u)" = 0 ] || { echo "run as root (sudo $0)" >&2; exit 1; }; }

install_venv() {
  # --system-site-packages (VENV_FLAGS): vendor Python bindings installed by apt/Yocto stay visible.
  # shellcheck disable=SC2086
  "$PYTHON" -m venv ${VENV_FLAGS:-} "$PREFIX/venv"
  local pip=("$PREFIX/venv/bin/python" -m pip install -q ${INDEX_FLAGS:-})
  "${pip[@]}" --upgrade pip
  # Platform pins first (EXTRA_PIP), then the package (SRC_FLAGS=--no-deps keeps a vendor runtime).
  # shellcheck disable=SC2086
  if [ -n "${EXTRA_PIP:-}" ]; then "${pip[@]}" $EXTRA_PIP; fi
  # shellcheck disable=SC2086
  "${pip[@]}" ${SRC_FLAGS:-} "$SRC"
  "$PREFIX/venv/bin/edge-detect" --version
}

install_service() {
  install -d "$PREFIX/docs" && install -m 0644 "$here/docs/SERVICE.md" "$PREFIX/docs/SERVICE.md"
  install -m 0644 "$here/systemd/edge-detect.sysusers.conf" /usr/lib/sysusers.d/edge-detect.conf
  install -m 0644 "$here/systemd/edge-detect.tmpfiles.conf" /usr/lib/tmpfiles.d/edge-detect.conf
  install -m 0644 "$here/systemd/edge-detect.service" /etc/systemd/system/edge-detect.service
  systemd-sysusers
  systemd-tmpfiles --create /usr/lib/tmpfiles.d/edge-detect.conf
  if [ ! -e /etc/edge-detect/edge-detect.toml ]; then
    install -m 0640 -g edge-detect "$here/edge_detect/data/example.toml" /etc/edge-detect/edge-detect.toml
    echo "edit /etc/edge-detect/edge-detect.toml ([model] bundle = \"/var/lib/edge-detect/bundles/current\"), then:"
    echo "  edge-detect check-config /etc/edge-detect/edge-detect.toml && systemctl enable --now edge-detect"
  fi
  systemctl daemon-reload
  systemd-analyze verify /etc/systemd/system/edge-detect.service
}

smoke_test() {
  # One real inference with the shipped demo model, on this board's runtime.
  "$PREFIX/venv/bin/edge-detect" score "$("$PREFIX/venv/bin/python" -c \
    'import edge_detect.demo as d; print(d.DEMO_DIR / "bundle")')" \
    "$("$PREFIX/venv/bin/python" -c 'import edge_detect.demo as d; print(sorted((d.DEMO_DIR / "samples/defect").iterdir())[0])')"
}
