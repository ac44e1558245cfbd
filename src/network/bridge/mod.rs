//! Root mode's network: the bridge `rc0` (10.88.0.1/16), one veth pair per container,
//! an address lease per container, NAT out and DNAT for `-p`.
//!
//! Life of a container's network, all done by the runtime's parent process:
//! 1. `prepare` (before clone): under the lease directory's lock, reclaim what dead
//!    containers left, make sure the bridge, its address, the sysctls and the nftables
//!    table exist, lock the container's owner file (its runtime is alive while it holds
//!    it), take an address lease and the host ports, add the DNAT rules.
//! 2. `attach` (after clone, before the child is released): create the veth pair with its
//!    container end directly in the child's network namespace (by pid) and configure that
//!    end (address, up, default route) through a netlink socket opened in the namespace.
//! 3. Dropping the `Bridged` handle (any end of the runtime but SIGKILL) deletes the veth,
//!    the rules and the leases; after a SIGKILL, the kernel removes the veth with the
//!    namespace and the next command's `collect_stale` the rest.

mod leases;
mod netlink;
pub mod nft;

use anyhow::Result;
use netlink::Netlink;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::exit::ExitError;
use crate::network::ports::PortMapping;

/// The bridge's name; it stays when the last container ends (like docker0).
pub const BRIDGE: &str = "rc0";
pub const SUBNET: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 0);
pub const PREFIX: u8 = 16;
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 1);
/// The container's end of its veth pair.
pub const CONTAINER_IF: &str = "eth0";

/// Where leases live: `<data dir>/bridge` (/var/lib/rootless_container/bridge).
pub fn state_dir(data: &Path) -> PathBuf {
    data.join("bridge")
}

/// The host end of the veth pair of container `id`: `rc` and 12 hex digits (15 at most).
pub fn host_if(id: &str) -> String {
    format!("rc{}", &id[..id.len().min(12)])
}

/// What `attach` needs once the container's process exists.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub host_if: String,
    pub address: Ipv4Addr,
    pub mac: Option<[u8; 6]>,
}

/// A container's place on the bridge; dropping it removes its veth, rules and leases.
pub struct Bridged {
    dir: PathBuf,
    id: String,
    ports: Vec<PortMapping>,
    pub endpoint: Endpoint,
    /// Held until the leases are gone (dropped after `Drop::drop`).
    _owner: leases::Owner,
}

fn fail(msg: String) -> anyhow::Error {
    ExitError::new(125, msg).into()
}

/// What to do about a failed netlink request on the host's side.
fn netlink_fix(e: &std::io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            "needs CAP_NET_ADMIN in the host's network namespace; use --network none or host"
        }
        _ => "the host's network refuses the bridge; use --network none or host",
    }
}

/// One line for a failed step of setting up the host's side of the bridge.
fn host_error(what: &str, e: std::io::Error) -> anyhow::Error {
    fail(format!(
        "bridge network: cannot {what}: {e}: {}",
        netlink_fix(&e)
    ))
}

/// Whether `a/prefix` lies in the bridge's subnet.
fn in_subnet(a: Ipv4Addr, prefix: u8) -> bool {
    let mask = u32::MAX << (32 - PREFIX);
    prefix >= PREFIX && u32::from(a) & mask == u32::from(SUBNET)
}

/// Another link with an address or a route in the bridge's subnet (podman's podman0 or
/// cni-podman0 use 10.88.0.0/16 too): the two would fight over the addresses.
fn subnet_user(nl: &mut Netlink, bridge: u32) -> std::io::Result<Option<(u32, String)>> {
    for (index, addr, prefix) in nl.ipv4_addresses()? {
        if index != bridge && in_subnet(addr, 32) {
            return Ok(Some((index, format!("address {addr}/{prefix}"))));
        }
    }
    for (index, dst, prefix) in nl.ipv4_main_routes()? {
        if index != bridge && in_subnet(dst, prefix) {
            return Ok(Some((index, format!("route {dst}/{prefix}"))));
        }
    }
    Ok(None)
}

fn write_sysctl(path: &str, value: &str) -> Result<()> {
    if std::fs::read_to_string(path).is_ok_and(|v| v.trim() == value) {
        return Ok(());
    }
    std::fs::write(path, value).map_err(|e| {
        fail(format!(
            "cannot set {path} to {value} ({e}): the bridge network needs it; a read-only /proc/sys (inside another container?) cannot host it, use --network none|host"
        ))
    })
}

fn random_mac() -> [u8; 6] {
    let mut m = [0u8; 6];
    // SAFETY: getrandom into a buffer we own.
    unsafe { libc::getrandom(m.as_mut_ptr().cast(), m.len(), 0) };
    // Locally administered, unicast.
    m[0] = (m[0] & 0xfe) | 0x02;
    m
}

/// The bridge with its address, up; IP forwarding; localhost DNAT allowed into the
/// bridge; the nftables table. Idempotent.
fn ensure_host_network() -> Result<()> {
    let mut nl = Netlink::open().map_err(|e| host_error("open a netlink socket", e))?;
    let find = |nl: &mut Netlink| {
        nl.link_index(BRIDGE)
            .map_err(|e| host_error(&format!("look up {BRIDGE}"), e))
    };
    let index = match find(&mut nl)? {
        Some(i) => i,
        None => {
            nl.create_bridge(BRIDGE, random_mac())
                .map_err(|e| host_error(&format!("create the bridge {BRIDGE}"), e))?;
            find(&mut nl)?.ok_or_else(|| {
                fail(format!(
                    "bridge network: the bridge {BRIDGE} vanished as it was created; try again"
                ))
            })?
        }
    };
    let user = subnet_user(&mut nl, index)
        .map_err(|e| host_error("list the host's addresses and routes", e))?;
    if let Some((other, what)) = user {
        let name = nl
            .link_name(other)
            .ok()
            .flatten()
            .unwrap_or_else(|| format!("link #{other}"));
        return Err(fail(format!(
            "bridge network: {name} has {what}, in the bridge's subnet {SUBNET}/{PREFIX} (another container engine's network, like podman's?): remove it from {name} (or {name} itself), or use --network none or host"
        )));
    }
    nl.add_address(index, GATEWAY, PREFIX)
        .map_err(|e| host_error(&format!("add {GATEWAY}/{PREFIX} to {BRIDGE}"), e))?;
    nl.set_up(index)
        .map_err(|e| host_error(&format!("bring {BRIDGE} up"), e))?;
    write_sysctl("/proc/sys/net/ipv4/ip_forward", "1")?;
    // Lets the output chain's DNAT of 127.0.0.1:PORT reach a container (then masqueraded).
    write_sysctl(
        &format!("/proc/sys/net/ipv4/conf/{BRIDGE}/route_localnet"),
        "1",
    )?;
    nft::ensure_table().map_err(|e| {
        fail(format!(
            "bridge network: {e:#}; fix the host's nftables, or use --network none or host"
        ))
    })
}

/// Set the container up on the bridge before it exists: lease, host ports, rules.
pub fn prepare(
    data: &Path,
    id: &str,
    ports: &[PortMapping],
    mac: Option<[u8; 6]>,
) -> Result<Bridged> {
    for p in ports {
        if p.host_ip.is_ipv6() {
            return Err(fail(format!(
                "cannot publish [{}]:{}: the bridge network publishes on IPv4 addresses only; drop the host address or give an IPv4 one",
                p.host_ip, p.host_port
            )));
        }
    }
    let dir = state_dir(data);
    let lock = leases::lock(&dir)?;
    collect_locked(&dir, &lock);
    ensure_host_network()?;
    let owner = leases::own(&dir, id, &lock)?;
    let address = match leases::take_address(&dir, id, &lock) {
        Ok(a) => a,
        Err(e) => {
            leases::disown(&dir, id, &lock);
            return Err(e);
        }
    };
    let mut b = Bridged {
        dir,
        id: id.to_string(),
        ports: Vec::new(),
        endpoint: Endpoint {
            host_if: host_if(id),
            address,
            mac,
        },
        _owner: owner,
    };
    let published = match leases::take_ports(&b.dir, id, ports, &lock) {
        Ok(()) => {
            b.ports = ports.to_vec();
            nft::publish(id, address, ports)
        }
        Err(e) => Err(e),
    };
    // On failure, `b` is dropped after the lock and gives back what it took.
    drop(lock);
    published?;
    Ok(b)
}

impl Bridged {
    fn held(&self) -> leases::Held {
        leases::Held {
            address: Some(self.endpoint.address),
            ports: self.ports.iter().map(|p| (p.proto, p.host_port)).collect(),
        }
    }

    fn release(&self, lock: &leases::DirLock) {
        remove_everything(&self.dir, &self.id, &self.held(), lock);
    }
}

impl Drop for Bridged {
    fn drop(&mut self) {
        match leases::lock(&self.dir) {
            Ok(lock) => self.release(&lock),
            Err(e) => eprintln!("rootless_container: warning: {e:#}"),
        }
    }
}

/// Remove what container `id` holds: veth, rules, then leases and its owner file (in that
/// order, so that an address is free only once nothing points at it any more).
fn remove_everything(dir: &Path, id: &str, held: &leases::Held, lock: &leases::DirLock) {
    let veth = host_if(id);
    // Deleting one end of a veth pair deletes both.
    match Netlink::open().and_then(|mut nl| nl.delete_link(&veth)) {
        Ok(()) => {}
        Err(e) => eprintln!(
            "rootless_container: warning: cannot delete the veth {veth} ({e}): delete it with `ip link delete {veth}`"
        ),
    }
    let short = &id[..id.len().min(12)];
    match nft::unpublish(id, &held.ports) {
        Ok(()) => {
            leases::release(dir, id, held, lock);
            leases::disown(dir, id, lock);
        }
        Err(e) => eprintln!(
            "rootless_container: warning: the rules of container {short} stay: {e:#}; its leases are kept until they can be removed"
        ),
    }
}

fn collect_locked(dir: &Path, lock: &leases::DirLock) {
    let owners = leases::owners(dir);
    for (id, held) in &owners {
        if !leases::owner_is_live(dir, id) {
            remove_everything(dir, id, held, lock);
        }
    }
    // Owner files without leases: a runtime that died between the two.
    for id in leases::owner_ids(dir) {
        if !owners.contains_key(&id) && !leases::owner_is_live(dir, &id) {
            leases::disown(dir, &id, lock);
        }
    }
}

/// Reclaim the veths, rules and leases of bridge containers whose runtime died (its lock
/// on `owners/<id>` is free).
pub fn collect_stale(data: &Path) {
    let dir = state_dir(data);
    if !dir.join("leases").is_dir() {
        return;
    }
    // Best effort: a directory we may not write (uid 0 of a user namespace sees the
    // host's read-only) holds nothing of ours.
    if let Ok(lock) = leases::lock(&dir) {
        collect_locked(&dir, &lock);
    }
}

/// Why the bridge cannot be root's implicit default network here, when it cannot: uid 0 of
/// a user namespace (the runtime inside a container) has no say over the host's network;
/// without CAP_NET_ADMIN (root inside an ordinary Docker container) the bridge cannot be
/// created; with a read-only /proc/sys, IP forwarding cannot be set. `None`: the bridge.
pub fn default_unavailable(
    initial_userns: bool,
    net_admin: bool,
    sysctl_writable: bool,
) -> Option<Option<&'static str>> {
    if !initial_userns {
        // Silently none: the runtime inside a container, as before the bridge.
        return Some(None);
    }
    if !net_admin {
        return Some(Some(
            "no CAP_NET_ADMIN to create the bridge rc0 (inside a container?)",
        ));
    }
    if !sysctl_writable {
        return Some(Some(
            "/proc/sys/net/ipv4/ip_forward is not writable (a read-only /proc/sys, inside a container?)",
        ));
    }
    None
}

/// The facts `default_unavailable` judges, about this process.
pub fn default_facts() -> (bool, bool, bool) {
    let userns = in_initial_userns();
    if !userns {
        return (false, false, false);
    }
    let net_admin = caps::has_cap(
        None,
        caps::CapSet::Effective,
        caps::Capability::CAP_NET_ADMIN,
    )
    .unwrap_or(false);
    let writable = nix::unistd::access(
        "/proc/sys/net/ipv4/ip_forward",
        nix::unistd::AccessFlags::W_OK,
    )
    .is_ok();
    (userns, net_admin, writable)
}

/// Whether this process is in the initial user namespace (the host's real root when
/// uid 0; uid 0 of a container's user namespace cannot set up the host's network).
pub fn in_initial_userns() -> bool {
    std::fs::read_to_string("/proc/self/uid_map")
        .is_ok_and(|m| m.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"])
}

fn attach_error(e: std::io::Error, what: &str) -> anyhow::Error {
    host_error(what, e)
}

/// Connect the container whose first process is `pid`: a veth pair with `eth0` in its
/// network namespace, addressed and routed through the bridge. Runs after clone.
pub fn attach(ep: &Endpoint, pid: i32) -> Result<()> {
    let mut nl = Netlink::open().map_err(|e| attach_error(e, "open a netlink socket"))?;
    let master = nl
        .link_index(BRIDGE)
        .map_err(|e| attach_error(e, "find the bridge"))?
        .ok_or_else(|| {
            fail(format!(
                "bridge network: the bridge {BRIDGE} is gone (deleted while the container started?); run again"
            ))
        })?;
    nl.create_veth(&ep.host_if, master, CONTAINER_IF, pid, ep.mac)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) {
                return fail(format!(
                    "bridge network: cannot create the veth pair {}: {e}: the --mac-address is not a valid unicast address, give another",
                    ep.host_if
                ));
            }
            attach_error(e, &format!("create the veth pair {}", ep.host_if))
        })?;
    let mut inner = Netlink::open_in_netns_of(pid)
        .map_err(|e| attach_error(e, "enter the container's network namespace"))?;
    let index = inner
        .link_index(CONTAINER_IF)
        .map_err(|e| attach_error(e, "find eth0"))?
        .ok_or_else(|| {
            fail("bridge network: eth0 did not appear in the container (its network namespace changed?); run again".into())
        })?;
    inner
        .add_address(index, ep.address, PREFIX)
        .map_err(|e| attach_error(e, "address eth0"))?;
    inner
        .set_up(index)
        .map_err(|e| attach_error(e, "bring eth0 up"))?;
    inner
        .add_default_route(index, GATEWAY)
        .map_err(|e| attach_error(e, "add the default route"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_collisions() {
        let a = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        // podman0's address and route, a host route, a smaller network inside.
        assert!(in_subnet(a("10.88.0.1"), 32));
        assert!(in_subnet(a("10.88.0.0"), 16));
        assert!(in_subnet(a("10.88.7.0"), 24));
        // A wider network around it (10.0.0.0/8 on a LAN) leaves ours the more specific.
        assert!(!in_subnet(a("10.0.0.0"), 8));
        assert!(!in_subnet(a("0.0.0.0"), 0));
        assert!(!in_subnet(a("10.89.0.1"), 32));
    }
}
