#!/usr/bin/env bash
# Prepare this (Debian 12) machine for the rootless_container test suite.
# Must run as root. Idempotent and fast when everything is already in place.
#
#  - installs the packages the tests and contrib/bench.sh use, and those the
#    VM tier (contrib/vm/) needs: debootstrap, qemu-system-x86, ...
#  - creates user rctest (subuid/subgid 200000:65536) and user rcnosub
#    (no subordinate ids, to exercise the single-id fallback)
#  - makes /dev/net/tun and /dev/fuse 0666 like a distro's udev rules would
#  - builds the busybox test rootfs in /var/tmp/rootless_container-test/rootfs
set -euo pipefail

TEST_USER=rctest
NOSUB_USER=rcnosub
SUB_START=200000
SUB_COUNT=65536
TEST_DIR=/var/tmp/rootless_container-test
ROOTFS=$TEST_DIR/rootfs

PACKAGES=(uidmap busybox-static fuse-overlayfs fuse3 hyperfine bubblewrap crun
    runc slirp4netns passt iproute2 nftables util-linux procps time iperf3 bsdutils)

die() { printf 'test-setup: %s\n' "$*" >&2; exit 1; }
note() { printf 'test-setup: %s\n' "$*"; }

[[ $(id -u) -eq 0 ]] || die "must be run as root (try: sudo $0)"

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)

# --- packages --------------------------------------------------------------
# dpkg-query is cheap; only touch apt (slow, needs network) when needed.
install_missing() { # PACKAGE...
    local pkg status missing=()
    for pkg in "$@"; do
        status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
        [[ $status == installed ]] || missing+=("$pkg")
    done
    if ((${#missing[@]})); then
        note "installing: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
}
install_missing "${PACKAGES[@]}"
# The build itself: cc links the binary, statically against glibc's libc.a (libc6-dev,
# which gcc only recommends).
BUILD_PACKAGES=(gcc libc6-dev)
install_missing "${BUILD_PACKAGES[@]}"

# --- the VM tier's host tools (contrib/vm/) ---------------------------------
VM_PACKAGES=(debootstrap debian-archive-keyring xz-utils e2fsprogs python3)
install_missing "${VM_PACKAGES[@]}"

# Plain `apt-get install qemu-system-x86` works on a clean Debian 12 or Ubuntu.
# Some images ship qemu-utils from bookworm-backports, which conflicts with
# bookworm's qemu-system-x86 (apt would remove qemu-utils): then take
# qemu-system-x86 from the same backports suite instead of removing anything.
ensure_qemu() {
    command -v qemu-system-x86_64 >/dev/null 2>&1 && return 0
    export DEBIAN_FRONTEND=noninteractive
    local pkgs=(qemu-system-x86) codename suite plan
    apt-get update -qq
    plan=$(apt-get install -s --no-install-recommends "${pkgs[@]}")
    if ! grep -q '^Remv ' <<<"$plan"; then
        note "installing: ${pkgs[*]}"
        apt-get install -y -qq --no-install-recommends "${pkgs[@]}"
        return 0
    fi
    # shellcheck source=/dev/null
    codename=$(. /etc/os-release; if [[ ${ID:-} == debian ]]; then printf '%s' "${VERSION_CODENAME:-}"; fi)
    if [[ -z $codename ]]; then
        die "installing qemu-system-x86 would remove packages here (apt-get install -s qemu-system-x86 shows which): install qemu-system-x86_64 yourself"
    fi
    suite=$codename-backports
    if ! grep -rqsE "^[^#]*[[:space:]]$suite([[:space:]]|\$)" /etc/apt/sources.list /etc/apt/sources.list.d/; then
        note "adding apt source $suite (installed qemu packages come from there)"
        printf '%s\n' 'Types: deb' 'URIs: http://deb.debian.org/debian' "Suites: $suite" \
            'Components: main' 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' \
            >"/etc/apt/sources.list.d/$suite.sources"
        apt-get update -qq
    fi
    note "installing: ${pkgs[*]} from $suite"
    apt-get install -y -qq --no-install-recommends -t "$suite" "${pkgs[@]}"
}
ensure_qemu

# --- users -----------------------------------------------------------------
ensure_user() {
    local user=$1
    if ! id -u "$user" >/dev/null 2>&1; then
        useradd --create-home --home-dir "/home/$user" --shell /bin/bash "$user"
        note "created user $user"
    fi
}
ensure_user "$TEST_USER"
ensure_user "$NOSUB_USER"

# Rewrite /etc/subuid or /etc/subgid: drop every line for the test users
# (by name or numeric id: useradd may have auto-allocated ranges) and add
# exactly one fixed range for $TEST_USER. Only writes when content changes.
fix_subid_file() {
    local file=$1 want tmp
    local test_id nosub_id
    test_id=$(id -u "$TEST_USER")
    nosub_id=$(id -u "$NOSUB_USER")
    if [[ $file == /etc/subgid ]]; then
        test_id=$(id -g "$TEST_USER")
        nosub_id=$(id -g "$NOSUB_USER")
    fi
    touch "$file"
    want=$(awk -F: -v a="$TEST_USER" -v b="$NOSUB_USER" -v c="$test_id" -v d="$nosub_id" \
        '$1 != a && $1 != b && $1 != c && $1 != d' "$file"
        printf '%s:%s:%s\n' "$TEST_USER" "$SUB_START" "$SUB_COUNT")
    if [[ $(<"$file") != "$want" ]]; then
        tmp=$(mktemp "$file.XXXXXX")
        printf '%s\n' "$want" >"$tmp"
        chmod 0644 "$tmp"
        mv -f "$tmp" "$file"
        note "wrote $file"
    fi
    # Another user's range overlapping ours would let them reach our ids.
    awk -F: -v a="$TEST_USER" -v s="$SUB_START" -v n="$SUB_COUNT" -v f="$file" \
        '$1 != a && NF == 3 && $2 < s + n && s < $2 + $3 {
            printf "test-setup: warning: %s: range of %s overlaps %s:%s:%s\n", f, $1, a, s, n
        }' "$file" >&2
}
fix_subid_file /etc/subuid
fix_subid_file /etc/subgid

# --- devices ---------------------------------------------------------------
# Containers/VM images ship these 0600 and have no udev; distros make both
# 0666 (udev rules), which slirp4netns/pasta and fuse-overlayfs rely on.
if [[ ! -c /dev/net/tun ]]; then
    mkdir -p /dev/net
    mknod -m 0666 /dev/net/tun c 10 200
fi
if [[ ! -c /dev/fuse ]]; then
    mknod -m 0666 /dev/fuse c 10 229
fi
chmod 0666 /dev/net/tun /dev/fuse

# --- kernel knobs ----------------------------------------------------------
# Unprivileged user namespaces must be allowed (Debian default since 11).
if [[ -r /proc/sys/kernel/unprivileged_userns_clone &&
    $(</proc/sys/kernel/unprivileged_userns_clone) == 0 ]]; then
    echo 1 >/proc/sys/kernel/unprivileged_userns_clone
    note "enabled kernel.unprivileged_userns_clone"
fi
if [[ -r /proc/sys/user/max_user_namespaces &&
    $(</proc/sys/user/max_user_namespaces) == 0 ]]; then
    die "user namespaces are disabled (user.max_user_namespaces=0)"
fi

# --- test rootfs -----------------------------------------------------------
# Every path component must be traversable by the test users.
install -d -m 0755 -o root -g root "$TEST_DIR"
"$here/make-test-rootfs.sh" "$ROOTFS"

# Sanity: the rootless user can really create a user namespace.
if ! runuser -u "$TEST_USER" -- unshare --user --map-root-user /bin/true; then
    die "$TEST_USER cannot create a user namespace"
fi

note "ok: users $TEST_USER (subid $SUB_START:$SUB_COUNT) and $NOSUB_USER (none), /dev/net/tun+/dev/fuse 0666, rootfs $ROOTFS"
