//! `-p/--publish [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp]`.

use crate::exit::ExitError;
use anyhow::Result;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortMapping {
    pub host_ip: IpAddr,
    pub host_port: u16,
    pub container_port: u16,
    pub proto: Proto,
}

fn bad(spec: &str, why: &str) -> anyhow::Error {
    ExitError::new(125, format!("invalid --publish {spec:?}: {why}; the form is [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp]")).into()
}

pub fn parse(spec: &str) -> Result<PortMapping> {
    let (addr, proto) = match spec.rsplit_once('/') {
        Some((a, "tcp")) => (a, Proto::Tcp),
        Some((a, "udp")) => (a, Proto::Udp),
        Some(_) => return Err(bad(spec, "the protocol must be tcp or udp")),
        None => (spec, Proto::Tcp),
    };
    let parts: Vec<&str> = addr.rsplitn(3, ':').collect();
    let port = |s: &str| {
        s.parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| bad(spec, &format!("{s:?} is not a port")))
    };
    let (host_ip, host_port, container_port) = match parts.as_slice() {
        [c, h] => (IpAddr::V4(Ipv4Addr::UNSPECIFIED), port(h)?, port(c)?),
        [c, h, ip] => {
            let ip: IpAddr = ip
                .trim_matches(|c| c == '[' || c == ']')
                .parse()
                .map_err(|_| bad(spec, &format!("{ip:?} is not an IP address")))?;
            (ip, port(h)?, port(c)?)
        }
        _ => return Err(bad(spec, "give both the host and the container port")),
    };
    Ok(PortMapping {
        host_ip,
        host_port,
        container_port,
        proto,
    })
}

/// Fail before the container starts when the host port is taken (or not ours to take).
pub fn check_free(p: &PortMapping) -> Result<()> {
    let addr = SocketAddr::new(p.host_ip, p.host_port);
    let r = match p.proto {
        Proto::Tcp => std::net::TcpListener::bind(addr).map(drop),
        Proto::Udp => std::net::UdpSocket::bind(addr).map(drop),
    };
    r.map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
            " (ports below net.ipv4.ip_unprivileged_port_start need root, or lower that sysctl)"
        } else {
            ""
        };
        ExitError::new(
            125,
            format!("cannot publish {}/{}: {e}{hint}", addr, p.proto.name()),
        )
        .into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        let p = parse("8080:80").unwrap();
        assert_eq!(
            (p.host_port, p.container_port, p.proto),
            (8080, 80, Proto::Tcp)
        );
        assert_eq!(
            parse("127.0.0.1:53:53/udp").unwrap().host_ip,
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        );
        assert!(
            parse("80").is_err()
                && parse("x:80").is_err()
                && parse("80:80/sctp").is_err()
                && parse("0:80").is_err()
        );
    }

    #[test]
    fn taken_port_is_refused() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(check_free(&parse(&format!("127.0.0.1:{port}:80")).unwrap()).is_err());
    }
}
