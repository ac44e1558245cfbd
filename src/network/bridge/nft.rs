//! The bridge network's firewall: one nftables table of the runtime's own, driven through
//! the `nft` program (package nftables). Each change is one `nft -f -` script, applied by
//! the kernel as one transaction: it happens whole or not at all.
//!
//! ```text
//! table ip rootless_container
//!   map published      { inet_proto . inet_service : verdict }   tcp . 8080 : jump c-<id12>
//!   chain prerouting   nat, dstnat:  to a local address: look the port up in @published
//!   chain output       nat, dstnat:  the same for connections from the host itself
//!   chain postrouting  nat, srcnat:  masquerade 10.88.0.0/16 leaving other than rc0;
//!                                    host loopback and hairpin connections into rc0
//!   chain antispoof    filter, raw: nothing from rc0 to or from 127.0.0.0/8
//!   chain forward      filter: into rc0 only replies and DNAT (published ports)
//!   chain c-<id12>     one per container with -p: its DNAT rules
//! ```
//! A container's rules are its chain and its map elements, removed together by name.

use super::{BRIDGE, PREFIX, SUBNET};
use crate::network::ports::{PortMapping, Proto};
use anyhow::{bail, Context, Result};
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST,
};
use netlink_packet_netfilter::nftables::{
    ChainAttribute, ChainMessage, NfTablesMessage, SetAttribute, SetMessage, TableAttribute,
    TableMessage,
};
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};

pub const TABLE: &str = "rootless_container";

fn nft_bin() -> Result<std::path::PathBuf> {
    crate::util::find_in_path("nft")
        .or_else(|| ["/usr/sbin/nft", "/sbin/nft"].iter().map(std::path::PathBuf::from).find(|p| p.exists()))
        .ok_or_else(|| {
            crate::exit::ExitError::new(
                125,
                "the bridge network needs nftables' nft program (apt install nftables), or use --network none|host",
            )
            .into()
        })
}

/// Run `nft` with `args`, `script` on stdin; its stdout, or its message as the error.
fn nft(args: &[&str], script: &str) -> Result<String> {
    let mut child = Command::new(nft_bin()?)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("start nft")?;
    child
        .stdin
        .take()
        .context("nft stdin")?
        .write_all(script.as_bytes())
        .context("write to nft")?;
    let out = child.wait_with_output().context("wait for nft")?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr);
        let first = msg
            .lines()
            .find(|l| l.starts_with("Error:"))
            .or_else(|| msg.lines().find(|l| !l.trim().is_empty()))
            .unwrap_or("no message")
            .trim()
            .to_string();
        bail!("nft: {first}");
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether an object of the table exists, asked over netlink (NFT_MSG_GETTABLE or
/// GETCHAIN): a few microseconds where `nft list` costs a process and its ruleset cache
/// on every run. None when the kernel's answer cannot be read.
fn exists(msg: NfTablesMessage) -> Option<bool> {
    let mut sock = Socket::new(NETLINK_NETFILTER).ok()?;
    sock.bind_auto().ok()?;
    sock.connect(&SocketAddr::new(0, 0)).ok()?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK;
    header.sequence_number = 1;
    let inner = NetfilterMessage::new(NetfilterHeader::new(NetfilterProtoFamily::IPv4, 0, 0), msg);
    let mut m = NetlinkMessage::new(header, NetlinkPayload::from(inner));
    m.finalize();
    let mut buf = vec![0u8; m.buffer_len()];
    m.serialize(&mut buf);
    sock.send(&buf, 0).ok()?;
    let mut rx: Vec<u8> = Vec::with_capacity(65536);
    sock.recv(&mut rx, 0).ok()?;
    // The first answer is the object (NEW*) or an error; only the error code matters.
    match NetlinkMessage::<NetfilterMessage>::deserialize(&rx) {
        Ok(NetlinkMessage {
            payload: NetlinkPayload::Error(e),
            ..
        }) => match e.code.map(|c| -c.get()) {
            Some(libc::ENOENT) => Some(false),
            Some(_) => None,
            None => Some(true),
        },
        Ok(_) => Some(true),
        // Attributes this crate version cannot parse: it is a table/chain all the same.
        Err(_) if rx.len() >= 6 && u16::from_ne_bytes([rx[4], rx[5]]) != 2 => Some(true),
        Err(_) => None,
    }
}

fn table_exists() -> Result<bool> {
    let msg = NfTablesMessage::GetTable(TableMessage {
        attributes: vec![TableAttribute::Name(TABLE.into())],
    });
    if let Some(e) = exists(msg) {
        return Ok(e);
    }
    Ok(nft(&["list", "table", "ip", TABLE], "").is_ok())
}

fn chain_exists(chain: &str) -> bool {
    let msg = NfTablesMessage::GetChain(ChainMessage {
        attributes: vec![
            ChainAttribute::Table(TABLE.into()),
            ChainAttribute::Name(chain.into()),
        ],
    });
    exists(msg).unwrap_or_else(|| nft(&["list", "chain", "ip", TABLE, chain], "").is_ok())
}

/// The base chains: (name, declaration, rules).
fn base_chains() -> [(&'static str, &'static str, Vec<String>); 5] {
    let lookup =
        "fib daddr type local meta l4proto { tcp, udp } meta l4proto . th dport vmap @published"
            .to_string();
    [
        (
            "prerouting",
            "type nat hook prerouting priority dstnat; policy accept;",
            vec![lookup.clone()],
        ),
        (
            "output",
            "type nat hook output priority -100; policy accept;",
            vec![lookup],
        ),
        (
            "postrouting",
            "type nat hook postrouting priority srcnat; policy accept;",
            vec![
                format!("ip saddr {SUBNET}/{PREFIX} oifname != \"{BRIDGE}\" masquerade"),
                format!("oifname \"{BRIDGE}\" ip saddr 127.0.0.0/8 masquerade"),
                format!(
                    "oifname \"{BRIDGE}\" ip saddr {SUBNET}/{PREFIX} ct status dnat masquerade"
                ),
            ],
        ),
        // route_localnet=1 on the bridge (for the DNAT of 127.0.0.1:PORT) would let a
        // container send to the host's loopback services by addressing frames to the
        // bridge's MAC (CVE-2020-8558): loopback addresses never come in from the bridge.
        // Replies to the host's 127.0.0.1 connections are still addressed to 10.88.0.1
        // here (they are un-NATed later, at dstnat).
        (
            "antispoof",
            "type filter hook prerouting priority raw; policy accept;",
            vec![
                format!("iifname \"{BRIDGE}\" ip daddr 127.0.0.0/8 drop"),
                format!("iifname \"{BRIDGE}\" ip saddr 127.0.0.0/8 drop"),
            ],
        ),
        // With ip_forward=1, only published ports (DNAT) and replies go into the bridge
        // from other interfaces; what the host forwards between its other interfaces is
        // the business of the administrator's firewall, not this table's.
        (
            "forward",
            "type filter hook forward priority filter; policy accept;",
            vec![
                "ct state established,related accept".into(),
                "ct status dnat accept".into(),
                format!("iifname \"{BRIDGE}\" accept"),
                format!("oifname \"{BRIDGE}\" drop"),
            ],
        ),
    ]
}

/// The table's fixed part, applied as one transaction. Idempotent: the declarative block
/// adds only what is missing (never touching the map's elements or the containers'
/// chains), then each base chain's rules are flushed and written again.
pub fn base_ruleset() -> String {
    let chains = base_chains();
    let mut s = format!(
        r#"table ip {TABLE} {{
	comment "rootless_container bridge {BRIDGE}: NAT, published ports, forward filter; removed with nft delete table ip {TABLE}"
	map published {{
		type inet_proto . inet_service : verdict
	}}
"#
    );
    for (name, decl, _) in &chains {
        s.push_str(&format!("\tchain {name} {{\n\t\t{decl}\n\t}}\n"));
    }
    s.push_str("}\n");
    for (name, _, rules) in &chains {
        s.push_str(&format!("flush chain ip {TABLE} {name}\n"));
        for r in rules {
            s.push_str(&format!("add rule ip {TABLE} {name} {r}\n"));
        }
    }
    s
}

fn map_exists() -> bool {
    let msg = NfTablesMessage::GetSet(SetMessage {
        attributes: vec![
            SetAttribute::Table(TABLE.into()),
            SetAttribute::Name("published".into()),
        ],
    });
    exists(msg).unwrap_or_else(|| nft(&["list", "map", "ip", TABLE, "published"], "").is_ok())
}

/// Make sure the table, its map and its base chains exist; (re)apply the fixed part when
/// any is missing (a new table, one of an earlier version, or one an administrator
/// changed). Runs under the lease lock.
pub fn ensure_table() -> Result<()> {
    let complete = table_exists()?
        && map_exists()
        && base_chains().iter().all(|(name, _, _)| chain_exists(name));
    if complete {
        return Ok(());
    }
    nft(&["-f", "-"], &base_ruleset()).context("set up the nftables table")?;
    Ok(())
}

/// The chain of the container `id`.
pub fn chain(id: &str) -> String {
    format!("c-{}", &id[..id.len().min(12)])
}

/// The script adding the DNAT rules of container `id` at `addr`.
pub fn publish_script(id: &str, addr: Ipv4Addr, ports: &[PortMapping]) -> String {
    let c = chain(id);
    let mut s = format!("add chain ip {TABLE} {c}\n");
    for p in ports {
        let daddr = match p.host_ip {
            IpAddr::V4(ip) if !ip.is_unspecified() => format!("ip daddr {ip} "),
            _ => String::new(),
        };
        s.push_str(&format!(
            "add rule ip {TABLE} {c} {daddr}{proto} dport {hp} dnat to {addr}:{cp} comment \"{id}\"\n",
            proto = p.proto.name(),
            hp = p.host_port,
            cp = p.container_port,
        ));
        // `create` fails if another container has the port: the whole script then fails.
        s.push_str(&format!(
            "create element ip {TABLE} published {{ {} . {} : jump {c} }}\n",
            p.proto.name(),
            p.host_port
        ));
    }
    s
}

pub fn publish(id: &str, addr: Ipv4Addr, ports: &[PortMapping]) -> Result<()> {
    if ports.is_empty() {
        return Ok(());
    }
    nft(&["-f", "-"], &publish_script(id, addr, ports)).context("publish the container's ports")?;
    Ok(())
}

/// Map keys that jump to `chain`, from `nft -j list map` output.
fn keys_jumping_to(json: &str, chain: &str) -> Vec<(String, u64)> {
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
    let mut out = Vec::new();
    for item in v["nftables"].as_array().into_iter().flatten() {
        for elem in item["map"]["elem"].as_array().into_iter().flatten() {
            // [ {"concat": ["tcp", 8080]}, {"jump": {"target": "c-..."}} ]
            let (Some(key), Some(target)) = (
                elem[0]["concat"].as_array(),
                elem[1]["jump"]["target"].as_str(),
            ) else {
                continue;
            };
            if target != chain || key.len() != 2 {
                continue;
            }
            let proto = match &key[0] {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => match n.as_u64() {
                    Some(6) => "tcp".into(),
                    Some(17) => "udp".into(),
                    _ => continue,
                },
                _ => continue,
            };
            if let Some(port) = key[1].as_u64() {
                out.push((proto, port));
            }
        }
    }
    out
}

/// Remove every rule of container `id`: its map elements and its chain. Nothing to
/// remove is not an error. `known` are the ports the caller knows about; the map is read
/// as well, so that elements the caller does not know about cannot keep the chain alive.
pub fn unpublish(id: &str, known: &[(Proto, u16)]) -> Result<()> {
    let c = chain(id);
    if !chain_exists(&c) {
        return Ok(());
    }
    let mut keys: Vec<(String, u64)> = known
        .iter()
        .map(|(p, port)| (p.name().to_string(), *port as u64))
        .collect();
    if let Ok(json) = nft(&["-j", "list", "map", "ip", TABLE, "published"], "") {
        keys = keys_jumping_to(&json, &c);
    }
    let mut s = String::new();
    for (proto, port) in &keys {
        s.push_str(&format!(
            "delete element ip {TABLE} published {{ {proto} . {port} }}\n"
        ));
    }
    s.push_str(&format!("delete chain ip {TABLE} {c}\n"));
    nft(&["-f", "-"], &s).with_context(|| format!("remove the nftables chain {c}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts() {
        let id = "0123456789abcdef0123";
        let p = crate::network::ports::parse("127.0.0.1:8080:80").unwrap();
        let q = crate::network::ports::parse("5353:53/udp").unwrap();
        let s = publish_script(id, Ipv4Addr::new(10, 88, 0, 5), &[p, q]);
        assert!(s.contains("add chain ip rootless_container c-0123456789ab\n"));
        assert!(s.contains(
            "add rule ip rootless_container c-0123456789ab ip daddr 127.0.0.1 tcp dport 8080 dnat to 10.88.0.5:80"
        ));
        assert!(s.contains("udp dport 5353 dnat to 10.88.0.5:53"));
        assert!(s.contains(
            "create element ip rootless_container published { tcp . 8080 : jump c-0123456789ab }"
        ));
    }

    #[test]
    fn base_ruleset_guards_the_bridge() {
        let s = base_ruleset();
        for rule in [
            "add rule ip rootless_container antispoof iifname \"rc0\" ip daddr 127.0.0.0/8 drop",
            "add rule ip rootless_container antispoof iifname \"rc0\" ip saddr 127.0.0.0/8 drop",
            "add rule ip rootless_container forward ct state established,related accept",
            "add rule ip rootless_container forward ct status dnat accept",
            "add rule ip rootless_container forward iifname \"rc0\" accept",
            "add rule ip rootless_container forward oifname \"rc0\" drop",
        ] {
            assert!(s.contains(rule), "{rule} missing from {s}");
        }
        assert!(s.contains("type filter hook prerouting priority raw;"));
        // Every base chain is flushed before its rules are written: applying it twice
        // leaves one copy.
        for (name, _, _) in base_chains() {
            assert!(s.contains(&format!("flush chain ip rootless_container {name}\n")));
        }
    }

    #[test]
    fn map_keys() {
        let json = r#"{"nftables": [{"metainfo": {}}, {"map": {"family": "ip", "name": "published",
            "elem": [[{"concat": ["tcp", 8080]}, {"jump": {"target": "c-aaa"}}],
                     [{"concat": ["udp", 53]}, {"jump": {"target": "c-bbb"}}]]}}]}"#;
        assert_eq!(
            keys_jumping_to(json, "c-aaa"),
            vec![("tcp".to_string(), 8080)]
        );
        assert!(keys_jumping_to(json, "c-ccc").is_empty());
    }
}
