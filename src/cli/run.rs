//! `run`: flags -> OCI spec -> engine, with the container's runtime record around it.

use super::{OverlayMode, RunArgs, UsernsMode};
use crate::cgroup::systemd::{self, Bus};
use crate::cgroup::{Cgroup, Limits};
use crate::engine::{self, userns, Launch, MapWriter, WritableLayer};
use crate::exit::ExitError;
use crate::network;
use crate::spec::{self, ResolvedUser, SpecInput};
use crate::state::{self, Dirs, Live, Record, Status};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::rc::Rc;

fn fail(msg: impl Into<String>) -> anyhow::Error {
    ExitError::new(125, msg).into()
}

/// The user's name: /etc/passwd read directly (NSS costs a noticeable share of start-up),
/// then NSS for users from elsewhere (LDAP, sssd).
fn user_name(uid: u32) -> String {
    let id = uid.to_string();
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|p| {
            p.lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() > 2 && f[2] == id)
                .map(|f| f[0].to_string())
        })
        .or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                .ok()
                .flatten()
                .map(|u| u.name)
        })
        .unwrap_or_default()
}

/// Id maps for a new user namespace and how to write them. Prints at most one warning.
pub(super) fn plan_maps(
    mode: UsernsMode,
    uid: u32,
    gid: u32,
) -> Result<(Vec<userns::IdMap>, Vec<userns::IdMap>, MapWriter)> {
    let name = user_name(uid);
    let read = |f: &str| std::fs::read_to_string(f).unwrap_or_default();
    let subuid = userns::parse_subid(&read("/etc/subuid"), &name, uid);
    let subgid = userns::parse_subid(&read("/etc/subgid"), &name, gid);
    userns::validate_ranges("subuid", &subuid, uid).map_err(|e| fail(format!("{e:#}")))?;
    userns::validate_ranges("subgid", &subgid, gid).map_err(|e| fail(format!("{e:#}")))?;
    let helpers =
        crate::util::find_in_path("newuidmap").zip(crate::util::find_in_path("newgidmap"));
    let single = |id: u32| {
        let inside = if mode == UsernsMode::KeepId { id } else { 0 };
        vec![userns::IdMap {
            inside,
            outside: id,
            count: 1,
        }]
    };
    let root = uid == 0;
    let why = match (&helpers, subuid.is_empty() || subgid.is_empty()) {
        _ if root && !subuid.is_empty() && !subgid.is_empty() => None,
        (Some(_), false) => None,
        (None, _) => Some("newuidmap/newgidmap are not installed (apt install uidmap)".to_string()),
        (Some(_), true) => Some(format!(
            "user {name} has no range in /etc/subuid and /etc/subgid (as root: usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {name})"
        )),
    };
    if let Some(why) = why {
        if root {
            bail!("--userns needs subordinate ids for root: {why}");
        }
        let only = if mode == UsernsMode::KeepId {
            "only your own uid inside"
        } else {
            "only root inside"
        };
        crate::util::warn(&format!("{why}; running with a single id mapping ({only})"));
        return Ok((single(uid), single(gid), MapWriter::Direct));
    }
    let (u, g) = match mode {
        UsernsMode::KeepId => (
            userns::keep_id_maps(uid, &subuid),
            userns::keep_id_maps(gid, &subgid),
        ),
        _ => (
            userns::auto_maps(uid, &subuid),
            userns::auto_maps(gid, &subgid),
        ),
    };
    let writer = match helpers {
        // Root may write any map itself.
        _ if root => MapWriter::Direct,
        Some((newuidmap, newgidmap)) => MapWriter::Helpers {
            newuidmap,
            newgidmap,
        },
        None => MapWriter::Direct,
    };
    Ok((u, g, writer))
}

/// Why a user namespace cannot be created, with the fix, as far as the host tells.
pub fn userns_hint() -> String {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_string())
            .ok()
    };
    if read("/proc/sys/kernel/unprivileged_userns_clone").as_deref() == Some("0") {
        return "unprivileged user namespaces are disabled; as root: sysctl -w kernel.unprivileged_userns_clone=1".into();
    }
    if read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").as_deref() == Some("1") {
        return "AppArmor restricts unprivileged user namespaces; as root: sysctl -w kernel.apparmor_restrict_unprivileged_userns=0 (or add an AppArmor profile allowing userns for rootless_container)".into();
    }
    if read("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
        return "user namespaces are disabled; as root: sysctl -w user.max_user_namespaces=15000"
            .into();
    }
    "user namespaces are not allowed here (a seccomp filter in an outer container, or a kernel without CONFIG_USER_NS); run on a host that allows unprivileged user namespaces".into()
}

fn live_id(live: &Live) -> String {
    live.dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default()
}

fn launch_hostname(spec: &oci_spec::runtime::Spec) -> &str {
    spec.hostname().as_deref().unwrap_or("localhost")
}

/// "0-65536" style list of the container ids a map covers.
fn ranges(maps: &[userns::IdMap]) -> String {
    maps.iter()
        .map(|m| {
            if m.count == 1 {
                m.inside.to_string()
            } else {
                format!("{}-{}", m.inside, m.inside as u64 + m.count as u64 - 1)
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn check_hostname(h: &str) -> Result<()> {
    let ok = !h.is_empty()
        && h.len() <= 64
        && h.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if !ok {
        return Err(fail(format!(
            "invalid --hostname {h:?}: use letters, digits, '-' and '.', at most 64"
        )));
    }
    Ok(())
}

fn check_name(n: &str) -> Result<()> {
    let ok = !n.is_empty()
        && n.len() <= 128
        && n.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if !ok {
        return Err(fail(format!(
            "invalid --name {n:?}: use [a-zA-Z0-9][a-zA-Z0-9_.-]*"
        )));
    }
    Ok(())
}

pub fn run(a: RunArgs, overlay: OverlayMode) -> Result<i32> {
    let euid = nix::unistd::geteuid().as_raw();
    let egid = nix::unistd::getegid().as_raw();
    let rootless = euid != 0;
    if a.privileged && rootless {
        return Err(fail("--privileged needs root: it gives the container the host's devices and all capabilities; run without it, or as root"));
    }
    if a.userns == Some(UsernsMode::Host) && rootless {
        return Err(fail(
            "--userns host needs root: an unprivileged user always gets a user namespace",
        ));
    }
    if a.tty {
        crate::engine::require_terminal_stdin().map_err(|e| fail(format!("{e:#}")))?;
    }
    let mut net_mode = network::parse_mode(a.network.as_deref(), rootless)?;
    let mac = network::apply_mac(&mut net_mode, a.mac_address.as_deref())?;
    let network_ns = net_mode != network::Mode::Host;
    let ports = a
        .publish
        .iter()
        .map(|p| network::ports::parse(p))
        .collect::<Result<Vec<_>>>()?;
    if !ports.is_empty() && !net_mode.is_connected() {
        return Err(fail(
            "-p/--publish needs a network of its own (--network bridge, slirp4netns or pasta); with --network host the container's ports are the host's already",
        ));
    }
    // The bridge keys a published port by protocol and port alone (one DNAT map entry
    // per port, whatever the host address); the helpers by address too.
    let by_port = net_mode == network::Mode::Bridge;
    for (i, p) in ports.iter().enumerate() {
        if ports[..i].iter().any(|q| {
            q.host_port == p.host_port && q.proto == p.proto && (by_port || q.host_ip == p.host_ip)
        }) {
            let bridge = if by_port {
                " (on the bridge, a host port is one whatever the host address)"
            } else {
                ""
            };
            return Err(fail(format!(
                "host port {}/{} is published twice{bridge}; give each -p its own host port",
                p.host_port,
                p.proto.name()
            )));
        }
    }
    if (!a.dns.is_empty() || !a.add_host.is_empty()) && !net_mode.is_connected() {
        return Err(fail(
            "--dns and --add-host need a network of its own (--network bridge, slirp4netns or pasta): with none or host the container keeps the root filesystem's /etc files",
        ));
    }
    if rootless && a.cgroup_parent.is_some() {
        return Err(fail(
            "--cgroup-parent needs root (the cgroupfs manager); run without it",
        ));
    }
    for p in &ports {
        network::ports::check_free(p)?;
    }
    let dns = a
        .dns
        .iter()
        .map(|d| {
            d.parse::<std::net::IpAddr>()
                .map_err(|_| fail(format!("invalid --dns {d:?}: not an IP address")))
        })
        .collect::<Result<Vec<_>>>()?;
    let add_hosts = a
        .add_host
        .iter()
        .map(|h| network::parse_add_host(h))
        .collect::<Result<Vec<_>>>()?;
    if let Some(h) = &a.hostname {
        check_hostname(h)?;
    }
    if let Some(n) = &a.name {
        check_name(n)?;
    }
    let mut seccomp_unconfined = false;
    for opt in &a.security_opt {
        match opt.as_str() {
            "seccomp=unconfined" | "seccomp:unconfined" => seccomp_unconfined = true,
            other => {
                return Err(fail(format!(
                    "unsupported --security-opt {other:?}: this version supports seccomp=unconfined"
                )))
            }
        }
    }
    let mut limits = Limits::parse(
        a.memory.as_deref(),
        a.memory_swap.as_deref(),
        a.memory_reservation.as_deref(),
        a.cpus.as_deref(),
        a.cpu_shares,
        a.cpuset_cpus.as_deref(),
        a.pids_limit,
        a.blkio_weight,
    )?;
    limits.set_cpu_weight(a.cpu_weight)?;
    let cgroup_ns = match a.cgroupns.as_deref() {
        None | Some("private") => true,
        Some("host") => false,
        Some(other) => {
            return Err(fail(format!(
                "invalid --cgroupns {other:?}: private or host"
            )))
        }
    };
    let manager = cgroup_manager(
        a.cgroup_manager.as_deref(),
        rootless,
        &limits,
        a.cgroup_parent.is_some(),
    )?;
    let host_rootfs = a.rootfs.is_none();
    let rootfs: PathBuf = match &a.rootfs {
        None => PathBuf::from("/"),
        Some(r) => {
            let p = std::fs::canonicalize(r).map_err(|e| {
                fail(format!(
                    "rootfs {} does not exist ({e}); give a directory holding a root filesystem",
                    r.display()
                ))
            })?;
            if !p.is_dir() {
                return Err(fail(format!("rootfs {} is not a directory", p.display())));
            }
            p
        }
    };
    let volumes = a
        .volumes
        .iter()
        .map(|v| spec::parse_volume(v))
        .collect::<Result<Vec<_>>>()?;
    let caps = if a.privileged {
        spec::all_caps()
    } else {
        spec::capabilities(&a.cap_add, &a.cap_drop).map_err(|e| fail(format!("{e:#}")))?
    };

    // The user namespace: always rootless; as root only when asked for.
    let userns_mode = a.userns.unwrap_or(UsernsMode::Auto);
    let want_userns = rootless || a.userns.is_some_and(|m| m != UsernsMode::Host);
    let (maps, writer) = if want_userns {
        let (u, g, w) = plan_maps(userns_mode, euid, egid)?;
        (Some((u, g)), w)
    } else {
        (None, MapWriter::Direct)
    };
    // slirp4netns needs a root inside the user namespace, which keep-id under a single map
    // does not have (it fails with "parent failed").
    if let (Some((u, _)), network::Mode::Slirp(_)) = (&maps, &net_mode) {
        if !userns::is_mapped(u, 0) {
            return Err(fail(
                "--userns keep-id without subordinate ids leaves no root in the container, which slirp4netns needs; use --network pasta or none, or add a /etc/subuid range",
            ));
        }
    }

    // The user the command runs as, resolved in the container's own passwd/group files.
    let read_etc =
        |f: &str| engine::fsutil::read_in_root(&rootfs, Path::new(f)).unwrap_or_default();
    let (passwd, group) = (read_etc("/etc/passwd"), read_etc("/etc/group"));
    let user = match (&a.user, userns_mode) {
        (Some(u), _) => spec::resolve_user(u, &passwd, &group)?,
        (None, UsernsMode::KeepId) => {
            let mut u = spec::resolve_user(&euid.to_string(), &passwd, &group)?;
            u.gid = egid;
            u
        }
        (None, _) => spec::resolve_user("0", &passwd, &group).unwrap_or(ResolvedUser {
            uid: 0,
            gid: 0,
            additional_gids: vec![],
            home: "/root".into(),
        }),
    };
    if let Some((u, g)) = &maps {
        if !userns::is_mapped(u, user.uid) || !userns::is_mapped(g, user.gid) {
            return Err(fail(format!(
                "user {}:{} is not mapped in the container's user namespace (container uids {}, gids {}); \
                 use an id in that range, --userns keep-id for your own, or a larger /etc/subuid and /etc/subgid range",
                user.uid,
                user.gid,
                ranges(u),
                ranges(g)
            )));
        }
    }
    let id = state::new_id();
    let hostname = a.hostname.clone().unwrap_or_else(|| id[..12].to_string());
    let mut defaults = vec![
        (
            "PATH".to_string(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        ),
        ("HOSTNAME".to_string(), hostname.clone()),
        (
            "HOME".to_string(),
            if user.home.is_empty() {
                "/".into()
            } else {
                user.home.clone()
            },
        ),
        ("container".to_string(), "rootless_container".to_string()),
    ];
    if a.tty {
        defaults.push((
            "TERM".to_string(),
            std::env::var("TERM").unwrap_or_else(|_| "xterm".into()),
        ));
    }
    let env = spec::environment(&defaults, &a.env_file, &a.env)?;
    let args = if a.command.is_empty() {
        vec!["/bin/sh".to_string()]
    } else {
        a.command.clone()
    };
    let cwd = a.workdir.clone().unwrap_or_else(|| "/".into());
    if !cwd.starts_with('/') {
        return Err(fail(format!("--workdir {cwd:?} must be an absolute path")));
    }
    let dirs = Dirs::for_current_user()?;
    // A network with a helper or the bridge gets its own /etc/hosts, resolv.conf and
    // hostname, written into the runtime record once it exists and bound over the rootfs'
    // (as podman does).
    let etc_binds: Vec<(PathBuf, &'static str)> = match net_mode {
        _ if net_mode.is_connected() => ["hosts", "resolv.conf", "hostname"]
            .into_iter()
            .map(|f| {
                (
                    dirs.run.join(&id).join(f),
                    match f {
                        "hosts" => "/etc/hosts",
                        "resolv.conf" => "/etc/resolv.conf",
                        _ => "/etc/hostname",
                    },
                )
            })
            .collect(),
        _ => Vec::new(),
    };
    let oci = spec::build(SpecInput {
        etc_binds: etc_binds.clone(),
        rootfs: &rootfs,
        readonly_root: a.read_only,
        args: args.clone(),
        env,
        cwd: cwd.clone(),
        user,
        hostname,
        terminal: a.tty,
        caps,
        volumes,
        userns_maps: maps,
        network_ns,
        cgroup_ns,
        privileged: a.privileged,
        no_new_privileges: !a.privileged,
        seccomp: !a.privileged && !seccomp_unconfined,
        tmpfs: match (a.read_only, host_rootfs) {
            (true, _) => vec!["/tmp", "/var/tmp", "/run"],
            (false, true) => vec!["/tmp"],
            (false, false) => vec![],
        },
    })?;

    dirs.ensure_run()?;
    if !rootless {
        network::bridge::collect_stale(&dirs.data);
    }
    let name = a.name.clone().unwrap_or_else(|| id[..12].to_string());
    let live = Live::create(&dirs.run, &id, &name).map_err(|e| fail(format!("{e:#}")))?;
    let mountpoint = live.dir.join("root");
    std::fs::create_dir(&mountpoint).with_context(|| format!("create {}", mountpoint.display()))?;
    // Root mode's bridge: address lease, host ports and DNAT rules now (the veth once the
    // container's process exists); all removed when `bridged` is dropped.
    let bridged = match net_mode {
        network::Mode::Bridge => Some(network::bridge::prepare(&dirs.data, &id, &ports, mac)?),
        _ => None,
    };
    if !etc_binds.is_empty() {
        let host_resolv = network::host_resolv_conf(&net_mode, &dns);
        let files = network::etc_files(
            launch_hostname(&oci),
            &net_mode,
            bridged.as_ref().map(|b| b.endpoint.address),
            &dns,
            &add_hosts,
            &host_resolv,
        );
        for (path, content) in [
            ("hosts", files.hosts),
            ("resolv.conf", files.resolv_conf),
            ("hostname", files.hostname),
        ] {
            std::fs::write(live.dir.join(path), content)
                .with_context(|| format!("write {path}"))?;
        }
    }
    let net = match &net_mode {
        network::Mode::Slirp(o) | network::Mode::Pasta(o) => Some(engine::NetworkPlan {
            pasta: matches!(net_mode, network::Mode::Pasta(_)),
            slirp: o.clone(),
            api: (!ports.is_empty() && matches!(net_mode, network::Mode::Slirp(_)))
                .then(|| network::slirp::api_socket_path(&dirs.run, &id)),
            ports: ports.clone(),
            run: dirs.run.clone(),
            log: live.dir.join("network.log"),
        }),
        _ => None,
    };
    let layer = if a.rm || host_rootfs {
        WritableLayer::Tmpfs
    } else {
        let base = dirs.data.join("containers").join(&id);
        for d in ["upper", "work"] {
            std::fs::create_dir_all(base.join(d))
                .with_context(|| format!("create {}", base.join(d).display()))?;
        }
        std::fs::write(base.join("config.json"), serde_json::to_vec_pretty(&oci)?)?;
        WritableLayer::Dir {
            upper: base.join("upper"),
            work: base.join("work"),
        }
    };
    // The container's cgroup: cgroupfs limits are written before any process is in it;
    // systemd places the process by pid once it exists.
    let cgroup = match manager {
        CgroupManager::Disabled => None,
        CgroupManager::Systemd(bus) => Some(Rc::new(Cgroup::systemd(bus, &id, &limits))),
        CgroupManager::Cgroupfs => {
            let run = dirs.run.clone();
            crate::cgroup::fs::collect_stale(a.cgroup_parent.as_deref(), |id| {
                id == live_id(&live) || state::record_is_live(&run, id)
            });
            Some(Rc::new(Cgroup::Fs(crate::cgroup::FsCgroup::create(
                &id,
                a.cgroup_parent.as_deref(),
                &limits,
            )?)))
        }
    };
    let launch = Launch {
        spec: oci,
        rootless,
        maps: writer,
        host_rootfs,
        layer,
        overlay,
        mountpoint,
        network: net,
        bridge: bridged.as_ref().map(|b| b.endpoint.clone()),
        probe_cache: Some(dirs.run.join("overlay.probe")),
        cgroup: cgroup.clone(),
        precreate: etc_binds.iter().map(|(_, d)| PathBuf::from(d)).collect(),
        interactive: a.interactive,
        init: a.init,
        preserve_fds: a.preserve_fds,
        privileged: a.privileged,
    };
    let mut record = Record {
        id: id.clone(),
        name,
        status: Status::Creating,
        pid: 0,
        rootfs: rootfs.clone(),
        command: args,
        created: state::now_secs(),
        exit_code: None,
        rootless,
    };
    let result = engine::run(
        &launch,
        &mut RecordHooks {
            live: &live,
            record: &mut record,
            run: &dirs.run,
        },
    );
    // The cgroup is read and removed, and the bridge's veth, rules and leases go, while the
    // record is still live: another runtime's stale collection may not take them first.
    if let Some(cg) = &cgroup {
        if result.as_ref().is_ok_and(|c| *c == 137) && cg.oom_killed() {
            let mib = limits
                .memory
                .map(|m| format!(" ({} MiB)", m >> 20))
                .unwrap_or_default();
            eprintln!("rootless_container: the container was killed by the kernel's OOM killer: it exceeded its memory limit{mib}");
        }
        cg.remove();
    }
    drop(bridged);
    drop(live);
    result
}

/// The record's state follows the start: written once the container's process exists
/// (the record itself, with its lock, is made before clone), then again when the command
/// runs.
struct RecordHooks<'a> {
    live: &'a Live,
    record: &'a mut Record,
    run: &'a Path,
}

impl engine::Hooks for RecordHooks<'_> {
    fn created(&mut self, _pid: i32) -> Result<()> {
        self.live.write(self.record)?;
        // Records of runtimes that died: off the start-up path, while the id maps are
        // written.
        state::collect_stale(self.run);
        Ok(())
    }

    fn started(&mut self, pid: i32) {
        self.record.status = Status::Running;
        self.record.pid = pid;
        let _ = self.live.write(self.record);
    }

    /// One write of the record, not a "creating" one overwritten at once.
    fn created_and_started(&mut self, pid: i32) -> Result<()> {
        self.record.status = Status::Running;
        self.record.pid = pid;
        self.live.write(self.record)?;
        state::collect_stale(self.run);
        Ok(())
    }
}

/// Which cgroup manager places the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CgroupManager {
    /// No cgroup of its own: the container stays in the runtime's cgroup.
    Disabled,
    Cgroupfs,
    Systemd(Bus),
}

/// `--cgroup-manager`, or the default: without limits none is needed (no D-Bus round trip
/// on the start-up path); with limits, systemd when it can delegate (the user's session
/// bus rootless, PID 1 as root), else cgroupfs where the runtime may write cgroups.
fn cgroup_manager(
    flag: Option<&str>,
    rootless: bool,
    limits: &Limits,
    parent: bool,
) -> Result<CgroupManager> {
    if flag.is_none() && limits.is_empty() {
        // The common case, on the start-up path: nothing to probe.
        return Ok(CgroupManager::Disabled);
    }
    let unified = crate::cgroup::fs::is_unified();
    let bus = if rootless {
        systemd::user_bus_address().is_some()
    } else {
        systemd::system_manager_running()
    };
    let own_writable = || crate::cgroup::fs::own_v2_dir().is_some_and(|d| writable(&d));
    let hybrid =
        "this host's cgroups are v1/hybrid, so no cgroup v2 subtree can be delegated to you";
    let no_bus = "there is no systemd user session bus to ask for a delegated cgroup (DBUS_SESSION_BUS_ADDRESS is unset and $XDG_RUNTIME_DIR/bus is missing: log in through a systemd session, or `loginctl enable-linger` for services)";
    let manager = match flag {
        Some("disabled") if limits.is_empty() => CgroupManager::Disabled,
        Some("disabled") => {
            return Err(fail(
                "resource limits need a cgroup manager; drop --cgroup-manager disabled",
            ))
        }
        Some("systemd") if parent => {
            return Err(fail(
                "--cgroup-parent goes with --cgroup-manager cgroupfs (a systemd scope lives in its slice)",
            ))
        }
        Some("systemd") if !unified => {
            return Err(fail(format!("--cgroup-manager systemd: {hybrid}")))
        }
        Some("systemd") if rootless && !bus => {
            return Err(fail(format!("--cgroup-manager systemd: {no_bus}")))
        }
        Some("systemd") if !bus => {
            return Err(fail(
                "--cgroup-manager systemd: systemd is not running this machine (no /run/systemd/system); use --cgroup-manager cgroupfs",
            ))
        }
        Some("systemd") => CgroupManager::Systemd(if rootless { Bus::User } else { Bus::System }),
        Some("cgroupfs") if rootless && !(unified && own_writable()) => {
            return Err(fail(format!(
                "--cgroup-manager cgroupfs: {}",
                if unified {
                    "your own cgroup is not writable by you (ask systemd: --cgroup-manager systemd)"
                } else {
                    hybrid
                }
            )))
        }
        Some("cgroupfs") => CgroupManager::Cgroupfs,
        Some(other) => {
            return Err(fail(format!(
                "invalid --cgroup-manager {other:?}: systemd, cgroupfs or disabled"
            )))
        }
        None if !rootless => {
            if unified && bus && !parent {
                CgroupManager::Systemd(Bus::System)
            } else {
                CgroupManager::Cgroupfs
            }
        }
        None if !unified => {
            return Err(fail(format!(
                "resource limits (--memory, --cpus, --pids-limit, ...) are unavailable rootless here: {hybrid}; run without them, or as root"
            )))
        }
        None if bus => CgroupManager::Systemd(Bus::User),
        None if own_writable() => CgroupManager::Cgroupfs,
        None => {
            return Err(fail(format!(
                "resource limits (--memory, --cpus, --pids-limit, ...) are unavailable: {no_bus}; run without them"
            )))
        }
    };
    // Refuse before anything starts when the user's manager lacks a controller.
    if manager == CgroupManager::Systemd(Bus::User) {
        // SAFETY: getuid has no preconditions.
        let uid = unsafe { libc::getuid() };
        if let Some(have) = systemd::user_manager_controllers(uid) {
            let missing = limits.missing_controllers(&have);
            if !missing.is_empty() {
                return Err(systemd::not_delegated(uid, &missing, &have).into());
            }
        }
    }
    Ok(manager)
}

fn writable(dir: &Path) -> bool {
    nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK).is_ok()
}
