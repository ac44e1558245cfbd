#!/usr/bin/env bash
# Start-up benchmark (not a test): time `run /bin/true` on the busybox test
# rootfs for rootless_container and its peers, all in one run (hyperfine
# passes over every row, see BENCH_ROUNDS),
# then print medians, ratios against rootless_container, and peak RSS.
#
#   sudo contrib/bench.sh        # rootless rows as rctest/rcnosub, plus root rows
#   contrib/bench.sh             # everything as the calling user
#
# Environment:
#   RC_BIN=path            binary to bench (default target/<host tuple>/release/rootless_container)
#   BENCH_ONLY_PEERS=1     skip the rootless_container rows (no binary needed)
#   BENCH_ROOT_ROWS=0      as root, skip the rows that run as root
#   BENCH_RUNS=200 BENCH_WARMUP=20 BENCH_ROUNDS=4 (the runs are split over rounds)
#   BENCH_ROOTFS=dir       rootfs to use (default: the one test-setup.sh builds)
#   BENCH_JSON=file        keep hyperfine's JSON there
#   BENCH_ENFORCE=1        exit 1 when a target ratio is missed
#
# No row pays a per-run wrapper. As root, the rows are grouped by the user they
# run as (rctest: floors, peers and the full-map row; rcnosub: the single-id row
# and a floor beside it; root: the root rows), and each group runs in one
# hyperfine process per round that is itself started as that user (`setpriv
# --reuid --regid --init-groups --reset-env`, once). Starting every run through
# setpriv from root instead, and subtracting setpriv's own cost, was measured to
# be unequal: the credential change per run made rootless_container's runs
# 0.1-0.35 ms slower beyond setpriv's cost and the unshare floor's not at all.
#
# crun 1.8.1 refuses to start anything on a hybrid cgroup host ("cgroups in
# hybrid mode not supported, drop all controllers from cgroupv2"; here
# hugetlb sits on the v2 hierarchy). As root we pin a private mount namespace
# once (unshare --mount=FILE) in which /sys/fs/cgroup/unified is unmounted,
# and start every group's hyperfine in it (`nsenter --mount=FILE`): all rows
# alike run there.
#
# crun/runc `run` (not --detach) deletes the container when it exits, so
# each row reuses one container id; the state dirs are checked empty and
# `delete -f` runs at exit in case a run was interrupted.
set -euo pipefail

die() { printf 'bench: %s\n' "$*" >&2; exit 1; }
warn() { printf 'bench: warning: %s\n' "$*" >&2; }
note() { printf 'bench: %s\n' "$*"; }

cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.."
repo=$PWD

RUNS=${BENCH_RUNS:-200}
WARMUP=${BENCH_WARMUP:-20}
ONLY_PEERS=${BENCH_ONLY_PEERS:-0}
TEST_USER=rctest
NOSUB_USER=rcnosub

is_root=0
[[ $(id -u) -eq 0 ]] && is_root=1
ROOT_ROWS=${BENCH_ROOT_ROWS:-$is_root}
((is_root)) || ROOT_ROWS=0

PY=/usr/bin/python3
[[ -x $PY ]] || PY=$(command -v python3) || die "python3 is needed to read hyperfine's JSON"
HYPERFINE=$(command -v hyperfine) || die "hyperfine not found (apt-get install hyperfine, or run contrib/test-setup.sh)"
[[ -x /usr/bin/time ]] || die "/usr/bin/time not found (apt-get install time)"
# Absolute paths: commands run with setpriv --reset-env's minimal PATH.
UNSHARE=$(command -v unshare) || die "unshare not found"
SETPRIV=$(command -v setpriv) || die "setpriv not found"
NSENTER=$(command -v nsenter) || die "nsenter not found"
TRUE_BIN=/bin/true
BWRAP=$(command -v bwrap || true)
CRUN=$(command -v crun || true)
RUNC=$(command -v runc || true)
PODMAN=$(command -v podman || true)

# --- rootfs ----------------------------------------------------------------
if [[ -n ${BENCH_ROOTFS:-} ]]; then
    ROOTFS=$BENCH_ROOTFS
elif [[ -f /var/tmp/rootless_container-test/rootfs/.complete ]]; then
    ROOTFS=/var/tmp/rootless_container-test/rootfs
elif ((is_root)); then
    die "no test rootfs: run contrib/test-setup.sh first"
else
    ROOTFS=${XDG_CACHE_HOME:-$HOME/.cache}/rootless_container-test/rootfs
    "$repo/contrib/make-test-rootfs.sh" "$ROOTFS"
fi
[[ -f $ROOTFS/.complete ]] || die "$ROOTFS is not a complete test rootfs"
ROOTFS=$(cd -- "$ROOTFS" && pwd)
# hyperfine -N splits commands on whitespace.
[[ $ROOTFS != *[[:space:]]* ]] || die "rootfs path must not contain spaces: $ROOTFS"

# --- work dir ----------------------------------------------------------------
work=$(mktemp -d /tmp/rc-bench.XXXXXX)
chmod 0755 "$work" # test users must reach the bundles and the binary
nsfile=""
declare -a cleanup_cmds=()
# shellcheck disable=SC2317 # invoked through trap
cleanup() {
    local c
    for c in "${cleanup_cmds[@]}"; do
        eval "$c" >/dev/null 2>&1 || true
    done
    if [[ -n $nsfile ]]; then
        umount "$nsfile" 2>/dev/null || true
        umount "$work/ns" 2>/dev/null || true
    fi
    rm -rf -- "$work"
}
trap cleanup EXIT

if ((is_root)); then
    id -u "$TEST_USER" >/dev/null 2>&1 || die "user $TEST_USER missing: run contrib/test-setup.sh"
    id -u "$NOSUB_USER" >/dev/null 2>&1 || die "user $NOSUB_USER missing: run contrib/test-setup.sh"
    as_user() { printf '%s --reuid=%s --regid=%s --init-groups --reset-env' "$SETPRIV" "$1" "$1"; }
    W_TEST=$(as_user "$TEST_USER")
    W_NOSUB=$(as_user "$NOSUB_USER")
    RL_USER=$TEST_USER
else
    W_TEST=""
    W_NOSUB=""
    RL_USER=$(id -un)
fi
RL_UID=$(id -u "$RL_USER")
RL_GID=$(id -g "$RL_USER")
# First subordinate range of the rootless user ("START COUNT"), if any.
subid_range() { # FILE ID
    [[ -r $1 ]] || return 0
    awk -F: -v u="$RL_USER" -v i="$2" '($1 == u || $1 == i) && NF == 3 { print $2, $3; exit }' "$1"
}
read -r SUBUID_START SUBUID_COUNT < <(subid_range /etc/subuid "$RL_UID"; echo) || true
read -r SUBGID_START SUBGID_COUNT < <(subid_range /etc/subgid "$RL_GID"; echo) || true
HAVE_SUBIDS=0
[[ -n ${SUBUID_COUNT:-} && -n ${SUBGID_COUNT:-} ]] && HAVE_SUBIDS=1

# Directory writable by the user that will run a runtime (for --root).
state_dir() { # NAME USER
    local d=$work/state-$1
    mkdir -p "$d"
    ((is_root)) && chown "$2:" "$d"
    chmod 0700 "$d"
    printf '%s' "$d"
}

# Run a command string once (as hyperfine would); on failure show why.
probe() { # NAME CMD
    local out
    # shellcheck disable=SC2086 # word splitting is the point (like hyperfine -N)
    if out=$($2 2>&1); then
        return 0
    fi
    warn "$1 does not run here: $2"
    printf '%s\n' "$out" | sed 's/^/bench:   | /' >&2
    return 1
}

# --- rows --------------------------------------------------------------------
# Each row: name, group and command. A group's rows run in one hyperfine process
# per round, started by the group's prefix: nsenter into the crun namespace (if
# pinned) and setpriv to the group's user (none for root, or when not root).
declare -a NAMES=() ROW_GROUPS=() CMDS=()
add_row() { NAMES+=("$1"); ROW_GROUPS+=("$2"); CMDS+=("$3"); }
group_prefix() { # GROUP
    local user=""
    case $1 in
        test | net) user=$W_TEST ;;
        nosub) user=$W_NOSUB ;;
    esac
    printf '%s' "${W_NS:+$W_NS }$user"
}
# Optional row: kept only if it runs once (as its group would run it).
try_row() { probe "$1" "$(group_prefix "$2") $3" || return 1; add_row "$@"; }
# Required row: the bench is meaningless without it.
need_row() { probe "$1" "$(group_prefix "$2") $3" || die "required row '$1' failed"; add_row "$@"; }

# OCI bundles: config.json from the runtime's own `spec`, then patched.
make_bundle() { # DIR RUNTIME [--rootless] MAPPING(none|single|full)
    local dir=$1 rt=$2 rootless=$3 mapping=$4
    mkdir -p "$dir"
    (cd "$dir" && "$rt" spec ${rootless:+"$rootless"})
    "$PY" - "$dir/config.json" "$ROOTFS" "$mapping" "$RL_UID" "$RL_GID" \
        "${SUBUID_START:-0}" "${SUBUID_COUNT:-0}" "${SUBGID_START:-0}" "${SUBGID_COUNT:-0}" <<'EOF'
import json, sys
path, rootfs, mapping = sys.argv[1:4]
uid, gid, us, uc, gs, gc = map(int, sys.argv[4:10])
with open(path) as f:
    c = json.load(f)
c["root"] = {"path": rootfs, "readonly": True}
c["process"]["args"] = ["/bin/true"]
c["process"]["terminal"] = False
lx = c.setdefault("linux", {})
if mapping == "none":
    lx.pop("uidMappings", None)
    lx.pop("gidMappings", None)
else:
    # Same layout as podman: container root = the user, 1.. = subids.
    um = [{"containerID": 0, "hostID": uid, "size": 1}]
    gm = [{"containerID": 0, "hostID": gid, "size": 1}]
    if mapping == "full":
        um.append({"containerID": 1, "hostID": us, "size": uc})
        gm.append({"containerID": 1, "hostID": gs, "size": gc})
    lx["uidMappings"], lx["gidMappings"] = um, gm
with open(path, "w") as f:
    json.dump(c, f, indent=1)
EOF
    chmod -R a+rX "$dir"
}

# Pinned mount namespace without the cgroup2 mount, for crun (root only).
W_NS=""
make_crun_ns() {
    mkdir -p "$work/ns"
    # The ns file must live on a private mount for unshare to bind it.
    mount --bind "$work/ns" "$work/ns"
    nsfile=$work/ns/mnt
    mount --make-private "$work/ns"
    touch "$nsfile"
    "$UNSHARE" --mount="$nsfile" --propagation private umount /sys/fs/cgroup/unified
    W_NS="$NSENTER --mount=$nsfile"
}
# Does crun work as is? If not, and this is the hybrid-cgroup refusal we
# can route around as root, set up the namespace.
if [[ -n $CRUN ]] && ((is_root)) && mountpoint -q /sys/fs/cgroup/unified; then
    make_bundle "$work/bundle-crunprobe" "$CRUN" "" none
    if ! "$CRUN" --root "$work/state-crunprobe" run -b "$work/bundle-crunprobe" crunprobe >/dev/null 2>&1; then
        note "crun cannot start containers on this hybrid cgroup host: all rows run in a mount namespace without /sys/fs/cgroup/unified (nsenter)"
        make_crun_ns
    fi
    rm -rf "$work/bundle-crunprobe" "$work/state-crunprobe"
fi

# Groups: as root the rootless rows run as their users, else as the caller.
if ((is_root)); then TG=test; else TG=self; fi
add_row "baseline: /bin/true" "$TG" "$TRUE_BIN"

# Kernel floors.
UNS_FLAGS="--pid --fork --mount --uts --ipc --net"
need_row "unshare -r (floor, 1 id)" "$TG" "$UNSHARE --user --map-root-user $UNS_FLAGS $TRUE_BIN"
# util-linux 2.38 has --map-users=auto (first /etc/subuid range of the
# caller, via newuidmap/newgidmap); older ones only OUTER,INNER,COUNT.
if ((HAVE_SUBIDS)); then
    if "$UNSHARE" --help 2>&1 | grep -q -- '--map-auto'; then
        MAP_FULL="--map-users=auto --map-groups=auto"
    else
        MAP_FULL="--map-users=$SUBUID_START,0,$SUBUID_COUNT --map-groups=$SUBGID_START,0,$SUBGID_COUNT"
    fi
    try_row "unshare subuid (floor, full map)" "$TG" "$UNSHARE --user $MAP_FULL $UNS_FLAGS $TRUE_BIN" || true
else
    warn "no /etc/subuid+/etc/subgid range for $RL_USER: full-map rows skipped"
fi

if [[ -n $BWRAP ]]; then
    try_row "bwrap --unshare-all" "$TG" "$BWRAP --unshare-all --bind $ROOTFS / --proc /proc --dev /dev /bin/true" || true
else
    warn "bwrap not installed"
fi

oci_row() { # RUNTIME NAME GROUP STATE_OWNER ID BUNDLE_ARGS...
    local rt=$1 name=$2 group=$3 owner=$4 id=$5
    shift 5
    local bundle=$work/bundle-$id st
    make_bundle "$bundle" "$rt" "$@"
    st=$(state_dir "$id" "$owner")
    cleanup_cmds+=("$rt --root $st delete -f $id")
    try_row "$name" "$group" "$rt --root $st run -b $bundle $id" || true
}

if [[ -n $CRUN ]]; then
    # `crun spec --rootless` as is: crun maps the caller to root itself.
    oci_row "$CRUN" "crun rootless (1 id)" "$TG" "$RL_USER" crun1 --rootless none
    if ((HAVE_SUBIDS)); then
        oci_row "$CRUN" "crun rootless (full map)" "$TG" "$RL_USER" crunfull --rootless full
    fi
else
    warn "crun not installed"
fi
if [[ -n $RUNC ]]; then
    oci_row "$RUNC" "runc rootless (1 id)" "$TG" "$RL_USER" runc1 --rootless single
    if ((HAVE_SUBIDS)); then
        oci_row "$RUNC" "runc rootless (full map)" "$TG" "$RL_USER" runcfull --rootless full
    fi
else
    warn "runc not installed"
fi
if [[ -n $PODMAN ]]; then
    try_row "podman run --rootfs" "$TG" "$PODMAN run --rm --network=none --cgroups=disabled --rootfs $ROOTFS /bin/true" || true
fi

# rootless_container rows.
RC_ROW=""
RC_NOSUB_ROW=""
if [[ $ONLY_PEERS != 1 ]]; then
    # .cargo/config.toml sets build.target, so the build lands under the host tuple.
    host=$(rustc -vV 2>/dev/null | sed -n 's/^host: //p')
    src=${RC_BIN:-$repo/target/${host:-$(uname -m)-unknown-linux-gnu}/release/rootless_container}
    [[ -f $src && -x $src ]] ||
        die "rootless_container binary not found at $src (cargo build --release, or set RC_BIN)"
    # Root-owned 0755 copy: the test users cannot read root's target/.
    mkdir -p "$work/bin"
    install -m 0755 "$src" "$work/bin/rootless_container"
    RC="$work/bin/rootless_container"
    RC_ROW="rootless_container (full map)"
    ((HAVE_SUBIDS)) || RC_ROW="rootless_container (1 id)"
    # --network none: the floors (unshare --net, bwrap, crun/runc specs) have no network
    # either. The network-ready row (last) adds slirp4netns.
    need_row "$RC_ROW" "$TG" "$RC run --rm --network none --rootfs $ROOTFS /bin/true"
    if ((is_root)); then
        # The single-id comparison within one hyperfine run as that user.
        need_row "unshare -r (floor, 1 id) [$NOSUB_USER]" nosub "$UNSHARE --user --map-root-user $UNS_FLAGS $TRUE_BIN"
        RC_NOSUB_ROW="rootless_container $NOSUB_USER (1 id)"
        need_row "$RC_NOSUB_ROW" nosub "$RC run --rm --network none --rootfs $ROOTFS /bin/true"
    fi
fi

# Root rows.
if ((ROOT_ROWS)); then
    add_row "[root] unshare (floor)" root "$UNSHARE $UNS_FLAGS $TRUE_BIN"
    if [[ -n $CRUN ]]; then
        oci_row "$CRUN" "[root] crun" root root crunroot "" none
    fi
    if [[ -n $RUNC ]]; then
        oci_row "$RUNC" "[root] runc" root root runcroot "" none
    fi
    if [[ -n $RC_ROW ]]; then
        try_row "[root] rootless_container" root "$RC run --rm --network none --rootfs $ROOTFS /bin/true" || true
    fi
fi

# The network-ready row last: each run leaves a network namespace with a tap device to
# be torn down by kernel workers after it has exited, work that would spill into the
# runs of whatever row came next.
if [[ -n $RC_ROW && -n $(command -v slirp4netns) ]]; then
    try_row "rootless_container + slirp4netns" "$([[ $TG == test ]] && echo net || echo self)" \
        "$RC run --rm --network slirp4netns --rootfs $ROOTFS /bin/true" || true
fi

# --- hyperfine ---------------------------------------------------------------
json=${BENCH_JSON:-$work/hyperfine.json}
# hyperfine runs each row's runs back to back, one row after another; this machine's
# own speed drifts by 10-20% over a minute, which then lands on whole rows. So the runs
# are split into BENCH_ROUNDS hyperfine passes over all rows, and each row's median is
# taken over the times of all passes: drift is spread over every row alike.
ROUNDS=${BENCH_ROUNDS:-4}
per_round=$(((RUNS + ROUNDS - 1) / ROUNDS))
note "rootfs $ROOTFS, ${#NAMES[@]} commands, $ROUNDS rounds of $per_round runs (+ $WARMUP warmup in the first)"
# The groups in order of first appearance (the network-ready one last, see above).
declare -a ORDER=()
for g in "${ROW_GROUPS[@]}"; do
    [[ " ${ORDER[*]} " == *" $g "* ]] || ORDER+=("$g")
done
# The user groups' hyperfine writes its JSON here.
mkdir -m 1777 "$work/out"
for ((round = 1; round <= ROUNDS; round++)); do
    for g in "${ORDER[@]}"; do
        # -i: one flaky run of a peer (runc failed once in 3000 here) must not sink the
        # whole comparison; failed runs are counted and reported below instead.
        out=$work/out/round-$round-$g.json
        args=(-N -i --runs "$per_round" --export-json "$out")
        ((round > 1)) || args+=(--warmup "$WARMUP")
        for i in "${!NAMES[@]}"; do
            [[ ${ROW_GROUPS[$i]} == "$g" ]] && args+=(-n "${NAMES[$i]}" "${CMDS[$i]}")
        done
        # shellcheck disable=SC2046 # the prefix is words
        $(group_prefix "$g") "$HYPERFINE" "${args[@]}" >"$work/round-$round-$g.txt"
    done
done
for g in "${ORDER[@]}"; do cat "$work/round-$ROUNDS-$g.txt"; done
# One JSON in hyperfine's shape: every row's times of all rounds, and their median.
"$PY" - "$json" "$work"/out/round-*.json <<'EOF'
import json, statistics, sys
out, paths = sys.argv[1], sys.argv[2:]
rows = {}
for p in paths:
    for r in json.load(open(p))["results"]:
        row = rows.setdefault(r["command"], {"command": r["command"], "times": [], "exit_codes": []})
        row["times"] += r["times"]
        row["exit_codes"] += r.get("exit_codes", [])
for row in rows.values():
    row["median"] = statistics.median(row["times"])
json.dump({"results": list(rows.values())}, open(out, "w"))
EOF

# Leftover container state would mean a run did not clean up after itself.
for d in "$work"/state-*; do
    [[ -d $d ]] || continue
    if [[ -n $(find "$d" -mindepth 1 -maxdepth 1 -print -quit) ]]; then
        warn "container state left in $d: $(find "$d" -mindepth 1 -maxdepth 1 -printf '%f ')"
    fi
done

# --- peak RSS: max of 5 single runs under GNU time ---------------------------
# GNU time goes after the group's prefix, so it reports the command (and its
# reaped children), not setpriv/nsenter. Its output dir is world-writable
# because it runs as the row's user.
rss_file=$work/rss.tsv
: >"$rss_file"
mkdir -m 1777 "$work/rss"
for i in "${!NAMES[@]}"; do
    max=0
    for _ in 1 2 3 4 5; do
        rm -f "$work/rss/one"
        # shellcheck disable=SC2086 # split like hyperfine -N does
        $(group_prefix "${ROW_GROUPS[$i]}") /usr/bin/time -f %M -o "$work/rss/one" ${CMDS[$i]} >/dev/null 2>&1 || true
        kb=$(tail -n1 "$work/rss/one" 2>/dev/null || echo 0)
        [[ $kb =~ ^[0-9]+$ ]] || kb=0
        if ((kb > max)); then max=$kb; fi
    done
    printf '%s\t%s\t%s\n' "${NAMES[$i]}" "${ROW_GROUPS[$i]}" "$max" >>"$rss_file"
done

# --- table ---------------------------------------------------------------------
status=0
"$PY" - "$json" "$rss_file" "$RC_ROW" "$RC_NOSUB_ROW" "${BENCH_ENFORCE:-0}" <<'EOF' || status=$?
import json, sys
jpath, rsspath, rc_row, nosub_row, enforce = sys.argv[1:6]
results = json.load(open(jpath))["results"]
med = {r["command"]: r["median"] * 1000 for r in results}
for r in results:
    failed = sum(1 for c in r.get("exit_codes", []) if c != 0)
    if failed:
        print(f"warning: {r['command']}: {failed} of {len(r['exit_codes'])} runs failed")
rows = [l.rstrip("\n").split("\t") for l in open(rsspath) if l.strip()]
group = {name: g for name, g, _ in rows}
ref = rc_row if rc_row in med else "unshare -r (floor, 1 id)"
w = max(len(n) for n, _, _ in rows)
print()
print(f"{'command':<{w}}  {'group':>6}  {'median ms':>9}  {'x ' + ('rc' if ref == rc_row else 'floor'):>8}  {'peak RSS kB':>11}")
for name, g, kb in rows:
    ratio = "" if name.startswith("baseline") else f"{med[name] / med[ref]:.2f}"
    print(f"{name:<{w}}  {g:>6}  {med[name]:9.2f}  {ratio:>8}  {int(kb):11d}")
print("(group: the hyperfine process the row ran in, started once as that group's user: "
      "test = the user with subordinate ids, nosub = the one without, root; no per-run wrapper)")

targets = []
def target(label, num, den, limit):
    if num in med and den in med:
        r = med[num] / med[den]
        ok = r <= limit
        targets.append(ok)
        print(f"target {label}: {r:.2f}x (<= {limit}x) {'ok' if ok else 'MISSED'}")
    else:
        print(f"target {label}: n/a (row missing)")
print()
if rc_row in med:
    full_floor = "unshare subuid (floor, full map)"
    target("full map vs unshare --map-users floor", rc_row, full_floor, 1.2)
    target("full map vs crun rootless", rc_row, "crun rootless (1 id)", 0.6)
    if "crun rootless (full map)" in med:
        print(f"  (info: vs crun full map {med[rc_row] / med['crun rootless (full map)']:.2f}x)")
    if nosub_row:
        floor1 = next(n for n in med if n.startswith("unshare -r (floor, 1 id) ["))
        target("single id vs unshare -r floor", nosub_row, floor1, 1.5)
    if "rootless_container + slirp4netns" in med:
        m = med["rootless_container + slirp4netns"]
        print(f"network-ready run /bin/true (slirp4netns): {m:.2f} ms (target <= 15 ms) {'ok' if m <= 15 else 'MISSED'}")
else:
    print("rootless_container rows skipped: ratios are against the unshare -r floor")
if enforce == "1" and not all(targets):
    sys.exit(3)
EOF
exit "$status"
