#!/usr/bin/env bash
# The main job on the embedded default store: ingest a sample tree, mount it
# read-only with FUSE, browse it, unmount.
set -euo pipefail
cd "$(dirname "$0")/.."
cafs=.venv/bin/cafs
sample=$(mktemp -d "${TMPDIR:-/tmp}/cafs-sample.XXXXXX")
mnt="$sample/mnt"
mount_pid=""
cleanup() {
  if [ -n "$mount_pid" ] && kill -0 "$mount_pid" 2>/dev/null; then
    kill -TERM "$mount_pid"; wait "$mount_pid" || true
  fi
  if grep -qs " $mnt " /proc/mounts; then fusermount3 -u -z "$mnt" || true; fi
  rm -rf "$sample"
}
trap cleanup EXIT

mkdir -p "$sample/tree/keep" "$sample/tree/bin" "$mnt"
: > "$sample/tree/.keep"
: > "$sample/tree/keep/.keep"
ln -s /nix/store/somewhereelse "$sample/tree/aa"
printf 'Hello World!\n' > "$sample/tree/hello.txt"
printf '#!/bin/sh\necho hello from a cafs mount\n' > "$sample/tree/bin/hello"
chmod +x "$sample/tree/bin/hello"
head -c 3000000 /dev/urandom > "$sample/tree/random.bin"

echo "\$ cafs castore ingest tree"
line=$("$cafs" castore ingest "$sample/tree")
echo "${line#"$sample/"}"
digest=$(echo "$line" | awk '{print $3}')
echo
echo "\$ cafs castore mount $digest mnt &"
"$cafs" castore mount "$digest" "$mnt" &
mount_pid=$!
for _ in $(seq 100); do
  grep -qs " $mnt " /proc/mounts && break
  kill -0 "$mount_pid" 2>/dev/null || { echo "mount failed" >&2; exit 1; }
  sleep 0.1
done
cd "$mnt"
echo
echo "\$ ls -l mnt mnt/bin"
ls -l . bin
echo
echo "\$ cat mnt/hello.txt"
cat hello.txt
echo
echo "\$ mnt/bin/hello"
./bin/hello
echo
echo "\$ cmp mnt/random.bin tree/random.bin && echo identical"
cmp random.bin "$sample/tree/random.bin" && echo identical
echo
echo "\$ python3 -c 'import os; print(os.getxattr(\"mnt/hello.txt\", \"user.tvix.castore.blob.digest\"))'"
python3 -c 'import os; print(os.getxattr("hello.txt", "user.tvix.castore.blob.digest").decode())'
echo
echo "\$ touch mnt/new"
touch new 2>&1 || true
cd - >/dev/null
echo
echo "\$ kill -TERM <cafs>   # or: fusermount3 -u mnt"
kill -TERM "$mount_pid"; wait "$mount_pid"; mount_pid=""
echo
echo "store: ${CAFS_HOME:-${XDG_DATA_HOME:-$HOME/.local/share}/cafs}"
echo "mount it yourself: mkdir -p /tmp/cafs && $cafs castore mount $digest /tmp/cafs"
