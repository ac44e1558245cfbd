//! `run` as root (root mode: no user namespace unless asked for). Skipped unless the
//! tests run as root.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn setup() -> Option<PathBuf> {
    require_root()?;
    rootfs()
}

#[test]
fn root_mode_identity() {
    let Some(r) = setup() else { return };
    let marker = format!("/etc/{}", unique("rc-root-marker"));
    let script = format!(
        "cat /proc/self/uid_map; echo pid=$$; echo x > {marker} && echo wrote=$(cat {marker})"
    );
    let out = run_ok(&mut brun(&r, &["sh", "-c", &script]));
    let (map, rest) = out.split_once("pid=").expect("output");
    assert_eq!(
        norm_map(map),
        vec!["0 0 4294967295".to_string()],
        "no userns"
    );
    assert_eq!(kv(&format!("pid={rest}"), "pid").as_deref(), Some("1"));
    assert_eq!(kv(&out, "wrote").as_deref(), Some("x"));
    let on_host = r.join(marker.trim_start_matches('/'));
    assert!(
        !on_host.exists(),
        "{} appeared in the rootfs",
        on_host.display()
    );
}

#[test]
fn root_mode_capabilities() {
    let Some(r) = setup() else { return };
    let s = run_ok(&mut brun(&r, &["cat", "/proc/self/status"]));
    assert_eq!(
        status_field(&s, "CapEff").as_deref(),
        Some(DEFAULT_CAPS_HEX)
    );
    assert_eq!(
        status_field(&s, "CapBnd").as_deref(),
        Some(DEFAULT_CAPS_HEX)
    );
    assert_eq!(
        status_field(&s, "CapInh").as_deref(),
        Some("0000000000000000")
    );
    assert_eq!(
        status_field(&s, "CapAmb").as_deref(),
        Some("0000000000000000")
    );
    assert_eq!(status_field(&s, "NoNewPrivs").as_deref(), Some("1"));
}

/// A device node of the host that a default container does not get.
fn host_only_device() -> Option<&'static str> {
    ["kmsg", "mem", "vda", "sda", "nvme0", "loop-control", "fuse"]
        .into_iter()
        .find(|d| Path::new("/dev").join(d).exists())
}

fn mount_points(mountinfo: &str) -> Vec<&str> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .collect()
}

#[test]
fn privileged() {
    let Some(r) = setup() else { return };
    let own = std::fs::read_to_string("/proc/self/status").unwrap();
    let own_eff = u64::from_str_radix(&status_field(&own, "CapEff").unwrap(), 16).unwrap();
    let dev = host_only_device();
    let script = format!(
        "cat /proc/self/status; echo ---; cat /proc/self/mountinfo; echo ---; test -e /dev/{} && echo dev=yes || echo dev=no",
        dev.unwrap_or("null")
    );

    let out = run_ok(&mut brun(&r, &["--privileged", "sh", "-c", &script]));
    let parts: Vec<&str> = out.split("---\n").collect();
    assert_eq!(parts.len(), 3, "{out}");
    let eff = u64::from_str_radix(&status_field(parts[0], "CapEff").unwrap(), 16).unwrap();
    assert_eq!(
        eff & own_eff,
        own_eff,
        "privileged CapEff {eff:x} lacks bits of the host's {own_eff:x}"
    );
    assert_eq!(status_field(parts[0], "NoNewPrivs").as_deref(), Some("0"));
    assert!(
        !mount_points(parts[1]).contains(&"/proc/keys"),
        "/proc/keys is masked under --privileged"
    );
    if dev.is_some() {
        assert_eq!(kv(parts[2], "dev").as_deref(), Some("yes"), "/dev/{dev:?}");
    }

    // The contrast: a default container masks /proc/keys and has no host devices.
    let out = run_ok(&mut brun(&r, &["sh", "-c", &script]));
    let parts: Vec<&str> = out.split("---\n").collect();
    assert!(mount_points(parts[1]).contains(&"/proc/keys"));
    if dev.is_some() {
        assert_eq!(kv(parts[2], "dev").as_deref(), Some("no"), "/dev/{dev:?}");
    }
}

#[test]
fn root_mode_host_rootfs() {
    if require_root().is_none() {
        return;
    }
    let marker = format!("/etc/{}", unique("rc-root-marker"));
    let script = format!("hostname; id -u; echo $$; echo x > {marker}; ls -A /tmp");
    let probe = Path::new("/tmp").join(unique("rc-root-tmp"));
    std::fs::write(&probe, "x").unwrap();
    let o = output(as_root().args(["run", "sh", "-c", &script]));
    let _ = std::fs::remove_file(&probe);
    assert_eq!(o.code(), 0, "stderr: {}", o.stderr);
    let l: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(l.len(), 3, "output {:?} (/tmp should be empty)", o.stdout);
    assert!(
        l[0].len() == 12 && l[0].chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')),
        "hostname {:?}",
        l[0]
    );
    assert_eq!(l[1], "0");
    assert_eq!(l[2], "1");
    assert!(
        !Path::new(&marker).exists(),
        "{marker} reached the host's /etc"
    );
}

#[test]
fn root_mode_no_leak_after_sigkill() {
    let Some(r) = setup() else { return };
    root_no_leak_after_sigkill(&r, &[]);
}

/// With --network none nothing acts between clone and execve: the first process borrows
/// the runtime's memory until it executes (as rootless single-id starts do).
#[test]
fn root_mode_network_none_start() {
    let Some(r) = setup() else { return };
    root_no_leak_after_sigkill(&r, &["--network", "none"]);
    let s = run_ok(&mut brun(
        &r,
        &[
            "--network",
            "none",
            "sh",
            "-c",
            "cat /proc/self/status /proc/self/uid_map; ls /sys/class/net; echo pid=$$",
        ],
    ));
    assert_eq!(
        status_field(&s, "CapEff").as_deref(),
        Some(DEFAULT_CAPS_HEX)
    );
    assert_eq!(status_field(&s, "NoNewPrivs").as_deref(), Some("1"));
    assert!(s.contains("4294967295"), "no user namespace: {s}");
    assert!(
        s.contains("\nlo\npid=1\n"),
        "own network namespace, PID 1: {s}"
    );
    let o = run_code(
        &mut brun(&r, &["--network", "none", "sh", "-c", "exit 5"]),
        5,
    );
    assert_eq!(o.stderr, "");
    run_code(&mut brun(&r, &["--network", "none", "nosuchcmd"]), 127);
    let script = "trap 'echo got-TERM; exit 4' TERM; echo ready; while :; do sleep 0.05; done";
    let mut run = Running::spawn(&mut brun(&r, &["--network", "none", "sh", "-c", script]));
    run.expect_line("ready", Duration::from_secs(20));
    run.signal(libc::SIGTERM);
    run.expect_line("got-TERM", Duration::from_secs(5));
    let st = run.wait(Duration::from_secs(10));
    assert_eq!(st.code(), Some(4), "exit status {st}: {}", run.stderr_now());
}

fn root_no_leak_after_sigkill(r: &Path, extra: &[&str]) {
    let u = root_user();
    let name = unique("leak");
    let script = format!("echo up; sleep 102; : {name}");
    let mut args = extra.to_vec();
    args.extend(["--name", &name, "sh", "-c", &script]);
    let mut run = Running::spawn(&mut brun(r, &args));
    run.expect_line("up", Duration::from_secs(20));
    let (run_dir, id) = u.find_named(&name).unwrap_or_else(|| {
        panic!(
            "no names/{name} link in any of {:?}",
            u.run_dir_candidates()
        )
    });
    let link = run_dir.join("names").join(&name);
    assert!(run_dir.join(&id).is_dir());
    run.signal(libc::SIGKILL);
    let _ = run.wait(Duration::from_secs(10));

    let leftovers = || {
        processes_of(0, |p| {
            p.cmdline.iter().any(|a| a.contains(&name))
                || p.cmdline == ["sleep".to_string(), "102".to_string()]
        })
    };
    assert!(
        wait_until(Duration::from_secs(5), || leftovers().is_empty()),
        "container processes survived the runtime: {:?}",
        leftovers()
    );
    let rd = run_dir.to_str().unwrap().to_string();
    let mounts: Vec<String> = host_mountinfo()
        .lines()
        .filter(|l| l.contains(&rd))
        .map(String::from)
        .collect();
    assert!(mounts.is_empty(), "mounts left on the host: {mounts:?}");

    run_ok(&mut brun(r, &["--name", &name, "true"]));
    assert!(
        !run_dir.join(&id).exists(),
        "stale record {} was not collected",
        run_dir.join(&id).display()
    );
    assert!(std::fs::symlink_metadata(&link).is_err(), "name link left");
    assert!(
        wait_until(Duration::from_secs(3), || stale_records(&run_dir)
            .is_empty()),
        "records without a live runtime: {:?}",
        stale_records(&run_dir)
    );
}

/// CVE-2019-5736: container root is host root here, and a container that gets the
/// runtime's /proc/PID/exe must not be able to rewrite the runtime's binary. The runtime
/// re-executes from a read-only overlay view of its binary (or, where it cannot mount
/// one, a sealed memfd copy): what runs is not the writable file.
#[test]
fn root_mode_runs_from_a_read_only_view_of_its_binary() {
    let Some(r) = setup() else { return };
    let mut run = Running::spawn(&mut brun(
        &r,
        &[
            "--network",
            "none",
            "sh",
            "-c",
            "trap 'exit 0' TERM; echo up; while :; do sleep 0.05; done",
        ],
    ));
    run.expect_line("up", Duration::from_secs(20));
    let exe =
        std::fs::File::open(format!("/proc/{}/exe", run.pid)).expect("open the runtime's exe");
    let fd = std::os::fd::AsRawFd::as_raw_fd(&exe);
    // SAFETY: fstatfs/fstatvfs/fcntl on an fd we own, into zeroed structs.
    let (mut fs, mut vfs): (libc::statfs, libc::statvfs) = unsafe { std::mem::zeroed() };
    let (read_only_overlay, sealed) = unsafe {
        let ro = libc::fstatfs(fd, &mut fs) == 0
            && libc::fstatvfs(fd, &mut vfs) == 0
            && fs.f_type == 0x794c_7630
            && vfs.f_flag & libc::ST_RDONLY != 0;
        let seals = libc::fcntl(fd, libc::F_GET_SEALS);
        (ro, seals >= 0 && seals & libc::F_SEAL_WRITE != 0)
    };
    assert!(
        read_only_overlay || sealed,
        "the runtime runs from its writable binary: {:?}",
        std::fs::read_link(format!("/proc/{}/exe", run.pid))
    );
    run.signal(libc::SIGTERM);
    assert_eq!(run.wait(Duration::from_secs(10)).code(), Some(0));
}
