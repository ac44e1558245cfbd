//! slirp4netns: userspace networking for a rootless container's network namespace.
//!
//! Started by the runtime with std::process once the container's namespaces exist; it
//! signals readiness on a pipe (no polling, no sleeps) and exits when the runtime's end of
//! its exit pipe closes, i.e. when the runtime is gone, however it ended.

use super::ports::PortMapping;
use super::SlirpOptions;
use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running slirp4netns. Dropping it closes the exit pipe and reaps the process.
pub struct Slirp {
    child: Child,
    exit_w: Option<OwnedFd>,
}

impl Drop for Slirp {
    fn drop(&mut self) {
        // Not waited for: its exit closes the tap device, and the kernel's unregistering of
        // it takes 20-50 ms of RCU grace periods that the user would otherwise wait for.
        // The kill is immediate; the closed exit pipe would end it anyway at its next poll.
        drop(self.exit_w.take());
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Which hardening flags this slirp4netns has, read from its --help once per binary
/// version (cached in the run directory: a probe is one more exec on every start).
fn hardening_flags(bin: &Path, run: &Path) -> Vec<&'static str> {
    let key = std::fs::metadata(bin)
        .map(|m| format!("{} {} {}", bin.display(), m.mtime(), m.size()))
        .unwrap_or_default();
    let cache = run.join("slirp4netns.probe");
    let text = match std::fs::read_to_string(&cache) {
        Ok(t) if t.lines().next() == Some(key.as_str()) => t,
        _ => {
            let help = Command::new(bin)
                .arg("--help")
                .stdin(Stdio::null())
                .output()
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout).to_string()
                        + &String::from_utf8_lossy(&o.stderr)
                });
            let help = help.unwrap_or_default();
            let t = format!(
                "{key}\n{}\n{}\n",
                help.contains("--enable-sandbox"),
                help.contains("--enable-seccomp")
            );
            let _ = crate::state::write_atomic(&cache, t.as_bytes());
            t
        }
    };
    let mut lines = text.lines().skip(1);
    let mut flags = Vec::new();
    if lines.next() == Some("true") {
        flags.push("--enable-sandbox");
    }
    if lines.next() == Some("true") {
        flags.push("--enable-seccomp");
    }
    flags
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe")
}

/// Start slirp4netns on the network namespace of `pid` (joining its user namespace) and
/// wait until the interface is configured.
pub fn start(
    pid: i32,
    opts: &SlirpOptions,
    api_socket: Option<&Path>,
    run: &Path,
    log: &Path,
) -> Result<Slirp> {
    let bin = crate::util::find_in_path("slirp4netns")
        .context("slirp4netns is not installed (apt install slirp4netns)")?;
    let (ready_r, ready_w) = pipe()?;
    let (exit_r, exit_w) = pipe()?;
    let mut cmd = Command::new(&bin);
    cmd.arg("--configure")
        .arg(format!("--mtu={}", opts.mtu))
        .arg(format!("--ready-fd={}", ready_w.as_raw_fd()))
        .arg(format!("--exit-fd={}", exit_r.as_raw_fd()))
        .arg(format!("--userns-path=/proc/{pid}/ns/user"));
    if !opts.allow_host_loopback {
        cmd.arg("--disable-host-loopback");
    }
    if let Some(mac) = &opts.mac {
        cmd.arg(format!("--macaddress={}", super::format_mac(mac)));
    }
    for f in hardening_flags(&bin, run) {
        cmd.arg(f);
    }
    if let Some(api) = api_socket {
        // Relative to its working directory: the full path in the runtime's state may be
        // longer than a unix socket address allows (107 bytes).
        let dir = api.parent().context("API socket path has no directory")?;
        let name = api.file_name().context("API socket path has no name")?;
        cmd.current_dir(dir)
            .arg(format!("--api-socket={}", name.to_string_lossy()));
    }
    cmd.arg(pid.to_string()).arg("tap0");
    let logf = std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(logf);
    let (rw, er) = (ready_w.as_raw_fd(), exit_r.as_raw_fd());
    // SAFETY: only async-signal-safe fcntl calls between fork and exec: the two pipe ends
    // slirp4netns is told about must survive exec.
    unsafe {
        cmd.pre_exec(move || {
            for fd in [rw, er] {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("start {}", bin.display()))?;
    drop(ready_w);
    drop(exit_r);
    let mut slirp = Slirp {
        child,
        exit_w: Some(exit_w),
    };
    // Ready is one byte on the pipe; end of file means slirp4netns died first.
    let mut pfd = libc::pollfd {
        fd: ready_r.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one fd; 10 s is far beyond a normal start (a few ms).
    let n = unsafe { libc::poll(&mut pfd, 1, Duration::from_secs(10).as_millis() as i32) };
    let mut byte = [0u8; 1];
    let got = n > 0 && std::fs::File::from(ready_r).read(&mut byte).unwrap_or(0) == 1;
    if !got {
        let _ = slirp.child.kill();
        let _ = slirp.child.wait();
        let msg = std::fs::read_to_string(log).unwrap_or_default();
        return Err(super::helper_failure("slirp4netns", &msg));
    }
    Ok(slirp)
}

/// Publish a port through slirp4netns' API socket.
pub fn add_hostfwd(api: &Path, p: &PortMapping) -> Result<()> {
    // Through a directory fd, for the same reason as in `start`.
    let dir =
        crate::engine::fsutil::open_dir(api.parent().context("API socket path has no directory")?)?;
    let short = format!(
        "/proc/self/fd/{}/{}",
        dir.as_raw_fd(),
        api.file_name().context("no name")?.to_string_lossy()
    );
    let mut s = std::os::unix::net::UnixStream::connect(&short)
        .with_context(|| format!("connect to {}", api.display()))?;
    let host_addr = match p.host_ip {
        std::net::IpAddr::V4(a) => a.to_string(),
        std::net::IpAddr::V6(_) => {
            bail!("publishing on an IPv6 host address is not supported with slirp4netns")
        }
    };
    let req = serde_json::json!({
        "execute": "add_hostfwd",
        "arguments": {"proto": p.proto.name(), "host_addr": host_addr, "host_port": p.host_port, "guest_port": p.container_port},
    });
    s.write_all(req.to_string().as_bytes())?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let v: serde_json::Value = serde_json::from_str(&resp)
        .with_context(|| format!("slirp4netns API answered {resp:?}"))?;
    if let Some(e) = v.get("error") {
        bail!(
            "cannot publish {}:{}/{}: slirp4netns: {}",
            host_addr,
            p.host_port,
            p.proto.name(),
            e
        );
    }
    Ok(())
}

/// The API socket path: in the container's record, so that it goes with it.
pub fn api_socket_path(run: &Path, id: &str) -> PathBuf {
    run.join(id).join("api.sock")
}
