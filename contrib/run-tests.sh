#!/usr/bin/env bash
# The project's single test command:
#   sudo contrib/run-tests.sh   full run: prepares the machine (test-setup.sh),
#                               the tests run their rootless cases as rctest
#   contrib/run-tests.sh        as a normal user: no machine changes; the
#                               root-mode, no-subuid and fuse cases may skip
# RC_TEST_STRICT=1 makes the Rust tests fail instead of skipping.
set -euo pipefail

cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.."

SYSTEM_ROOTFS=/var/tmp/rootless_container-test/rootfs

step() { printf '\n==> %s\n' "$*"; }

# sudo resets PATH, hiding a rustup install: look in the usual places.
if ! command -v cargo >/dev/null 2>&1; then
    for d in "${HOME:-/root}/.cargo/bin" /root/.cargo/bin; do
        if [[ -x $d/cargo ]]; then
            PATH=$d:$PATH
            break
        fi
    done
    command -v cargo >/dev/null 2>&1 || {
        echo "run-tests: cargo not found (install Rust, or put it on PATH)" >&2
        exit 1
    }
    export PATH
fi

if [[ $(id -u) -eq 0 ]]; then
    step "contrib/test-setup.sh"
    contrib/test-setup.sh
    export RC_TEST_ROOTFS=$SYSTEM_ROOTFS
    export RC_TEST_USER=rctest
    export RC_TEST_NOSUB_USER=rcnosub
else
    if [[ -f $SYSTEM_ROOTFS/.complete ]]; then
        export RC_TEST_ROOTFS=$SYSTEM_ROOTFS
    else
        RC_TEST_ROOTFS=${XDG_CACHE_HOME:-$HOME/.cache}/rootless_container-test/rootfs
        export RC_TEST_ROOTFS
        step "contrib/make-test-rootfs.sh $RC_TEST_ROOTFS"
        contrib/make-test-rootfs.sh "$RC_TEST_ROOTFS"
    fi
    echo "run-tests: not root: root-mode tests and the no-subuid/fuse cases may be skipped (run with sudo for the full suite)"
fi
if [[ -n ${RC_TEST_STRICT:-} ]]; then
    export RC_TEST_STRICT
fi
echo "run-tests: RC_TEST_ROOTFS=$RC_TEST_ROOTFS RC_TEST_USER=${RC_TEST_USER:-} RC_TEST_NOSUB_USER=${RC_TEST_NOSUB_USER:-} RC_TEST_STRICT=${RC_TEST_STRICT:-}"

step "cargo fmt --all -- --check"
cargo fmt --all -- --check
step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings
step "cargo build --release"
cargo build --release
step "cargo test --release -- --test-threads=2"
cargo test --release -- --test-threads=2
