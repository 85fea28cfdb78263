#!/usr/bin/env bash
# The main job on the embedded default store: import a sample tree as a Nix
# store path, show its narinfo and NAR hash, mount the store read-only with
# FUSE, browse the path, unmount; then serve the store with `cafs daemon` and
# read the path back over gRPC.
set -euo pipefail
cd "$(dirname "$0")/.."
cafs=.venv/bin/cafs
sample=$(mktemp -d "${TMPDIR:-/tmp}/cafs-sample.XXXXXX")
mnt="$sample/mnt"
mount_pid=""
daemon_pid=""
cleanup() {
  for pid in "$mount_pid" "$daemon_pid"; do
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid"; wait "$pid" || true
    fi
  done
  if grep -qs " $mnt " /proc/mounts; then fusermount3 -u -z "$mnt" || true; fi
  rm -rf "$sample"
}
trap cleanup EXIT

tree="$sample/hello-tree"
mkdir -p "$tree/keep" "$tree/bin" "$mnt"
: > "$tree/.keep"
: > "$tree/keep/.keep"
ln -s /nix/store/somewhereelse "$tree/aa"
printf 'Hello World!\n' > "$tree/hello.txt"
printf '#!/bin/sh\necho hello from a cafs mount\n' > "$tree/bin/hello"
chmod +x "$tree/bin/hello"
head -c 3000000 /dev/urandom > "$tree/random.bin"

echo "\$ cafs import hello-tree"
path=$("$cafs" import "$tree")
echo "$path"
base=${path#/nix/store/}
echo
echo "\$ cafs path-info $path"
"$cafs" path-info "$path"
echo
echo "\$ cafs nar dump $path | sha256sum"
"$cafs" nar dump "$path" | sha256sum
echo
echo "\$ cafs mount mnt &"
"$cafs" mount "$mnt" &
mount_pid=$!
for _ in $(seq 100); do
  grep -qs " $mnt " /proc/mounts && break
  kill -0 "$mount_pid" 2>/dev/null || { echo "mount failed" >&2; exit 1; }
  sleep 0.1
done
cd "$mnt/$base"
echo
echo "\$ ls -l mnt/$base mnt/$base/bin"
ls -l . bin
echo
echo "\$ cat mnt/$base/hello.txt"
cat hello.txt
echo
echo "\$ mnt/$base/bin/hello"
./bin/hello
echo
echo "\$ cmp mnt/$base/random.bin hello-tree/random.bin && echo identical"
cmp random.bin "$tree/random.bin" && echo identical
echo
echo "\$ python3 -c 'import os; print(os.getxattr(\"mnt/$base/hello.txt\", \"user.tvix.castore.blob.digest\"))'"
python3 -c 'import os; print(os.getxattr("hello.txt", "user.tvix.castore.blob.digest").decode())'
echo
echo "\$ touch mnt/$base/new"
touch new 2>&1 || true
cd - >/dev/null
echo
echo "\$ kill -TERM <cafs>   # or: fusermount3 -u mnt"
kill -TERM "$mount_pid"; wait "$mount_pid"; mount_pid=""
echo
sock="$sample/cafs.sock"
remote="grpc+unix://$sock"
echo "\$ cafs daemon --listen-address cafs.sock &"
"$cafs" daemon --listen-address "$sock" 2>"$sample/daemon.log" &
daemon_pid=$!
for _ in $(seq 100); do
  [ -S "$sock" ] && break
  kill -0 "$daemon_pid" 2>/dev/null || { cat "$sample/daemon.log" >&2; exit 1; }
  sleep 0.1
done
echo
echo "\$ cafs nar dump --blob-service-addr grpc+unix://cafs.sock … $path | sha256sum"
BLOB_SERVICE_ADDR=$remote DIRECTORY_SERVICE_ADDR=$remote PATH_INFO_SERVICE_ADDR=$remote \
  "$cafs" nar dump "$path" | sha256sum
echo
echo "\$ kill -TERM <cafs daemon>"
kill -TERM "$daemon_pid"; wait "$daemon_pid"; daemon_pid=""
echo
echo "store: ${CAFS_HOME:-${XDG_DATA_HOME:-$HOME/.local/share}/cafs}"
echo "mount it yourself: mkdir -p /tmp/cafs && $cafs mount /tmp/cafs &  then: ls /tmp/cafs/$base"
