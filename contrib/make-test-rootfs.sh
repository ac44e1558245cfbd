#!/usr/bin/env bash
# Build the tiny busybox-based root filesystem used by the tests and benches.
#
#   contrib/make-test-rootfs.sh DEST
#
# Needs a static busybox (Debian: busybox-static, /bin/busybox); override with
# BUSYBOX=/path/to/busybox. As root, the tree is owned by 0:0 except
# home/tuser (1000:1000). As a normal user everything stays owned by the
# caller (it cannot chown), which is fine for single-id rootless tests.
#
# Idempotent: when DEST/.complete matches the busybox version and the layout
# version below, it exits 0 at once. The tree is built in a temp dir next to
# DEST and renamed into place, so readers never see a half-built rootfs.
set -euo pipefail

# Bump when the layout below changes so existing trees get rebuilt.
LAYOUT_VERSION=2

die() { printf 'make-test-rootfs: %s\n' "$*" >&2; exit 1; }

[[ $# -eq 1 && -n $1 ]] || die "usage: $0 DEST"
DEST=${1%/}
[[ -n $DEST ]] || die "refusing to use / as DEST"

BUSYBOX=${BUSYBOX:-/bin/busybox}
[[ -x $BUSYBOX ]] || die "$BUSYBOX not found: install busybox-static (apt-get install busybox-static)"
# A dynamic busybox would not run inside the rootfs (no libc there).
if ldd "$BUSYBOX" >/dev/null 2>&1; then
    die "$BUSYBOX is dynamically linked: install busybox-static instead of busybox"
fi

bb_version=$("$BUSYBOX" 2>&1 | head -n1 || true)
[[ $bb_version == BusyBox* ]] || die "cannot get the version of $BUSYBOX"
stamp="layout=$LAYOUT_VERSION $bb_version"

# Fast path: nothing to do.
if [[ -f $DEST/.complete && $(<"$DEST/.complete") == "$stamp" ]]; then
    exit 0
fi

umask 022
parent=$(dirname -- "$DEST")
mkdir -p -- "$parent"

# Serialise concurrent builders of the same DEST (parallel test runs).
exec 9>"$DEST.lock"
flock 9
if [[ -f $DEST/.complete && $(<"$DEST/.complete") == "$stamp" ]]; then
    exit 0
fi

tmp=$(mktemp -d -- "$DEST.tmp.XXXXXX")
old=""
cleanup() {
    [[ -n $tmp && -d $tmp ]] && rm -rf -- "$tmp"
    [[ -n $old && -d $old ]] && rm -rf -- "$old"
    return 0
}
trap cleanup EXIT

# mktemp creates 0700; the rootfs root must be readable by everyone.
chmod 0755 "$tmp"

mkdir -p "$tmp"/{bin,dev,proc,sys,tmp,etc,root,home/tuser,run,var/tmp,usr/bin}
chmod 1777 "$tmp/tmp" "$tmp/var/tmp"
# /root stays world-readable: with a single-id map, host root owns it and
# the container's "root" is only the mapped user.

install -m 0755 "$BUSYBOX" "$tmp/bin/busybox"
# One relative symlink per applet, so /bin/sh, /bin/true, ... all work.
while IFS= read -r applet; do
    [[ -z $applet || $applet == busybox || $applet == */* ]] && continue
    ln -s busybox "$tmp/bin/$applet"
done < <("$BUSYBOX" --list)
# #!/usr/bin/env scripts.
ln -s ../../bin/busybox "$tmp/usr/bin/env"

cat >"$tmp/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
tuser:x:1000:1000:tuser:/home/tuser:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$tmp/etc/group" <<'EOF'
root:x:0:
tty:x:5:
tuser:x:1000:
nogroup:x:65534:
EOF
echo rctest >"$tmp/etc/hostname"
cat >"$tmp/etc/hosts" <<'EOF'
127.0.0.1 localhost
::1 localhost ip6-localhost ip6-loopback
EOF

# Fixture: a script without the exec bit (tests expect EACCES on exec).
printf '#!/bin/sh\necho hi\n' >"$tmp/bin/notexec"
chmod 0644 "$tmp/bin/notexec"

if [[ $(id -u) -eq 0 ]]; then
    chown -R -h 0:0 "$tmp"
    chown 1000:1000 "$tmp/home/tuser"
fi
chmod 0755 "$tmp/home/tuser"

# Marker goes in last, so it only exists in complete trees.
printf '%s\n' "$stamp" >"$tmp/.complete"
chmod 0644 "$tmp/.complete"

# Swap into place: move any stale tree aside first (rename(2) cannot replace
# a non-empty directory), then rename the new one in and drop the old one.
if [[ -e $DEST || -L $DEST ]]; then
    old=$(mktemp -d -- "$DEST.old.XXXXXX")
    mv -T -- "$DEST" "$old/tree"
fi
mv -T -- "$tmp" "$DEST"
tmp=""
echo "make-test-rootfs: built $DEST ($bb_version)"
