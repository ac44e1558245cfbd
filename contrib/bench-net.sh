#!/usr/bin/env bash
# Network benchmark (not a test): TCP throughput between a rootless container and the
# host's loopback through each userspace helper, beside the helper's own figure outside
# the runtime (the same helper on a bare `unshare -rn` namespace), one run each; then
# root mode's bridge for comparison.
#
#   sudo contrib/bench-net.sh     # runs the rootless rows as rctest
#
# Only the host's loopback and namespaces made here are involved. RC_BIN overrides the
# binary (default target/<host tuple>/release/rootless_container); BENCH_SECONDS the iperf3 duration.
set -euo pipefail
cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.."

die() { printf 'bench-net: %s\n' "$*" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || die "run as root (the rows run as the test user rctest)"
command -v iperf3 >/dev/null || die "iperf3 not installed (contrib/test-setup.sh installs it)"
USER_NAME=${BENCH_USER:-rctest}
id "$USER_NAME" >/dev/null 2>&1 || die "user $USER_NAME missing (run contrib/test-setup.sh)"
SECS=${BENCH_SECONDS:-5}
# .cargo/config.toml sets build.target, so the build lands under the host tuple.
host=$(rustc -vV 2>/dev/null | sed -n 's/^host: //p')
src=${RC_BIN:-target/${host:-$(uname -m)-unknown-linux-gnu}/release/rootless_container}
[[ -x $src ]] || die "binary $src not found (cargo build --release)"
work=$(mktemp -d /tmp/rc-bench-net.XXXXXX)
chmod 755 "$work"
install -m 0755 "$src" "$work/rootless_container"
RC=$work/rootless_container
SETPRIV=(setpriv --reuid="$USER_NAME" --regid="$USER_NAME" --init-groups --reset-env)
as_user() { "${SETPRIV[@]}" "$@"; }

iperf3 -s -B 127.0.0.1 -p 5201 -D --pidfile "$work/iperf3.pid"
cleanup() {
    kill "$(cat "$work/iperf3.pid" 2>/dev/null)" 2>/dev/null || true
    kill "$(cat "$work/iperf3-bridge.pid" 2>/dev/null)" 2>/dev/null || true
    if [[ -n ${NS_PID:-} ]]; then kill "$NS_PID" 2>/dev/null || true; fi
    if [[ -n ${HELPER_PID:-} ]]; then kill "$HELPER_PID" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
sleep 0.3

gbps() { python3 -c 'import json,sys; d=json.load(sys.stdin); print("%.2f" % (d["end"]["sum_received"]["bits_per_second"]/1e9))'; }

# The helper's own figure: slirp4netns on a bare user+network namespace, plain or with
# the hardening the runtime asks for (SLIRP_FLAGS).
bare_slirp() { # ARGS for iperf3
    # Not through the as_user function: `func &` forks a subshell, and $! would be that
    # subshell, not the process to kill.
    "${SETPRIV[@]}" unshare --user --map-root-user --net sleep 60 &
    NS_PID=$!
    sleep 0.2
    local target
    target=$(pgrep -P "$NS_PID" sleep || echo "$NS_PID")
    # shellcheck disable=SC2086 # SLIRP_FLAGS is a list of flags
    "${SETPRIV[@]}" slirp4netns --configure --mtu=65520 ${SLIRP_FLAGS:-} "$target" tap0 >/dev/null 2>&1 &
    HELPER_PID=$!
    sleep 0.5
    nsenter -t "$target" -U -n --preserve-credentials iperf3 -c 10.0.2.2 -p 5201 -t "$SECS" -J "$@" | gbps
    kill "$HELPER_PID" "$NS_PID" 2>/dev/null || true
    wait "$HELPER_PID" "$NS_PID" 2>/dev/null || true
    HELPER_PID="" NS_PID=""
}

in_container() { # NETWORK ARGS...
    local net=$1
    shift
    # shellcheck disable=SC2086 # RC_OPTS is a list of flags
    as_user "$RC" run --rm ${RC_OPTS:-} --network "$net" iperf3 -c 10.0.2.2 -p 5201 -t "$SECS" -J "$@" | gbps
}

printf '%-46s %10s\n' "path (TCP, $SECS s each)" "Gbit/s"
printf '%-46s %10s\n' "slirp4netns bare, namespace -> host" "$(bare_slirp)"
printf '%-46s %10s\n' "slirp4netns bare, host -> namespace" "$(bare_slirp -R)"
# The runtime starts slirp4netns with --enable-sandbox --enable-seccomp (when supported):
# the like-for-like figure for the rows below.
hardened="--enable-sandbox --enable-seccomp"
printf '%-46s %10s\n' "  same, $hardened, ns -> host" "$(SLIRP_FLAGS=$hardened bare_slirp)"
printf '%-46s %10s\n' "  same, $hardened, host -> ns" "$(SLIRP_FLAGS=$hardened bare_slirp -R)"
c1=$(in_container slirp4netns:allow_host_loopback=true)
c2=$(in_container slirp4netns:allow_host_loopback=true -R)
printf '%-46s %10s\n' "rootless_container slirp4netns, ctr -> host" "$c1"
printf '%-46s %10s\n' "rootless_container slirp4netns, host -> ctr" "$c2"
# What the container's seccomp filter costs on this path.
c3=$(RC_OPTS="--security-opt seccomp=unconfined" in_container slirp4netns:allow_host_loopback=true)
printf '%-46s %10s\n' "  same, seccomp=unconfined, ctr -> host" "$c3"
if command -v pasta >/dev/null; then
    # pasta's own figure: the same addresses and MTU as the runtime gives it, on a
    # namespace pasta makes itself. (Debian 12's passt swings between 0.1 and 13 Gbit/s
    # from one run to the next on the ctr -> host path, bare or not.)
    bare_pasta() {
        "${SETPRIV[@]}" pasta --config-net --quiet --address 10.0.2.100 --netmask 24 \
            --gateway 10.0.2.2 --mtu 65520 -t none -u none -T none -U none -- \
            iperf3 -c 10.0.2.2 -p 5201 -t "$SECS" -J "$@" | gbps
    }
    printf '%-46s %10s\n' "pasta bare, namespace -> host" "$(bare_pasta)"
    printf '%-46s %10s\n' "pasta bare, host -> namespace" "$(bare_pasta -R)"
    printf '%-46s %10s\n' "rootless_container pasta, ctr -> host" "$(in_container pasta:allow_host_loopback=true)"
    printf '%-46s %10s\n' "rootless_container pasta, host -> ctr" "$(in_container pasta:allow_host_loopback=true -R)"
fi
# Root mode's bridge (veth pair on rc0, the kernel's own path): the host's side is
# 10.88.0.1, which exists once a first bridge container has run.
"$RC" run --rm --network bridge true
iperf3 -s -B 10.88.0.1 -p 5202 -D --pidfile "$work/iperf3-bridge.pid"
sleep 0.3
bridge_row() { "$RC" run --rm --network bridge iperf3 -c 10.88.0.1 -p 5202 -t "$SECS" -J "$@" | gbps; }
printf '%-46s %10s\n' "rootless_container bridge (root), ctr -> host" "$(bridge_row)"
printf '%-46s %10s\n' "rootless_container bridge (root), host -> ctr" "$(bridge_row -R)"
