//! Addresses and published host ports of the bridge network, held as files:
//!
//! ```text
//! <dir>/lock               flock'd while leases are taken, released or reclaimed
//! <dir>/leases/10.88.0.2   one file per address, holding the container's id
//! <dir>/ports/tcp-8080     one file per published host port, holding the container's id
//! <dir>/owners/<id>        flock'd by the runtime of container <id> for as long as it runs
//! ```
//!
//! Each file is created with O_EXCL, so an address or a port is never handed out twice,
//! even by runtimes that race or by one that restarts. A file's owner is alive while its
//! runtime holds the lock on `owners/<id>`, next to the leases (not the record's lock in
//! the run directory: two root runtimes may see different /run directories, a private
//! /run of a unit or of `unshare -m`, but share these files). Files of dead owners are
//! reclaimed under the directory's lock (by `collect_stale` in the parent module).

use super::{GATEWAY, PREFIX, SUBNET};
use crate::network::ports::{PortMapping, Proto};
use anyhow::{Context, Result};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The exclusive lock on a lease directory, held while it is changed.
pub struct DirLock {
    _f: File,
}

pub fn lock(dir: &Path) -> Result<DirLock> {
    for sub in ["leases", "ports", "owners"] {
        fs::create_dir_all(dir.join(sub))
            .with_context(|| format!("create {}", dir.join(sub).display()))?;
    }
    let f = File::create(dir.join("lock"))
        .with_context(|| format!("create {}", dir.join("lock").display()))?;
    // SAFETY: flock on an fd we own; released when it is closed.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("lock {}", dir.join("lock").display()));
    }
    Ok(DirLock { _f: f })
}

/// The lock that says the runtime of a container is alive; dropping it (or the runtime's
/// death) releases it. `disown` removes its file.
pub struct Owner {
    _f: File,
}

fn owner_file(dir: &Path, id: &str) -> PathBuf {
    dir.join("owners").join(id)
}

/// Take the liveness lock of container `id` (before any of its leases).
pub fn own(dir: &Path, id: &str, _lock: &DirLock) -> Result<Owner> {
    let path = owner_file(dir, id);
    let f = File::create(&path).with_context(|| format!("create {}", path.display()))?;
    // SAFETY: flock on an fd we own; released when it is closed.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("lock {}", path.display()));
    }
    Ok(Owner { _f: f })
}

/// Whether the runtime of container `id` still runs: its owner file is locked. A missing
/// file or a lock we can take means it is gone.
pub fn owner_is_live(dir: &Path, id: &str) -> bool {
    let Ok(f) = File::open(owner_file(dir, id)) else {
        return false;
    };
    // SAFETY: flock on an fd we own; a lock we get goes with the fd.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) != 0 }
}

/// Remove the owner file of `id` (its leases are gone).
pub fn disown(dir: &Path, id: &str, _lock: &DirLock) {
    let _ = fs::remove_file(owner_file(dir, id));
}

/// Ids with an owner file (some may have no lease left).
pub fn owner_ids(dir: &Path) -> Vec<String> {
    fs::read_dir(dir.join("owners"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

fn create_excl(path: &Path, id: &str) -> std::io::Result<()> {
    let mut f = OpenOptions::new().write(true).create_new(true).open(path)?;
    f.write_all(id.as_bytes())
}

/// The container addresses of the subnet: all but the network, the gateway and broadcast.
fn candidates() -> impl Iterator<Item = Ipv4Addr> {
    let base = u32::from(SUBNET);
    let size = 1u32 << (32 - PREFIX);
    (1..size - 1)
        .map(move |i| Ipv4Addr::from(base + i))
        .filter(|a| *a != GATEWAY)
}

/// Take the first free address for container `id`.
pub fn take_address(dir: &Path, id: &str, _lock: &DirLock) -> Result<Ipv4Addr> {
    let leases = dir.join("leases");
    let taken: std::collections::HashSet<String> = fs::read_dir(&leases)
        .with_context(|| format!("read {}", leases.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    for a in candidates().filter(|a| !taken.contains(&a.to_string())) {
        match create_excl(&leases.join(a.to_string()), id) {
            Ok(()) => return Ok(a),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(e).with_context(|| format!("create a lease in {}", leases.display()))
            }
        }
    }
    Err(crate::exit::ExitError::new(
        125,
        format!(
            "no free address left in {SUBNET}/{PREFIX} (leases in {}): stop some containers on the bridge",
            leases.display()
        ),
    )
    .into())
}

pub fn port_file(dir: &Path, p: &PortMapping) -> PathBuf {
    dir.join("ports")
        .join(format!("{}-{}", p.proto.name(), p.host_port))
}

/// Reserve the host ports of `ports` for container `id`; on a conflict nothing stays
/// reserved and the error names the container that has the port.
pub fn take_ports(dir: &Path, id: &str, ports: &[PortMapping], _lock: &DirLock) -> Result<()> {
    for (i, p) in ports.iter().enumerate() {
        let f = port_file(dir, p);
        if let Err(e) = create_excl(&f, id) {
            // The owner first: the clean-up below may remove this very file.
            let other = fs::read_to_string(&f).unwrap_or_default();
            let other = other.trim().to_string();
            for q in &ports[..i] {
                let _ = fs::remove_file(port_file(dir, q));
            }
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                let who = if other == id {
                    "this container's -p publishes it twice; give each -p its own host port"
                        .to_string()
                } else {
                    let short = other.get(..12).unwrap_or(&other);
                    format!("container {short} on the bridge already publishes it; pick another -p host port")
                };
                return Err(crate::exit::ExitError::new(
                    125,
                    format!(
                        "cannot publish host port {}/{}: {who}",
                        p.host_port,
                        p.proto.name()
                    ),
                )
                .into());
            }
            return Err(e).with_context(|| format!("create {}", f.display()));
        }
    }
    Ok(())
}

/// Everything `id` holds: its address (if any) and its port files.
pub struct Held {
    pub address: Option<Ipv4Addr>,
    pub ports: Vec<(Proto, u16)>,
}

/// Owners (container ids) of all lease and port files.
pub fn owners(dir: &Path) -> std::collections::BTreeMap<String, Held> {
    let mut out: std::collections::BTreeMap<String, Held> = Default::default();
    for sub in ["leases", "ports"] {
        let Ok(entries) = fs::read_dir(dir.join(sub)) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(id) = fs::read_to_string(e.path()) else {
                continue;
            };
            let id = id.trim().to_string();
            if id.is_empty() || !id.chars().all(|c| c.is_ascii_hexdigit()) {
                // Being written right now (create, then write): not ours to judge.
                continue;
            }
            let held = out.entry(id).or_insert(Held {
                address: None,
                ports: Vec::new(),
            });
            if sub == "leases" {
                held.address = name.parse().ok();
            } else if let Some((proto, port)) = name.split_once('-') {
                let proto = match proto {
                    "tcp" => Proto::Tcp,
                    "udp" => Proto::Udp,
                    _ => continue,
                };
                if let Ok(port) = port.parse() {
                    held.ports.push((proto, port));
                }
            }
        }
    }
    out
}

/// Remove the files of `id` (its address lease and its port files).
pub fn release(dir: &Path, id: &str, held: &Held, _lock: &DirLock) {
    let mine = |p: &Path| fs::read_to_string(p).is_ok_and(|s| s.trim() == id);
    if let Some(a) = held.address {
        let f = dir.join("leases").join(a.to_string());
        if mine(&f) {
            let _ = fs::remove_file(f);
        }
    }
    for (proto, port) in &held.ports {
        let f = dir.join("ports").join(format!("{}-{port}", proto.name()));
        if mine(&f) {
            let _ = fs::remove_file(f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_never_handed_twice() {
        let dir = std::env::temp_dir().join(format!("rc-leases-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let l = lock(&dir).unwrap();
        let a = take_address(&dir, "aa", &l).unwrap();
        let b = take_address(&dir, "bb", &l).unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 88, 0, 2));
        assert_eq!(b, Ipv4Addr::new(10, 88, 0, 3));
        let p = crate::network::ports::parse("8080:80").unwrap();
        take_ports(&dir, "aa", &[p], &l).unwrap();
        assert!(take_ports(&dir, "bb", &[p], &l).is_err());
        let o = owners(&dir);
        assert_eq!(o["aa"].address, Some(a));
        assert_eq!(o["aa"].ports, vec![(Proto::Tcp, 8080)]);
        release(&dir, "aa", &o["aa"], &l);
        // The freed address is the first one again; b keeps its own.
        assert_eq!(take_address(&dir, "cc", &l).unwrap(), a);
        take_ports(&dir, "bb", &[p], &l).unwrap();
        // The same host port twice in one list: named as such, nothing of it stays.
        let q = crate::network::ports::parse("192.0.2.5:9090:81").unwrap();
        let q2 = crate::network::ports::parse("127.0.0.1:9090:80").unwrap();
        let e = take_ports(&dir, "dd", &[q, q2], &l).unwrap_err();
        assert!(format!("{e:#}").contains("publishes it twice"), "{e:#}");
        assert!(!port_file(&dir, &q).exists());

        // Liveness: held while the Owner lives, free once it is dropped.
        assert!(!owner_is_live(&dir, "ee"));
        let o = own(&dir, "ee", &l).unwrap();
        assert!(owner_is_live(&dir, "ee"));
        drop(o);
        assert!(!owner_is_live(&dir, "ee"));
        assert_eq!(owner_ids(&dir), vec!["ee".to_string()]);
        disown(&dir, "ee", &l);
        assert!(owner_ids(&dir).is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }
}
