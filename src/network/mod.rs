//! Container networking: the mode (`--network`), published ports (`-p`), and the
//! /etc/hosts, /etc/resolv.conf and /etc/hostname the container gets.

pub mod bridge;
pub mod pasta;
pub mod ports;
pub mod slirp;

use crate::exit::ExitError;
use anyhow::Result;
use std::net::Ipv4Addr;

pub use ports::PortMapping;

/// Options of `--network slirp4netns[:k=v,...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlirpOptions {
    pub allow_host_loopback: bool,
    pub mtu: u32,
    /// `--mac-address`: the container interface's MAC.
    pub mac: Option<[u8; 6]>,
}

impl Default for SlirpOptions {
    fn default() -> Self {
        // 65520: the measured 4-5x throughput gain over 1500 (podman's default too).
        SlirpOptions {
            allow_host_loopback: false,
            mtu: 65520,
            mac: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// A new network namespace with only `lo`.
    None,
    /// The host's network namespace.
    Host,
    /// A new network namespace connected by slirp4netns.
    Slirp(SlirpOptions),
    /// A new network namespace connected by pasta (same addresses as slirp4netns).
    Pasta(SlirpOptions),
    /// Root mode: a new network namespace on the host's bridge `rc0` (see `bridge`).
    Bridge,
}

impl Mode {
    /// Whether the container gets the runtime's /etc/hosts, resolv.conf and hostname
    /// (and may have --dns, --add-host, -p).
    pub fn is_connected(&self) -> bool {
        matches!(self, Mode::Slirp(_) | Mode::Pasta(_) | Mode::Bridge)
    }
}

/// The guest side of slirp4netns' default 10.0.2.0/24 network.
pub const SLIRP_GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);
pub const SLIRP_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
pub const SLIRP_DNS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);

/// One line for a helper that failed to set up the network, from its messages: the
/// /dev/net/tun case (hosts without udev) names its fix.
pub fn helper_failure(helper: &str, messages: &str) -> anyhow::Error {
    let last = messages
        .lines()
        .rfind(|l| !l.trim().is_empty() && !l.contains("to syslog"))
        .unwrap_or("no output");
    if messages.contains("/dev/net/tun") || messages.contains("open tun") {
        return anyhow::anyhow!(
            "{helper} cannot open /dev/net/tun ({last}): hosts without udev leave it mode 0600; \
             as root run `chmod 0666 /dev/net/tun` (what a distribution ships), or use --network none"
        );
    }
    anyhow::anyhow!("{helper} failed to set up the network: {last}")
}

fn bad(msg: String) -> anyhow::Error {
    ExitError::new(125, msg).into()
}

/// Root's default network from the facts of `bridge::default_facts`: the bridge, or none
/// (with the warning to print, if any) where the bridge cannot work.
pub fn root_default(facts: (bool, bool, bool)) -> (Mode, Option<String>) {
    match bridge::default_unavailable(facts.0, facts.1, facts.2) {
        None => (Mode::Bridge, None),
        Some(why) => (
            Mode::None,
            why.map(|w| {
                format!(
                    "rootless_container: warning: {w}: the container has no network (--network none); pass --network none or host to choose"
                )
            }),
        ),
    }
}

/// Parse `--network`. `None` (flag absent) picks the default: rootless, the userspace
/// helper when it is installed, else none with one warning; as root, the bridge (none for
/// uid 0 of a user namespace, e.g. inside another container, and none with one warning
/// without CAP_NET_ADMIN or a writable /proc/sys).
pub fn parse_mode(flag: Option<&str>, rootless: bool) -> Result<Mode> {
    let Some(flag) = flag else {
        if !rootless {
            let (mode, warning) = root_default(bridge::default_facts());
            if let Some(w) = warning {
                eprintln!("{w}");
            }
            return Ok(mode);
        }
        if crate::util::find_in_path("slirp4netns").is_some() {
            return Ok(Mode::Slirp(SlirpOptions::default()));
        }
        eprintln!(
            "rootless_container: warning: slirp4netns is not installed (apt install slirp4netns): the container has no network (--network none)"
        );
        return Ok(Mode::None);
    };
    let (name, opts) = flag.split_once(':').unwrap_or((flag, ""));
    match name {
        "none" if opts.is_empty() => Ok(Mode::None),
        "host" if opts.is_empty() => Ok(Mode::Host),
        "bridge" if opts.is_empty() && rootless => Err(bad(
            "--network bridge needs root (it creates a bridge, veth pairs and firewall rules on the host); rootless, use --network slirp4netns or pasta".into(),
        )),
        "bridge" if opts.is_empty() => Ok(Mode::Bridge),
        "slirp4netns" | "pasta" => {
            let helper = if name == "pasta" { "pasta" } else { "slirp4netns" };
            if crate::util::find_in_path(helper).is_none() {
                let pkg = if name == "pasta" { "passt" } else { "slirp4netns" };
                return Err(bad(format!("--network {name}: {helper} is not installed (apt install {pkg})")));
            }
            let mut o = SlirpOptions::default();
            for kv in opts.split(',').filter(|s| !s.is_empty()) {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                match (k, v) {
                    ("allow_host_loopback", "true") => o.allow_host_loopback = true,
                    ("allow_host_loopback", "false") => o.allow_host_loopback = false,
                    ("mtu", v) => {
                        o.mtu = v
                            .parse()
                            .ok()
                            .filter(|m| (68..=65521).contains(m))
                            .ok_or_else(|| bad(format!("invalid {name} mtu {v:?}: 68 to 65521")))?
                    }
                    _ => {
                        return Err(bad(format!(
                            "unsupported {name} option {kv:?}: allow_host_loopback=true|false, mtu=N"
                        )))
                    }
                }
            }
            Ok(if name == "pasta" { Mode::Pasta(o) } else { Mode::Slirp(o) })
        }
        _ => Err(bad(format!(
            "unsupported --network {flag:?}: use none, host, bridge (root), slirp4netns[:allow_host_loopback=true,mtu=N] or pasta[:...]"
        ))),
    }
}

/// `--mac-address`: six hex pairs, a unicast address other than zero.
pub fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let err = || {
        bad(format!(
            "invalid --mac-address {s:?}: give six hex pairs like 02:42:ac:11:00:02, a unicast address (even first byte)"
        ))
    };
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6 {
        return Err(err());
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(&parts) {
        if p.len() != 2 {
            return Err(err());
        }
        *m = u8::from_str_radix(p, 16).map_err(|_| err())?;
    }
    if mac[0] & 1 != 0 || mac == [0; 6] {
        return Err(err());
    }
    Ok(mac)
}

/// Apply `--mac-address` to the network mode: the helpers' options carry it; the bridge
/// gets it back from here.
pub fn apply_mac(mode: &mut Mode, mac: Option<&str>) -> Result<Option<[u8; 6]>> {
    let Some(mac) = mac.map(parse_mac).transpose()? else {
        return Ok(None);
    };
    match mode {
        Mode::Slirp(o) | Mode::Pasta(o) => o.mac = Some(mac),
        Mode::Bridge => {}
        Mode::None | Mode::Host => {
            return Err(bad(
                "--mac-address needs a network interface of the container's own (--network bridge, slirp4netns or pasta)".into(),
            ))
        }
    }
    Ok(Some(mac))
}

/// `aa:bb:...` for a MAC.
pub fn format_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// `--add-host NAME:IP`.
pub fn parse_add_host(s: &str) -> Result<(String, std::net::IpAddr)> {
    let (name, ip) = s
        .split_once(':')
        .ok_or_else(|| bad(format!("invalid --add-host {s:?}: the form is NAME:IP")))?;
    let ip = ip.parse().map_err(|_| {
        bad(format!(
            "invalid --add-host {s:?}: {ip:?} is not an IP address"
        ))
    })?;
    if name.is_empty() {
        return Err(bad(format!("invalid --add-host {s:?}: empty name")));
    }
    Ok((name.to_string(), ip))
}

/// The container's /etc files for a network with a helper or the bridge.
pub struct EtcFiles {
    pub hosts: String,
    pub resolv_conf: String,
    pub hostname: String,
}

/// Nameservers of a resolv.conf text that a container can reach (not loopback).
fn reachable_nameservers(resolv: &str) -> Vec<std::net::IpAddr> {
    resolv
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<std::net::IpAddr>().ok())
        .filter(|a| !a.is_loopback())
        .collect()
}

/// The resolver configuration a bridge container starts from: the host's /etc/resolv.conf,
/// or, when it names only loopback servers (systemd-resolved's 127.0.0.53, a local
/// dnsmasq), systemd-resolved's list of upstream servers when there is one (as Docker
/// and podman do).
/// Without any, one warning (when no --dns is given either).
pub fn host_resolv_conf(mode: &Mode, dns: &[std::net::IpAddr]) -> String {
    let etc = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    if *mode == Mode::Bridge && reachable_nameservers(&etc).is_empty() {
        if let Ok(upstream) = std::fs::read_to_string("/run/systemd/resolve/resolv.conf") {
            if !reachable_nameservers(&upstream).is_empty() {
                return upstream;
            }
        }
        if dns.is_empty() {
            eprintln!(
                "rootless_container: warning: the host's /etc/resolv.conf names no nameserver a bridge container can reach (only loopback ones): the container has no DNS; pass --dns IP"
            );
        }
    }
    etc
}

/// `bridge_addr`: the container's address on the bridge (Mode::Bridge).
pub fn etc_files(
    hostname: &str,
    mode: &Mode,
    bridge_addr: Option<Ipv4Addr>,
    dns: &[std::net::IpAddr],
    add_hosts: &[(String, std::net::IpAddr)],
    host_resolv: &str,
) -> EtcFiles {
    let mut hosts =
        String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    match mode {
        Mode::Slirp(o) | Mode::Pasta(o) => {
            hosts.push_str(&format!("{SLIRP_GUEST}\t{hostname}\n"));
            if o.allow_host_loopback {
                hosts.push_str(&format!("{SLIRP_GATEWAY}\thost.containers.internal\n"));
            }
        }
        Mode::Bridge => {
            if let Some(a) = bridge_addr {
                hosts.push_str(&format!("{a}\t{hostname}\n"));
            }
            // The host, as seen from the bridge (podman's name).
            hosts.push_str(&format!("{}\thost.containers.internal\n", bridge::GATEWAY));
        }
        _ => {}
    }
    for (name, ip) in add_hosts {
        hosts.push_str(&format!("{ip}\t{name}\n"));
    }
    let mut resolv = String::new();
    // The host's search domains and options still apply; its servers may be on 127.0.0.x,
    // which the container cannot reach: the helper's DNS forwarder answers instead, and on
    // the bridge the host's other servers (or none: then --dns is needed).
    for line in host_resolv.lines().map(str::trim) {
        if line.starts_with("search ") || line.starts_with("options ") {
            resolv.push_str(line);
            resolv.push('\n');
        }
    }
    if dns.is_empty() {
        match mode {
            Mode::Bridge => {
                for ns in reachable_nameservers(host_resolv) {
                    resolv.push_str(&format!("nameserver {ns}\n"));
                }
            }
            _ => resolv.push_str(&format!("nameserver {SLIRP_DNS}\n")),
        }
    }
    for d in dns {
        resolv.push_str(&format!("nameserver {d}\n"));
    }
    EtcFiles {
        hosts,
        resolv_conf: resolv,
        hostname: format!("{hostname}\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        assert_eq!(parse_mode(Some("none"), true).unwrap(), Mode::None);
        assert_eq!(parse_mode(Some("host"), true).unwrap(), Mode::Host);
        if root_default(bridge::default_facts()).0 == Mode::Bridge {
            assert_eq!(parse_mode(None, false).unwrap(), Mode::Bridge);
        }
        assert_eq!(parse_mode(Some("bridge"), false).unwrap(), Mode::Bridge);
        assert!(parse_mode(Some("bridge"), true).is_err());
        assert_eq!(
            parse_mac("02:42:AC:11:00:02").unwrap(),
            [2, 0x42, 0xac, 0x11, 0, 2]
        );
        assert!(parse_mac("01:00:5e:00:00:01").is_err() && parse_mac("02:42:ac").is_err());
        assert!(parse_mode(Some("bogus"), true).is_err());
        assert!(parse_mode(Some("none:x"), true).is_err());
        if crate::util::find_in_path("slirp4netns").is_some() {
            let m =
                parse_mode(Some("slirp4netns:allow_host_loopback=true,mtu=1500"), true).unwrap();
            assert_eq!(
                m,
                Mode::Slirp(SlirpOptions {
                    allow_host_loopback: true,
                    mtu: 1500,
                    mac: None,
                })
            );
            assert!(parse_mode(Some("slirp4netns:mtu=1"), true).is_err());
            assert!(parse_mode(Some("slirp4netns:bogus=1"), true).is_err());
        }
    }

    #[test]
    fn root_default_network() {
        // The host's root.
        assert_eq!(root_default((true, true, true)), (Mode::Bridge, None));
        // uid 0 of a user namespace: none, quietly (as before the bridge).
        assert_eq!(root_default((false, false, false)), (Mode::None, None));
        assert_eq!(root_default((false, true, true)), (Mode::None, None));
        // Root in an ordinary Docker container: no CAP_NET_ADMIN, read-only /proc/sys.
        let (m, w) = root_default((true, false, false));
        assert_eq!(m, Mode::None);
        let w = w.unwrap();
        assert!(
            w.contains("CAP_NET_ADMIN") && w.contains("--network none"),
            "{w}"
        );
        assert_eq!(w.lines().count(), 1);
        let (m, w) = root_default((true, true, false));
        assert_eq!(m, Mode::None);
        assert!(w.unwrap().contains("ip_forward"));
    }

    #[test]
    fn etc() {
        let f = etc_files(
            "web",
            &Mode::Slirp(SlirpOptions::default()),
            None,
            &[],
            &[("db".into(), "10.1.2.3".parse().unwrap())],
            "nameserver 127.0.0.53\nsearch example.org\n",
        );
        assert!(f.hosts.contains("10.0.2.100\tweb\n") && f.hosts.contains("10.1.2.3\tdb\n"));
        assert_eq!(f.resolv_conf, "search example.org\nnameserver 10.0.2.3\n");
        let g = etc_files(
            "web",
            &Mode::None,
            None,
            &["1.1.1.1".parse().unwrap()],
            &[],
            "",
        );
        assert_eq!(g.resolv_conf, "nameserver 1.1.1.1\n");
        // The bridge: the host's reachable servers, never its loopback ones.
        let b = etc_files(
            "web",
            &Mode::Bridge,
            Some(Ipv4Addr::new(10, 88, 0, 7)),
            &[],
            &[],
            "nameserver 127.0.0.53\nnameserver 192.0.2.53\noptions edns0\n",
        );
        assert!(b.hosts.contains("10.88.0.7\tweb\n"), "{}", b.hosts);
        assert_eq!(b.resolv_conf, "options edns0\nnameserver 192.0.2.53\n");
        assert!(
            parse_add_host("db:10.1.2.3").is_ok()
                && parse_add_host("db").is_err()
                && parse_add_host("db:x").is_err()
        );
    }
}
