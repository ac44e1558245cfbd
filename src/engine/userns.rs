//! User namespace id maps: subordinate id ranges and writing uid_map/gid_map.

use anyhow::{bail, Context, Result};
use nix::unistd::Pid;
use std::io::Write;
use std::process::{Child, Command, Stdio};

/// One line of a uid_map/gid_map: `inside outside count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMap {
    pub inside: u32,
    pub outside: u32,
    pub count: u32,
}

/// A subordinate id range from /etc/subuid or /etc/subgid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubIdRange {
    pub start: u32,
    pub count: u32,
}

/// Parse /etc/subuid-style content, returning the ranges that belong to the user
/// (matched by name or by numeric id, as shadow-utils does).
pub fn parse_subid(content: &str, user: &str, id: u32) -> Vec<SubIdRange> {
    let id_str = id.to_string();
    content
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut parts = l.split(':');
            let owner = parts.next()?;
            let start = parts.next()?.trim().parse::<u32>().ok()?;
            let count = parts.next()?.trim().parse::<u32>().ok()?;
            (count > 0 && (owner == user || owner == id_str)).then_some(SubIdRange { start, count })
        })
        .collect()
}

/// Refuse ranges that would map the user's own id a second time or overflow.
pub fn validate_ranges(kind: &str, ranges: &[SubIdRange], own: u32) -> Result<()> {
    for r in ranges {
        let end = r.start as u64 + r.count as u64;
        if end > u32::MAX as u64 {
            bail!(
                "/etc/{kind} range {}:{} overflows 32-bit ids; fix the entry",
                r.start,
                r.count
            );
        }
        if (r.start as u64..end).contains(&(own as u64)) {
            bail!(
                "/etc/{kind} range {}:{} contains your own id {own}; \
                 give the user a range that does not include it (e.g. usermod --add-sub{}s 100000-165535)",
                r.start,
                r.count,
                if kind == "subuid" { "uid" } else { "gid" }
            );
        }
    }
    Ok(())
}

/// The maps for the default `--userns auto`: container 0 is the user, 1.. are the subordinate ids.
pub fn auto_maps(own: u32, ranges: &[SubIdRange]) -> Vec<IdMap> {
    let mut maps = vec![IdMap {
        inside: 0,
        outside: own,
        count: 1,
    }];
    let mut next = 1u32;
    for r in ranges {
        maps.push(IdMap {
            inside: next,
            outside: r.start,
            count: r.count,
        });
        next = next.saturating_add(r.count);
    }
    maps
}

/// podman's `--userns keep-id`: the user's own id is the same inside; the subordinate ids
/// fill 0..own and own+1.. around it.
pub fn keep_id_maps(own: u32, ranges: &[SubIdRange]) -> Vec<IdMap> {
    let mut maps = vec![IdMap {
        inside: own,
        outside: own,
        count: 1,
    }];
    // Flatten the subordinate ranges into container ids, skipping `own`.
    let mut inside = 0u32;
    for r in ranges {
        let mut outside = r.start;
        let mut left = r.count;
        while left > 0 {
            if inside == own {
                inside += 1;
                continue;
            }
            // Largest chunk that does not cross `own`.
            let chunk = if inside < own {
                left.min(own - inside)
            } else {
                left
            };
            maps.push(IdMap {
                inside,
                outside,
                count: chunk,
            });
            inside = inside.saturating_add(chunk);
            outside += chunk;
            left -= chunk;
        }
    }
    maps.sort_by_key(|m| m.inside);
    maps
}

/// Whether `id` (a container id) is covered by the maps.
pub fn is_mapped(maps: &[IdMap], id: u32) -> bool {
    maps.iter()
        .any(|m| id >= m.inside && (id as u64) < m.inside as u64 + m.count as u64)
}

fn render(maps: &[IdMap]) -> String {
    maps.iter()
        .map(|m| format!("{} {} {}\n", m.inside, m.outside, m.count))
        .collect()
}

/// Start newuidmap/newgidmap for `pid`; returns the running helper so both can run at once.
pub fn spawn_map_helper(helper: &std::path::Path, pid: Pid, maps: &[IdMap]) -> Result<Child> {
    let mut cmd = Command::new(helper);
    cmd.arg(pid.as_raw().to_string());
    for m in maps {
        cmd.arg(m.inside.to_string())
            .arg(m.outside.to_string())
            .arg(m.count.to_string());
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd.spawn()
        .with_context(|| format!("cannot start {}", helper.display()))
}

/// Wait for a map helper and turn its failure into one line that names the cause.
pub fn finish_map_helper(helper: &str, child: Child) -> Result<()> {
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for {helper}"))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr);
        let msg = msg.trim().lines().last().unwrap_or("").to_string();
        bail!(
            "{helper} failed ({}): {msg}; check /etc/sub{}id and that {helper} is setuid root (package uidmap)",
            out.status,
            if helper == "newuidmap" { "u" } else { "g" }
        );
    }
    Ok(())
}

/// Where a process's map files are: `/proc/<pid>`, or `/proc/self` for our own.
pub fn proc_dir(pid: Option<Pid>) -> String {
    match pid {
        Some(p) => format!("/proc/{}", p.as_raw()),
        None => "/proc/self".to_string(),
    }
}

/// Write a map directly: allowed for a single line mapping our own id (setgroups denied first
/// for gid maps), and for root. `pid` None: our own (a process that has just created its
/// user namespace may map its own id in it, as `unshare -r` does).
pub fn write_map_direct(pid: Option<Pid>, file: &str, maps: &[IdMap]) -> Result<()> {
    let path = format!("{}/{file}", proc_dir(pid));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .with_context(|| format!("open {path}"))?;
    f.write_all(render(maps).as_bytes())
        .with_context(|| format!("write {path}"))?;
    Ok(())
}

pub fn deny_setgroups(pid: Option<Pid>) -> Result<()> {
    let path = format!("{}/setgroups", proc_dir(pid));
    std::fs::write(&path, "deny").with_context(|| format!("write {path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_by_name_and_id() {
        let c = "# comment\nalice:100000:65536\n1001:200000:1000\nbob:300000:0\nbob:x:1\n";
        assert_eq!(
            parse_subid(c, "alice", 1000),
            vec![SubIdRange {
                start: 100000,
                count: 65536
            }]
        );
        assert_eq!(
            parse_subid(c, "carol", 1001),
            vec![SubIdRange {
                start: 200000,
                count: 1000
            }]
        );
        assert!(parse_subid(c, "bob", 1002).is_empty());
    }

    #[test]
    fn refuses_range_holding_own_id() {
        let r = [SubIdRange {
            start: 900,
            count: 200,
        }];
        assert!(validate_ranges("subuid", &r, 1000).is_err());
        assert!(validate_ranges("subuid", &r, 1100).is_ok());
        assert!(validate_ranges(
            "subuid",
            &[SubIdRange {
                start: u32::MAX - 1,
                count: 5
            }],
            1
        )
        .is_err());
    }

    #[test]
    fn auto_map_layout() {
        let m = auto_maps(
            1000,
            &[SubIdRange {
                start: 100000,
                count: 65536,
            }],
        );
        assert_eq!(
            m,
            vec![
                IdMap {
                    inside: 0,
                    outside: 1000,
                    count: 1
                },
                IdMap {
                    inside: 1,
                    outside: 100000,
                    count: 65536
                }
            ]
        );
        assert!(is_mapped(&m, 65536) && !is_mapped(&m, 65537));
    }

    #[test]
    fn keep_id_layout() {
        let m = keep_id_maps(
            1000,
            &[SubIdRange {
                start: 100000,
                count: 65536,
            }],
        );
        assert_eq!(
            m,
            vec![
                IdMap {
                    inside: 0,
                    outside: 100000,
                    count: 1000
                },
                IdMap {
                    inside: 1000,
                    outside: 1000,
                    count: 1
                },
                IdMap {
                    inside: 1001,
                    outside: 101000,
                    count: 64536
                },
            ]
        );
    }
}
