//! Root mode's bridge network (rc0, 10.88.0.0/16): addresses, container to container,
//! published ports from the host, NAT to a "remote" host, conflicts and clean-up.
//! Traffic goes only to the host's loopback, the bridge, and a network namespace the test
//! creates itself (198.51.100.0/24, TEST-NET-2). Skipped unless the tests run as root.
//!
//! Other tests run at the same time: every check is about this test's own containers
//! (by id), never about the bridge being empty.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const LEASES: &str = "/var/lib/rootless_container/bridge";

fn setup() -> Option<PathBuf> {
    require_root()?;
    if which("nft").is_none() {
        skip("nft is not installed (apt install nftables; contrib/test-setup.sh does it)");
        return None;
    }
    rootfs()
}

/// A free TCP port on the host.
fn free_port() -> u16 {
    TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The id of the running container `name` (its record's name link), waiting for it.
fn container_id(name: &str) -> String {
    let u = root_user();
    let mut id = None;
    wait_until(Duration::from_secs(10), || {
        id = u.find_named(name).map(|(_, id)| id);
        id.is_some()
    });
    id.unwrap_or_else(|| panic!("no record for container {name}"))
        .to_string_lossy()
        .into_owned()
}

/// Lease and port files naming `id`.
fn lease_files(id: &str) -> Vec<PathBuf> {
    ["leases", "ports"]
        .iter()
        .flat_map(|d| {
            std::fs::read_dir(Path::new(LEASES).join(d))
                .into_iter()
                .flatten()
        })
        .flatten()
        .map(|e| e.path())
        .filter(|p| std::fs::read_to_string(p).is_ok_and(|s| s.trim() == id))
        .collect()
}

/// The address leased to container `id`.
fn address_of(id: &str) -> Ipv4Addr {
    let mut addr = None;
    wait_until(Duration::from_secs(10), || {
        addr = lease_files(id)
            .iter()
            .filter(|p| p.parent().is_some_and(|d| d.ends_with("leases")))
            .find_map(|p| p.file_name()?.to_str()?.parse().ok());
        addr.is_some()
    });
    addr.unwrap_or_else(|| panic!("no address lease for container {id}"))
}

fn host_veth(id: &str) -> PathBuf {
    Path::new("/sys/class/net").join(format!("rc{}", &id[..12]))
}

fn nft_ruleset() -> String {
    let o = Command::new(which("nft").unwrap())
        .args(["list", "ruleset"])
        .output()
        .expect("nft list ruleset");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Whatever of container `id` is left on the host: its veth, rules, lease files.
fn leftovers(id: &str) -> Vec<String> {
    let mut left = Vec::new();
    if host_veth(id).exists() {
        left.push(format!("veth {}", host_veth(id).display()));
    }
    if nft_ruleset().contains(&id[..12]) {
        left.push(format!("nft rules mentioning {}", &id[..12]));
    }
    for f in lease_files(id) {
        left.push(format!("lease {}", f.display()));
    }
    left
}

/// One HTTP/1.0 GET; the response, or None when nothing answers.
fn http_get(addr: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    (!out.is_empty()).then_some(out)
}

/// Retry `http_get` for a while (the server inside may still be starting).
fn fetch(addr: SocketAddr) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(body) = http_get(addr) {
            return body;
        }
        assert!(Instant::now() < deadline, "nothing answers on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A web root with an index page holding `marker`.
fn www(marker: &str) -> TempDir {
    let t = TempDir::new("rc-www");
    std::fs::write(t.path().join("index.html"), format!("{marker}\n")).unwrap();
    t
}

/// End a container run with `--init` the way `docker stop` would: SIGTERM to the runtime
/// (forwarded), then check that it ended.
fn stop(mut run: Running) {
    run.signal(libc::SIGTERM);
    let _ = run.wait(Duration::from_secs(20));
}

/// busybox httpd on port 80 in a named bridge container, with `extra` run flags.
fn httpd(r: &Path, name: &str, www: &Path, extra: &[&str]) -> Running {
    let vol = format!("{}:/www:ro", www.display());
    let mut args = vec!["--init", "--name", name, "-v", &vol];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["sh", "-c", "echo up; exec httpd -f -p 80 -h /www"]);
    let mut run = Running::spawn(&mut brun(r, &args));
    run.expect_line("up", Duration::from_secs(20));
    run
}

#[test]
fn bridge_is_the_root_default_and_configured() {
    let Some(r) = setup() else { return };
    let out = run_ok(&mut brun(
        &r,
        &[
            "--hostname",
            "web1",
            "--mac-address",
            "02:42:ac:11:00:99",
            "sh",
            "-c",
            "ip -4 -o addr show eth0; ip route; cat /sys/class/net/eth0/address /etc/hosts /etc/hostname /etc/resolv.conf",
        ],
    ));
    let addr = out
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .unwrap_or_else(|| panic!("no IPv4 address on eth0: {out}"));
    let (ip, prefix) = addr.split_once('/').unwrap();
    let ip: Ipv4Addr = ip.parse().unwrap();
    assert_eq!(prefix, "16", "{out}");
    assert_eq!(ip.octets()[..2], [10, 88], "{out}");
    assert!(
        out.contains("default via 10.88.0.1 dev eth0"),
        "route: {out}"
    );
    assert!(out.contains("02:42:ac:11:00:99"), "--mac-address: {out}");
    assert!(out.contains(&format!("{ip}\tweb1")), "/etc/hosts: {out}");
    assert!(out.lines().any(|l| l == "web1"), "/etc/hostname: {out}");
    // The host's resolver when it is reachable from the bridge, never a loopback one.
    assert!(!out.contains("nameserver 127."), "resolv.conf: {out}");

    let o = output(&mut brun(
        &r,
        &["--mac-address", "01:00:5e:00:00:01", "true"],
    ));
    assert_eq!(o.code(), 125, "multicast MAC: {}", o.stderr);
    assert_eq!(o.stderr_lines().len(), 1, "{}", o.stderr);
}

#[test]
fn containers_reach_each_other() {
    let Some(r) = setup() else { return };
    let marker = unique("peer");
    let w = www(&marker);
    let name = unique("rc-peer");
    let server = httpd(&r, &name, w.path(), &[]);
    let ip = address_of(&container_id(&name));
    let script = format!(
        "for i in $(seq 100); do printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc {ip} 80 && exit 0; sleep 0.1; done; exit 1"
    );
    let out = run_ok(&mut brun(&r, &["sh", "-c", &script]));
    assert!(out.contains(&marker), "from {ip}:80: {out}");
    stop(server);
}

#[test]
fn published_port_from_the_host() {
    let Some(r) = setup() else { return };
    let marker = unique("pub");
    let w = www(&marker);
    let name = unique("rc-pub");
    let port = free_port();
    let spec = format!("{port}:80");
    let server = httpd(&r, &name, w.path(), &["-p", &spec]);
    let id = container_id(&name);
    for host in [Ipv4Addr::LOCALHOST, Ipv4Addr::new(10, 88, 0, 1)] {
        let body = fetch(SocketAddr::from((host, port)));
        assert!(body.contains(&marker), "from {host}:{port}: {body}");
    }
    // From another container through the host's published port (hairpin NAT).
    let script = format!(
        "for i in $(seq 100); do printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc 10.88.0.1 {port} && exit 0; sleep 0.1; done; exit 1"
    );
    let out = run_ok(&mut brun(&r, &["sh", "-c", &script]));
    assert!(
        out.contains(&marker),
        "from a container via 10.88.0.1:{port}: {out}"
    );
    // The container's rules are its own chain, named after it.
    assert!(nft_ruleset().contains(&format!("c-{}", &id[..12])));
    stop(server);
    assert_eq!(leftovers(&id), Vec::<String>::new(), "after stop");
}

/// A "remote" host: a network namespace with 198.51.100.2/24, reached from the host
/// through a veth pair (host side 198.51.100.1/24). Removed on drop.
struct Remote {
    ns: String,
    host_if: String,
}

const REMOTE_HOST_SIDE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const REMOTE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);

fn ip(args: &[&str]) {
    let o = Command::new(which("ip").expect("iproute2"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

impl Remote {
    fn create() -> Option<Remote> {
        let routes = Command::new(which("ip")?)
            .args(["-4", "route", "show", "198.51.100.0/24"])
            .output()
            .ok()?;
        if !routes.stdout.is_empty() {
            skip("198.51.100.0/24 is already routed on this host");
            return None;
        }
        let tag = format!("{:x}", std::process::id() & 0xffffff);
        let r = Remote {
            ns: unique("rc-remote"),
            host_if: format!("nat{tag}h"),
        };
        let peer = format!("nat{tag}r");
        ip(&["netns", "add", &r.ns]);
        ip(&[
            "link", "add", &r.host_if, "type", "veth", "peer", "name", &peer, "netns", &r.ns,
        ]);
        ip(&["addr", "add", "198.51.100.1/24", "dev", &r.host_if]);
        ip(&["link", "set", &r.host_if, "up"]);
        ip(&["-n", &r.ns, "addr", "add", "198.51.100.2/24", "dev", &peer]);
        ip(&["-n", &r.ns, "link", "set", &peer, "up"]);
        ip(&["-n", &r.ns, "link", "set", "lo", "up"]);
        Some(r)
    }

    /// A TCP listener inside the namespace (a socket keeps the namespace it was made in).
    fn listen(&self, port: u16) -> TcpListener {
        let ns = std::fs::File::open(format!("/run/netns/{}", self.ns)).unwrap();
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            // SAFETY: setns on this short-lived thread only.
            assert_eq!(
                unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
                0,
                "setns"
            );
            TcpListener::bind((REMOTE, port)).unwrap()
        })
        .join()
        .unwrap()
    }

    /// `http_get` from inside the namespace.
    fn http_get(&self, addr: SocketAddr) -> Option<String> {
        let ns = std::fs::File::open(format!("/run/netns/{}", self.ns)).unwrap();
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            // SAFETY: setns on this short-lived thread only.
            assert_eq!(
                unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
                0,
                "setns"
            );
            http_get(addr)
        })
        .join()
        .unwrap()
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

#[test]
fn outbound_traffic_is_masqueraded() {
    let Some(r) = setup() else { return };
    let Some(remote) = Remote::create() else {
        return;
    };
    let listener = remote.listen(9000);
    listener.set_nonblocking(true).unwrap();
    let script = format!(
        "for i in $(seq 100); do echo hello | nc {REMOTE} 9000 && exit 0; sleep 0.1; done; exit 1"
    );
    let mut client = Running::spawn(&mut brun(&r, &["sh", "-c", &script]));
    let deadline = Instant::now() + Duration::from_secs(20);
    let peer = loop {
        match listener.accept() {
            Ok((mut s, peer)) => {
                let mut b = String::new();
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let _ = s.read_to_string(&mut b);
                assert_eq!(b.trim(), "hello");
                break peer;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    Instant::now() < deadline,
                    "the container never reached {REMOTE}:9000"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    assert_eq!(
        peer.ip(),
        std::net::IpAddr::V4(REMOTE_HOST_SIDE),
        "not masqueraded"
    );
    assert!(client.wait(Duration::from_secs(20)).success());

    // The other way: a LAN host that routes 10.88.0.0/16 through this host reaches a
    // published port through the host's address, and nothing else of the container.
    ip(&[
        "-n",
        &remote.ns,
        "route",
        "add",
        "10.88.0.0/16",
        "via",
        "198.51.100.1",
    ]);
    let marker = unique("lan");
    let w = www(&marker);
    let name = unique("rc-lan");
    let port = free_port();
    let spec = format!("{port}:80");
    let vol = format!("{}:/www:ro", w.path().display());
    let mut server = Running::spawn(&mut brun(
        &r,
        &[
            "--init",
            "--name",
            &name,
            "-v",
            &vol,
            "-p",
            &spec,
            "sh",
            "-c",
            "httpd -p 81 -h /www && echo up; exec httpd -f -p 80 -h /www",
        ],
    ));
    server.expect_line("up", Duration::from_secs(20));
    let addr = address_of(&container_id(&name));
    let published = SocketAddr::from((REMOTE_HOST_SIDE, port));
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        if let Some(b) = remote.http_get(published) {
            break b;
        }
        assert!(
            Instant::now() < deadline,
            "the LAN host cannot reach {published}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        body.contains(&marker),
        "from the LAN via {published}: {body}"
    );
    // The container answers on 10.88.0.x:81 (checked from the host, as a control)...
    assert!(fetch(SocketAddr::from((addr, 81))).contains(&marker));
    // ...but not to the LAN, on an unpublished port or the published one's own address.
    for p in [81, 80] {
        let direct = SocketAddr::from((addr, p));
        assert_eq!(
            remote.http_get(direct),
            None,
            "the LAN host reached {direct} directly"
        );
    }
    stop(server);
}

#[test]
fn port_conflicts_are_clear_errors() {
    let Some(r) = setup() else { return };
    // Taken by a program on the host.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let o = output(&mut brun(
        &r,
        &["-p", &format!("127.0.0.1:{port}:80"), "true"],
    ));
    assert_eq!(o.code(), 125, "{}", o.stderr);
    assert_eq!(o.stderr_lines().len(), 1, "{}", o.stderr);
    assert!(o.stderr.contains(&port.to_string()), "{}", o.stderr);
    drop(l);

    // One host port twice, with different host addresses: the bridge has one DNAT entry
    // per protocol and port, so it is the same port.
    let p = free_port();
    let o = output(&mut brun(
        &r,
        &[
            "-p",
            &format!("127.0.0.1:{p}:80"),
            "-p",
            &format!("192.0.2.5:{p}:81"),
            "true",
        ],
    ));
    assert_eq!(o.code(), 125, "{}", o.stderr);
    assert_eq!(o.stderr_lines().len(), 1, "{}", o.stderr);
    assert!(o.stderr.contains("published twice"), "{}", o.stderr);

    // Published by another container.
    let t = TempDir::new("rc-bridge-holder");
    let spec = format!("{}:80", free_port());
    let name = unique("rc-holder");
    let (mut holder, _) = stoppable(&r, &name, t.path(), &spec, &[]);
    let second = unique("rc-second");
    let o = output(&mut brun(&r, &["--name", &second, "-p", &spec, "true"]));
    assert_eq!(o.code(), 125, "{}", o.stderr);
    assert_eq!(o.stderr_lines().len(), 1, "{}", o.stderr);
    assert!(o.stderr.contains("already publishes"), "{}", o.stderr);
    std::fs::write(t.path().join("stop"), "").unwrap();
    assert!(holder.wait(Duration::from_secs(20)).success());
}

#[test]
fn bridge_needs_root() {
    let Some(r) = setup() else { return };
    let Some(u) = test_user() else { return };
    let o = output(
        rootless(&u)
            .args(["run", "--rm", "--network", "bridge", "--rootfs"])
            .arg(&r)
            .arg("true"),
    );
    assert_eq!(o.code(), 125, "{}", o.stderr);
    assert_eq!(o.stderr_lines().len(), 1, "{}", o.stderr);
    assert!(o.stderr.contains("needs root"), "{}", o.stderr);
}

/// A container publishing `port` that ends when `stop` appears in `dir`.
fn stoppable(r: &Path, name: &str, dir: &Path, port: &str, extra: &[&str]) -> (Running, String) {
    let vol = format!("{}:/w", dir.display());
    let mut args = vec!["--name", name, "-p", port, "-v", &vol];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[
        "sh",
        "-c",
        "echo up; while [ ! -e /w/stop ]; do sleep 0.05; done",
    ]);
    let mut run = Running::spawn(&mut brun(r, &args));
    run.expect_line("up", Duration::from_secs(20));
    let id = container_id(name);
    assert!(host_veth(&id).exists(), "no veth for {id}");
    assert!(
        !lease_files(&id).is_empty() && nft_ruleset().contains(&id[..12]),
        "no lease or rule for {id}"
    );
    (run, id)
}

#[test]
fn nothing_left_after_exit_sigterm_or_sigkill() {
    let Some(r) = setup() else { return };
    let t = TempDir::new("rc-bridge-clean");

    // The container exits by itself.
    let name = unique("rc-exit");
    let (mut run, id) = stoppable(&r, &name, t.path(), &format!("{}:80", free_port()), &[]);
    std::fs::write(t.path().join("stop"), "").unwrap();
    assert!(run.wait(Duration::from_secs(20)).success());
    assert_eq!(leftovers(&id), Vec::<String>::new(), "after exit");
    std::fs::remove_file(t.path().join("stop")).unwrap();

    // SIGTERM to the runtime: forwarded to --init, which ends the command.
    let name = unique("rc-term");
    let (mut run, id) = stoppable(
        &r,
        &name,
        t.path(),
        &format!("{}:80", free_port()),
        &["--init"],
    );
    run.signal(libc::SIGTERM);
    let _ = run.wait(Duration::from_secs(20));
    assert_eq!(leftovers(&id), Vec::<String>::new(), "after SIGTERM");

    // SIGKILL of the runtime: the container dies with it, the kernel removes the veth
    // with its namespace, and the next command collects the rules and leases.
    let name = unique("rc-kill");
    let (mut run, id) = stoppable(&r, &name, t.path(), &format!("{}:80", free_port()), &[]);
    run.signal(libc::SIGKILL);
    let _ = run.wait(Duration::from_secs(10));
    run_ok(&mut brun(&r, &["--network", "none", "true"]));
    let mut left = Vec::new();
    let clean = wait_until(Duration::from_secs(5), || {
        left = leftovers(&id);
        left.is_empty()
    });
    assert!(clean, "after SIGKILL and another run: {left:?}");
}

/// The pid of the container process (a `sh`) whose command line holds `marker`.
fn container_pid(marker: &str) -> i32 {
    let mut pid = None;
    wait_until(Duration::from_secs(10), || {
        pid = processes()
            .into_iter()
            .find(|p| p.comm == "sh" && p.cmdline.iter().any(|a| a.contains(marker)))
            .map(|p| p.pid);
        pid.is_some()
    });
    pid.unwrap_or_else(|| panic!("no container process with {marker}"))
}

fn parse_mac(s: &str) -> [u8; 6] {
    let mut m = [0u8; 6];
    for (b, p) in m.iter_mut().zip(s.trim().split(':')) {
        *b = u8::from_str_radix(p, 16).unwrap();
    }
    m
}

/// An Ethernet frame holding one IPv4/UDP datagram `src` -> `dst:dport`.
fn udp_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, 17, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let mut sum: u32 = ip
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]); // no UDP checksum (allowed over IPv4)
    f.extend_from_slice(payload);
    f
}

/// Send `frames` on `eth0` of the network namespace of process `pid` through an AF_PACKET
/// socket: what a process of the container can do with its default CAP_NET_RAW.
fn send_frames_from(pid: i32, frames: Vec<Vec<u8>>) {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).unwrap();
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        // SAFETY: setns on this short-lived thread only; plain socket calls on our own fd
        // with buffers that outlive them.
        unsafe {
            assert_eq!(libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET), 0, "setns");
            let index = libc::if_nametoindex(c"eth0".as_ptr());
            assert!(index > 0, "no eth0 in the container");
            let proto = (libc::ETH_P_IP as u16).to_be();
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto));
            assert!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            for f in &frames {
                let mut sll: libc::sockaddr_ll = std::mem::zeroed();
                sll.sll_family = libc::AF_PACKET as u16;
                sll.sll_protocol = proto;
                sll.sll_ifindex = index as i32;
                sll.sll_halen = 6;
                sll.sll_addr[..6].copy_from_slice(&f[..6]);
                let n = libc::sendto(
                    fd,
                    f.as_ptr().cast(),
                    f.len(),
                    0,
                    (&sll as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                );
                assert_eq!(
                    n,
                    f.len() as isize,
                    "sendto: {}",
                    std::io::Error::last_os_error()
                );
            }
            libc::close(fd);
        }
    })
    .join()
    .unwrap();
}

/// Datagrams arriving on `s` within `wait`.
fn datagrams(s: &std::net::UdpSocket, wait: Duration) -> Vec<String> {
    let deadline = Instant::now() + wait;
    let mut out = Vec::new();
    let mut buf = [0u8; 1500];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return out;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.recv(&mut buf) {
            Ok(n) => out.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(_) => return out,
        }
    }
}

/// route_localnet=1 on rc0 (for the DNAT of 127.0.0.1:PORT) must not let a container reach
/// the host's loopback services (CVE-2020-8558): frames a container crafts to rc0's MAC
/// with a 127.0.0.0/8 destination or source are dropped. The frames go out of the
/// container's real eth0 (an AF_PACKET socket opened in its network namespace), as an
/// attacker inside would send them; a frame to 10.88.0.1 sent the same way shows that the
/// path itself works.
#[test]
fn container_cannot_reach_host_loopback() {
    let Some(r) = setup() else { return };
    let t = TempDir::new("rc-localnet");
    let marker = unique("localnet");
    let name = unique("rc-localnet");
    let mac = "02:42:ac:11:7e:01";
    let vol = format!("{}:/w", t.path().display());
    let script = format!("echo up; while [ ! -e /w/stop ]; do sleep 0.05; done; : {marker}");
    let mut run = Running::spawn(&mut brun(
        &r,
        &[
            "--name",
            &name,
            "--mac-address",
            mac,
            "-v",
            &vol,
            "sh",
            "-c",
            &script,
        ],
    ));
    run.expect_line("up", Duration::from_secs(20));
    let id = container_id(&name);
    let addr = address_of(&id);
    let pid = container_pid(&marker);

    let on_lo = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let on_gw = std::net::UdpSocket::bind("10.88.0.1:0").unwrap();
    let lo_port = on_lo.local_addr().unwrap().port();
    let gw_port = on_gw.local_addr().unwrap().port();
    let rc0 = parse_mac(&std::fs::read_to_string("/sys/class/net/rc0/address").unwrap());
    let me = parse_mac(mac);
    let gw = Ipv4Addr::new(10, 88, 0, 1);
    let lo = Ipv4Addr::LOCALHOST;
    let mut frames = Vec::new();
    for _ in 0..3 {
        frames.push(udp_frame(rc0, me, addr, lo, lo_port, b"to-loopback"));
        frames.push(udp_frame(rc0, me, lo, gw, gw_port, b"from-loopback"));
    }
    frames.push(udp_frame(rc0, me, addr, gw, gw_port, b"control"));
    send_frames_from(pid, frames);

    // In order: once the control datagram is in, the others were judged already.
    let got = datagrams(&on_gw, Duration::from_secs(3));
    assert!(
        got.iter().any(|d| d == "control"),
        "the crafted control frame to {gw}:{gw_port} did not arrive: the test does not exercise the path ({got:?})"
    );
    assert!(
        !got.iter().any(|d| d == "from-loopback"),
        "a container's frame with source 127.0.0.1 reached the host"
    );
    let leaked = datagrams(&on_lo, Duration::from_millis(300));
    assert!(
        leaked.is_empty(),
        "a container reached the host's 127.0.0.1:{lo_port}: {leaked:?}"
    );

    std::fs::write(t.path().join("stop"), "").unwrap();
    assert!(run.wait(Duration::from_secs(20)).success());
}

/// A start that fails after the bridge was prepared (the command does not exist: 127)
/// leaves nothing: no lease or port file, no chain or map element, no veth.
#[test]
fn nothing_left_after_a_failed_start() {
    let Some(r) = setup() else { return };
    let marker = unique("rc-nocmd");
    let root = root_user();
    let _cleanup = KeptGuard(&root, marker.clone());
    let port = free_port();
    // Without --rm the writable layer stays, named after the id, with the command (the
    // marker) in its config.json: how the test learns the id of a container gone already.
    let o = output(as_root().args(["run", "--rootfs"]).arg(&r).args([
        "-p",
        &format!("{port}:80"),
        &format!("/{marker}"),
    ]));
    assert_eq!(o.code(), 127, "{}", o.stderr);
    let kept = kept_containers_with(&root, &marker);
    assert_eq!(kept.len(), 1, "kept layers: {kept:?}");
    let id = kept[0].file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(leftovers(&id), Vec::<String>::new());
    assert!(!Path::new(LEASES).join(format!("ports/tcp-{port}")).exists());
    assert!(!Path::new(LEASES).join("owners").join(&id).exists());
    assert!(
        !nft_ruleset().contains(&format!("tcp . {port} :")),
        "a map element for {port} stays"
    );
}

/// A root runtime that sees another /run (a private /run, as in a unit with PrivateTmp-like
/// settings or under `unshare -m`) must not take a live container's leases for stale: the
/// owner lock next to the leases says it is alive.
#[test]
fn a_private_run_does_not_reclaim_live_containers() {
    let Some(r) = setup() else { return };
    let Some(unshare) = which("unshare") else {
        skip("unshare (util-linux) is not installed");
        return;
    };
    let t = TempDir::new("rc-privrun");
    let name = unique("rc-privrun");
    let (mut holder, id) = stoppable(&r, &name, t.path(), &format!("{}:80", free_port()), &[]);
    let before = lease_files(&id);
    let script = format!(
        "mount -t tmpfs tmpfs /run && exec {} run --rm --rootfs {} true",
        bin().display(),
        r.display()
    );
    let o = output(
        Command::new(unshare)
            .env_clear()
            .env("PATH", PATH)
            .env("HOME", "/root")
            .args(["-m", "--propagation", "private", "sh", "-c", &script]),
    );
    assert!(o.status.success(), "{}", o.stderr);
    assert_eq!(lease_files(&id), before, "leases of the live container");
    assert!(
        host_veth(&id).exists(),
        "the live container's veth was deleted"
    );
    assert!(nft_ruleset().contains(&id[..12]), "its rules were deleted");
    std::fs::write(t.path().join("stop"), "").unwrap();
    assert!(holder.wait(Duration::from_secs(20)).success());
    assert_eq!(leftovers(&id), Vec::<String>::new(), "after stop");
}

/// A base chain of the table that went missing (deleted by hand, or a table of an earlier
/// version) is written again by the next run, once, without other containers' chains
/// being touched. (The forward chain: removing it for a moment opens nothing.)
#[test]
fn the_table_is_repaired() {
    let Some(r) = setup() else { return };
    let t = TempDir::new("rc-repair");
    let name = unique("rc-repair");
    let (mut holder, id) = stoppable(&r, &name, t.path(), &format!("{}:80", free_port()), &[]);
    let nft = |args: &[&str]| {
        Command::new(which("nft").unwrap())
            .args(args)
            .output()
            .unwrap()
    };
    let o = nft(&["delete", "chain", "ip", "rootless_container", "forward"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    run_ok(&mut brun(&r, &["true"]));
    let o = nft(&["list", "chain", "ip", "rootless_container", "forward"]);
    let chain = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "forward chain not repaired");
    assert_eq!(chain.matches("oifname \"rc0\" drop").count(), 1, "{chain}");
    assert_eq!(nft_ruleset().matches("ct status dnat accept").count(), 1);
    // The holder's chain and map element are still there.
    assert!(nft_ruleset().contains(&format!("c-{}", &id[..12])));
    std::fs::write(t.path().join("stop"), "").unwrap();
    assert!(holder.wait(Duration::from_secs(20)).success());
}
