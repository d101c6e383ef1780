#!/usr/bin/env bash
# Build the offline install bundle on a machine WITH network access.
#
#   systemd/build-wheelhouse.sh [OUT]      (default: dist/edge-gateway-bundle)
#
# Run it with the same Python minor version and CPU architecture as the target
# PC (Debian 12: Python 3.11, x86_64), for example on another Debian 12 machine.
# It writes OUT/wheelhouse (edge-gateway and every dependency as wheels),
# OUT/systemd, OUT/config/example and OUT/README.md, and OUT.tar.gz of it all.
# Copy the tarball to the target, unpack it and run: sudo OUT/systemd/install.sh
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
SRC="$(cd "$HERE/.." && pwd)"
OUT="$(realpath -m "${1:-$SRC/dist/edge-gateway-bundle}")"
PYTHON="${PYTHON:-python3}"

rm -rf "$OUT"
mkdir -p "$OUT/wheelhouse" "$OUT/config"
"$PYTHON" -m pip wheel --quiet --wheel-dir "$OUT/wheelhouse" "$SRC"
# install.sh runs pip from its wheel: the target needs no pip of its own.
"$PYTHON" -m pip download --quiet --dest "$OUT/wheelhouse" pip
cp -r "$SRC/systemd" "$OUT/systemd"
cp -r "$SRC/config/example" "$OUT/config/example"
cp "$SRC/README.md" "$OUT/README.md"
tar -C "$(dirname "$OUT")" -czf "$OUT.tar.gz" "$(basename "$OUT")"
echo "bundle: $OUT.tar.gz ($(ls "$OUT/wheelhouse" | wc -l) wheels)"
