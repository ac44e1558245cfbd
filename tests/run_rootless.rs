//! `run` as an unprivileged user (RC_TEST_USER when the tests run as root, else the user
//! running them).

mod common;

use common::*;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// `run --rm --rootfs R ARGS...` as the test user.
fn brun(u: &User, r: &Path, args: &[&str]) -> Command {
    let mut c = rootless(u);
    c.args(["run", "--rm", "--rootfs"]).arg(r).args(args);
    c
}

/// `run ARGS...` (host root filesystem) as the test user.
fn hrun(u: &User, args: &[&str]) -> Command {
    let mut c = rootless(u);
    c.arg("run").args(args);
    c
}

fn is_container_hostname(h: &str) -> bool {
    h.len() == 12 && h.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'))
}

/// The mount table entry of `mountpoint` in a mountinfo text: (options, fstype).
fn mount_of(mountinfo: &str, mountpoint: &str) -> Option<(String, String)> {
    mountinfo
        .lines()
        .rfind(|l| l.split(' ').nth(4) == Some(mountpoint))
        .map(|l| {
            let opts = l.split(' ').nth(5).unwrap_or("").to_string();
            let fstype = l
                .split_once(" - ")
                .and_then(|(_, rest)| rest.split(' ').next())
                .unwrap_or("")
                .to_string();
            (opts, fstype)
        })
}

fn assert_no_host_mounts() {
    let mi = host_mountinfo();
    let bad: Vec<&str> = mi
        .lines()
        .filter(|l| l.contains("rootless_container"))
        .collect();
    assert!(
        bad.is_empty(),
        "container mounts leaked into the host's mount table: {bad:#?}"
    );
}

// ---------------------------------------------------------------------------------------
// 1. The host's own root filesystem (default)

#[test]
fn host_rootfs_identity() {
    let Some(u) = test_user() else { return };
    let out = run_ok(&mut hrun(
        &u,
        &["/bin/sh", "-c", "hostname; id -u; echo $$"],
    ));
    let l: Vec<&str> = out.lines().collect();
    assert_eq!(l.len(), 3, "output: {out:?}");
    assert!(
        is_container_hostname(l[0]),
        "hostname {:?} is not 12 lowercase hex digits",
        l[0]
    );
    assert_eq!(l[1], "0", "uid inside");
    assert_eq!(l[2], "1", "the command is PID 1");
}

#[test]
fn host_rootfs_writes_vanish() {
    let Some(u) = test_user() else { return };
    let marker = format!("/etc/{}", unique("rc-marker"));
    let script = format!("echo x > {marker} && cat {marker}");
    let out = run_ok(&mut hrun(&u, &["sh", "-c", &script]));
    assert_eq!(out.trim(), "x", "the write inside worked");
    assert!(
        !Path::new(&marker).exists(),
        "{marker} written in the container appeared on the host"
    );
    // Also not in a second container: each starts from the host's files.
    let out = run_ok(&mut hrun(
        &u,
        &[
            "sh",
            "-c",
            &format!("test -e {marker} && echo seen || echo gone"),
        ],
    ));
    assert_eq!(out.trim(), "gone");
}

#[test]
fn host_rootfs_tmp_is_empty() {
    let Some(u) = test_user() else { return };
    let f = Path::new("/tmp").join(unique("rc-host-tmp"));
    std::fs::write(&f, "host").unwrap();
    std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let host_ls = run_ok(as_user(&u, "ls").args(["-A", "/tmp"]));
    let inside = output(&mut hrun(&u, &["ls", "-A", "/tmp"]));
    let _ = std::fs::remove_file(&f);
    assert!(
        host_ls.contains(f.file_name().unwrap().to_str().unwrap()),
        "the user sees the file in the host's /tmp"
    );
    assert_eq!(inside.code(), 0, "stderr: {}", inside.stderr);
    assert_eq!(inside.stdout, "", "the container's /tmp is not empty");
}

#[test]
fn hostname_flag() {
    let Some(u) = test_user() else { return };
    let out = run_ok(&mut hrun(
        &u,
        &["--hostname", "foo", "sh", "-c", "hostname; echo $HOSTNAME"],
    ));
    assert_eq!(out, "foo\nfoo\n");
}

// ---------------------------------------------------------------------------------------
// 2. Namespaces

#[test]
fn namespaces_are_new() {
    let Some(u) = test_user() else { return };
    let nss = ["user", "pid", "mnt", "uts", "ipc", "net", "cgroup"];
    let script = format!(
        "for n in {}; do readlink /proc/self/ns/$n; done",
        nss.join(" ")
    );
    let host = run_ok(as_user(&u, "sh").args(["-c", &script]));
    let inside = run_ok(&mut hrun(&u, &["sh", "-c", &script]));
    let (host, inside): (Vec<&str>, Vec<&str>) = (host.lines().collect(), inside.lines().collect());
    assert_eq!(host.len(), nss.len(), "host: {host:?}");
    assert_eq!(inside.len(), nss.len(), "inside: {inside:?}");
    for (i, ns) in nss.iter().enumerate() {
        assert!(
            inside[i].starts_with(&format!("{ns}:[")),
            "inside {ns}: {}",
            inside[i]
        );
        assert_ne!(
            host[i], inside[i],
            "the container shares the {ns} namespace"
        );
    }
}

// ---------------------------------------------------------------------------------------
// 3-4. Id maps

const MAPS_SCRIPT: &str =
    "cat /proc/self/uid_map; echo --; cat /proc/self/gid_map; echo --; cat /proc/self/setgroups";

fn parse_maps(out: &str) -> (Vec<String>, Vec<String>, String) {
    let parts: Vec<&str> = out.split("--\n").collect();
    assert_eq!(parts.len(), 3, "output: {out:?}");
    (
        norm_map(parts[0]),
        norm_map(parts[1]),
        parts[2].trim().to_string(),
    )
}

#[test]
fn full_subordinate_id_maps() {
    let Some((u, r)) = user_and_rootfs() else {
        return;
    };
    let subuid = subid_ranges("/etc/subuid", &u, u.uid);
    let subgid = subid_ranges("/etc/subgid", &u, u.gid);
    if subuid.is_empty() || subgid.is_empty() {
        return skip(&format!(
            "user {} has no /etc/subuid and /etc/subgid range",
            u.name
        ));
    }
    if which("newuidmap").is_none() || which("newgidmap").is_none() {
        return skip("newuidmap/newgidmap are not installed (package uidmap)");
    }
    let expect = |own: u32, ranges: &[(u32, u32)]| {
        let mut v = vec![format!("0 {own} 1")];
        let mut next = 1u64;
        for (s, n) in ranges {
            v.push(format!("{next} {s} {n}"));
            next += *n as u64;
        }
        v
    };
    let o = output(&mut brun(&u, &r, &["sh", "-c", MAPS_SCRIPT]));
    assert_eq!(o.code(), 0, "stderr: {}", o.stderr);
    assert_eq!(o.stderr, "", "no warning with a full map");
    let (uid_map, gid_map, setgroups) = parse_maps(&o.stdout);
    assert_eq!(uid_map, expect(u.uid, &subuid), "uid_map");
    assert_eq!(gid_map, expect(u.gid, &subgid), "gid_map");
    assert_eq!(setgroups, "allow");
}

fn assert_single_map(o: &Out, u: &User, warning_word: &str) {
    assert_eq!(o.code(), 0, "stderr: {}", o.stderr);
    let lines = o.stderr_lines();
    assert_eq!(lines.len(), 1, "exactly one warning line: {:?}", o.stderr);
    assert!(
        lines[0].contains("warning") && lines[0].contains(warning_word),
        "warning should mention {warning_word:?}: {}",
        lines[0]
    );
    let (uid_map, gid_map, setgroups) = parse_maps(&o.stdout);
    assert_eq!(uid_map, vec![format!("0 {} 1", u.uid)], "uid_map");
    assert_eq!(gid_map, vec![format!("0 {} 1", u.gid)], "gid_map");
    assert_eq!(setgroups, "deny");
}

#[test]
fn single_map_without_subordinate_ids() {
    let Some(r) = rootfs() else { return };
    let Some(u) = nosub_user() else { return };
    assert!(
        subid_ranges("/etc/subuid", &u, u.uid).is_empty(),
        "{} must have no /etc/subuid range",
        u.name
    );
    let o = output(&mut brun(&u, &r, &["sh", "-c", MAPS_SCRIPT]));
    assert_single_map(&o, &u, "subuid");
}

#[test]
fn single_map_without_newuidmap() {
    let Some((u, r)) = user_and_rootfs() else {
        return;
    };
    // --network none: without a PATH there is no slirp4netns either, and its warning is
    // not what this test is about.
    let o = output(
        brun(&u, &r, &["--network", "none", "sh", "-c", MAPS_SCRIPT]).env("PATH", "/nonexistent"),
    );
    assert_single_map(&o, &u, "uidmap");
}

// ---------------------------------------------------------------------------------------
// 5. Copy-on-write root variants

const OVERLAY_SCRIPT: &str =
    "cat /proc/self/mountinfo; echo data > /rc-w && echo \"read=$(cat /rc-w)\"; echo \"busybox=$(test -x /bin/busybox && echo yes)\"";

fn overlay_case(extra: &[&str], want_fstype: Option<&str>) {
    let Some((u, r)) = user_and_rootfs() else {
        return;
    };
    let mut args: Vec<&str> = extra.to_vec();
    args.extend(["sh", "-c", OVERLAY_SCRIPT]);
    let o = output(&mut brun(&u, &r, &args));
    assert_eq!(o.code(), 0, "stderr: {}", o.stderr);
    assert_eq!(o.stderr, "", "no warning expected");
    let (_, fstype) = mount_of(&o.stdout, "/").expect("a mount at / inside");
    match want_fstype {
        Some(t) => assert_eq!(fstype, t, "filesystem of the container's /"),
        None => assert!(
            !fstype.contains("overlay"),
            "--overlay copy must not use an overlay: {fstype}"
        ),
    }
    assert_eq!(kv(&o.stdout, "read").as_deref(), Some("data"));
    assert_eq!(kv(&o.stdout, "busybox").as_deref(), Some("yes"));
    assert_no_host_mounts();
    let lower = format!("lowerdir={}", r.display());
    let left = || {
        processes_of(u.uid, |p| {
            p.comm == "fuse-overlayfs" && p.cmdline.iter().any(|a| a.contains(&lower))
        })
    };
    assert!(
        wait_until(Duration::from_secs(5), || left().is_empty()),
        "fuse-overlayfs processes left behind: {:?}",
        left()
    );
}

/// Kernel overlayfs in a user namespace needs Linux 5.11 (else skip).
fn kernel_overlay_usable() -> bool {
    let rel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut v = rel
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let (major, minor) = (v.next().unwrap_or(0), v.next().unwrap_or(0));
    if (major, minor) < (5, 11) {
        skip(&format!(
            "kernel {} has no overlayfs in user namespaces (5.11+)",
            rel.trim()
        ));
        return false;
    }
    true
}

#[test]
fn overlay_default_is_kernel_overlayfs() {
    if kernel_overlay_usable() {
        overlay_case(&[], Some("overlay"));
    }
}

#[test]
fn overlay_kernel_explicit() {
    if kernel_overlay_usable() {
        overlay_case(&["--overlay", "kernel"], Some("overlay"));
    }
}

/// fuse-overlayfs is installed and /dev/fuse usable by the test user (else skip).
fn fuse_usable() -> bool {
    if which("fuse-overlayfs").is_none() {
        skip("fuse-overlayfs is not installed");
        return false;
    }
    let fuse_ok = std::fs::metadata("/dev/fuse")
        .map(|m| m.mode() & 0o006 == 0o006)
        .unwrap_or(false);
    if !fuse_ok {
        skip("/dev/fuse is missing or not 0666 (contrib/test-setup.sh fixes it)");
        return false;
    }
    true
}

#[test]
fn overlay_fuse() {
    if !fuse_usable() {
        return;
    }
    overlay_case(&["--overlay", "fuse"], Some("fuse.fuse-overlayfs"));
}

/// The kernel really refusing: a lower directory with submounts (the host's `/`) cannot be
/// an overlayfs lower layer inside a user namespace, so `auto` must fall back to
/// fuse-overlayfs with one warning, and writes must still work.
#[test]
fn overlay_auto_falls_back_to_fuse_when_the_kernel_refuses() {
    if !fuse_usable() {
        return;
    }
    let Some(u) = test_user() else { return };
    let o = output(&mut brun(
        &u,
        Path::new("/"),
        &[
            "sh",
            "-c",
            "head -1 /proc/self/mountinfo; echo w > /etc/rc-fallback && cat /etc/rc-fallback",
        ],
    ));
    assert_eq!(o.code(), 0, "stderr: {}", o.stderr);
    assert!(
        o.stdout.contains("fuse.fuse-overlayfs"),
        "root is not fuse-overlayfs: {}",
        o.stdout
    );
    assert!(
        o.stdout.trim_end().ends_with('w'),
        "write through the fallback failed: {}",
        o.stdout
    );
    let warnings: Vec<&str> = o.stderr.lines().collect();
    assert_eq!(warnings.len(), 1, "exactly one warning line: {}", o.stderr);
    assert!(
        warnings[0].contains("kernel overlayfs refused") && warnings[0].contains("fuse-overlayfs")
    );
    assert!(
        !Path::new("/etc/rc-fallback").exists(),
        "the write reached the host"
    );
}

#[test]
fn overlay_copy() {
    overlay_case(&["--overlay", "copy"], None);
}

#[test]
fn overlay_flag_before_subcommand() {
    let Some((u, r)) = user_and_rootfs() else {
        return;
    };
    let mut c = rootless(&u);
    c.args(["--overlay", "copy", "run", "--rm", "--rootfs"])
        .arg(&r)
        .args(["cat", "/proc/self/mountinfo"]);
    let out = run_ok(&mut c);
    let (_, fstype) = mount_of(&out, "/").expect("a mount at /");
    assert!(!fstype.contains("overlay"), "fstype {fstype}");
}

// ---------------------------------------------------------------------------------------
// 6. Kept layer vs --rm

#[test]
fn kept_layer_without_rm() {
    let Some((u, r)) = user_and_rootfs() else {
        return;
    };
    let marker = unique("kept");
    let _cleanup = KeptGuard(&u, marker.clone());
    let mut c = rootless(&u);
    c.args(["run", "--rootfs"])
        .arg(&r)
        .args(["sh", "-c", &format!("echo k > /{marker}")]);
    run_ok(&mut c);
    let kept = kept_containers_with(&u, &marker);
    assert_eq!(kept.len(), 1, "one kept container mentions {marker}");
    let f = kept[0].join("upper").join(&marker);
    assert_eq!(
        std::fs::read_to_string(&f).unwrap_or_default(),
        "k\n",
        "{} holds the write",
        f.display()
    );
    assert_eq!(
        std::fs::metadata(&f).unwrap().uid(),
        u.uid,
        "owned by the user"
    );
}

#[test]
fn rm_leaves_no_layer() {
    let Some((u, r)) = user_and_rootfs() else {
        return;
    };
    let marker = unique("gone");
    run_ok(&mut brun(
        &u,
        &r,
        &["sh", "-c", &format!("echo k > /{marker}")],
    ));
    let kept = kept_containers_with(&u, &marker);
    remove_kept(&u, &marker);
    assert!(kept.is_empty(), "--rm kept a layer: {kept:?}");
    let containers = u.data_dir().join("containers");
    if let Ok(entries) = std::fs::read_dir(&containers) {
        for e in entries.flatten() {
            let f = e.path().join("upper").join(&marker);
            assert!(!f.exists(), "{} exists after --rm", f.display());
        }
    }
}

// ---------------------------------------------------------------------------------------
// 7. Filesystem view

const FS_SCRIPT: &str = r#"
echo "dev=$(ls -A /dev | tr '\n' ' ')"
if echo x > /dev/null; then echo devnull=ok; else echo devnull=fail; fi
echo "zero=$(head -c 4 /dev/zero | od -An -tx1 | tr -s ' ' | sed 's/^ //;s/ $//')"
if (touch /sys/x) 2>/dev/null; then echo sys=writable; else echo sys=readonly; fi
echo "keys=$(cat /proc/keys | wc -c)"
echo "firmware=$(ls -A /sys/firmware | wc -l)"
if (echo 1 > /proc/sys/kernel/ns_last_pid) 2>/dev/null; then echo ns_last_pid=writable; else echo ns_last_pid=readonly; fi
if (echo evil > /proc/sys/kernel/hostname) 2>/dev/null; then echo prochost=writable; else echo prochost=readonly; fi
echo "hostname=$(hostname)"
echo ---
cat /proc/self/mountinfo
"#;

#[test]
fn filesystem_view() {
    let Some((u, r)) = user_and_rootfs() else {
        return;
    };
    let out = run_ok(&mut brun(&u, &r, &["sh", "-c", FS_SCRIPT]));
    let (vals, mountinfo) = out.split_once("---\n").expect("separator");
    let dev = kv(vals, "dev").unwrap_or_default();
    let dev: Vec<&str> = dev.split_whitespace().collect();
    for d in [
        "null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "shm", "mqueue",
    ] {
        assert!(dev.contains(&d), "/dev/{d} missing; /dev has {dev:?}");
    }
    assert_eq!(kv(vals, "devnull").as_deref(), Some("ok"));
    assert_eq!(kv(vals, "zero").as_deref(), Some("00 00 00 00"));
    assert_eq!(kv(vals, "sys").as_deref(), Some("readonly"), "touch /sys/x");
    let (cg_opts, _) = mount_of(mountinfo, "/sys/fs/cgroup").expect("/sys/fs/cgroup mounted");
    assert!(
        cg_opts.split(',').any(|o| o == "ro"),
        "/sys/fs/cgroup is not read-only: {cg_opts}"
    );
    // Masked paths.
    assert_eq!(
        kv(vals, "keys").as_deref(),
        Some("0"),
        "/proc/keys is masked"
    );
    assert!(
        mount_of(mountinfo, "/proc/keys").is_some(),
        "/proc/keys has no mask mount"
    );
    assert_eq!(kv(vals, "firmware").as_deref(), Some("0"), "/sys/firmware");
    if Path::new("/sys/firmware").exists() {
        assert!(
            mount_of(mountinfo, "/sys/firmware").is_some(),
            "/sys/firmware has no mask mount"
        );
    }
    // Read-only /proc/sys.
    assert_eq!(kv(vals, "ns_last_pid").as_deref(), Some("readonly"));
    assert_eq!(kv(vals, "prochost").as_deref(), Some("readonly"));
    assert_ne!(kv(vals, "hostname").as_deref(), Some("evil"));
    let (ps_opts, _) = mount_of(mountinfo, "/proc/sys").expect("/proc/sys mount");
    assert!(
        ps_opts.split(',').any(|o| o == "ro"),
        "/proc/sys: {ps_opts}"
    );
}

// ---------------------------------------------------------------------------------------
// 8. Process: environment, working directory, user

#[test]
fn environment_flags_and_file() {
    let Some((u, r)) = user_and_rootfs() else {
        return;
    };
    let dir = TempDir::new("rc-envfile");
    let f = dir.path().join("env");
    std::fs::write(&f, "# a comment\n\nC=3\nD=from-file\n").unwrap();
    std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let mut c = brun(&u, &r, &[]);
    c.args(["-e", "A=1", "-e", "B=two=2", "--env-file"])
        .arg(&f)
        .args(["-e", "D=flag", "sh", "-c", "env; echo \"hn=$(hostname)\""]);
    let out = run_ok(&mut c);
    assert_eq!(kv(&out, "A").as_deref(), Some("1"));
    assert_eq!(kv(&out, "B").as_deref(), Some("two=2"));
    assert_eq!(kv(&out, "C").as_deref(), Some("3"));
    assert_eq!(
        kv(&out, "D").as_deref(),
        Some("flag"),
        "-e wins over the file"
    );
    assert_eq!(kv(&out, "HOME").as_deref(), Some("/root"));
    let hn = kv(&out, "hn").unwrap_or_default();
    assert!(is_container_hostname(&hn), "hostname {hn:?}");
    assert_eq!(kv(&out, "HOSTNAME"), Some(hn), "HOSTNAME is the hostname");
    assert!(kv(&out, "PATH").is_some_and(|p| p.split(':').any(|d| d == "/bin")));
}

#[test]
fn missing_env_file_is_an_error() {
    let Some((u, r)) = user_and_rootfs() else {
        return;
    };
    let o = run_code(
        &mut brun(&u, &r, &["--env-file", "/nonexistent/env", "true"]),
        125,
    );
    assert!(o.stderr.contains("/nonexistent/env"), "{}", o.stderr);
}

#[test]
fn workdir_is_created() {
    let Some((u, r)) = user_and_rootfs() else {
        return;
    };
    let out = run_ok(&mut brun(&u, &r, &["-w", "/some/new/dir", "pwd"]));
    assert_eq!(out, "/some/new/dir\n");
}

#[test]
fn user_numeric() {
    let Some((u, r)) = user_and_rootfs() else {
        return;
    };
    let out = run_ok(&mut brun(
        &u,
        &r,
        &["-u", "1000:1000", "sh", "-c", "id -u; id -g"],
    ));
    assert_eq!(out, "1000\n1000\n");
}

#[test]
fn user_by_name() {
    let Some((u, r)) = user_and_rootfs() else {
        return;
    };
    let out = run_ok(&mut brun(
        &u,
        &r,
        &["-u", "tuser", "sh", "-c", "id -un; id -u; echo $HOME"],
    ));
    assert_eq!(out, "tuser\n1000\n/home/tuser\n");
}

#[test]
fn user_unknown() {
    let Some((u, r)) = user_and_rootfs() else {
        return;
    };
    let o = run_code(&mut brun(&u, &r, &["-u", "unknownuser", "true"]), 125);
    assert!(o.stderr.contains("unknownuser"), "stderr: {}", o.stderr);
    assert_eq!(o.stderr_lines().len(), 1, "stderr: {}", o.stderr);
}

// ---------------------------------------------------------------------------------------
// 9. Capabilities and hardening

fn status_inside(u: &User, r: &Path, extra: &[&str]) -> String {
    let mut args = extra.to_vec();
    args.extend(["cat", "/proc/self/status"]);
    run_ok(&mut brun(u, r, &args))
}

#[test]
fn default_capabilities_and_no_new_privs() {
    let Some((u, r)) = user_and_rootfs() else {
        return;
    };
    let s = status_inside(&u, &r, &[]);
    assert_eq!(
        status_field(&s, "CapEff").as_deref(),
        Some(DEFAULT_CAPS_HEX)
    );
    assert_eq!(
        status_field(&s, "CapPrm").as_deref(),
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

/// The default seccomp profile is one filter that refuses new namespaces (a new user
/// namespace needs no capability, so only the filter stops it) and mounts, but lets
/// ordinary forks through; `seccomp=unconfined` removes it.
#[test]
fn default_seccomp_filter_refuses_namespaces_not_forks() {
    let Some((u, r)) = user_and_rootfs() else {
        return;
    };
    let s = status_inside(&u, &r, &[]);
    assert_eq!(status_field(&s, "Seccomp").as_deref(), Some("2"));
    assert_eq!(status_field(&s, "Seccomp_filters").as_deref(), Some("1"));
    let script =
        "unshare -U true; echo unshare=$?; (echo fork-ok); mount -t tmpfs t /mnt; echo mount=$?";
    let o = output(&mut brun(&u, &r, &["sh", "-c", script]));
    assert!(o.stdout.contains("unshare=1"), "{} {}", o.stdout, o.stderr);
    assert!(o.stdout.contains("fork-ok"), "{} {}", o.stdout, o.stderr);
    assert!(o.stdout.contains("mount=1"), "{} {}", o.stdout, o.stderr);
    assert!(o.stderr.contains("Operation not permitted"), "{}", o.stderr);
    let s = status_inside(&u, &r, &["--security-opt", "seccomp=unconfined"]);
    assert_eq!(status_field(&s, "Seccomp").as_deref(), Some("0"));
    let o = output(&mut brun(
        &u,
        &r,
        &[
            "--security-opt",
            "seccomp=unconfined",
            "unshare",
            "-U",
            "true",
        ],
    ));
    assert_eq!(o.code(), 0, "{}", o.stderr);
}

#[test]
fn cap_drop_and_add() {
    let Some((u, r)) = user_and_rootfs() else {
        return;
    };
    let s = status_inside(&u, &r, &["--cap-drop", "CHOWN"]);
    assert_eq!(
        status_field(&s, "CapEff").as_deref(),
        Some("00000000a80425fa")
    );
    let s = status_inside(&u, &r, &["--cap-add", "NET_ADMIN"]);
    assert_eq!(
        status_field(&s, "CapEff").as_deref(),
        Some("00000000a80435fb")
    );
    let s = status_inside(&u, &r, &["--cap-drop", "ALL"]);
    assert_eq!(
        status_field(&s, "CapEff").as_deref(),
        Some("0000000000000000")
    );
    let o = run_code(&mut brun(&u, &r, &["--cap-add", "BOGUS", "true"]), 125);
    assert!(o.stderr.contains("BOGUS"), "{}", o.stderr);
}

#[test]
fn non_root_user_has_no_capabilities() {
    let Some((u, r)) = user_and_rootfs() else {
        return;
    };
    let s = status_inside(&u, &r, &["-u", "1000"]);
    assert_eq!(
        status_field(&s, "CapEff").as_deref(),
        Some("0000000000000000")
    );
    assert_eq!(
        status_field(&s, "CapPrm").as_deref(),
        Some("0000000000000000")
    );
    assert_eq!(status_field(&s, "NoNewPrivs").as_deref(), Some("1"));
}

// ---------------------------------------------------------------------------------------
// 10. File descriptors

/// A command that gets `file` as fd `target` (not close-on-exec).
fn with_fd(mut c: Command, file: &std::fs::File, target: i32) -> Command {
    let fd = file.as_raw_fd();
    // SAFETY: dup2 and fcntl are async-signal-safe.
    unsafe {
        c.pre_exec(move || {
            // dup2 onto itself would keep close-on-exec.
            let r = if fd == target {
                libc::fcntl(fd, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, target)
            };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    c
}

fn fd_file(dir: &TempDir) -> std::fs::File {
    let p = dir.path().join("fdfile");
    std::fs::write(&p, "hello-fd").unwrap();
    std::fs::File::open(&p).unwrap()
}

#[test]
fn inherited_fds_do_not_reach_the_container() {
    let Some((u, r)) = user_and_rootfs() else {
        return;
    };
    let dir = TempDir::new("rc-fd");
    let file = fd_file(&dir);
    let script = "if test -e /proc/self/fd/7; then echo fd7=open; else echo fd7=closed; fi";
    // Control: the harness really passes fd 7.
    let host = run_ok(with_fd(as_user(&u, "sh"), &file, 7).args(["-c", script]));
    assert_eq!(host.trim(), "fd7=open", "the harness did not pass fd 7");
    let inside = run_ok(&mut with_fd(brun(&u, &r, &["sh", "-c", script]), &file, 7));
    assert_eq!(
        inside.trim(),
        "fd7=closed",
        "fd 7 leaked into the container"
    );
}

#[test]
fn preserve_fds() {
    let Some((u, r)) = user_and_rootfs() else {
        return;
    };
    let dir = TempDir::new("rc-fd");
    let file = fd_file(&dir);
    let c = brun(
        &u,
        &r,
        &[
            "--preserve-fds",
            "1",
            "sh",
            "-c",
            "echo \"content=$(cat <&3)\"; readlink /proc/self/fd/3 >/dev/null && echo link=ok",
        ],
    );
    let out = run_ok(&mut with_fd(c, &file, 3));
    assert_eq!(kv(&out, "content").as_deref(), Some("hello-fd"));
    assert_eq!(kv(&out, "link").as_deref(), Some("ok"));
}

// ---------------------------------------------------------------------------------------
// 11. Exit codes

#[test]
fn exit_code_of_the_command() {
    let Some((u, r)) = user_and_rootfs() else {
        return;
    };
    run_code(&mut brun(&u, &r, &["sh", "-c", "exit 3"]), 3);
    run_code(&mut brun(&u, &r, &["true"]), 0);
}

#[test]
fn command_not_found_is_127() {
    let Some((u, r)) = user_and_rootfs() else {
        return;
    };
    let o = run_code(&mut brun(&u, &r, &["nosuchcmd"]), 127);
    assert!(o.stderr.contains("nosuchcmd"), "{}", o.stderr);
    assert!(o.stderr.contains("not found"), "{}", o.stderr);
    let o = run_code(&mut brun(&u, &r, &["/bin/nosuchcmd"]), 127);
    assert!(o.stderr.contains("/bin/nosuchcmd"), "{}", o.stderr);
}

#[test]
fn command_not_executable_is_126() {
    let Some((u, r)) = user_and_rootfs() else {
        return;
    };
    let o = run_code(&mut brun(&u, &r, &["/bin/notexec"]), 126);
    assert!(o.stderr.contains("/bin/notexec"), "{}", o.stderr);
    // A directory cannot be executed either.
    run_code(&mut brun(&u, &r, &["/bin"]), 126);
}

#[test]
fn missing_rootfs_is_125() {
    let Some(u) = test_user() else { return };
    let o = run_code(
        rootless(&u).args(["run", "--rm", "--rootfs", "/nonexistent", "true"]),
        125,
    );
    assert_eq!(o.stderr_lines().len(), 1, "{}", o.stderr);
    assert!(o.stderr.contains("/nonexistent"), "{}", o.stderr);
}

#[test]
fn bad_volumes_are_125() {
    let Some((u, r)) = user_and_rootfs() else {
        return;
    };
    for v in ["/tmp:relative", "/nonexistent-src:/x", "a:b:c:d"] {
        let o = run_code(&mut brun(&u, &r, &["-v", v, "true"]), 125);
        assert_eq!(
            o.stderr_lines().len(),
            1,
            "-v {v}: one stderr line: {}",
            o.stderr
        );
        assert_eq!(o.stdout, "");
    }
}

#[test]
fn bad_flags_are_125() {
    let Some((u, r)) = user_and_rootfs() else {
        return;
    };
    let o = run_code(&mut brun(&u, &r, &["--network", "bogus", "true"]), 125);
    assert!(o.stderr.contains("bogus"), "{}", o.stderr);
    let o = run_code(&mut brun(&u, &r, &["--privileged", "true"]), 125);
    assert!(o.stderr.contains("root"), "{}", o.stderr);
    let o = run_code(&mut brun(&u, &r, &["--userns", "host", "true"]), 125);
    assert!(o.stderr.contains("root"), "{}", o.stderr);
    let o = run_code(&mut brun(&u, &r, &["--hostname", "bad name", "true"]), 125);
    assert!(o.stderr.contains("hostname"), "{}", o.stderr);
    let o = run_code(&mut brun(&u, &r, &["--name=-bad", "true"]), 125);
    assert!(o.stderr.contains("name"), "{}", o.stderr);
    // A mistyped option is an error, not the command; parser errors are one line, 125.
    for bad in [
        vec!["--rmm", "sh", "-c", "echo ran"],
        vec!["--userns", "bogus", "true"],
        vec!["--rootfs"],
    ] {
        let mut c = rootless(&u);
        c.arg("run").args(&bad);
        let o = run_code(&mut c, 125);
        assert_eq!(o.stdout, "", "{bad:?} ran something");
        assert_eq!(o.stderr.lines().count(), 1, "{bad:?}: {}", o.stderr);
    }
    let o = run_code(
        &mut brun(&u, &r, &["-p", "18085:80", "-p", "18085:81", "true"]),
        125,
    );
    assert!(o.stderr.contains("twice"), "{}", o.stderr);
    let o = run_code(
        &mut brun(&u, &r, &["--network", "none", "--dns", "192.0.2.1", "true"]),
        125,
    );
    assert!(o.stderr.contains("--dns"), "{}", o.stderr);
    let o = run_code(&mut brun(&u, &r, &["-w", "relative", "true"]), 125);
    assert!(o.stderr.contains("relative"), "{}", o.stderr);
}

#[test]
fn init_reports_signal_death_as_128_plus_n() {
    let Some((u, r)) = user_and_rootfs() else {
        return;
    };
    run_code(
        &mut brun(&u, &r, &["--init", "sh", "-c", "kill -9 $$"]),
        137,
    );
}

#[test]
fn tty_without_terminal_is_125() {
    let Some((u, r)) = user_and_rootfs() else {
        return;
    };
    let o = run_code(&mut brun(&u, &r, &["-t", "sh", "-c", "sleep 10"]), 125);
    assert!(o.stderr.contains("terminal"), "{}", o.stderr);
    assert!(
        o.elapsed < Duration::from_secs(5),
        "took {:?}: the container ran",
        o.elapsed
    );
}

// ---------------------------------------------------------------------------------------
// 12. Signals

#[test]
fn signals_are_forwarded() {
    let Some((u, r)) = user_and_rootfs() else {
        return;
    };
    let script = "for s in INT TERM HUP QUIT USR1; do trap \"echo got-$s\" $s; done; \
                  trap 'echo got-USR2; exit 7' USR2; \
                  echo ready; while :; do sleep 0.05; done";
    let mut run = Running::spawn(&mut brun(&u, &r, &["sh", "-c", script]));
    run.expect_line("ready", Duration::from_secs(20));
    for (sig, name) in [
        (libc::SIGINT, "INT"),
        (libc::SIGTERM, "TERM"),
        (libc::SIGHUP, "HUP"),
        (libc::SIGQUIT, "QUIT"),
        (libc::SIGUSR1, "USR1"),
        (libc::SIGUSR2, "USR2"),
    ] {
        run.signal(sig);
        run.expect_line(&format!("got-{name}"), Duration::from_secs(5));
    }
    let st = run.wait(Duration::from_secs(10));
    assert_eq!(st.code(), Some(7), "exit status {st}: {}", run.stderr_now());
}

// ---------------------------------------------------------------------------------------
// 13. Terminal

/// `run -t --rm EXTRA --rootfs R sh -c INSIDE` under util-linux `script` (a terminal of
/// its own), after `before` in script's shell; None (after skip) without `script`.
fn under_script(u: &User, r: &Path, before: &str, extra: &str, inside: &str) -> Option<Out> {
    let Some(script) = which("script") else {
        skip("util-linux script is not installed (package bsdutils)");
        return None;
    };
    let inner = format!(
        "{before}{} run -t --rm {extra} --rootfs {} sh -c '{inside}'",
        shell_quote(user_bin().to_str().unwrap()),
        shell_quote(r.to_str().unwrap())
    );
    Some(output(as_user(u, script).args([
        "-qec",
        &inner,
        "/dev/null",
    ])))
}

#[test]
fn tty_under_script() {
    let Some((u, r)) = user_and_rootfs() else {
        return;
    };
    let Some(o) = under_script(&u, &r, "", "", "tty; stty size || true") else {
        return;
    };
    assert_eq!(o.code(), 0, "stdout: {}\nstderr: {}", o.stdout, o.stderr);
    assert!(
        o.stdout.contains("/dev/pts/"),
        "tty inside: {:?}\nstderr: {}",
        o.stdout,
        o.stderr
    );
}

#[test]
fn tty_gets_the_window_size() {
    let Some((u, r)) = user_and_rootfs() else {
        return;
    };
    let ws = nix::pty::Winsize {
        ws_row: 40,
        ws_col: 100,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&ws), None).expect("openpty");
    let slave = std::fs::File::from(pty.slave);
    let mut c = brun(&u, &r, &["-t", "sh", "-c", "tty; stty size; echo done"]);
    c.stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("start the runtime");
    drop(c);
    drop(slave);
    let mut master = std::fs::File::from(pty.master);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match std::io::Read::read(&mut master, &mut buf) {
                Ok(0) | Err(_) => break, // EIO: no slave left
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
        let _ = tx.send(all);
    });
    let ok = wait_until(Duration::from_secs(20), || {
        child.try_wait().ok().flatten().is_some()
    });
    if !ok {
        let _ = child.kill();
    }
    let st = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    let out = rx
        .recv_timeout(Duration::from_secs(10))
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .expect("the terminal is still open after the runtime exited");
    assert!(ok, "timed out; output {out:?}");
    assert_eq!(st.code(), Some(0), "output {out:?}, stderr {err}");
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert!(
        lines.iter().any(|l| l.starts_with("/dev/pts/")),
        "tty: {out:?}"
    );
    assert!(lines.contains(&"40 100"), "stty size: {out:?}");
    assert!(lines.contains(&"done"), "{out:?}");
}

// ---------------------------------------------------------------------------------------
// 14. --init

#[test]
fn init_is_pid_1() {
    let Some((u, r)) = user_and_rootfs() else {
        return;
    };
    let out = run_ok(&mut brun(
        &u,
        &r,
        &["--init", "sh", "-c", "ps -o pid,comm; true"],
    ));
    let procs: Vec<(String, String)> = out
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.to_string(), f.next()?.to_string()))
        })
        .collect();
    let comm = |pid: &str| procs.iter().find(|(p, _)| p == pid).map(|(_, c)| c.clone());
    assert_eq!(comm("2").as_deref(), Some("sh"), "ps: {out}");
    assert!(
        comm("1").is_some_and(|c| c != "sh"),
        "PID 1 should be the init: {out}"
    );
}

#[test]
fn init_reaps_zombies() {
    let Some((u, r)) = user_and_rootfs() else {
        return;
    };
    let out = run_ok(&mut brun(
        &u,
        &r,
        &[
            "--init",
            "sh",
            "-c",
            "(sleep 0.2 &); sleep 0.6; ps -o stat | grep Z | wc -l",
        ],
    ));
    assert_eq!(out.trim(), "0", "zombies left");
}

#[test]
fn init_forwards_signals() {
    let Some((u, r)) = user_and_rootfs() else {
        return;
    };
    let script = "trap 'echo got-TERM; exit 5' TERM; echo ready; while :; do sleep 0.05; done";
    let mut run = Running::spawn(&mut brun(&u, &r, &["--init", "sh", "-c", script]));
    run.expect_line("ready", Duration::from_secs(20));
    run.signal(libc::SIGTERM);
    run.expect_line("got-TERM", Duration::from_secs(5));
    let st = run.wait(Duration::from_secs(10));
    assert_eq!(st.code(), Some(5), "{st}");
}

// ---------------------------------------------------------------------------------------
// 15. Volumes

#[test]
fn volume_rw_owned_by_the_user() {
    let Some((u, r)) = user_and_rootfs() else {
        return;
    };
    let tmp = TempDir::new("rc-vol");
    let d = tmp.user_dir("data", &u);
    let mut c = brun(&u, &r, &[]);
    c.arg("-v").arg(format!("{}:/data", d.display())).args([
        "sh",
        "-c",
        "echo hi > /data/f && cat /data/f",
    ]);
    assert_eq!(run_ok(&mut c), "hi\n");
    let f = d.join("f");
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "hi\n");
    let md = std::fs::metadata(&f).unwrap();
    assert_eq!(
        (md.uid(), md.gid()),
        (u.uid, u.gid),
        "container root is the user"
    );
}

#[test]
fn volume_read_only() {
    let Some((u, r)) = user_and_rootfs() else {
        return;
    };
    let tmp = TempDir::new("rc-vol");
    let d = tmp.user_dir("data", &u);
    std::fs::write(d.join("existing"), "old").unwrap();
    let mut c = brun(&u, &r, &[]);
    c.arg("-v").arg(format!("{}:/data:ro", d.display())).args([
        "sh",
        "-c",
        "cat /data/existing; echo; if (echo x > /data/g) 2>/dev/null; then echo write=ok; else echo write=refused; fi",
    ]);
    let out = run_ok(&mut c);
    assert_eq!(out, "old\nwrite=refused\n");
    assert!(!d.join("g").exists());
}

#[test]
fn volume_keep_id() {
    let Some((u, r)) = user_and_rootfs() else {
        return;
    };
    if subid_ranges("/etc/subuid", &u, u.uid).is_empty() {
        return skip(&format!(
            "--userns keep-id needs a subuid range for {}",
            u.name
        ));
    }
    let tmp = TempDir::new("rc-vol");
    let d = tmp.user_dir("data", &u);
    let mut c = brun(&u, &r, &["--userns", "keep-id"]);
    c.arg("-v").arg(format!("{}:/data", d.display())).args([
        "sh",
        "-c",
        "id -u; id -g; echo k > /data/k",
    ]);
    let out = run_ok(&mut c);
    assert_eq!(out, format!("{}\n{}\n", u.uid, u.gid));
    let md = std::fs::metadata(d.join("k")).unwrap();
    assert_eq!((md.uid(), md.gid()), (u.uid, u.gid));
}

// ---------------------------------------------------------------------------------------
// 16. --read-only

#[test]
fn read_only_root() {
    let Some((u, r)) = user_and_rootfs() else {
        return;
    };
    let script = "if (touch /x) 2>/dev/null; then echo touch=ok; else echo touch=refused; fi";
    assert_eq!(
        run_ok(&mut brun(&u, &r, &["--read-only", "sh", "-c", script])),
        "touch=refused\n"
    );
    assert_eq!(
        run_ok(&mut brun(&u, &r, &["sh", "-c", script])),
        "touch=ok\n"
    );
}

// ---------------------------------------------------------------------------------------
// 17. --name

#[test]
fn name_is_exclusive_while_running() {
    let Some((u, r)) = user_and_rootfs() else {
        return;
    };
    let name = unique("dup");
    let mut first = Running::spawn(&mut brun(
        &u,
        &r,
        &["--name", &name, "sh", "-c", "echo up; sleep 5"],
    ));
    first.expect_line("up", Duration::from_secs(20));
    let o = run_code(&mut brun(&u, &r, &["--name", &name, "true"]), 125);
    assert!(o.stderr.contains("already in use"), "{}", o.stderr);
    assert!(o.stderr.contains(&name), "{}", o.stderr);
    first.kill();
    run_ok(&mut brun(&u, &r, &["--name", &name, "true"]));
    // And once more: the name is released at exit.
    run_ok(&mut brun(&u, &r, &["--name", &name, "true"]));
}

// ---------------------------------------------------------------------------------------
// 18. Nothing is left behind by a SIGKILLed runtime

fn no_leak_after_sigkill(u: &User, r: &Path, extra: &[&str], sleep: &str) {
    let name = unique("leak");
    let _cleanup = KeptGuard(u, name.clone());
    let script = format!("echo up; sleep {sleep}; : {name}");
    let mut c = rootless(u);
    c.arg("run").args(extra);
    c.args(["--name", &name, "--rootfs"])
        .arg(r)
        .args(["sh", "-c", &script]);
    let mut run = Running::spawn(&mut c);
    run.expect_line("up", Duration::from_secs(20));
    let (run_dir, id) = u.find_named(&name).unwrap_or_else(|| {
        panic!(
            "no names/{name} link in any of {:?}",
            u.run_dir_candidates()
        )
    });
    let link = run_dir.join("names").join(&name);
    assert!(run_dir.join(&id).is_dir(), "record dir of the running one");
    run.signal(libc::SIGKILL);
    let _ = run.wait(Duration::from_secs(10));
    run.kill();

    let id_str = id.to_string_lossy().to_string();
    let leftovers = || {
        processes_of(u.uid, |p| {
            p.cmdline
                .iter()
                .any(|a| a.contains(&name) || a.contains(&id_str))
                || p.cmdline == ["sleep".to_string(), sleep.to_string()]
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

    // The stale record is collected and the name is free again.
    let o = output(&mut brun(u, r, &["--name", &name, "true"]));
    assert_eq!(o.code(), 0, "reusing the name: {}", o.stderr);
    assert!(
        !run_dir.join(&id).exists(),
        "stale record {} was not collected",
        run_dir.join(&id).display()
    );
    assert!(
        std::fs::symlink_metadata(&link).is_err(),
        "name link {} left",
        link.display()
    );
    // Records of other tests' containers may come and go; none may stay unowned.
    assert!(
        wait_until(Duration::from_secs(3), || stale_records(&run_dir)
            .is_empty()),
        "records without a live runtime in {}: {:?}",
        run_dir.display(),
        stale_records(&run_dir)
    );
}

#[test]
fn no_leak_after_sigkill_rm() {
    let Some((u, r)) = user_and_rootfs() else {
        return;
    };
    no_leak_after_sigkill(&u, &r, &["--rm"], "100");
}

#[test]
fn no_leak_after_sigkill_kept_layer() {
    let Some((u, r)) = user_and_rootfs() else {
        return;
    };
    no_leak_after_sigkill(&u, &r, &[], "101");
}

#[test]
fn no_leak_after_sigkill_fuse() {
    let Some((u, r)) = user_and_rootfs() else {
        return;
    };
    if !fuse_usable() {
        return;
    }
    no_leak_after_sigkill(&u, &r, &["--rm", "--overlay", "fuse"], "103");
}

// ---------------------------------------------------------------------------------------
// More: stdin, signals from outside, network

#[test]
fn interactive_stdin() {
    let Some((u, r)) = user_and_rootfs() else {
        return;
    };
    let o = output_with_stdin(&mut brun(&u, &r, &["-i", "cat"]), b"hello\nworld\n");
    assert_eq!(o.code(), 0, "{}", o.stderr);
    assert_eq!(o.stdout, "hello\nworld\n");
    // Without -i the container's stdin is empty, even when ours has data.
    let o = output_with_stdin(&mut brun(&u, &r, &["cat"]), b"hello\n");
    assert_eq!(o.code(), 0, "{}", o.stderr);
    assert_eq!(o.stdout, "");
}

#[test]
fn container_killed_from_outside_is_137() {
    let Some((u, r)) = user_and_rootfs() else {
        return;
    };
    let marker = unique("victim");
    let script = format!("echo up; while :; do sleep 0.05; done; : {marker}");
    let mut run = Running::spawn(&mut brun(&u, &r, &["sh", "-c", &script]));
    run.expect_line("up", Duration::from_secs(20));
    // The container's PID 1: the runtime's child running the script.
    let victims = processes_of(u.uid, |p| {
        p.ppid == run.pid && p.comm == "sh" && p.cmdline.iter().any(|a| a.contains(&marker))
    });
    assert_eq!(victims.len(), 1, "the container's sh: {victims:?}");
    // SAFETY: kill on a pid we just found; it is the test user's container process.
    assert_eq!(unsafe { libc::kill(victims[0].pid, libc::SIGKILL) }, 0);
    let st = run.wait(Duration::from_secs(10));
    assert_eq!(st.code(), Some(137), "{st}");
}

#[test]
fn network_none_has_loopback_only() {
    let Some((u, r)) = user_and_rootfs() else {
        return;
    };
    let out = run_ok(&mut brun(
        &u,
        &r,
        &[
            "--network",
            "none",
            "sh",
            "-c",
            "ls /sys/class/net; ping -c1 -W2 127.0.0.1 >/dev/null && echo ping=ok",
        ],
    ));
    assert_eq!(out, "lo\nping=ok\n");
    // The namespace is made by a helper process beside the container's setup: it is the
    // container's own (not the host's, not another container's), sysfs shows it, and
    // the helper is gone before the command starts (nothing but PID 1 and ps inside).
    let host = run_ok(as_user(&u, "readlink").arg("/proc/self/ns/net"));
    let probe = "readlink /proc/self/ns/net; ls /proc | grep -c '^[0-9]'";
    let a = run_ok(&mut brun(&u, &r, &["--network", "none", "sh", "-c", probe]));
    let b = run_ok(&mut brun(&u, &r, &["--network", "none", "sh", "-c", probe]));
    let (ns_a, procs) = a.split_once('\n').unwrap();
    assert_ne!(ns_a, host.trim(), "the host's network namespace");
    assert_ne!(
        ns_a,
        b.lines().next().unwrap(),
        "two containers share a namespace"
    );
    // sh (PID 1) and the grep of the pipeline's other side (ls runs in sh's child).
    assert!(
        procs.trim().parse::<u32>().unwrap() <= 3,
        "processes inside: {a}"
    );
}

#[test]
fn network_host_shares_the_network_namespace() {
    let Some((u, r)) = user_and_rootfs() else {
        return;
    };
    let host = run_ok(as_user(&u, "readlink").arg("/proc/self/ns/net"));
    let inside = run_ok(&mut brun(
        &u,
        &r,
        &["--network", "host", "readlink", "/proc/self/ns/net"],
    ));
    assert_eq!(inside, host);
}

// ---------------------------------------------------------------------------------------
// Many runtimes at once

/// Every run collects the records of dead runtimes; a record that another runtime is
/// still creating must not be taken for one (nor its lock grabbed while testing it).
/// The race window is short, so this runs many containers in parallel.
#[test]
fn concurrent_runs_do_not_interfere() {
    let Some((u, r)) = user_and_rootfs() else {
        return;
    };
    let (threads, per_thread) = (6, 50);
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                for _ in 0..per_thread {
                    let o = output(&mut brun(&u, &r, &["true"]));
                    if o.code() != 0 {
                        failures.lock().unwrap().push(format!(
                            "exit {}: {}",
                            o.code(),
                            o.stderr.trim()
                        ));
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} concurrent runs failed: {failures:#?}",
        failures.len(),
        threads * per_thread
    );
}

// ---------------------------------------------------------------------------------------
// Terminal resize, user mapping limits

#[test]
fn tty_resize_is_relayed() {
    let Some((u, r)) = user_and_rootfs() else {
        return;
    };
    let ws = |rows, cols| nix::pty::Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&ws(40, 100)), None).expect("openpty");
    let slave = std::fs::File::from(pty.slave);
    let script = "trap 'stty size' WINCH; trap 'exit 3' TERM; echo ready; \
                  while :; do sleep 0.05; done";
    let mut c = brun(&u, &r, &["-t", "sh", "-c", script]);
    c.stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(Stdio::null());
    let child = c.spawn().expect("start the runtime");
    drop(c);
    drop(slave);
    let master = std::fs::File::from(pty.master);
    let master_fd = master.as_raw_fd();
    let (tx, lines) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut rd = std::io::BufReader::new(master);
        let mut line = String::new();
        while std::io::BufRead::read_line(&mut rd, &mut line).unwrap_or(0) > 0 {
            if tx.send(line.trim().to_string()).is_err() {
                break;
            }
            line.clear();
        }
    });
    let pid = child.id() as i32;
    // Reaped at the end, killed on any failure before.
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Reap(child);
    let expect = |want: &str| {
        let mut seen = Vec::new();
        loop {
            match lines.recv_timeout(Duration::from_secs(10)) {
                Ok(l) if l == want => return,
                Ok(l) => seen.push(l),
                Err(_) => panic!("no {want:?} on the terminal; got {seen:?}"),
            }
        }
    };
    expect("ready");
    // Our terminal changes size; a shell would get SIGWINCH, the runtime is told the same way.
    let new = ws(50, 120);
    // SAFETY: TIOCSWINSZ on our own pty master with a valid struct.
    assert_eq!(
        unsafe { libc::ioctl(master_fd, libc::TIOCSWINSZ, &new) },
        0,
        "resize our pty"
    );
    // SAFETY: kill on our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGWINCH) }, 0);
    expect("50 120");
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let ok = wait_until(Duration::from_secs(10), || {
        child.0.try_wait().ok().flatten().is_some()
    });
    assert!(ok, "the runtime did not exit after SIGTERM");
    assert_eq!(child.0.wait().unwrap().code(), Some(3));
}

#[test]
fn unmapped_user_is_refused() {
    let Some((u, r)) = user_and_rootfs() else {
        return;
    };
    let o = run_code(&mut brun(&u, &r, &["-u", "4000000", "true"]), 125);
    assert!(o.stderr.contains("not mapped"), "{}", o.stderr);
    assert_eq!(o.stderr_lines().len(), 1, "{}", o.stderr);
}

#[test]
fn hostname_length_limit() {
    let Some((u, r)) = user_and_rootfs() else {
        return;
    };
    let ok = "a".repeat(64);
    assert_eq!(
        run_ok(&mut brun(&u, &r, &["--hostname", &ok, "hostname"])),
        format!("{ok}\n")
    );
    let long = "a".repeat(65);
    run_code(&mut brun(&u, &r, &["--hostname", &long, "true"]), 125);
}

/// User namespaces forbidden by a seccomp filter, as inside another container: the
/// runtime, started inside one of its own containers (whose default profile refuses new
/// namespaces), must end in one line that names the cause, exit 125, and leave nothing.
#[test]
fn userns_forbidden_is_one_clear_line() {
    // The host's root: the binary needs the host's libc.
    let Some(u) = test_user() else { return };
    let inner = format!("{}:/rc:ro", user_bin().display());
    let o = output(&mut hrun(
        &u,
        &[
            "-v", &inner, "--", "/rc", "run", "--rm", "--rootfs", "/", "true",
        ],
    ));
    assert_eq!(o.code(), 125, "stdout: {} stderr: {}", o.stdout, o.stderr);
    let lines: Vec<&str> = o.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {}", o.stderr);
    assert!(
        lines[0].contains("cannot create the container's namespaces")
            && lines[0].contains("seccomp"),
        "names the cause: {}",
        lines[0]
    );
}

/// The kernel overlayfs whiteout probe runs once per kernel and caches its verdict in the
/// runtime's state; deleting a lower file works afterwards.
#[test]
fn overlay_whiteout_probe_is_cached() {
    let Some(u) = test_user() else { return };
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap()
        .trim()
        .to_string();
    let o = output(&mut hrun(
        &u,
        &[
            "--rm",
            "--network",
            "none",
            "sh",
            "-c",
            "rm /etc/hostname && test ! -e /etc/hostname && echo deleted",
        ],
    ));
    assert_eq!(o.code(), 0, "{}", o.stderr);
    assert_eq!(o.stdout.trim(), "deleted");
    let cache = u
        .run_dir_candidates()
        .into_iter()
        .map(|d| d.join("overlay.probe"))
        .find(|p| p.exists())
        .expect("overlay.probe in the run directory");
    let text = std::fs::read_to_string(&cache).unwrap();
    assert_eq!(text.trim(), format!("{release} ok"), "{}", cache.display());
    assert!(
        Path::new("/etc/hostname").exists(),
        "the host's file was deleted"
    );
}

/// Files a container left owned by a subordinate id are out of the user's reach, except
/// through `rootless_container unshare`, which maps them back.
#[test]
fn unshare_reaches_subordinate_files() {
    let Some((u, r)) = user_and_rootfs() else {
        return;
    };
    let marker = unique("sub");
    let _cleanup = KeptGuard(&u, marker.clone());
    let script = format!("mkdir /{marker} && touch /{marker}/f && chown -R 1000:1000 /{marker}");
    run_ok(
        rootless(&u)
            .args(["run", "--network", "none", "--rootfs"])
            .arg(&r)
            .args(["sh", "-c", &script]),
    );
    let kept = kept_containers_with(&u, &marker);
    assert_eq!(kept.len(), 1);
    let dir = kept[0].join("upper").join(&marker);
    let sub = subid_ranges("/etc/subuid", &u, u.uid);
    assert_eq!(
        std::fs::metadata(&dir).unwrap().uid(),
        sub[0].0 + 999,
        "container uid 1000 is subordinate id start+999"
    );
    // Plain rm as the user fails on the subordinate-owned directory.
    let plain = output(as_user(&u, "rm").args(["-rf"]).arg(&dir));
    assert_ne!(plain.code(), 0, "rm should be refused");
    let o = output(rootless(&u).args([
        "unshare",
        "sh",
        "-c",
        "id -u; rm -rf \"$0\"",
        dir.to_str().unwrap(),
    ]));
    assert_eq!(o.code(), 0, "{}", o.stderr);
    assert_eq!(o.stdout.trim(), "0");
    assert!(!dir.exists(), "unshare could not remove {}", dir.display());
}

// ---------------------------------------------------------------------------------------
// The single-id start: with nothing for the runtime to do between clone and execve (a
// single-id map, no cgroup, no network helper, no --init) the first process runs in the
// runtime's memory until it executes (CLONE_VM | CLONE_VFORK) and writes its own maps.
// Everything else above runs the fork path as the user with subordinate ids; these run
// the same behaviours as the user without them.

fn nosub_and_rootfs() -> Option<(User, std::path::PathBuf)> {
    let r = rootfs()?;
    let u = nosub_user()?;
    Some((u, r))
}

#[test]
fn single_id_start_exit_codes_and_reports() {
    let Some((u, r)) = nosub_and_rootfs() else {
        return;
    };
    for net in ["none", "host"] {
        let o = run_code(
            &mut brun(&u, &r, &["--network", net, "sh", "-c", "id -u; exit 7"]),
            7,
        );
        assert_eq!(o.stdout, "0\n", "--network {net}");
        let o = run_code(&mut brun(&u, &r, &["--network", net, "nosuchcmd"]), 127);
        assert!(o.stderr.contains("nosuchcmd"), "{}", o.stderr);
        run_code(&mut brun(&u, &r, &["--network", net, "/bin"]), 126);
        // A failure of the setup itself, reported by the first process before execve.
        let o = run_code(
            &mut brun(
                &u,
                &r,
                &["--network", net, "-v", "/etc/passwd:/bin", "true"],
            ),
            125,
        );
        assert_eq!(
            o.stderr.lines().filter(|l| !l.contains("warning")).count(),
            1,
            "{}",
            o.stderr
        );
    }
    // Its own maps, written by itself; its own network namespace with lo up.
    let o = output(&mut brun(
        &u,
        &r,
        &["--network", "none", "sh", "-c", MAPS_SCRIPT],
    ));
    assert_single_map(&o, &u, "subuid");
    let host = run_ok(as_user(&u, "readlink").arg("/proc/self/ns/net"));
    let out = run_ok(&mut brun(
        &u,
        &r,
        &[
            "--network",
            "none",
            "sh",
            "-c",
            "readlink /proc/self/ns/net; ls /sys/class/net; ping -c1 -W2 127.0.0.1 >/dev/null && echo ping=ok",
        ],
    ));
    let (ns, rest) = out.split_once('\n').unwrap();
    assert_ne!(ns, host.trim(), "the host's network namespace");
    assert_eq!(rest, "lo\nping=ok\n");
}

#[test]
fn single_id_start_forwards_signals() {
    let Some((u, r)) = nosub_and_rootfs() else {
        return;
    };
    let script = "trap 'echo got-TERM' TERM; trap 'echo got-USR2; exit 9' USR2; \
                  echo ready; while :; do sleep 0.05; done";
    let mut run = Running::spawn(&mut brun(
        &u,
        &r,
        &["--network", "none", "sh", "-c", script],
    ));
    run.expect_line("ready", Duration::from_secs(20));
    // The child made itself non-dumpable in the memory it borrowed: the runtime has its
    // own setting back (its /proc files stay the user's).
    let environ = output(as_user(&u, "cat").arg(format!("/proc/{}/environ", run.pid)));
    assert_eq!(
        environ.code(),
        0,
        "the runtime's environ: {}",
        environ.stderr
    );
    run.signal(libc::SIGTERM);
    run.expect_line("got-TERM", Duration::from_secs(5));
    run.signal(libc::SIGUSR2);
    run.expect_line("got-USR2", Duration::from_secs(5));
    let st = run.wait(Duration::from_secs(10));
    assert_eq!(st.code(), Some(9), "exit status {st}: {}", run.stderr_now());
}

#[test]
fn single_id_start_no_leak_after_sigkill() {
    let Some((u, r)) = nosub_and_rootfs() else {
        return;
    };
    no_leak_after_sigkill(&u, &r, &["--rm", "--network", "none"], "102");
}

#[test]
fn single_id_start_with_a_terminal() {
    let Some((u, r)) = nosub_and_rootfs() else {
        return;
    };
    let before = "stty rows 33 cols 77; ";
    let Some(o) = under_script(&u, &r, before, "--network none", "tty; stty size") else {
        return;
    };
    assert_eq!(o.code(), 0, "stdout: {}\nstderr: {}", o.stdout, o.stderr);
    assert!(o.stdout.contains("/dev/pts/"), "tty inside: {:?}", o.stdout);
    assert!(
        o.stdout.contains("33 77"),
        "window size inside: {:?}",
        o.stdout
    );
}
