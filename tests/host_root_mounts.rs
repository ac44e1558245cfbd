//! The host's own root as the container's, with mounts at the top level: a directory that
//! is a mount point gets an overlay like any other, and one with mounts below it goes to
//! fuse-overlayfs alone (the kernel refuses such a lower layer in a user namespace).
//!
//! The fixture mounts two tmpfs at the top of the host's tree, so this file is its own test
//! binary: cargo runs binaries one at a time, and no other test's host-root container sees
//! them.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Top-level fixture directories, unmounted and removed on drop.
struct TopLevel {
    mount_point: PathBuf,
    with_submount: PathBuf,
}

fn sh(cmd: &str) {
    let o = output(Command::new("/bin/sh").args(["-c", cmd]));
    assert_eq!(o.code(), 0, "{cmd}: {}", o.stderr);
}

impl TopLevel {
    fn new() -> TopLevel {
        remove_stale();
        let tag = unique("rc-top");
        // The guard exists before the first mount, so a failure half-way is cleaned up.
        let t = TopLevel {
            mount_point: PathBuf::from(format!("/{tag}-mnt")),
            with_submount: PathBuf::from(format!("/{tag}-sub")),
        };
        let (m, s) = (t.mount_point.display(), t.with_submount.display());
        sh(&format!(
            "mkdir {m} {s} && mount -t tmpfs -o mode=0755 rctest {m} && echo host > {m}/file \
             && mkdir {s}/inner && echo host > {s}/file \
             && mount -t tmpfs -o mode=0755 rctest {s}/inner && echo host > {s}/inner/file"
        ));
        t
    }
}

impl Drop for TopLevel {
    fn drop(&mut self) {
        let (m, s) = (self.mount_point.display(), self.with_submount.display());
        let _ = output(Command::new("/bin/sh").args([
            "-c",
            &format!("umount {s}/inner; umount {m}; rm -rf {m} {s}"),
        ]));
    }
}

/// Fixtures of earlier test processes that died before their guard ran.
fn remove_stale() {
    let Ok(entries) = std::fs::read_dir("/") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(pid) = name
            .strip_prefix("rc-top-")
            .and_then(|r| r.split('-').next())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let p = e.path();
            let _ = output(Command::new("/bin/sh").args([
                "-c",
                &format!(
                    "umount {0}/inner 2>/dev/null; umount {0} 2>/dev/null; rm -rf {0}",
                    p.display()
                ),
            ]));
        }
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap().trim().to_string()
}

#[test]
fn top_level_mounts_are_writable_layers() {
    let Some(()) = require_root() else { return };
    let Some(u) = test_user() else { return };
    if which("fuse-overlayfs").is_none() {
        skip("fuse-overlayfs is not installed (contrib/test-setup.sh installs it)");
        return;
    }
    let fuse_before: Vec<i32> = processes_of(u.uid, |p| p.comm == "fuse-overlayfs")
        .iter()
        .map(|p| p.pid)
        .collect();
    let t = TopLevel::new();
    let (m, s) = (t.mount_point.display(), t.with_submount.display());
    let script = format!(
        "awk '$5 == \"{m}\" || $5 == \"{s}\" || $5 == \"{s}/inner\" \
             {{ for (i = 7; i <= NF; i++) if ($i == \"-\") {{ print $5, $(i + 1); break }} }}' /proc/self/mountinfo; \
         echo container > {m}/new && echo container > {s}/new && cat {m}/new {s}/new {s}/inner/file"
    );
    let o = output(
        rootless(&u)
            .args(["run", "--rm", "--network", "none", "/bin/sh", "-c"])
            .arg(&script),
    );
    assert_eq!(o.code(), 0, "{}\n{}", o.stdout, o.stderr);
    assert!(o.stderr.is_empty(), "no warning expected: {}", o.stderr);
    let lines = o.lines();
    assert!(
        lines.contains(&format!("{m} overlay").as_str()),
        "{lines:?}"
    );
    assert!(
        lines.contains(&format!("{s} fuse.fuse-overlayfs").as_str()),
        "{lines:?}"
    );
    // The submount is laid over the fuse layer, read-only.
    assert!(
        lines.contains(&format!("{s}/inner tmpfs").as_str()),
        "{lines:?}"
    );
    assert_eq!(
        &lines[lines.len() - 3..],
        ["container", "container", "host"]
    );
    // Writes stayed in the container.
    assert!(!t.mount_point.join("new").exists());
    assert!(!t.with_submount.join("new").exists());
    assert_eq!(read(&t.mount_point.join("file")), "host");
    // No fuse-overlayfs daemon of this container outlives it.
    assert!(
        wait_until(std::time::Duration::from_secs(10), || processes_of(
            u.uid,
            |p| p.comm == "fuse-overlayfs" && !fuse_before.contains(&p.pid)
        )
        .is_empty()),
        "fuse-overlayfs left running"
    );
}
