//! Resource limits in root mode through cgroupfs. On these hybrid hosts that means the v1
//! hierarchies (memory, cpu, pids); on a pure cgroup v2 host the same tests exercise v2.
//! Rootless limits need systemd delegation and are tested for their clear refusal here.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn setup() -> Option<PathBuf> {
    require_root()?;
    rootfs()
}

/// Directories of the container's cgroups, found by the record id under any hierarchy.
fn cgroup_dirs_of(id: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, id: &str, depth: u32, out: &mut Vec<PathBuf>) {
        if depth > 8 {
            return;
        }
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            // cgroupfs names the directory by id; systemd's scope is rootless_container-<id>.scope.
            if e.file_name() == id {
                out.push(p);
            } else if e.file_name().to_string_lossy() == format!("rootless_container-{id}.scope") {
                // systemd: the limits are on the scope's `limits` child.
                out.push(p.join("limits"));
            } else {
                walk(&p, id, depth + 1, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(Path::new("/sys/fs/cgroup"), id, 0, &mut out);
    out
}

/// Start a root container that prints "up" and keeps running; return it and its id.
fn start_named(r: &Path, extra: &[&str], script: &str) -> (Running, String, String) {
    let name = unique("cg");
    let mut c = as_root();
    c.args(["run", "--rm", "--name", &name])
        .args(extra)
        .arg("--rootfs")
        .arg(r)
        .args(["sh", "-c", script]);
    let mut run = Running::spawn(&mut c);
    run.expect_line("up", Duration::from_secs(20));
    let link = std::fs::read_link(Path::new("/run/rootless_container/names").join(&name))
        .expect("names link");
    (run, name, link.to_string_lossy().to_string())
}

/// No cgroup of container `id` is left (systemd collects an emptied scope a moment later).
fn assert_cgroups_gone(id: &str) {
    assert!(
        wait_until(Duration::from_secs(10), || cgroup_dirs_of(id).is_empty()),
        "stale cgroups left: {:?}",
        cgroup_dirs_of(id)
    );
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
        .trim()
        .to_string()
}

#[test]
fn memory_limit_ends_in_137_with_an_oom_message() {
    let Some(r) = setup() else { return };
    // A 100 MB shell variable under a 32 MiB limit (no swap on these machines).
    let o = output(
        as_root()
            .args(["run", "--rm", "--memory", "32m", "--rootfs"])
            .arg(&r)
            .args([
                "sh",
                "-c",
                "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo survived",
            ]),
    );
    assert_eq!(o.code(), 137, "stdout {} stderr {}", o.stdout, o.stderr);
    assert!(!o.stdout.contains("survived"));
    assert!(
        o.stderr.contains("OOM") && o.stderr.contains("32 MiB"),
        "{}",
        o.stderr
    );
}

#[test]
fn memory_limit_is_written_and_removed_afterwards() {
    let Some(r) = setup() else { return };
    let (mut run, _name, id) = start_named(&r, &["--memory", "48m"], "echo up; sleep 30");
    let dirs = cgroup_dirs_of(&id);
    let mem = dirs
        .iter()
        .find(|d| d.join("memory.limit_in_bytes").exists() || d.join("memory.max").exists());
    let mem = mem.unwrap_or_else(|| panic!("no memory cgroup for {id} in {dirs:?}"));
    // The VM tier's guest runs systemd as PID 1: root mode must have asked it for a scope.
    if std::env::var("RC_VM_GUEST").as_deref() == Ok("1") {
        assert!(
            mem.ends_with(format!(
                "machine.slice/rootless_container-{id}.scope/limits"
            )),
            "not a systemd scope: {}",
            mem.display()
        );
        // The runtime waits beside the container, in the scope.
        assert!(!read(&mem.parent().unwrap().join("runtime/cgroup.procs")).is_empty());
    }
    let limit = if mem.join("memory.max").exists() {
        read(&mem.join("memory.max"))
    } else {
        read(&mem.join("memory.limit_in_bytes"))
    };
    assert_eq!(limit, (48u64 << 20).to_string());
    // cgroupfs: the process is in the cgroup itself; systemd: in its `container` leaf.
    let procs = read(&mem.join("cgroup.procs"))
        + &std::fs::read_to_string(mem.join("container/cgroup.procs")).unwrap_or_default();
    assert!(
        !procs.is_empty(),
        "the container's processes are in its cgroup"
    );
    run.signal(libc::SIGKILL);
    let _ = run.wait(Duration::from_secs(10));
    // The runtime was killed: its container dies with it; the next limited run collects
    // the cgroup.
    assert!(
        // A concurrent limited run may already have collected the stale cgroup: gone is empty.
        wait_until(Duration::from_secs(5), || [
            "cgroup.procs",
            "container/cgroup.procs"
        ]
        .iter()
        .all(|f| std::fs::read_to_string(mem.join(f))
            .map(|s| s.trim().is_empty())
            .unwrap_or(true))),
        "processes survived in {}",
        mem.display()
    );
    let o = output(
        as_root()
            .args(["run", "--rm", "--memory", "48m", "--rootfs"])
            .arg(&r)
            .arg("true"),
    );
    assert_eq!(o.code(), 0, "{}", o.stderr);
    assert_cgroups_gone(&id);
}

#[test]
fn pids_limit_contains_a_fork_bomb() {
    let Some(r) = setup() else { return };
    let (mut run, _name, id) = start_named(
        &r,
        &["--pids-limit", "20"],
        "(for i in $(seq 100); do sleep 20 & done) 2>/dev/null; echo up; exec sleep 20",
    );
    let dirs = cgroup_dirs_of(&id);
    let pids = dirs
        .iter()
        .find(|d| d.join("pids.max").exists())
        .expect("a pids cgroup");
    assert_eq!(read(&pids.join("pids.max")), "20");
    let current: u32 = read(&pids.join("pids.current")).parse().unwrap();
    assert!((15..=20).contains(&current), "pids.current {current}");
    // systemd's scope holds the limit and the container is in its `container` leaf: kernels
    // before 6.12 count the refusal in the leaf.
    let events = read(&pids.join("pids.events"))
        + "\n"
        + &std::fs::read_to_string(pids.join("container/pids.events")).unwrap_or_default();
    assert!(
        events
            .lines()
            .any(|l| l.starts_with("max ") && l != "max 0"),
        "no fork was refused: {events}"
    );
    run.signal(libc::SIGTERM);
    run.signal(libc::SIGKILL);
    let _ = run.wait(Duration::from_secs(10));
}

#[test]
fn cpus_sets_the_quota_and_throttles() {
    let Some(r) = setup() else { return };
    let (mut run, _name, id) = start_named(&r, &["--cpus", "0.5"], "echo up; while :; do :; done");
    let dirs = cgroup_dirs_of(&id);
    let cpu = dirs
        .iter()
        .find(|d| d.join("cpu.cfs_quota_us").exists() || d.join("cpu.max").exists())
        .expect("a cpu cgroup");
    if cpu.join("cpu.max").exists() {
        assert_eq!(read(&cpu.join("cpu.max")), "50000 100000");
    } else {
        assert_eq!(read(&cpu.join("cpu.cfs_quota_us")), "50000");
        assert_eq!(read(&cpu.join("cpu.cfs_period_us")), "100000");
    }
    let throttled = |d: &Path| -> u64 {
        read(&d.join("cpu.stat"))
            .lines()
            .find_map(|l| l.strip_prefix("nr_throttled ").and_then(|v| v.parse().ok()))
            .unwrap_or(0)
    };
    assert!(
        wait_until(Duration::from_secs(5), || throttled(cpu) >= 3),
        "cpu.stat: {}",
        read(&cpu.join("cpu.stat"))
    );
    run.signal(libc::SIGKILL);
    let _ = run.wait(Duration::from_secs(10));
}

#[test]
fn cgroupfs_under_a_cgroup_parent() {
    let Some(r) = setup() else { return };
    // A parent of the test's own at the top: on cgroup v2 (the VM tier) controllers can be
    // enabled there, unlike in the runtime's own cgroup where the test itself lives.
    let parent = unique("rc-parent");
    let (mut run, _name, id) = start_named(
        &r,
        &[
            "--cgroup-manager",
            "cgroupfs",
            "--cgroup-parent",
            &format!("/{parent}"),
            "--memory",
            "40m",
            "--pids-limit",
            "30",
        ],
        "echo up; exec sleep 30",
    );
    let dirs = cgroup_dirs_of(&id);
    assert!(!dirs.is_empty(), "no cgroup for {id}");
    for d in &dirs {
        assert!(
            d.to_string_lossy()
                .contains(&format!("/{parent}/rootless_container/{id}")),
            "{} is not under the parent",
            d.display()
        );
    }
    let mem = dirs
        .iter()
        .find(|d| d.join("memory.max").exists() || d.join("memory.limit_in_bytes").exists())
        .expect("a memory cgroup");
    let limit = std::fs::read_to_string(mem.join("memory.max"))
        .or_else(|_| std::fs::read_to_string(mem.join("memory.limit_in_bytes")))
        .unwrap();
    assert_eq!(limit.trim(), (40u64 << 20).to_string());
    let pids = dirs.iter().find(|d| d.join("pids.max").exists()).unwrap();
    assert_eq!(read(&pids.join("pids.max")), "30");
    assert!(!read(&pids.join("cgroup.procs")).is_empty());
    run.signal(libc::SIGTERM);
    run.signal(libc::SIGKILL);
    let _ = run.wait(Duration::from_secs(10));
    // The parent is the test's: remove it bottom-up once the runtime's own part is gone.
    let o = output(
        as_root()
            .args([
                "run",
                "--rm",
                "--cgroup-manager",
                "cgroupfs",
                "--cgroup-parent",
                &format!("/{parent}"),
                "--memory",
                "40m",
                "--rootfs",
            ])
            .arg(&r)
            .arg("true"),
    );
    assert_eq!(o.code(), 0, "{}", o.stderr);
    assert_cgroups_gone(&id);
    for d in dirs {
        let base = d.parent().unwrap().parent().unwrap().to_path_buf();
        let _ = std::fs::remove_dir(base.join("rootless_container"));
        let _ = std::fs::remove_dir(&base);
    }
}

#[test]
fn normal_exit_removes_the_cgroups() {
    let Some(r) = setup() else { return };
    let o = output(
        as_root()
            .args([
                "run",
                "--rm",
                "--memory",
                "64m",
                "--pids-limit",
                "50",
                "--cpus",
                "1",
                "--rootfs",
            ])
            .arg(&r)
            .args(["sh", "-c", "hostname; grep -c '::/$' /proc/self/cgroup"]),
    );
    assert_eq!(o.code(), 0, "{}", o.stderr);
    let mut lines = o.stdout.lines();
    // The default hostname is the first 12 hex digits of the id.
    let prefix = lines.next().expect("hostname").trim().to_string();
    assert_eq!(prefix.len(), 12);
    // The container's cgroup namespace is rooted at its own cgroup.
    assert_eq!(lines.next().map(str::trim), Some("1"));
    let mut left = Vec::new();
    fn walk(dir: &Path, prefix: &str, depth: u32, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            if depth < 8 && e.file_type().is_ok_and(|t| t.is_dir()) {
                // cgroupfs: <id>; systemd: rootless_container-<id>.scope.
                if e.file_name().to_string_lossy().contains(prefix) {
                    out.push(e.path());
                }
                walk(&e.path(), prefix, depth + 1, out);
            }
        }
    }
    let gone = wait_until(Duration::from_secs(10), || {
        left.clear();
        walk(Path::new("/sys/fs/cgroup"), &prefix, 0, &mut left);
        left.is_empty()
    });
    assert!(gone, "cgroups left after exit: {left:?}");
}

#[test]
fn bad_limits_and_rootless_limits_are_refused() {
    let Some(r) = rootfs() else { return };
    for bad in [
        vec!["--memory", "lots"],
        vec!["--memory", "1k"],
        vec!["--cpus", "0"],
        vec!["--cpus", "x"],
        vec!["--pids-limit", "0"],
        vec!["--memory-swap", "1g"],
        vec!["--cpuset-cpus", "a-b"],
        vec!["--cgroup-manager", "bogus"],
        vec!["--cgroupns", "bogus"],
    ] {
        let mut c = if is_root() {
            as_root()
        } else {
            Command::new(bin())
        };
        let o = output(
            c.args(["run", "--rm"])
                .args(&bad)
                .arg("--rootfs")
                .arg(&r)
                .arg("true"),
        );
        assert_eq!(o.code(), 125, "{bad:?}: {}", o.stderr);
        assert_eq!(o.stderr.lines().count(), 1, "{bad:?}: {}", o.stderr);
    }
    let Some(u) = test_user() else { return };
    let o = output(
        rootless(&u)
            .args(["run", "--rm", "--memory", "64m", "--rootfs"])
            .arg(&r)
            .arg("true"),
    );
    assert_eq!(o.code(), 125, "{}", o.stderr);
    assert!(
        o.stderr.contains("resource limits") && o.stderr.lines().count() == 1,
        "{}",
        o.stderr
    );
}

use std::process::Command;
