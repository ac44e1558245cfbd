//! Rootless limits through systemd: a transient scope with Delegate=yes from the user's own
//! manager, asked for over D-Bus. These need a real `systemd --user` session on a cgroup v2
//! machine, which the hosts running CI do not have: they run in the VM tier's guest
//! (contrib/vm), as an unprivileged user in a logind session, with `--ignored`.
//! contrib/run-tests.sh runs them there twice: with bookworm's default delegation (cpu
//! memory pids) and with contrib/systemd's drop-in (RC_VM_DELEGATE_ALL=1).

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const IN_VM: &str = "needs a systemd user session on cgroup v2: runs in the VM tier (contrib/vm)";

/// The current user, when it has a systemd session bus to talk to; else None after a skip.
fn session_user() -> Option<User> {
    if is_root() {
        skip("runs as the unprivileged user of a systemd session, not as root");
        return None;
    }
    let has_bus = std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some_and(|a| !a.is_empty())
        || std::env::var_os("XDG_RUNTIME_DIR").is_some_and(|d| Path::new(&d).join("bus").exists());
    if !has_bus || !Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        skip(IN_VM);
        return None;
    }
    test_user()
}

/// The runtime with the session's environment (bus address, runtime dir) and no other.
fn session(u: &User) -> Command {
    let mut c = Command::new(bin());
    c.env_clear()
        .env("PATH", PATH)
        .env("HOME", &u.home)
        .env("USER", &u.name)
        .current_dir("/");
    for k in ["XDG_RUNTIME_DIR", "DBUS_SESSION_BUS_ADDRESS"] {
        if let Some(v) = std::env::var_os(k) {
            c.env(k, v);
        }
    }
    c
}

/// The user manager's cgroup, where its transient scopes live (in user.slice).
fn manager_dir(u: &User) -> PathBuf {
    PathBuf::from(format!(
        "/sys/fs/cgroup/user.slice/user-{0}.slice/user@{0}.service",
        u.uid
    ))
}

/// Every scope of ours under the user's manager.
fn our_scopes(u: &User) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(manager_dir(u).join("user.slice")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("rootless_container-"))
        })
        .collect()
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
        .trim()
        .to_string()
}

fn counter(file: &Path, key: &str) -> u64 {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Start a named container printing "up" when ready; return it and its scope's directory.
fn start(u: &User, flags: &[&str], script: &str) -> (Running, PathBuf) {
    let name = unique("sd");
    let mut c = session(u);
    c.args(["run", "--rm", "--network", "none", "--name", &name])
        .args(flags)
        .args(["/bin/sh", "-c", script]);
    let mut run = Running::spawn(&mut c);
    run.expect_line("up", Duration::from_secs(60));
    let (_, id) = u.find_named(&name).expect("the container's names link");
    let scope = manager_dir(u).join(format!(
        "user.slice/rootless_container-{}.scope",
        id.display()
    ));
    assert!(scope.is_dir(), "no scope {}", scope.display());
    (run, scope)
}

/// No scope of ours is left under the user's manager (after a moment for systemd).
fn assert_no_scopes(u: &User) {
    if wait_until(Duration::from_secs(20), || our_scopes(u).is_empty()) {
        return;
    }
    let detail: Vec<String> = our_scopes(u)
        .iter()
        .map(|s| {
            let unit = s.file_name().unwrap().to_string_lossy().to_string();
            let status = Command::new("systemctl")
                .args(["--user", "status", "--no-pager", &unit])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            format!(
                "{unit}: procs {:?} leaf {:?} events {:?}\n{status}",
                std::fs::read_to_string(s.join("cgroup.procs")),
                std::fs::read_to_string(s.join("limits/container/cgroup.procs")),
                std::fs::read_to_string(s.join("cgroup.events")),
            )
        })
        .collect();
    panic!("scopes left behind: {}", detail.join("\n"));
}

fn assert_gone(scope: &Path) {
    assert!(
        wait_until(Duration::from_secs(20), || !scope.exists()),
        "scope left behind: {}",
        scope.display()
    );
}

#[test]
#[ignore = "needs a systemd user session on cgroup v2: runs in the VM tier (contrib/vm)"]
fn pids_limit_contains_a_fork_bomb() {
    let Some(u) = session_user() else { return };
    let (mut run, scope) = start(
        &u,
        &["--pids-limit", "20"],
        // In a subshell: a shell whose own fork fails exits (dash), and PID 1 must stay.
        "(f() { f | f & }; f) 2>/dev/null; echo up; exec sleep 15",
    );
    // Limits on the scope's `limits` child (systemd rewrites the scope's own files on
    // daemon-reload), processes in the `container` leaf below it: neither the scope nor
    // `limits` holds a process, so controllers are enabled below both.
    assert_eq!(read(&scope.join("limits/pids.max")), "20");
    assert!(read(&scope.join("cgroup.procs")).is_empty());
    assert!(read(&scope.join("limits/cgroup.procs")).is_empty());
    assert!(read(&scope.join("limits/cgroup.subtree_control"))
        .split_whitespace()
        .any(|c| c == "pids"));
    assert!(!read(&scope.join("limits/container/cgroup.procs")).is_empty());
    assert!(read(&scope.join("cgroup.subtree_control"))
        .split_whitespace()
        .any(|c| c == "pids"));
    // Kernels before 6.12 count a refused fork in the forking task's cgroup (the leaf),
    // later ones where the limit is (the scope).
    let refused = || {
        counter(&scope.join("limits/pids.events"), "max ")
            + counter(&scope.join("limits/container/pids.events"), "max ")
    };
    assert!(
        wait_until(Duration::from_secs(20), || refused() > 0),
        "no fork was refused: {}",
        read(&scope.join("limits/pids.events"))
    );
    let current: u64 = read(&scope.join("limits/pids.current")).parse().unwrap();
    assert!(current <= 20, "pids.current {current}");
    // The host side is unharmed: the same user still starts processes.
    let o = output(Command::new("/bin/true").env_clear());
    assert_eq!(o.code(), 0);
    let st = run.wait(Duration::from_secs(60));
    assert_eq!(st.code(), Some(0), "{}", run.stderr_now());
    assert_gone(&scope);
    assert!(
        wait_until(Duration::from_secs(10), || processes_of(u.uid, |p| p
            .cmdline
            .iter()
            .any(|a| a.contains("f | f")))
        .is_empty()),
        "bomb processes survived the container"
    );
}

#[test]
#[ignore = "needs a systemd user session on cgroup v2: runs in the VM tier (contrib/vm)"]
fn memory_limit_ends_in_137_with_an_oom_message() {
    let Some(u) = session_user() else { return };
    let o = output_timeout(
        session(&u).args([
            "run",
            "--rm",
            "--network",
            "none",
            "--memory",
            "32m",
            "/bin/sh",
            "-c",
            "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo survived",
        ]),
        Duration::from_secs(120),
    );
    assert_eq!(o.code(), 137, "stdout {} stderr {}", o.stdout, o.stderr);
    assert!(!o.stdout.contains("survived"));
    assert!(
        o.stderr.contains("OOM") && o.stderr.contains("32 MiB"),
        "{}",
        o.stderr
    );
    assert_no_scopes(&u);
}

#[test]
#[ignore = "needs a systemd user session on cgroup v2: runs in the VM tier (contrib/vm)"]
fn cpus_write_cpu_max_and_throttle() {
    let Some(u) = session_user() else { return };
    let (mut run, scope) = start(
        &u,
        &["--cpus", "0.5", "--init"],
        "echo up; while :; do :; done",
    );
    assert_eq!(read(&scope.join("limits/cpu.max")), "50000 100000");
    assert!(
        wait_until(Duration::from_secs(20), || counter(
            &scope.join("limits/cpu.stat"),
            "nr_throttled "
        ) >= 3),
        "not throttled: {}",
        read(&scope.join("limits/cpu.stat"))
    );
    // --init forwards SIGTERM to the shell, which dies of it.
    run.signal(libc::SIGTERM);
    let st = run.wait(Duration::from_secs(30));
    assert_eq!(st.code(), Some(143), "{}", run.stderr_now());
    assert_gone(&scope);
}

#[test]
#[ignore = "needs a systemd user session on cgroup v2: runs in the VM tier (contrib/vm)"]
fn the_container_sees_its_own_cgroup_read_only() {
    let Some(u) = session_user() else { return };
    let o = output_timeout(
        session(&u).args([
            "run",
            "--rm",
            "--network",
            "none",
            "--pids-limit",
            "100",
            "/bin/sh",
            "-c",
            "cat /proc/self/cgroup; mkdir /sys/fs/cgroup/x 2>/dev/null || echo read-only; cat /sys/fs/cgroup/cgroup.controllers",
        ]),
        Duration::from_secs(60),
    );
    assert_eq!(o.code(), 0, "{}", o.stderr);
    let lines = o.lines();
    assert_eq!(lines.first().copied(), Some("0::/"), "{}", o.stdout);
    assert_eq!(lines.get(1).copied(), Some("read-only"), "{}", o.stdout);
    // The delegated controllers reach the container's own root.
    assert!(
        lines
            .get(2)
            .is_some_and(|l| l.split_whitespace().any(|c| c == "pids")),
        "{}",
        o.stdout
    );
}

#[test]
#[ignore = "needs a systemd user session on cgroup v2: runs in the VM tier (contrib/vm)"]
fn cpuset_and_io_follow_the_user_managers_delegation() {
    let Some(u) = session_user() else { return };
    let have = read(&manager_dir(&u).join("cgroup.controllers"));
    let all = have.split_whitespace().any(|c| c == "cpuset");
    // The VM tier's second pass installs contrib/systemd's drop-in: prove it took effect.
    assert_eq!(
        all,
        std::env::var("RC_VM_DELEGATE_ALL").as_deref() == Ok("1"),
        "user manager's controllers: {have}"
    );
    if all {
        let (mut run, scope) = start(
            &u,
            &["--cpuset-cpus", "0", "--blkio-weight", "500", "--init"],
            "echo up; exec sleep 30",
        );
        assert_eq!(read(&scope.join("limits/cpuset.cpus")), "0");
        assert!(
            read(&scope.join("limits/io.weight")).contains("default 4950"),
            "{}",
            read(&scope.join("limits/io.weight"))
        );
        run.signal(libc::SIGTERM);
        let _ = run.wait(Duration::from_secs(30));
        assert_gone(&scope);
    } else {
        let o = output(session(&u).args([
            "run",
            "--rm",
            "--cpuset-cpus",
            "0",
            "--network",
            "none",
            "/bin/true",
        ]));
        assert_eq!(o.code(), 125, "{}", o.stderr);
        assert_eq!(o.stderr_lines().len(), 1, "{}", o.stderr);
        assert!(
            o.stderr.contains("cpuset") && o.stderr.contains("delegate.conf"),
            "{}",
            o.stderr
        );
        assert_no_scopes(&u);
    }
}

#[test]
#[ignore = "needs a systemd user session on cgroup v2: runs in the VM tier (contrib/vm)"]
fn killed_runtime_leaves_no_scope() {
    let Some(u) = session_user() else { return };
    let (mut run, scope) = start(&u, &["--pids-limit", "50"], "echo up; exec sleep 300");
    let leaf_procs = read(&scope.join("limits/container/cgroup.procs"));
    assert!(!leaf_procs.is_empty());
    run.signal(libc::SIGKILL);
    let _ = run.wait(Duration::from_secs(10));
    // The container dies with its runtime; systemd then collects the empty scope.
    assert_gone(&scope);
    // Gone, not just a zombie waiting for its new parent to reap it.
    for pid in leaf_procs.lines() {
        let proc = Path::new("/proc").join(pid.trim());
        assert!(
            wait_until(Duration::from_secs(10), || !proc.exists()),
            "container process {pid} survived"
        );
    }
}

#[test]
#[ignore = "needs a systemd user session on cgroup v2: runs in the VM tier (contrib/vm)"]
fn without_a_session_bus_runs_work_and_limits_are_refused() {
    let Some(u) = session_user() else { return };
    // A runtime directory without the bus socket, on the session's tmpfs like the real one.
    let runtime = std::env::var_os("XDG_RUNTIME_DIR").expect("XDG_RUNTIME_DIR");
    let empty = Path::new(&runtime).join(unique("nobus"));
    std::fs::create_dir(&empty).unwrap();
    struct Remove(PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Remove(empty.clone());
    let nobus = |c: &mut Command| {
        c.env_remove("DBUS_SESSION_BUS_ADDRESS")
            .env("XDG_RUNTIME_DIR", &empty);
    };
    let mut c = session(&u);
    nobus(&mut c);
    let o = output(c.args(["run", "--rm", "--network", "none", "/bin/true"]));
    assert_eq!(o.code(), 0, "{}", o.stderr);
    // Not a word about cgroups without a limit asked for. (Other warnings may appear: in
    // the guest, 9p-shared top-level folders send the host root to fuse-overlayfs.)
    assert!(
        !["cgroup", "bus", "systemd", "limit"]
            .iter()
            .any(|w| o.stderr.contains(w)),
        "{}",
        o.stderr
    );
    for flags in [
        &["--pids-limit", "20"][..],
        &["--cgroup-manager", "systemd"][..],
    ] {
        let mut c = session(&u);
        nobus(&mut c);
        let o = output(
            c.args(["run", "--rm", "--network", "none"])
                .args(flags)
                .arg("/bin/true"),
        );
        assert_eq!(o.code(), 125, "{flags:?}: {}", o.stderr);
        assert_eq!(o.stderr_lines().len(), 1, "{}", o.stderr);
        assert!(o.stderr.contains("session bus"), "{}", o.stderr);
    }
}

#[test]
#[ignore = "needs a systemd user session on cgroup v2: runs in the VM tier (contrib/vm)"]
fn explicit_systemd_manager_without_limits_gets_a_scope() {
    let Some(u) = session_user() else { return };
    let (mut run, scope) = start(
        &u,
        &["--cgroup-manager", "systemd", "--init"],
        "echo up; exec sleep 30",
    );
    assert!(!read(&scope.join("limits/container/cgroup.procs")).is_empty());
    run.signal(libc::SIGTERM);
    let _ = run.wait(Duration::from_secs(30));
    assert_gone(&scope);
}
