//! Container networking: the mode (`--network`), published ports (`-p`), and the
//! /etc/hosts, /etc/resolv.conf and /etc/hostname the container gets.

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
}

impl Default for SlirpOptions {
    fn default() -> Self {
        // 65520: the measured 4-5x throughput gain over 1500 (podman's default too).
        SlirpOptions {
            allow_host_loopback: false,
            mtu: 65520,
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

/// Parse `--network`. `None` (flag absent) picks the default: rootless, the userspace
/// helper when it is installed, else none with one warning; as root, none until the
/// bridge network exists.
pub fn parse_mode(flag: Option<&str>, rootless: bool) -> Result<Mode> {
    let Some(flag) = flag else {
        if !rootless {
            return Ok(Mode::None);
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
            "unsupported --network {flag:?}: use none, host, slirp4netns[:allow_host_loopback=true,mtu=N] or pasta[:...]"
        ))),
    }
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

/// The container's /etc files for a network with a helper.
pub struct EtcFiles {
    pub hosts: String,
    pub resolv_conf: String,
    pub hostname: String,
}

pub fn etc_files(
    hostname: &str,
    mode: &Mode,
    dns: &[std::net::IpAddr],
    add_hosts: &[(String, std::net::IpAddr)],
    host_resolv: &str,
) -> EtcFiles {
    let mut hosts =
        String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    if let Mode::Slirp(o) | Mode::Pasta(o) = mode {
        hosts.push_str(&format!("{SLIRP_GUEST}\t{hostname}\n"));
        if o.allow_host_loopback {
            hosts.push_str(&format!("{SLIRP_GATEWAY}\thost.containers.internal\n"));
        }
    }
    for (name, ip) in add_hosts {
        hosts.push_str(&format!("{ip}\t{name}\n"));
    }
    let mut resolv = String::new();
    // The host's search domains and options still apply; its servers may be on 127.0.0.x,
    // which the container cannot reach: the helper's DNS forwarder answers instead.
    for line in host_resolv.lines().map(str::trim) {
        if line.starts_with("search ") || line.starts_with("options ") {
            resolv.push_str(line);
            resolv.push('\n');
        }
    }
    if dns.is_empty() {
        resolv.push_str(&format!("nameserver {SLIRP_DNS}\n"));
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
        assert!(parse_mode(Some("bogus"), true).is_err());
        assert!(parse_mode(Some("none:x"), true).is_err());
        if crate::util::find_in_path("slirp4netns").is_some() {
            let m =
                parse_mode(Some("slirp4netns:allow_host_loopback=true,mtu=1500"), true).unwrap();
            assert_eq!(
                m,
                Mode::Slirp(SlirpOptions {
                    allow_host_loopback: true,
                    mtu: 1500
                })
            );
            assert!(parse_mode(Some("slirp4netns:mtu=1"), true).is_err());
            assert!(parse_mode(Some("slirp4netns:bogus=1"), true).is_err());
        }
    }

    #[test]
    fn etc() {
        let f = etc_files(
            "web",
            &Mode::Slirp(SlirpOptions::default()),
            &[],
            &[("db".into(), "10.1.2.3".parse().unwrap())],
            "nameserver 127.0.0.53\nsearch example.org\n",
        );
        assert!(f.hosts.contains("10.0.2.100\tweb\n") && f.hosts.contains("10.1.2.3\tdb\n"));
        assert_eq!(f.resolv_conf, "search example.org\nnameserver 10.0.2.3\n");
        let g = etc_files("web", &Mode::None, &["1.1.1.1".parse().unwrap()], &[], "");
        assert_eq!(g.resolv_conf, "nameserver 1.1.1.1\n");
        assert!(
            parse_add_host("db:10.1.2.3").is_ok()
                && parse_add_host("db").is_err()
                && parse_add_host("db:x").is_err()
        );
    }
}
