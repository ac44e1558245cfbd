#!/usr/bin/env bash
# Boot the VM tier's Debian 12 guest (contrib/vm/build-image.sh), run ONE command in
# it, power it off, and exit with the command's exit code. Must run as root.
#
#   contrib/vm/run.sh [--as rctest|root] [--delegate-all] [--share HOSTDIR]...
#                     [--timeout SECONDS] -- COMMAND [ARG...]
#
#   --as rctest     (default) run COMMAND as rctest (uid 1001) in a real logind session
#                   (su -l, pam_systemd): XDG_RUNTIME_DIR and DBUS_SESSION_BUS_ADDRESS
#                   set, its `systemd --user` running, working directory its home
#   --as root       run COMMAND as root, also in a logind session (cwd /root)
#   --delegate-all  install contrib/systemd/user@.service.d/delegate.conf in the guest
#                   before systemd starts (user@1001.service then gets cpu cpuset io
#                   memory pids; without it bookworm's default: cpu memory pids)
#   --share DIR     mount host folder DIR read-only (9p) at the same path in the guest,
#                   so host paths work unchanged (repeatable)
#   --timeout S     kill the guest after S seconds (default 900)
#
# COMMAND sees the RC_* variables of run.sh's environment, plus RC_VM_GUEST=1 and,
# with --delegate-all, RC_VM_DELEGATE_ALL=1. Its stdout and stderr are streamed
# here. Exit status: COMMAND's; 124 when the guest timed out; 125 when it powered off
# without finishing COMMAND (the guest's console log is named then); 2 for bad usage.
# Guests run one at a time (a lock); the disk is a snapshot, so each run starts clean.
#
# Environment: RC_VM_CACHE (default /var/cache/rootless_container-vm), RC_VM_MEMORY
# (MiB, default 2048), RC_VM_KERNEL_ARGS (added to the guest's kernel command line).
set -euo pipefail
# Files the guest reads as its test user (commands, /etc files) must not be 0600.
umask 022

CACHE=${RC_VM_CACHE:-/var/cache/rootless_container-vm}
MEMORY=${RC_VM_MEMORY:-2048}
KEEP_LOGS=20

die() { printf 'vm/run: %s\n' "$*" >&2; exit 125; }
usage() {
    sed -n '5,6p' "${BASH_SOURCE[0]}" | sed 's/^# *//; s/^/usage: /' >&2
    exit 2
}

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd -- "$here/../.." && pwd)

user=rctest
delegate_all=
timeout_s=900
shares=()
while (($#)); do
    case $1 in
    --as)
        (($# >= 2)) || usage
        user=$2
        shift 2
        ;;
    --as=*) user=${1#--as=}; shift ;;
    --delegate-all) delegate_all=1; shift ;;
    --share)
        (($# >= 2)) || usage
        shares+=("$2")
        shift 2
        ;;
    --share=*) shares+=("${1#--share=}"); shift ;;
    --timeout)
        (($# >= 2)) || usage
        timeout_s=$2
        shift 2
        ;;
    --timeout=*) timeout_s=${1#--timeout=}; shift ;;
    --) shift; break ;;
    -h | --help) usage ;;
    *) printf 'vm/run: unknown option %s\n' "$1" >&2; usage ;;
    esac
done
(($#)) || usage
[[ $user == rctest || $user == root ]] || { echo "vm/run: --as takes rctest or root" >&2; usage; }
[[ $timeout_s =~ ^[1-9][0-9]*$ ]] || { echo "vm/run: --timeout takes seconds" >&2; usage; }
[[ $(id -u) -eq 0 ]] || die "must run as root (try: sudo $0 ...)"
command -v qemu-system-x86_64 >/dev/null 2>&1 ||
    die "qemu-system-x86_64 not found: run contrib/test-setup.sh (it installs qemu-system-x86)"

# Each share: a directory, mounted at the same path inside.
share_paths=()
for s in "${shares[@]}"; do
    p=$(realpath -e -- "$s" 2>/dev/null) || die "--share $s: no such directory"
    [[ -d $p ]] || die "--share $s: not a directory"
    [[ $p != *$'\n'* && $p != *' '* ]] || die "--share $s: paths with spaces or newlines are not supported"
    # Over the guest's own system folders a read-only share would break the guest.
    case $p in
    / | /bin | /boot | /etc | /home | /home/rctest | /lib | /lib64 | /root | /sbin | /tmp | \
        /usr | /var | /var/lib | /var/log | /var/tmp | /dev | /dev/* | /proc | /proc/* | \
        /run | /run/* | /sys | /sys/* | /rc-vm | /rc-vm/* | /etc/* | /usr/* | /boot/*)
        die "--share $p: the guest needs its own $p; share a folder below it"
        ;;
    esac
    [[ " ${share_paths[*]} " == *" $p "* ]] || share_paths+=("$p")
done

# One guest at a time: the machine has few cores, and TCG uses all it gets.
install -d -m 0755 "$CACHE" "$CACHE/logs"
# Root boots what it finds there: only a cache nobody else can write.
[[ $(stat -c '%u' "$CACHE") == 0 && $(( 0$(stat -c '%a' "$CACHE") & 022 )) == 0 ]] ||
    die "$CACHE must be owned by root and not group/other-writable"
exec {lock_fd}>"$CACHE/run.lock"
if ! flock -n "$lock_fd"; then
    echo "vm/run: waiting for the guest of another run.sh to finish" >&2
    flock "$lock_fd"
fi
# Under the lock: a rebuild (which removes older images) cannot happen while
# another run.sh is between finding the image and starting qemu on it.
image=$("$here/build-image.sh") || die "no guest image (contrib/vm/build-image.sh failed)"

ctl=
qemu_pid=
tail_pids=()
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    if [[ -n $qemu_pid ]] && kill -0 "$qemu_pid" 2>/dev/null; then
        kill -TERM "$qemu_pid" 2>/dev/null || true # timeout(1) passes it to qemu
        wait "$qemu_pid" 2>/dev/null || true
    fi
    if ((${#tail_pids[@]})); then
        kill "${tail_pids[@]}" 2>/dev/null || true
        wait "${tail_pids[@]}" 2>/dev/null || true
    fi
    [[ -z $ctl ]] || rm -rf --one-file-system "$ctl"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

# The control share: what the guest runs (guest/rc-vm-run reads it) and where the
# output lands. The guest's users read it through 9p with the host's modes.
ctl=$(mktemp -d "$CACHE/run.XXXXXX")
chmod 0755 "$ctl"
install -d -m 0755 "$ctl/out"
: >"$ctl/out/stdout"
: >"$ctl/out/stderr"
echo "$user" >"$ctl/user"
if [[ -n $delegate_all ]]; then
    install -D -m 0644 "$repo/contrib/systemd/user@.service.d/delegate.conf" \
        "$ctl/root/etc/systemd/system/user@.service.d/delegate.conf"
fi
{
    echo '# written by contrib/vm/run.sh'
    while IFS= read -r name; do
        case $name in RC_VM_GUEST | RC_VM_DELEGATE_ALL) continue ;; esac
        printf 'export %s=%q\n' "$name" "${!name}"
    done < <(compgen -e | grep -E '^RC_[A-Za-z0-9_]+$' || true)
    echo 'export RC_VM_GUEST=1'
    [[ -z $delegate_all ]] || echo 'export RC_VM_DELEGATE_ALL=1'
    printf 'exec'
    printf ' %q' "$@"
    printf '\n'
} >"$ctl/cmd.sh"
virtfs=(-virtfs "local,path=${ctl//,/,,},mount_tag=rcvm,security_model=none")
: >"$ctl/shares"
for i in "${!share_paths[@]}"; do
    p=${share_paths[$i]}
    echo "rcshare$i $p" >>"$ctl/shares"
    virtfs+=(-virtfs "local,path=${p//,/,,},mount_tag=rcshare$i,security_model=none,readonly=on")
done

# Real KVM only with kvm_intel/kvm_amd: /dev/kvm alone may be a PVM host that
# cannot run a stock kernel. Otherwise TCG, multi-threaded.
if [[ -e /sys/module/kvm_intel || -e /sys/module/kvm_amd ]] && [[ -w /dev/kvm ]]; then
    accel=(-accel kvm -cpu host)
else
    accel=(-accel "tcg,thread=multi" -cpu "max,svm=off")
fi
cpus=$(nproc)
((cpus <= 2)) || cpus=2

stamp=$(date +%Y%m%d-%H%M%S)-$$
console_log=$CACHE/logs/$stamp.console.log
qemu_log=$CACHE/logs/$stamp.qemu.log
# Keep the newest logs only (names sort by time).
shopt -s nullglob
old_logs=("$CACHE"/logs/*.console.log)
shopt -u nullglob
for ((i = 0; i < ${#old_logs[@]} - KEEP_LOGS; i++)); do
    rm -f -- "${old_logs[$i]}" "${old_logs[$i]%.console.log}.qemu.log"
done

# tsc=reliable: else the kernel falls back to the (slow, emulated) HPET.
# panic=-1 with -no-reboot: a kernel panic ends qemu at once.
# quiet: the kernel's boot messages cost on the emulated UART; its errors and
# systemd's unit status lines still reach the console log.
append="console=ttyS0 quiet systemd.show_status=1 tsc=reliable panic=-1 rcvm.ctl=rcvm"
# For debugging, e.g. RC_VM_KERNEL_ARGS='systemd.log_level=debug' (or drop quiet: 'loglevel=7').
append+=${RC_VM_KERNEL_ARGS:+ $RC_VM_KERNEL_ARGS}

echo "vm/run: booting $(basename "$image") as $user${delegate_all:+ with --delegate-all} (${accel[1]}, timeout ${timeout_s}s; console: $console_log)" >&2
t_start=$EPOCHREALTIME
# --foreground: qemu stays in this process group, so whoever kills the job kills it too;
# and it does not inherit the run lock.
timeout --foreground --kill-after=10 "$timeout_s" qemu-system-x86_64 {lock_fd}>&- \
    -nodefaults -no-user-config -display none -no-reboot \
    -M q35 "${accel[@]}" -smp "$cpus" -m "$MEMORY" \
    -kernel "$image/vmlinux" -initrd "$image/initrd.img" -append "$append" \
    -drive "file=$image/rootfs.img,if=virtio,format=raw,snapshot=on" \
    "${virtfs[@]}" \
    -serial "file:$console_log" \
    </dev/null >"$qemu_log" 2>&1 &
qemu_pid=$!

# Stream the command's output while it runs (tail ends once qemu is gone).
tail -q -n +1 -s 0.1 --pid="$qemu_pid" -f "$ctl/out/stdout" &
tail_pids+=($!)
tail -q -n +1 -s 0.1 --pid="$qemu_pid" -f "$ctl/out/stderr" >&2 &
tail_pids+=($!)

qemu_status=0
wait "$qemu_pid" || qemu_status=$?
qemu_pid=
t_end=$EPOCHREALTIME
wait "${tail_pids[@]}" || true
tail_pids=()

elapsed=$(awk -v a="$t_start" -v b="$t_end" 'BEGIN { printf "%.1f", b - a }')
if [[ -f $ctl/out/status ]]; then
    status=$(<"$ctl/out/status")
    times=$(awk -F= '$1 == "start" { s = $2 } $1 == "end" { e = $2 }
        END { printf "command started %.1f s after boot, ran %.1f s", s, e - s }' "$ctl/out/times")
    echo "vm/run: exit status $status; boot+command+poweroff ${elapsed} s ($times)" >&2
    [[ $status =~ ^[0-9]+$ ]] || die "bad status file from the guest: $status"
    exit "$status"
fi

if ((qemu_status == 124 || qemu_status == 137)); then
    reason="timed out after ${timeout_s} s"
    code=124
else
    reason="powered off without finishing the command (qemu exit status $qemu_status)"
    code=125
fi
{
    echo "vm/run: the guest $reason, ${elapsed} s after start"
    echo "vm/run: guest console log: $console_log (last lines below)"
    tail -n 30 "$console_log" | sed 's/^/    /'
    if [[ -s $qemu_log ]]; then
        echo "vm/run: qemu's messages ($qemu_log):"
        sed 's/^/    /' "$qemu_log"
    fi
} >&2
exit "$code"
