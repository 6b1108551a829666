#!/bin/sh
# Installs Fashion-MNIST from Debian's dataset-fashion-mnist package, or says how.
DIR=/usr/share/datasets/fashion-mnist
if [ -f "$DIR/train-images-idx3-ubyte.gz" ] && [ -f "$DIR/t10k-labels-idx1-ubyte.gz" ]; then
  exit 0
fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
  echo "Installing Fashion-MNIST: apt-get install dataset-fashion-mnist"
  apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || {
    apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; } || {
    echo "error: apt-get install dataset-fashion-mnist failed" >&2; exit 1; }
  exit 0
fi
echo "error: Fashion-MNIST is not installed in $DIR." >&2
echo "Run: sudo apt-get install dataset-fashion-mnist" >&2
echo "or download the four IDX .gz files and pass --data_dir=DIR." >&2
exit 1
