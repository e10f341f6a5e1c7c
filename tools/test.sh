#!/usr/bin/env bash
# The README's test command. On a fresh machine it first installs what the tests drive for real
# (Debian packages from tools/test-packages.txt, a Python venv from tools/test-requirements.txt),
# then runs the workspace tests. Extra arguments go to `cargo test` (e.g. `-p resnet-server`).
# .ci/run calls this same script, so a newcomer and CI take one path.
# `tools/test.sh --setup-only` does the set-up and stops (.ci/run runs it while it compiles).
set -euo pipefail
cd "$(dirname "$0")/.."
setup_only=false
if [[ ${1:-} == --setup-only ]]; then
  setup_only=true
  shift
fi

if ! command -v cargo >/dev/null; then
  echo "cargo is required (rustup: https://rustup.rs)" >&2
  exit 1
fi

sudo_cmd=""
if [[ $(id -u) -ne 0 ]]; then sudo_cmd="sudo"; fi

# Debian packages: install only what is missing, with one apt-get call.
missing=()
while read -r pkg cmd; do
  [[ -z $pkg || $pkg == \#* ]] && continue
  command -v "$cmd" >/dev/null || missing+=("$pkg")
done < tools/test-packages.txt
if ((${#missing[@]})); then
  echo "== installing Debian packages for the tests: ${missing[*]}"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Python clients: one venv under target/, rebuilt when the requirements change.
venv=target/test-venv
if grep -qv '^\s*\(#\|$\)' tools/test-requirements.txt; then
  stamp="$venv/.requirements"
  if ! cmp -s tools/test-requirements.txt "$stamp" 2>/dev/null; then
    echo "== Python venv for the tests ($venv)"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -r tools/test-requirements.txt
    cp tools/test-requirements.txt "$stamp"
  fi
  RESNET_TEST_PYTHON="$(pwd)/$venv/bin/python"
  export RESNET_TEST_PYTHON
fi

if $setup_only; then
  echo "== set-up done"
  exit 0
fi

# The ISAs this CPU offers, read from /proc/cpuinfo here, outside the code under test: the
# kernel batteries fail when one of them was not exercised.
if [[ -z ${RESNET_EXPECT_ISA:-} && -r /proc/cpuinfo ]]; then
  flags=$(grep -m1 '^flags' /proc/cpuinfo || true)
  expect=portable
  for pair in "avx2 avx2" "avx512f avx512" "avx_vnni avxvnni" "avx512_vnni vnni" "avx512_bf16 avx512bf16" "amx_bf16 amxbf16" "amx_int8 amxint8"; do
    read -r flag name <<< "$pair"
    [[ " $flags " == *" $flag "* ]] && expect="$expect,$name"
  done
  export RESNET_EXPECT_ISA=$expect
fi
echo "== RESNET_EXPECT_ISA=${RESNET_EXPECT_ISA:-}"

cargo test --workspace "$@"
