#!/usr/bin/env bash
# The main job on the embedded default store: ingest a sample tree, list it back.
set -euo pipefail
cd "$(dirname "$0")/.."
cafs=.venv/bin/cafs
sample=$(mktemp -d "${TMPDIR:-/tmp}/cafs-sample.XXXXXX")
trap 'rm -rf "$sample"' EXIT

mkdir -p "$sample/tree/keep" "$sample/tree/bin"
: > "$sample/tree/.keep"
: > "$sample/tree/keep/.keep"
ln -s /nix/store/somewhereelse "$sample/tree/aa"
printf 'Hello World!' > "$sample/tree/hello.txt"
printf '#!/bin/sh\necho hello from cafs\n' > "$sample/tree/bin/hello"
chmod +x "$sample/tree/bin/hello"
head -c 3000000 /dev/urandom > "$sample/tree/random.bin"

echo "\$ cafs castore ingest tree"
line=$("$cafs" castore ingest "$sample/tree")
echo "${line#"$sample/"}"
digest=$(echo "$line" | awk '{print $3}')
echo
echo "\$ cafs castore ls --recursive $digest"
"$cafs" castore ls --recursive "$digest"
echo
hello=$("$cafs" castore ls --recursive "$digest" | awk '$NF == "hello.txt" {print $2}')
echo "\$ cafs castore cat $hello"
"$cafs" castore cat "$hello"
echo
echo
echo "store: ${CAFS_HOME:-${XDG_DATA_HOME:-$HOME/.local/share}/cafs}"
