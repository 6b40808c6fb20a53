#!/usr/bin/env bash
# Put the real Fashion-MNIST files (Debian package dataset-fashion-mnist) where torchvision
# finds them: ROOT/FashionMNIST/raw/*-ubyte. Usage: scripts/fashion_mnist.sh [ROOT]
set -euo pipefail
ROOT="${1:-var/data}"
SRC=/usr/share/datasets/fashion-mnist
if [ ! -f "$SRC/train-images-idx3-ubyte.gz" ]; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1) || \
      (apt-get update -qq >/dev/null && apt-get install -y -qq dataset-fashion-mnist >/dev/null)
  else
    sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null
  fi
fi
mkdir -p "$ROOT/FashionMNIST/raw"
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
  [ -f "$ROOT/FashionMNIST/raw/$f" ] || gunzip -c "$SRC/$f.gz" > "$ROOT/FashionMNIST/raw/$f"
done
echo "$ROOT"
