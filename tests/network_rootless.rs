//! Rootless networking through slirp4netns, as the unprivileged test user. Everything
//! talks only to the host's loopback or to the container's own namespace.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

fn slirp_usable() -> bool {
    if which("slirp4netns").is_none() {
        skip("slirp4netns is not installed");
        return false;
    }
    let tun_ok = std::fs::metadata("/dev/net/tun")
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o006 == 0o006)
        .unwrap_or(false);
    if !tun_ok {
        skip("/dev/net/tun is missing or not 0666 (contrib/test-setup.sh fixes it)");
        return false;
    }
    true
}

fn setup() -> Option<(User, std::path::PathBuf)> {
    if !slirp_usable() {
        return None;
    }
    user_and_rootfs()
}

/// A free TCP port on the host's loopback.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// slirp4netns processes serving the container whose init has host pid `pid`.
fn slirp_of(uid: u32, pid: i32) -> Vec<Proc> {
    let needle = format!("--userns-path=/proc/{pid}/ns/user");
    processes_of(uid, |p| {
        p.comm == "slirp4netns" && p.cmdline.iter().any(|a| a == &needle)
    })
}

/// The container's init pid from its runtime record (written once the command runs,
/// which may be just after the command printed its first line).
fn record_pid(run_dir: &Path, id: &Path) -> i32 {
    let mut pid = 0;
    wait_until(Duration::from_secs(5), || {
        let state =
            std::fs::read_to_string(run_dir.join(id).join("state.json")).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&state).unwrap_or_default();
        pid = v["pid"].as_i64().unwrap_or(0) as i32;
        pid > 0
    });
    assert!(pid > 0, "no pid in the record of {}", id.display());
    pid
}

#[test]
fn default_network_is_configured() {
    let Some((u, r)) = setup() else { return };
    let out = run_ok(rootless(&u).args(["run", "--rm", "--hostname", "web1", "--rootfs"]).arg(&r).args([
        "sh",
        "-c",
        "ip -4 addr show tap0 | grep -o 'inet [0-9./]*'; ip route | grep default; cat /etc/resolv.conf /etc/hosts /etc/hostname",
    ]));
    assert!(out.contains("inet 10.0.2.100/24"), "address: {out}");
    assert!(
        out.contains("default via 10.0.2.2 dev tap0"),
        "route: {out}"
    );
    assert!(out.contains("nameserver 10.0.2.3"), "resolv.conf: {out}");
    assert!(out.contains("10.0.2.100\tweb1"), "/etc/hosts: {out}");
    assert!(out.lines().any(|l| l == "web1"), "/etc/hostname: {out}");
}

#[test]
fn dns_and_add_host() {
    let Some((u, r)) = setup() else { return };
    let out = run_ok(
        rootless(&u)
            .args([
                "run",
                "--rm",
                "--dns",
                "192.0.2.53",
                "--add-host",
                "db:192.0.2.7",
                "--rootfs",
            ])
            .arg(&r)
            .args(["sh", "-c", "cat /etc/resolv.conf /etc/hosts"]),
    );
    assert!(
        out.contains("nameserver 192.0.2.53") && !out.contains("nameserver 10.0.2.3"),
        "{out}"
    );
    assert!(out.contains("192.0.2.7\tdb"), "{out}");
    let o = output(
        rootless(&u)
            .args(["run", "--rm", "--dns", "nope", "--rootfs"])
            .arg(&r)
            .arg("true"),
    );
    assert_eq!(o.code(), 125, "{}", o.stderr);
}

/// `-p` publishes a server inside the container on the host's loopback; the helper is
/// gone when the container is, both after a normal exit and after a SIGKILL of the runtime.
#[test]
fn publish_port_and_helper_lifetime() {
    let Some((u, r)) = setup() else { return };
    let port = free_port();
    let name = unique("web");
    let script = "mkdir -p /dev/shm/www && echo hello-from-the-container > /dev/shm/www/index.html && httpd -p 80 -h /dev/shm/www && echo up && sleep 100";
    let mut c = rootless(&u);
    c.args([
        "run",
        "--rm",
        "--name",
        &name,
        "-p",
        &format!("127.0.0.1:{port}:80"),
        "--rootfs",
    ])
    .arg(&r)
    .args(["sh", "-c", script]);
    let mut run = Running::spawn(&mut c);
    run.expect_line("up", Duration::from_secs(20));
    let (run_dir, id) = u
        .find_named(&name)
        .expect("record of the running container");
    let pid = record_pid(&run_dir, &id);
    assert_eq!(
        slirp_of(u.uid, pid).len(),
        1,
        "one slirp4netns for the container"
    );

    // httpd has been started before "up"; connect and fetch.
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let attempt = TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut b = String::new();
            s.read_to_string(&mut b)?;
            Ok(b)
        });
        match attempt {
            Ok(b) if b.contains("hello") => break b,
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            other => panic!("no answer on 127.0.0.1:{port}: {other:?}"),
        }
    };
    assert!(
        body.starts_with("HTTP/1.") && body.contains("hello-from-the-container"),
        "{body}"
    );

    // SIGKILL of the runtime: the helper must go too (its exit pipe closes).
    run.signal(libc::SIGKILL);
    let _ = run.wait(Duration::from_secs(10));
    assert!(
        wait_until(Duration::from_secs(5), || slirp_of(u.uid, pid).is_empty()),
        "slirp4netns survived the runtime: {:?}",
        slirp_of(u.uid, pid)
    );
    assert!(
        wait_until(Duration::from_secs(5), || TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_err()),
        "port {port} is still published"
    );
}

#[test]
fn helper_exits_with_the_container() {
    let Some((u, r)) = setup() else { return };
    let name = unique("short");
    let mut run = Running::spawn(
        rootless(&u)
            .args(["run", "--rm", "--name", &name, "--rootfs"])
            .arg(&r)
            .args(["sh", "-c", "echo up; sleep 1"]),
    );
    run.expect_line("up", Duration::from_secs(20));
    let (run_dir, id) = u.find_named(&name).expect("record");
    let pid = record_pid(&run_dir, &id);
    assert_eq!(slirp_of(u.uid, pid).len(), 1);
    let st = run.wait(Duration::from_secs(20));
    assert_eq!(st.code(), Some(0));
    assert!(
        wait_until(Duration::from_secs(3), || slirp_of(u.uid, pid).is_empty()),
        "slirp4netns outlived the container"
    );
}

/// The host's loopback is reachable (at 10.0.2.2) only with allow_host_loopback=true.
#[test]
fn host_loopback_only_when_allowed() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let Some((u, r)) = setup() else { return };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accept and hang up at once, counting connections.
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    std::thread::spawn(move || {
        for mut c in listener.incoming().flatten() {
            counter.fetch_add(1, Ordering::SeqCst);
            let _ = c.write_all(b"pong\n");
        }
    });
    let probe = format!(
        "echo ping | nc -w 2 10.0.2.2 {port} >/dev/null 2>&1 && echo reached || echo refused"
    );
    let blocked = run_ok(
        rootless(&u)
            .args(["run", "--rm", "--rootfs"])
            .arg(&r)
            .args(["sh", "-c", &probe]),
    );
    assert_eq!(blocked.trim(), "refused");
    assert_eq!(
        seen.load(Ordering::SeqCst),
        0,
        "a connection arrived although host loopback is disabled"
    );
    let allowed = run_ok(
        rootless(&u)
            .args([
                "run",
                "--rm",
                "--network",
                "slirp4netns:allow_host_loopback=true",
                "--rootfs",
            ])
            .arg(&r)
            .args(["sh", "-c", &probe]),
    );
    assert_eq!(allowed.trim(), "reached");
    assert!(
        seen.load(Ordering::SeqCst) >= 1,
        "the listener saw no connection"
    );
}

#[test]
fn port_in_use_is_a_clear_error() {
    let Some((u, r)) = setup() else { return };
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let t = Instant::now();
    let o = output(
        rootless(&u)
            .args([
                "run",
                "--rm",
                "-p",
                &format!("127.0.0.1:{port}:80"),
                "--rootfs",
            ])
            .arg(&r)
            .args(["sh", "-c", "echo started"]),
    );
    assert_eq!(o.code(), 125, "{}", o.stderr);
    assert!(!o.stdout.contains("started"), "the container ran");
    assert_eq!(o.stderr.lines().count(), 1, "one line: {}", o.stderr);
    assert!(
        o.stderr.contains(&port.to_string()) && o.stderr.contains("in use"),
        "{}",
        o.stderr
    );
    assert!(t.elapsed() < Duration::from_secs(5));
    for bad in [
        vec!["-p", "80"],
        vec!["-p", "x:80"],
        vec!["--network", "none", "-p", "18080:80"],
    ] {
        let o = output(
            rootless(&u)
                .args(["run", "--rm"])
                .args(&bad)
                .arg("--rootfs")
                .arg(&r)
                .arg("true"),
        );
        assert_eq!(o.code(), 125, "{bad:?}: {}", o.stderr);
    }
}

/// pasta with the same addresses as slirp4netns, -p publishing, host loopback only when
/// allowed, and no pasta left once the container is gone.
#[test]
fn pasta_network() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    if which("pasta").is_none() {
        skip("pasta is not installed (apt install passt)");
        return;
    }
    let Some((u, r)) = setup() else { return };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let lport = listener.local_addr().unwrap().port();
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    std::thread::spawn(move || {
        for mut c in listener.incoming().flatten() {
            counter.fetch_add(1, Ordering::SeqCst);
            let _ = c.write_all(b"pong\n");
        }
    });
    let config = "ip -4 addr show eth0 | grep -o 'inet [0-9./]*'; ip route | grep default; grep nameserver /etc/resolv.conf";
    // Only with the gateway mapped to the host's loopback is 10.0.2.2 probed: without the
    // mapping pasta would send the connection to a real 10.0.2.2 outside this machine.
    let probe =
        format!("echo ping | timeout 5 nc -w 2 10.0.2.2 {lport} >/dev/null 2>&1; echo probed");
    let out = run_ok(
        rootless(&u)
            .args(["run", "--rm", "--network", "pasta", "--rootfs"])
            .arg(&r)
            .args(["sh", "-c", config]),
    );
    assert!(out.contains("inet 10.0.2.100/24"), "{out}");
    assert!(out.contains("default via 10.0.2.2"), "{out}");
    assert!(out.contains("nameserver 10.0.2.3"), "{out}");
    let out = run_ok(
        rootless(&u)
            .args([
                "run",
                "--rm",
                "--network",
                "pasta:allow_host_loopback=true",
                "--rootfs",
            ])
            .arg(&r)
            .args(["sh", "-c", &probe]),
    );
    assert!(out.trim_end().ends_with("probed"), "{out}");
    // Counted at the listener: this passt does not always pass the listener's close on to
    // the container, so nc's own status is not a reliable witness.
    assert!(
        wait_until(Duration::from_secs(3), || seen.load(Ordering::SeqCst) >= 1),
        "the host listener saw no connection"
    );

    let port = free_port();
    let name = unique("pasta");
    let script = "mkdir -p /dev/shm/www && echo hello-through-pasta > /dev/shm/www/index.html && httpd -p 80 -h /dev/shm/www && echo up && sleep 100";
    let mut run = Running::spawn(
        rootless(&u)
            .args([
                "run",
                "--rm",
                "--name",
                &name,
                "--network",
                "pasta",
                "-p",
                &format!("127.0.0.1:{port}:80"),
                "--rootfs",
            ])
            .arg(&r)
            .args(["sh", "-c", script]),
    );
    run.expect_line("up", Duration::from_secs(20));
    let mut body = String::new();
    let ok = wait_until(Duration::from_secs(10), || {
        body.clear();
        TcpStream::connect(("127.0.0.1", port))
            .and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
                s.read_to_string(&mut body)
            })
            .is_ok()
            && body.contains("hello-through-pasta")
    });
    assert!(ok, "no answer through pasta on {port}: {body:?}");
    let (run_dir, id) = u.find_named(&name).expect("record");
    let pid = record_pid(&run_dir, &id);
    // pasta runs as passt.avx2 (or passt) under the name pasta in argv[0].
    let pastas_of = |needle: String| {
        processes()
            .into_iter()
            .filter(|p| {
                p.cmdline.first().is_some_and(|a| a.ends_with("pasta"))
                    && p.cmdline.iter().any(|a| a.contains(&needle))
            })
            .collect::<Vec<_>>()
    };
    let pastas = || pastas_of(format!("/proc/{pid}/ns/net"));
    assert_eq!(pastas().len(), 1, "one pasta for the container");
    // This passt (2023) does not quit when the namespace goes: the runtime kills it at the
    // end, and after a SIGKILL of the runtime the next command does.
    run.signal(libc::SIGKILL);
    let _ = run.wait(Duration::from_secs(10));
    let o = output(
        rootless(&u)
            .args(["run", "--rm", "--network", "none", "--rootfs"])
            .arg(&r)
            .arg("true"),
    );
    assert_eq!(o.code(), 0, "{}", o.stderr);
    assert!(
        wait_until(Duration::from_secs(5), || pastas().is_empty()),
        "pasta outlived the container: {:?}",
        pastas()
    );
    // And none is left by the earlier, normally ended runs.
    assert!(
        wait_until(Duration::from_secs(5), || pastas_of("/ns/net".into())
            .iter()
            .all(|p| p.uid != u.uid)),
        "pasta processes left: {:?}",
        pastas_of("/ns/net".into())
    );
}
