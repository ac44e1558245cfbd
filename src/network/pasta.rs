//! pasta (from passt): userspace networking with spliced loopback ports. Configured
//! explicitly (address, gateway, DNS, MTU), so that it works on a host with no default
//! route, and with no automatic port forwarding: only what -p asks for.

use super::ports::{PortMapping, Proto};
use super::{SlirpOptions, SLIRP_DNS, SLIRP_GATEWAY, SLIRP_GUEST};
use anyhow::{Context, Result};
use std::path::Path;
use std::process::{Command, Stdio};

/// A running pasta. This version (passt 2023-03) stays after the namespace is gone, so it
/// is killed when the handle is dropped; after a SIGKILL of the runtime the next command
/// kills it (see `kill_orphan`).
pub struct Pasta {
    pid: i32,
}

impl Drop for Pasta {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// The pid file pasta writes in the container's record.
pub fn pid_file(record: &Path) -> std::path::PathBuf {
    record.join("pasta.pid")
}

/// Kill the pasta of a record whose runtime died (checked by its command line naming the
/// record, so a recycled pid is left alone).
pub fn kill_orphan(record: &Path) {
    let Ok(pid) = std::fs::read_to_string(pid_file(record)) else {
        return;
    };
    let Ok(pid) = pid.trim().parse::<i32>() else {
        return;
    };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if String::from_utf8_lossy(&cmdline).contains(&*record.to_string_lossy()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Start pasta on the network namespace of `pid`. pasta puts itself in the background once
/// the interface is configured, so its exit status is the readiness signal.
pub fn start(pid: i32, opts: &SlirpOptions, ports: &[PortMapping], log: &Path) -> Result<Pasta> {
    let bin =
        crate::util::find_in_path("pasta").context("pasta is not installed (apt install passt)")?;
    let mut cmd = Command::new(&bin);
    cmd.args(["--config-net", "--quiet", "--ns-ifname", "eth0"])
        .args(["--address", &SLIRP_GUEST.to_string(), "--netmask", "24"])
        .args(["--gateway", &SLIRP_GATEWAY.to_string()])
        .args(["--dns-forward", &SLIRP_DNS.to_string()])
        .args(["--mtu", &opts.mtu.to_string()])
        .args(["--log-file", &log.to_string_lossy()]);
    let record = log.parent().context("log file without a directory")?;
    cmd.arg("--pid").arg(pid_file(record));
    if !opts.allow_host_loopback {
        // By default pasta maps the gateway address to the host's loopback.
        cmd.arg("--no-map-gw");
    }
    if let Some(mac) = &opts.mac {
        cmd.args(["--ns-mac-addr", &super::format_mac(mac)]);
    }
    let spec = |p: &PortMapping| {
        let addr = if p.host_ip.is_unspecified() {
            String::new()
        } else {
            format!("{}/", p.host_ip)
        };
        format!("{addr}{}:{}", p.host_port, p.container_port)
    };
    let tcp: Vec<String> = ports
        .iter()
        .filter(|p| p.proto == Proto::Tcp)
        .map(spec)
        .collect();
    let udp: Vec<String> = ports
        .iter()
        .filter(|p| p.proto == Proto::Udp)
        .map(spec)
        .collect();
    cmd.args([
        "-t",
        &if tcp.is_empty() {
            "none".into()
        } else {
            tcp.join(",")
        },
    ]);
    cmd.args([
        "-u",
        &if udp.is_empty() {
            "none".into()
        } else {
            udp.join(",")
        },
    ]);
    cmd.args(["-T", "none", "-U", "none"]);
    cmd.args([
        "--userns",
        &format!("/proc/{pid}/ns/user"),
        "--netns",
        &format!("/proc/{pid}/ns/net"),
    ]);
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("start {}", bin.display()))?;
    if !out.status.success() {
        let mut msg = std::fs::read_to_string(log).unwrap_or_default();
        msg.push_str(&String::from_utf8_lossy(&out.stderr));
        return Err(super::helper_failure("pasta", &msg));
    }
    let daemon = std::fs::read_to_string(pid_file(record))
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
        .context("pasta did not write its pid file")?;
    Ok(Pasta { pid: daemon })
}
