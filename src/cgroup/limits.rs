//! Limit flags with podman's names and units.

use crate::exit::ExitError;
use anyhow::Result;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    /// Bytes.
    pub memory: Option<u64>,
    /// Memory plus swap, bytes; -1 for unlimited swap.
    pub memory_swap: Option<i64>,
    /// Soft limit (memory.low / soft_limit_in_bytes), bytes.
    pub memory_reservation: Option<u64>,
    /// CPUs, e.g. 0.5.
    pub cpus: Option<f64>,
    /// v1 cpu.shares (2..262144).
    pub cpu_shares: Option<u64>,
    /// v2 cpu.weight (1..10000).
    pub cpu_weight: Option<u64>,
    pub cpuset_cpus: Option<String>,
    /// Max processes; -1 unlimited.
    pub pids: Option<i64>,
    /// 10..1000 (blkio.weight; io.weight is 1..10000).
    pub blkio_weight: Option<u16>,
}

fn bad(msg: String) -> anyhow::Error {
    ExitError::new(125, msg).into()
}

/// `64m`, `1g`, `512k`, `1024` (bytes), as podman takes them.
pub fn parse_bytes(flag: &str, s: &str) -> Result<u64> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('t') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let n: f64 = num.parse().map_err(|_| {
        bad(format!(
            "invalid {flag} {s:?}: use a number of bytes with an optional k, m or g"
        ))
    })?;
    if n.is_nan() || n <= 0.0 {
        return Err(bad(format!("invalid {flag} {s:?}: must be positive")));
    }
    Ok((n * mult as f64) as u64)
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }

    #[allow(clippy::too_many_arguments)]
    pub fn parse(
        memory: Option<&str>,
        memory_swap: Option<&str>,
        memory_reservation: Option<&str>,
        cpus: Option<&str>,
        cpu_shares: Option<u64>,
        cpuset_cpus: Option<&str>,
        pids: Option<i64>,
        blkio_weight: Option<u16>,
    ) -> Result<Limits> {
        let memory = memory.map(|m| parse_bytes("--memory", m)).transpose()?;
        if memory.is_some_and(|m| m < 6 << 20) {
            return Err(bad(
                "--memory below 6m leaves no room for the container to start".into(),
            ));
        }
        let memory_swap = match memory_swap {
            None => None,
            Some("-1") => Some(-1),
            Some(s) => {
                let v = parse_bytes("--memory-swap", s)? as i64;
                match memory {
                    None => return Err(bad("--memory-swap needs --memory".into())),
                    Some(m) if (v as u64) < m => {
                        return Err(bad(
                            "--memory-swap must be at least --memory (it is memory plus swap)"
                                .into(),
                        ))
                    }
                    _ => Some(v),
                }
            }
        };
        let cpus = cpus
            .map(|c| {
                c.parse::<f64>()
                    .ok()
                    .filter(|v| *v > 0.0 && v.is_finite())
                    .ok_or_else(|| {
                        bad(format!(
                            "invalid --cpus {c:?}: a positive decimal such as 0.5"
                        ))
                    })
            })
            .transpose()?;
        if cpu_shares.is_some_and(|s| !(2..=262144).contains(&s)) {
            return Err(bad("--cpu-shares must be between 2 and 262144".into()));
        }
        if blkio_weight.is_some_and(|w| !(10..=1000).contains(&w)) {
            return Err(bad("--blkio-weight must be between 10 and 1000".into()));
        }
        if let Some(c) = cpuset_cpus {
            let ok = !c.is_empty()
                && c.split(',')
                    .all(|part| part.split('-').all(|n| n.parse::<u32>().is_ok()));
            if !ok {
                return Err(bad(format!("invalid --cpuset-cpus {c:?}: e.g. 0-1 or 0,2")));
            }
        }
        if pids.is_some_and(|p| p == 0 || p < -1) {
            return Err(bad(
                "--pids-limit must be positive, or -1 for unlimited".into()
            ));
        }
        Ok(Limits {
            memory,
            memory_swap,
            memory_reservation: memory_reservation
                .map(|m| parse_bytes("--memory-reservation", m))
                .transpose()?,
            cpus,
            cpu_shares,
            cpu_weight: None,
            cpuset_cpus: cpuset_cpus.map(str::to_string),
            pids,
            blkio_weight,
        })
    }

    /// `--cpu-weight`, the cgroup v2 form of `--cpu-shares`.
    pub fn set_cpu_weight(&mut self, w: Option<u64>) -> Result<()> {
        if w.is_some_and(|w| !(1..=10000).contains(&w)) {
            return Err(bad("--cpu-weight must be between 1 and 10000".into()));
        }
        if w.is_some() && self.cpu_shares.is_some() {
            return Err(bad(
                "--cpu-weight and --cpu-shares set the same thing; give one".into(),
            ));
        }
        self.cpu_weight = w;
        Ok(())
    }

    /// cpu.weight (v2): --cpu-weight, or --cpu-shares converted as OCI runtimes do.
    pub fn cpu_weight_v2(&self) -> Option<u64> {
        self.cpu_weight.or(self
            .cpu_shares
            .map(|s| 1 + ((s.saturating_sub(2)) * 9999) / 262142))
    }

    /// cpu.shares (v1): --cpu-shares, or --cpu-weight converted back.
    pub fn cpu_shares_v1(&self) -> Option<u64> {
        self.cpu_shares
            .or(self.cpu_weight.map(|w| 2 + ((w - 1) * 262142) / 9999))
    }

    /// The pids.max value (both cgroup versions): a number, or "max" for -1.
    pub fn pids_max(&self) -> Option<String> {
        self.pids.map(|p| {
            if p < 0 {
                "max".to_string()
            } else {
                p.to_string()
            }
        })
    }

    /// The cgroup v2 controllers these limits need, each with the flag that needs it.
    pub fn controllers(&self) -> Vec<(&'static str, &'static str)> {
        let mut v = Vec::new();
        let mut need = |on: bool, c: &'static str, flag: &'static str| {
            if on && !v.iter().any(|(x, _)| *x == c) {
                v.push((c, flag));
            }
        };
        need(self.memory.is_some(), "memory", "--memory");
        need(self.memory_swap.is_some(), "memory", "--memory-swap");
        need(
            self.memory_reservation.is_some(),
            "memory",
            "--memory-reservation",
        );
        need(self.cpus.is_some(), "cpu", "--cpus");
        need(self.cpu_shares.is_some(), "cpu", "--cpu-shares");
        need(self.cpu_weight.is_some(), "cpu", "--cpu-weight");
        need(self.cpuset_cpus.is_some(), "cpuset", "--cpuset-cpus");
        need(self.pids.is_some(), "pids", "--pids-limit");
        need(self.blkio_weight.is_some(), "io", "--blkio-weight");
        v
    }

    /// The controllers these limits need that `have` lacks, each with its flag.
    pub fn missing_controllers(&self, have: &[String]) -> Vec<(&'static str, &'static str)> {
        self.controllers()
            .into_iter()
            .filter(|(c, _)| !have.iter().any(|h| h == c))
            .collect()
    }

    /// CFS quota for --cpus over a 100 ms period.
    pub fn cpu_quota_us(&self) -> Option<(u64, u64)> {
        self.cpus
            .map(|c| (((c * 100_000.0).round() as u64).max(1000), 100_000))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes() {
        assert_eq!(parse_bytes("-m", "64m").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("-m", "1G").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("-m", "512kb").unwrap(), 512 << 10);
        assert_eq!(parse_bytes("-m", "1024").unwrap(), 1024);
        assert!(parse_bytes("-m", "x").is_err() && parse_bytes("-m", "-1m").is_err());
    }

    #[test]
    fn limits() {
        let l = Limits::parse(
            Some("64m"),
            Some("128m"),
            None,
            Some("0.5"),
            None,
            Some("0-1"),
            Some(20),
            None,
        )
        .unwrap();
        assert_eq!(l.cpu_quota_us(), Some((50_000, 100_000)));
        let mut w = Limits::default();
        w.set_cpu_weight(Some(100)).unwrap();
        assert_eq!(
            (w.cpu_weight_v2(), w.cpu_shares_v1()),
            (Some(100), Some(2597))
        );
        assert!(w.set_cpu_weight(Some(0)).is_err());
        let mut s = Limits::parse(None, None, None, None, Some(1024), None, None, None).unwrap();
        assert_eq!(s.cpu_weight_v2(), Some(39));
        assert!(s.set_cpu_weight(Some(5)).is_err());
        assert_eq!(l.memory_swap, Some(128 << 20));
        assert!(Limits::parse(None, Some("1g"), None, None, None, None, None, None).is_err());
        assert!(
            Limits::parse(Some("64m"), Some("32m"), None, None, None, None, None, None).is_err()
        );
        assert!(Limits::parse(None, None, None, Some("0"), None, None, None, None).is_err());
        assert!(Limits::parse(None, None, None, None, None, Some("a"), None, None).is_err());
        assert!(Limits::parse(None, None, None, None, None, None, Some(0), None).is_err());
        assert!(
            Limits::parse(None, None, None, None, None, None, None, None)
                .unwrap()
                .is_empty()
        );
    }
}
