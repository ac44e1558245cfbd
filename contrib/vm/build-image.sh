#!/usr/bin/env bash
# Build the guest of the VM test tier (once): Debian 12 with systemd, for
# contrib/vm/run.sh. Must run as root (debootstrap, chroot, file ownership).
#
#   contrib/vm/build-image.sh [--force]
#
# Prints the image directory on stdout (progress goes to stderr):
#   $RC_VM_CACHE/image-KEY/{vmlinux,initrd.img,rootfs.img,manifest}
# KEY is a hash of this script and of contrib/vm/guest/*: the image is rebuilt
# only when they change (or with --force), and older images are removed.
# An image without its .complete marker is never used: the build happens in a
# temporary directory that is renamed into place at the end.
#
# The guest:
#  - debootstrap --variant=minbase of bookworm plus $PACKAGES (debs cached in
#    $RC_VM_CACHE/debs, so a rebuild downloads nothing), as a raw ext4 image
#    made by `mkfs.ext4 -d` (no loop device, no mount);
#  - Debian's generic amd64 kernel (the cloud kernel has no 9p), booted as the
#    uncompressed PVH vmlinux, with its module tree trimmed to file systems,
#    network, virtio and block drivers;
#  - an initrd of a static busybox and the modules needed to mount the root
#    disk and the 9p shares (guest/init);
#  - user rctest (1001:1001) with /etc/subuid and /etc/subgid rctest:200000:65536
#    and lingering enabled, so its systemd manager starts at boot;
#  - the units a test VM does not need masked (see $MASKED), which saves seconds
#    under TCG, and rc-vm-run.service (guest/), which runs run.sh's command.
#
# Environment: RC_VM_CACHE (default /var/cache/rootless_container-vm),
# RC_VM_MIRROR (default http://deb.debian.org/debian), BUSYBOX (default /bin/busybox).
set -euo pipefail
# Files the guest reads as its test user (commands, /etc files) must not be 0600.
umask 022

SUITE=bookworm
CACHE=${RC_VM_CACHE:-/var/cache/rootless_container-vm}
MIRROR=${RC_VM_MIRROR:-http://deb.debian.org/debian}
BUSYBOX=${BUSYBOX:-/bin/busybox}
IMAGE_SIZE=2G
TEST_USER=rctest
TEST_UID=1001
SUBID_RANGE=200000:65536

# nftables: the root-mode bridge network's firewall (`nft`).
PACKAGES=(systemd systemd-sysv dbus dbus-user-session libpam-systemd kmod
    uidmap slirp4netns passt iproute2 procps fuse-overlayfs fuse3 nftables)

# Module subtrees of the guest (the rest of Debian's 390 MB is hardware drivers).
MODULE_TREES=(fs net lib crypto arch block mm virt
    drivers/virtio drivers/block drivers/char drivers/net)
# Subdirectories of drivers/net to keep (the others are NIC and wireless drivers).
NET_SUBDIRS_KEPT=(ipvlan vxlan)
# The initrd's modules (their dependencies are added from modules.dep).
# crc32c_generic: ext4 asks the crypto API for crc32c, and the initrd has no modprobe.
INITRD_MODULES=(virtio_pci virtio_blk crc32c_generic ext4 9pnet_virtio 9p)

# Units a throw-away test VM does not need; each costs boot time under TCG.
MASKED=(
    systemd-udevd.service systemd-udevd-control.socket systemd-udevd-kernel.socket
    systemd-udev-trigger.service systemd-udev-settle.service
    serial-getty@ttyS0.service getty@tty1.service getty.target
    sys-kernel-debug.mount sys-kernel-tracing.mount sys-kernel-config.mount
    sys-fs-fuse-connections.mount dev-hugepages.mount
    modprobe@drm.service modprobe@dm_mod.service modprobe@configfs.service
    modprobe@loop.service modprobe@fuse.service modprobe@efi_pstore.service
    systemd-journal-flush.service systemd-update-utmp.service
    systemd-update-utmp-runlevel.service systemd-random-seed.service
    systemd-modules-load.service systemd-remount-fs.service systemd-sysusers.service
    systemd-pstore.service systemd-firstboot.service systemd-machine-id-commit.service
    e2scrub_reap.service e2scrub_all.timer apt-daily.timer apt-daily-upgrade.timer
    dpkg-db-backup.timer fstrim.timer systemd-tmpfiles-clean.timer
    kmod-static-nodes.service dev-mqueue.mount
)
# Generators run (as separate programs) before systemd loads its units, and again
# in each user manager: none does anything this guest needs (the root is mounted
# by the initrd, no getty, no SysV scripts, no crypt/verity/integrity devices).
MASKED_GENERATORS=(
    system-generators/systemd-cryptsetup-generator system-generators/systemd-debug-generator
    system-generators/systemd-fstab-generator system-generators/systemd-getty-generator
    system-generators/systemd-gpt-auto-generator
    system-generators/systemd-hibernate-resume-generator
    system-generators/systemd-integritysetup-generator
    system-generators/systemd-rc-local-generator system-generators/systemd-run-generator
    system-generators/systemd-system-update-generator system-generators/systemd-sysv-generator
    system-generators/systemd-veritysetup-generator
    user-generators/systemd-xdg-autostart-generator
    user-environment-generators/30-systemd-environment-d-generator
)

die() { printf 'build-image: %s\n' "$*" >&2; exit 1; }
note() { printf 'build-image: %s\n' "$*" >&2; }

force=
case ${1:-} in
'') ;;
--force) force=1 ;;
*) die "usage: $0 [--force]" ;;
esac

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
INPUTS=("$here/build-image.sh" "$here/guest/init" "$here/guest/rc-vm-run"
    "$here/guest/rc-vm-run.service")
key=$(cat -- "${INPUTS[@]}" | sha256sum | cut -c1-16)
image=$CACHE/image-$key

if [[ -z $force && -f $image/.complete ]]; then
    printf '%s\n' "$image"
    exit 0
fi

[[ $(id -u) -eq 0 ]] || die "must run as root to build the image (try: sudo $0)"
for tool in debootstrap mkfs.ext4 xz dpkg-deb chroot sha256sum; do
    command -v "$tool" >/dev/null 2>&1 ||
        die "$tool not found: run contrib/test-setup.sh (or apt-get install debootstrap e2fsprogs xz-utils)"
done
[[ -x $BUSYBOX ]] || die "$BUSYBOX not found: apt-get install busybox-static"
if ldd "$BUSYBOX" >/dev/null 2>&1; then
    die "$BUSYBOX is dynamically linked: install busybox-static instead of busybox"
fi

install -d -m 0755 "$CACHE" "$CACHE/debs"
# Root boots what it leaves there: only a cache nobody else can write.
[[ $(stat -c '%u' "$CACHE") == 0 && $(( 0$(stat -c '%a' "$CACHE") & 022 )) == 0 ]] ||
    die "$CACHE must be owned by root and not group/other-writable"
# One build at a time; a build that waited here may find the image done.
exec {lock_fd}>"$CACHE/build.lock"
flock -w 1800 "$lock_fd" || die "another build has held $CACHE/build.lock for 30 minutes"
if [[ -z $force && -f $image/.complete ]]; then
    printf '%s\n' "$image"
    exit 0
fi
# Under the lock no other build runs: a .build-* left here is from a build that was
# killed (SIGKILL skips the trap), possibly with /proc and /sys still mounted inside.
for stale in "$CACHE"/.build-*; do
    [[ -d $stale ]] || continue
    awk -v t="$stale/" 'index($2, t) == 1 { print $2 }' /proc/self/mounts | sort -r |
        while read -r m; do umount -l "$m" || true; done
    rm -rf --one-file-system "$stale"
done

log=$CACHE/build.log
: >"$log"
tmp=
debootstrap_pid=
cleanup() {
    # debootstrap runs in its own process group (setsid): stop all of it first.
    if [[ -n $debootstrap_pid ]]; then
        kill -TERM -- "-$debootstrap_pid" 2>/dev/null || true
        wait "$debootstrap_pid" 2>/dev/null || true
    fi
    [[ -n $tmp && -d $tmp ]] || return 0
    # A failed debootstrap can leave /proc and /sys mounted in the target.
    local m
    awk -v t="$tmp/" 'index($2, t) == 1 { print $2 }' /proc/self/mounts | sort -r |
        while read -r m; do umount -l "$m" || true; done
    rm -rf --one-file-system "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP
tmp=$(mktemp -d "$CACHE/.build-$key.XXXXXX")
root=$tmp/root

t0=$SECONDS
step_t=$SECONDS
step() {
    note "$* (+$((SECONDS - step_t)) s)"
    step_t=$SECONDS
}
fail_with_log() {
    note "$1; the last lines of $log:"
    tail -n 25 "$log" >&2
    exit 1
}

# --- debootstrap -------------------------------------------------------------
note "building image-$key from $MIRROR (log: $log)"
includes=$(IFS=,; printf '%s' "${PACKAGES[*]}")
# In the background, so that a signal reaches the trap (and cleanup) at once.
setsid timeout 1200 debootstrap --variant=minbase --include="$includes" --cache-dir="$CACHE/debs" \
    "$SUITE" "$root" "$MIRROR" >>"$log" 2>&1 </dev/null &
debootstrap_pid=$!
wait "$debootstrap_pid" ||
    fail_with_log "debootstrap failed (a download from $MIRROR? set RC_VM_MIRROR for another mirror)"
debootstrap_pid=
step "debootstrap done"

# --- kernel ------------------------------------------------------------------
# The package behind linux-image-amd64 in the guest's own index (debootstrap left
# it in /var/lib/apt/lists), fetched by the guest's apt (checksums verified).
kpkg=$(chroot "$root" apt-cache depends linux-image-amd64 |
    awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }')
kver=$(chroot "$root" apt-cache show --no-all-versions "$kpkg" | awk '$1 == "Version:" { print $2; exit }')
[[ -n $kpkg && -n $kver ]] || die "cannot find the kernel package behind linux-image-amd64 in $SUITE"
kdeb=$CACHE/debs/${kpkg}_${kver//:/%3a}_amd64.deb
if [[ ! -f $kdeb ]]; then
    # shellcheck disable=SC2016 # $1 is the inner shell's
    chroot "$root" sh -c 'cd /tmp && apt-get download "$1"' sh "$kpkg=$kver" \
        >>"$log" 2>&1 || fail_with_log "cannot download $kpkg $kver from $MIRROR"
    mv -f "$root/tmp/${kdeb##*/}" "$kdeb"
fi
uname_r=${kpkg#linux-image-}
kdir=$tmp/kernel
mkdir -p "$kdir"
members=("./boot/vmlinuz-$uname_r")
for f in modules.order modules.builtin modules.builtin.modinfo; do
    members+=("./lib/modules/$uname_r/$f")
done
for t in "${MODULE_TREES[@]}"; do
    members+=("./lib/modules/$uname_r/kernel/$t")
done
dpkg-deb --fsys-tarfile "$kdeb" | tar -x -C "$kdir" "${members[@]}" ||
    die "cannot extract the kernel from $kdeb (delete it to download it again)"
for d in "$kdir/lib/modules/$uname_r/kernel/drivers/net"/*/; do
    d=${d%/}
    [[ " ${NET_SUBDIRS_KEPT[*]} " == *" ${d##*/} "* ]] || rm -rf "$d"
done

# Debian's kernel is a bzImage with an xz payload; its ELF vmlinux has a PVH entry
# point, so qemu -kernel starts it directly, without decompressing it under TCG.
vmlinuz=$kdir/boot/vmlinuz-$uname_r
offset=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$vmlinuz" | head -n 1 | cut -d: -f1)
[[ -n $offset ]] || die "no xz payload found in $vmlinuz"
tail -c "+$((offset + 1))" "$vmlinuz" >"$tmp/vmlinux.xz"
# --single-stream: the bzImage goes on after the payload.
xz -dc --single-stream "$tmp/vmlinux.xz" >"$tmp/vmlinux" 2>>"$log" ||
    fail_with_log "cannot decompress the kernel in $vmlinuz"
[[ $(head -c 4 "$tmp/vmlinux" | od -An -c | tr -d ' ') == '177ELF' ]] ||
    die "the payload of $vmlinuz is not an ELF vmlinux"

mkdir -p "$root/lib/modules"
mv "$kdir/lib/modules/$uname_r" "$root/lib/modules/"
chroot "$root" depmod -a "$uname_r" >>"$log" 2>&1 || fail_with_log "depmod failed"
step "kernel $kpkg $kver"

# --- initrd ------------------------------------------------------------------
mdir=$root/lib/modules/$uname_r
declare -A deps_of=() path_of=() seen=()
while IFS=: read -r mod deps; do
    deps_of[$mod]=$deps
    name=${mod##*/}
    path_of[${name%.ko}]=$mod
done <"$mdir/modules.dep"
load_order=()
add_module() {
    local m=$1 d
    [[ -z ${seen[$m]:-} ]] || return 0
    seen[$m]=1
    for d in ${deps_of[$m]}; do add_module "$d"; done
    load_order+=("$m")
}
for name in "${INITRD_MODULES[@]}"; do
    [[ -n ${path_of[$name]:-} ]] || die "module $name is not in $uname_r (built in? renamed?)"
    add_module "${path_of[$name]}"
done
ird=$tmp/initrd
mkdir -p "$ird/bin" "$ird/etc" "$ird/lib/modules"
cp "$BUSYBOX" "$ird/bin/busybox"
install -m 0755 "$here/guest/init" "$ird/init"
for m in "${load_order[@]}"; do
    install -D -m 0644 "$mdir/$m" "$ird/lib/modules/$m"
done
printf '%s\n' "${load_order[@]}" >"$ird/etc/modules-load-order"
# Uncompressed: decompressing costs more than reading under TCG.
(cd "$ird" && find . | LC_ALL=C sort | "$BUSYBOX" cpio -o -H newc -R 0:0) \
    >"$tmp/initrd.img" 2>>"$log" || fail_with_log "cannot write the initrd"
step "initrd: busybox + ${#load_order[@]} modules"

# --- guest configuration -------------------------------------------------------
echo rc-vm >"$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\trc-vm\n::1\tlocalhost ip6-localhost ip6-loopback\n' \
    >"$root/etc/hosts"
# The initrd mounts the root read-write; nothing else to mount.
echo '# The root (/dev/vda) is mounted by the initrd; see contrib/vm/guest/init.' >"$root/etc/fstab"
: >"$root/etc/resolv.conf" # the host's, copied by debootstrap; the guest has no network
# A fixed machine id: an empty one would make every boot of the snapshot a first
# boot (systemd-firstboot, preset-all).
[[ -s $root/etc/machine-id ]] || tr -d - </proc/sys/kernel/random/uuid >"$root/etc/machine-id"

chroot "$root" groupadd --gid "$TEST_UID" "$TEST_USER"
chroot "$root" useradd --uid "$TEST_UID" --gid "$TEST_UID" --create-home \
    --shell /bin/bash "$TEST_USER"
echo "$TEST_USER:$SUBID_RANGE" >"$root/etc/subuid"
echo "$TEST_USER:$SUBID_RANGE" >"$root/etc/subgid"
# Lingering: logind starts user@1001.service at boot, before the test logs in.
install -d -m 0755 "$root/var/lib/systemd/linger"
touch "$root/var/lib/systemd/linger/$TEST_USER"

for unit in "${MASKED[@]}"; do
    ln -sfn /dev/null "$root/etc/systemd/system/$unit"
done
for gen in "${MASKED_GENERATORS[@]}"; do
    install -d -m 0755 "$root/etc/systemd/${gen%/*}"
    ln -sfn /dev/null "$root/etc/systemd/$gen"
done
ln -sfn /lib/systemd/system/multi-user.target "$root/etc/systemd/system/default.target"
# Without udev (masked) and kmod-static-nodes (masked: it costs a second), the
# device nodes the runtime needs are made here, with the modes udev's rules give
# them on a distribution; opening one loads its module (char-major alias).
cat >"$root/etc/tmpfiles.d/rc-vm-dev.conf" <<'TMPFILES'
# contrib/vm/build-image.sh: what udev and kmod-static-nodes do on a full system.
d /dev/net 0755 - - -
c! /dev/net/tun 0666 - - - 10:200
c! /dev/fuse 0666 - - - 10:229
c! /dev/loop-control 0660 - disk - 10:237
z /dev/net/tun 0666 - - -
z /dev/fuse 0666 - - -
TMPFILES

install -D -m 0755 "$here/guest/rc-vm-run" "$root/usr/local/libexec/rc-vm-run"
install -m 0644 "$here/guest/rc-vm-run.service" "$root/etc/systemd/system/rc-vm-run.service"
install -d -m 0755 "$root/etc/systemd/system/multi-user.target.wants" "$root/rc-vm"
ln -sfn ../rc-vm-run.service "$root/etc/systemd/system/multi-user.target.wants/rc-vm-run.service"

rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/tmp/*
step "guest configured"

# --- disk image ----------------------------------------------------------------
mkfs.ext4 -q -F -L rc-vm-root -d "$root" "$tmp/rootfs.img" "$IMAGE_SIZE" >>"$log" 2>&1 ||
    fail_with_log "mkfs.ext4 -d failed (e2fsprogs 1.43 or later is needed)"
step "rootfs.img ($IMAGE_SIZE, $(du -sh "$tmp/rootfs.img" | cut -f1) allocated)"

{
    echo "key=$key"
    echo "suite=$SUITE"
    echo "mirror=$MIRROR"
    echo "kernel=$kpkg $kver"
    echo "packages=${PACKAGES[*]}"
    echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "build_seconds=$((SECONDS - t0))"
} >"$tmp/manifest"

final=$tmp/image
mkdir "$final"
mv "$tmp/vmlinux" "$tmp/initrd.img" "$tmp/rootfs.img" "$tmp/manifest" "$final/"
touch "$final/.complete"
rm -rf "$image"
mv "$final" "$image"

# Older images (other keys) are not used any more.
for old in "$CACHE"/image-*; do
    [[ $old == "$image" ]] || rm -rf --one-file-system "$old"
done
note "image-$key built in $((SECONDS - t0)) s: $image"
printf '%s\n' "$image"
