//! Flags -> OCI runtime spec, the one model the engine runs (as podman does for its runtimes).

use crate::engine::userns::IdMap;
use crate::exit::ExitError;
use anyhow::{bail, Context, Result};
use oci_spec::runtime::Spec;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// Docker's default capability set.
pub const DEFAULT_CAPS: [&str; 14] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// Every capability name the runtime knows (for --cap-add ALL and --privileged).
pub fn all_caps() -> Vec<String> {
    caps::all()
        .into_iter()
        .map(|c| c.to_string().trim_start_matches("CAP_").to_string())
        .collect()
}

/// runc's default masked paths.
pub const MASKED_PATHS: [&str; 12] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// runc's default read-only paths.
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Apply --cap-add/--cap-drop (names with or without CAP_, or ALL) to the default set.
pub fn capabilities(add: &[String], drop: &[String]) -> Result<Vec<String>> {
    let known = all_caps();
    let norm = |c: &str| -> Result<String> {
        let up = c.trim().to_uppercase();
        let name = up.strip_prefix("CAP_").unwrap_or(&up).to_string();
        if name != "ALL" && !known.contains(&name) {
            bail!("unknown capability {c:?}; see capabilities(7) for the names");
        }
        Ok(name)
    };
    let add: Vec<String> = add.iter().map(|c| norm(c)).collect::<Result<_>>()?;
    let drop: Vec<String> = drop.iter().map(|c| norm(c)).collect::<Result<_>>()?;
    let mut set: Vec<String> = if drop.iter().any(|c| c == "ALL") {
        Vec::new()
    } else {
        DEFAULT_CAPS
            .iter()
            .map(|s| s.to_string())
            .filter(|c| !drop.contains(c))
            .collect()
    };
    for c in add {
        if c == "ALL" {
            set = known.clone();
        } else if !set.contains(&c) {
            set.push(c);
        }
    }
    Ok(set)
}

/// A `-v SRC:DST[:OPTS]` volume.
#[derive(Debug, PartialEq, Eq)]
pub struct Volume {
    pub source: PathBuf,
    pub destination: PathBuf,
    pub readonly: bool,
}

pub fn parse_volume(spec: &str) -> Result<Volume> {
    let bad = |why: &str| {
        ExitError::new(
            125,
            format!("invalid volume {spec:?}: {why}; the form is -v SRC:DST[:ro|rw]"),
        )
    };
    let parts: Vec<&str> = spec.split(':').collect();
    if parts.len() < 2 || parts.len() > 3 {
        return Err(bad("expected two or three ':'-separated fields").into());
    }
    let (src, dst) = (parts[0], parts[1]);
    if src.is_empty() || dst.is_empty() {
        return Err(bad("empty source or destination").into());
    }
    if !dst.starts_with('/') {
        return Err(bad("the destination must be an absolute path").into());
    }
    if !src.starts_with('/') && !src.starts_with('.') {
        return Err(bad(
            "named volumes are not supported; give a host path (absolute or ./relative)",
        )
        .into());
    }
    let mut readonly = false;
    if let Some(opts) = parts.get(2) {
        for o in opts.split(',') {
            match o {
                "ro" => readonly = true,
                "rw" => readonly = false,
                "z" | "Z" | "" => {}
                other => return Err(bad(&format!("unknown option {other:?}")).into()),
            }
        }
    }
    let source = std::fs::canonicalize(src).map_err(|e| {
        ExitError::new(
            125,
            format!("volume source {src} does not exist ({e}); create it or fix the -v path"),
        )
    })?;
    Ok(Volume {
        source,
        destination: PathBuf::from(dst),
        readonly,
    })
}

/// A resolved `--user`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub home: String,
}

/// Resolve `NAME|UID[:GROUP|GID]` against the container's /etc/passwd and /etc/group.
pub fn resolve_user(spec: &str, passwd: &str, group: &str) -> Result<ResolvedUser> {
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let entries: Vec<Vec<&str>> = passwd
        .lines()
        .map(|l| l.split(':').collect())
        .filter(|f: &Vec<&str>| f.len() >= 7)
        .collect();
    let found = entries
        .iter()
        .find(|f| f[0] == u || (u.parse::<u32>().is_ok() && f[2] == u));
    let (uid, mut gid, home, name) = match (found, u.parse::<u32>()) {
        (Some(f), _) => (f[2].parse()?, f[3].parse()?, f[5].to_string(), Some(f[0])),
        (None, Ok(n)) => (n, n, "/".to_string(), None),
        (None, Err(_)) => {
            return Err(ExitError::new(
                125,
                format!("unable to find user {u}: no matching entries in the container's /etc/passwd; use a numeric UID[:GID]"),
            )
            .into())
        }
    };
    let groups: Vec<Vec<&str>> = group
        .lines()
        .map(|l| l.split(':').collect())
        .filter(|f: &Vec<&str>| f.len() >= 4)
        .collect();
    if let Some(g) = g {
        gid = match groups.iter().find(|f| f[0] == g) {
            Some(f) => f[2].parse()?,
            None => g.parse().map_err(|_| {
                ExitError::new(125, format!("unable to find group {g}: no matching entries in the container's /etc/group"))
            })?,
        };
    }
    let mut additional_gids = Vec::new();
    if let Some(name) = name {
        for f in &groups {
            if f[3].split(',').any(|m| m == name) {
                if let Ok(id) = f[2].parse::<u32>() {
                    if id != gid && !additional_gids.contains(&id) {
                        additional_gids.push(id);
                    }
                }
            }
        }
    }
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
        home,
    })
}

/// Environment: defaults, then --env-file files, then -e flags (later wins).
pub fn environment(
    defaults: &[(String, String)],
    files: &[PathBuf],
    flags: &[String],
) -> Result<Vec<String>> {
    let mut env: Vec<(String, String)> = defaults.to_vec();
    let mut set = |k: &str, v: String| {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(ExitError::new(
                125,
                format!("invalid environment variable name {k:?}"),
            ));
        }
        match env.iter_mut().find(|(ek, _)| ek == k) {
            Some(e) => e.1 = v,
            None => env.push((k.to_string(), v)),
        }
        Ok(())
    };
    let mut entries: Vec<String> = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).map_err(|e| {
            ExitError::new(125, format!("cannot read env file {}: {e}", f.display()))
        })?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = line.split('=').next().unwrap_or("");
            if key.is_empty() || key.contains(char::is_whitespace) {
                return Err(ExitError::new(
                    125,
                    format!(
                        "env file {} line {}: invalid variable name {key:?}",
                        f.display(),
                        n + 1
                    ),
                )
                .into());
            }
            entries.push(line.to_string());
        }
    }
    entries.extend(flags.iter().cloned());
    for e in entries {
        match e.split_once('=') {
            Some((k, v)) => set(k, v.to_string())?,
            // `-e NAME` copies the variable from the caller, if set.
            None => {
                if let Ok(v) = std::env::var(&e) {
                    set(&e, v)?;
                }
            }
        }
    }
    Ok(env.into_iter().map(|(k, v)| format!("{k}={v}")).collect())
}

/// What the CLI has decided, ready to become a spec.
pub struct SpecInput<'a> {
    pub rootfs: &'a Path,
    pub readonly_root: bool,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: ResolvedUser,
    pub hostname: String,
    pub terminal: bool,
    pub caps: Vec<String>,
    pub volumes: Vec<Volume>,
    pub userns_maps: Option<(Vec<IdMap>, Vec<IdMap>)>,
    pub network_ns: bool,
    /// A private cgroup namespace (`--cgroupns private`, the default).
    pub cgroup_ns: bool,
    pub privileged: bool,
    pub no_new_privileges: bool,
    /// Apply the default seccomp profile.
    pub seccomp: bool,
    /// Files bound over /etc entries: (source on the host, destination).
    pub etc_binds: Vec<(PathBuf, &'static str)>,
    /// Fresh tmpfs on these directories (the host's /tmp stays the host's; podman's
    /// --read-only keeps /tmp, /var/tmp and /run writable).
    pub tmpfs: Vec<&'static str>,
}

fn maps_json(maps: &[IdMap]) -> Value {
    Value::Array(
        maps.iter()
            .map(|m| json!({"containerID": m.inside, "hostID": m.outside, "size": m.count}))
            .collect(),
    )
}

pub fn build(i: SpecInput) -> Result<Spec> {
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "mount"}),
        json!({"type": "uts"}),
        json!({"type": "ipc"}),
    ];
    if i.cgroup_ns {
        namespaces.push(json!({"type": "cgroup"}));
    }
    if i.network_ns {
        namespaces.push(json!({"type": "network"}));
    }
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", if i.privileged {"rw"} else {"ro"}]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup2", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", if i.privileged {"rw"} else {"ro"}]}),
    ];
    for t in &i.tmpfs {
        let mode = if *t == "/run" {
            "mode=755"
        } else {
            "mode=1777"
        };
        mounts.push(json!({"destination": t, "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", mode]}));
    }
    for (src, dst) in &i.etc_binds {
        mounts.push(json!({"destination": dst, "type": "bind", "source": src, "options": ["bind", "rprivate"]}));
    }
    for v in &i.volumes {
        mounts.push(json!({
            "destination": v.destination, "type": "bind", "source": v.source,
            "options": ["rbind", if v.readonly {"ro"} else {"rw"}, "rprivate"],
        }));
    }
    let mut linux = json!({
        "namespaces": namespaces,
        "maskedPaths": if i.privileged { vec![] } else { MASKED_PATHS.to_vec() },
        "readonlyPaths": if i.privileged { vec![] } else { READONLY_PATHS.to_vec() },
    });
    if i.seccomp {
        linux["seccomp"] = crate::engine::seccomp::default_profile(&i.caps);
    }
    if let Some((u, g)) = &i.userns_maps {
        linux["namespaces"]
            .as_array_mut()
            .expect("array")
            .push(json!({"type": "user"}));
        linux["uidMappings"] = maps_json(u);
        linux["gidMappings"] = maps_json(g);
    }
    let caps: Vec<String> = i.caps.iter().map(|c| format!("CAP_{c}")).collect();
    let empty: Vec<String> = Vec::new();
    let v = json!({
        "ociVersion": "1.0.2",
        "root": {"path": i.rootfs, "readonly": i.readonly_root},
        "hostname": i.hostname,
        "mounts": mounts,
        "process": {
            "terminal": i.terminal,
            "user": {"uid": i.user.uid, "gid": i.user.gid, "additionalGids": i.user.additional_gids},
            "args": i.args,
            "env": i.env,
            "cwd": i.cwd,
            "capabilities": {
                "bounding": caps,
                "effective": if i.user.uid == 0 { &caps } else { &empty },
                "permitted": if i.user.uid == 0 { &caps } else { &empty },
                "inheritable": empty,
                "ambient": empty,
            },
            "noNewPrivileges": i.no_new_privileges,
        },
        "linux": linux,
    });
    serde_json::from_value(v).context("build the OCI spec")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_add_drop() {
        let c = capabilities(&["net_admin".into()], &["CAP_CHOWN".into()]).unwrap();
        assert!(c.contains(&"NET_ADMIN".to_string()) && !c.contains(&"CHOWN".to_string()));
        assert_eq!(
            capabilities(&[], &["ALL".into()]).unwrap(),
            Vec::<String>::new()
        );
        assert!(capabilities(&["BOGUS".into()], &[]).is_err());
        assert!(capabilities(&["ALL".into()], &[])
            .unwrap()
            .contains(&"SYS_ADMIN".to_string()));
    }

    #[test]
    fn volumes() {
        let v = parse_volume("/tmp:/data:ro").unwrap();
        assert_eq!(v.destination, PathBuf::from("/data"));
        assert!(v.readonly);
        assert!(parse_volume("/tmp").is_err());
        assert!(parse_volume("/tmp:data").is_err());
        assert!(parse_volume("/tmp:/data:bogus").is_err());
        assert!(parse_volume("/definitely/not/here:/data").is_err());
        assert!(parse_volume("name:/data").is_err());
    }

    #[test]
    fn users() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\ntuser:x:1000:1000::/home/tuser:/bin/sh\n";
        let group = "root:x:0:\nwheel:x:10:tuser\ntuser:x:1000:\n";
        let u = resolve_user("tuser", passwd, group).unwrap();
        assert_eq!(
            (u.uid, u.gid, u.additional_gids.clone(), u.home.as_str()),
            (1000, 1000, vec![10], "/home/tuser")
        );
        assert_eq!(resolve_user("1000:wheel", passwd, group).unwrap().gid, 10);
        assert_eq!(resolve_user("4242", passwd, group).unwrap().uid, 4242);
        assert!(resolve_user("nobody", passwd, group).is_err());
        assert!(resolve_user("tuser:nogroup", passwd, group).is_err());
    }

    #[test]
    fn env_precedence() {
        let d = vec![
            ("PATH".to_string(), "/bin".to_string()),
            ("A".to_string(), "1".to_string()),
        ];
        let e = environment(&d, &[], &["A=2".into(), "B=x=y".into()]).unwrap();
        assert_eq!(e, vec!["PATH=/bin", "A=2", "B=x=y"]);
        assert!(environment(&d, &[], &["=x".into()]).is_err());
    }

    #[test]
    fn spec_round_trip() {
        let s = build(SpecInput {
            rootfs: Path::new("/"),
            readonly_root: false,
            args: vec!["/bin/true".into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            user: ResolvedUser {
                uid: 0,
                gid: 0,
                additional_gids: vec![],
                home: "/root".into(),
            },
            hostname: "h".into(),
            terminal: false,
            caps: capabilities(&[], &[]).unwrap(),
            volumes: vec![],
            userns_maps: Some((
                vec![IdMap {
                    inside: 0,
                    outside: 1000,
                    count: 1,
                }],
                vec![IdMap {
                    inside: 0,
                    outside: 1000,
                    count: 1,
                }],
            )),
            network_ns: true,
            privileged: false,
            no_new_privileges: true,
            seccomp: true,
            cgroup_ns: true,
            etc_binds: vec![],
            tmpfs: vec!["/tmp"],
        })
        .unwrap();
        let linux = s.linux().as_ref().unwrap();
        assert_eq!(linux.uid_mappings().as_ref().unwrap()[0].host_id(), 1000);
        assert_eq!(linux.namespaces().as_ref().unwrap().len(), 7);
        assert!(linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .any(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Cgroup));
        let caps = s
            .process()
            .as_ref()
            .unwrap()
            .capabilities()
            .as_ref()
            .unwrap();
        assert_eq!(caps.bounding().as_ref().unwrap().len(), 14);
    }
}
