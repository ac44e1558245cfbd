#!/usr/bin/env bash
# Regenerate contrib/symbol-order.txt: every function a container start runs, in the
# runtime and in the container's first process up to exec, as callgrind sees them
# (--dump-before=execve: an exec'd process never reaches callgrind's exit dump).
# build.rs hands the list to the linker (LLD), which places these functions first and
# together: the kernel maps text 64 KiB around each page fault, so a start-up path
# scattered over 3.7 MB of text would cost most of it in resident memory.
#
#   sudo contrib/symbol-order.sh     # runs the starts as rctest and rcnosub
#
# Needs valgrind and the test users and rootfs of contrib/test-setup.sh. Run it again
# after a compiler or dependency upgrade (symbol names change; a stale list only costs
# memory, never correctness) and check with contrib/bench.sh's peak RSS column.
set -euo pipefail

die() { printf 'symbol-order: %s\n' "$*" >&2; exit 1; }

cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.."
[[ $(id -u) -eq 0 ]] || die "run as root: the starts run as the test users rctest and rcnosub"
command -v valgrind >/dev/null || die "valgrind not found (apt-get install valgrind)"
ROOTFS=${RC_TEST_ROOTFS:-/var/tmp/rootless_container-test/rootfs}
[[ -f $ROOTFS/.complete ]] || die "no test rootfs at $ROOTFS: run contrib/test-setup.sh"
for u in rctest rcnosub; do
    id -u "$u" >/dev/null 2>&1 || die "user $u missing: run contrib/test-setup.sh"
done

# The release build itself (it keeps its symbol table): any other profile would hash
# other symbol names.
cargo build --release
host=$(rustc -vV | sed -n 's/^host: //p')
bin=target/$host/release/rootless_container

work=$(mktemp -d /tmp/rc-symbol-order.XXXXXX)
trap 'rm -rf -- "$work"' EXIT
chmod 0777 "$work"
install -m 0755 "$bin" "$work/rootless_container"
# The work dir is bound into each container at its own path (the container's first
# process writes its profile at exec, after pivot_root), so the rootfs needs that
# directory: a copy of the busybox tree with it made.
cp -a "$ROOTFS" "$work/rootfs"
mkdir -p "$work/rootfs/$work"
ROOTFS=$work/rootfs

# The starts that matter: a --rootfs run with a full and with a single id map (the
# benchmarked path), the host-root default, and a start with slirp4netns. valgrind runs
# a CLONE_VM|CLONE_VFORK child as a fork, but no other CLONE_VM process: the single-id
# start goes without the network namespace helper here (--network host), whose
# functions are added by name from the symbol table below. valgrind 3.19
# cannot install a seccomp filter (ENOSYS): these run unconfined and must succeed; one
# more with the default profile gets as far as installing it, which is all it adds.
U="--security-opt seccomp=unconfined -v $work:$work"
starts=(
    "rctest run --rm --network none $U --rootfs $ROOTFS /bin/true"
    "rcnosub run --rm --network host $U --rootfs $ROOTFS /bin/true"
    "rctest run --rm --network none $U /bin/true"
    "rctest run --rm $U --rootfs $ROOTFS /bin/true"
    "rctest --version"
    "rctest run --rm --network none -v $work:$work --rootfs $ROOTFS /bin/true"
)
i=0
for s in "${starts[@]}"; do
    read -r user args <<<"$s"
    i=$((i + 1))
    # shellcheck disable=SC2086 # args split on purpose
    if ! (cd "$work" && setpriv --reuid="$user" --regid="$user" --init-groups \
        valgrind --tool=callgrind --demangle=no --trace-children=no --dump-before=execve \
        --callgrind-out-file="$work/cg.$i.%p" "$work/rootless_container" $args) \
        >/dev/null 2>"$work/log.$i"; then
        [[ $s == *unconfined* || $s == *--version ]] ||
            grep -q 'install the seccomp filter: Function not implemented' "$work/log.$i" ||
            die "start '$s' failed under valgrind: $(grep -v '^[=-]' "$work/log.$i" | tail -n 3)"
        [[ $s != *unconfined* && $s != *--version ]] ||
            die "start '$s' failed under valgrind: $(grep -v '^[=-]' "$work/log.$i" | tail -n 3)"
    fi
done

# Each container's first process (pid 1 inside) dumps its profile just before exec.
for ((j = 1; j <= ${#starts[@]}; j++)); do
    [[ ${starts[$((j - 1))]} == *" run "* ]] || continue
    [[ -s $work/cg.$j.1.1 || -s $work/cg.$j.1 ]] || die "no profile of the container process of start '${starts[$((j - 1))]}'"
done

# fn=(id) name / cfn=(id) name lines; callgrind marks recursion levels with 'N.
grep -hoE '^c?fn=\([0-9]+\) .*' "$work"/cg.* |
    sed -E 's/^c?fn=\([0-9]+\) //; s/'"'"'[0-9]+$//' |
    grep -vE '^(0x[0-9a-f]+|\(below main\))$' |
    cat - <(nm --defined-only "$bin" | awk '$3 ~ /engine5netns(11helper_main|12PendingNetns|12run_elsewhere|11raw_syscall)/ { print $3 }') |
    LC_ALL=C sort -u >contrib/symbol-order.txt
printf 'symbol-order: %s functions in contrib/symbol-order.txt\n' "$(wc -l <contrib/symbol-order.txt)"
