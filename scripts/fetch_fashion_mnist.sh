#!/usr/bin/env bash
# Fashion-MNIST for the real-model tests and the example, without root: Debian's
# dataset-fashion-mnist package (MIT) downloaded as a .deb and unpacked into $1, unless the
# package is installed already (/usr/share/datasets/fashion-mnist). `make test` runs this.
set -euo pipefail
target="$(realpath -m "$1")"
installed=/usr/share/datasets/fashion-mnist
if [ -d "$installed" ] || [ -f "$target/train-images-idx3-ubyte.gz" ]; then
    exit 0
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
if ! apt-get download dataset-fashion-mnist >/dev/null 2>&1; then
    # a fresh machine may have no package lists yet: root can fetch them
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq >/dev/null 2>&1 || true
        apt-get download dataset-fashion-mnist >/dev/null 2>&1 || true
    fi
fi
deb="$(ls dataset-fashion-mnist_*.deb 2>/dev/null | head -1 || true)"
if [ -z "$deb" ]; then
    echo "warning: could not download Debian's dataset-fashion-mnist; the real-model test will say how to install it" >&2
    exit 0
fi
dpkg-deb -x "$deb" unpacked
mkdir -p "$(dirname "$target")"
rm -rf "$target.partial"
mv unpacked/usr/share/datasets/fashion-mnist "$target.partial"
mv "$target.partial" "$target"
echo "Fashion-MNIST unpacked into $target"
