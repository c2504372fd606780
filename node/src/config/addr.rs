//! Addresses in the configuration: `host:port` with an IP address or a DNS name, the
//! machine's host name, and what a node advertises when it listens on `0.0.0.0`.
//!
//! A *bind* address is where a listener of this node accepts connections: any host,
//! including the unspecified `0.0.0.0` / `::`, and port 0 (a free port, for tests).
//! An *advertised* address is what other nodes and clients dial: it must name one
//! host (never the unspecified address) and a real port.

use std::fmt;
use std::net::IpAddr;
use std::sync::OnceLock;

/// The host part of an address: an IP address or a DNS name (stored lower-case,
/// without a trailing dot).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Host {
    Ip(IpAddr),
    Name(String),
}

impl Host {
    /// Parse an IP address (IPv6 with or without brackets) or a DNS name.
    pub fn parse(s: &str) -> Result<Host, String> {
        let bare = s.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
        if let Ok(ip) = bare.unwrap_or(s).parse::<IpAddr>() {
            return Ok(Host::Ip(ip));
        }
        if bare.is_some() {
            return Err(format!("`{s}` is not an IPv6 address"));
        }
        check_dns_name(s)?;
        Ok(Host::Name(s.trim_end_matches('.').to_ascii_lowercase()))
    }

    /// `0.0.0.0` or `::`: every interface of this machine.
    pub fn is_unspecified(&self) -> bool {
        matches!(self, Host::Ip(ip) if ip.is_unspecified())
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Name(n) => f.write_str(n),
        }
    }
}

/// A DNS name as RFC 1123 allows it: dot-separated labels of letters, digits and
/// `-`, each 1–63 characters, not starting or ending with `-`; not all digits (that
/// would be a malformed IPv4 address).
fn check_dns_name(s: &str) -> Result<(), String> {
    let invalid = || {
        format!("`{s}` is not a valid host: write an IP address (10.0.0.5, \"[::1]\") or a DNS name (aof-2.aof, localhost)")
    };
    let name = s.strip_suffix('.').unwrap_or(s);
    if name.is_empty() || name.len() > 253 {
        return Err(invalid());
    }
    let mut all_numeric = true;
    for label in name.split('.') {
        let ok = (1..=63).contains(&label.len())
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(invalid());
        }
        all_numeric &= label.bytes().all(|b| b.is_ascii_digit());
    }
    if all_numeric {
        return Err(invalid());
    }
    Ok(())
}

/// `host:port`. IPv6 hosts are written in brackets: `[::1]:4001`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPort {
    pub host: Host,
    pub port: u16,
}

impl HostPort {
    pub fn parse(s: &str) -> Result<HostPort, String> {
        let shape = || {
            format!("`{s}` is not host:port (e.g. 10.0.0.5:6000, aof-2.aof:6000, or \"[::1]:6000\" for IPv6)")
        };
        let (host, port) = if s.starts_with('[') {
            let end = s.find("]:").ok_or_else(shape)?;
            (&s[..=end], &s[end + 2..])
        } else {
            let (h, p) = s.rsplit_once(':').ok_or_else(shape)?;
            if h.contains(':') {
                // An IPv6 address without brackets: the port cannot be told apart.
                return Err(format!("`{s}`: write an IPv6 address in brackets, e.g. \"[::1]:6000\""));
            }
            (h, p)
        };
        if host.is_empty() || port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(shape());
        }
        let port: u16 = port.parse().map_err(|_| format!("`{s}`: port {port} is out of range (1-65535)"))?;
        Ok(HostPort { host: Host::parse(host)?, port })
    }

    pub fn is_unspecified(&self) -> bool {
        self.host.is_unspecified()
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            host => write!(f, "{host}:{}", self.port),
        }
    }
}

/// Checks of an address that other nodes or clients dial (advertised addresses,
/// members, discovery seeds).
pub(crate) fn check_dialable(hp: &HostPort, value: &str) -> Result<(), String> {
    if hp.is_unspecified() {
        return Err(format!(
            "`{value}` is the unspecified address, which other nodes and clients cannot dial; \
             write an address of this node (IP or DNS name)"
        ));
    }
    if matches!(hp.host, Host::Ip(ip) if ip.is_multicast()) {
        return Err(format!("`{value}` is a multicast address; write an address of the node"));
    }
    if hp.port == 0 {
        return Err(format!("`{value}`: port 0 cannot be dialled; write the real port"));
    }
    Ok(())
}

/// What a node advertises for one of its listeners, and whether it was derived from
/// the machine's host name (the listener binds the unspecified address and no
/// advertised address is configured).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Advertised {
    pub addr: HostPort,
    pub from_hostname: bool,
}

/// The advertised address of a listener: the configured one; else the bind address
/// when its host is concrete; else (bind host `0.0.0.0` / `::`) `hostname` with the
/// bind port. `Err` says what is missing.
pub(crate) fn advertise(configured: Option<&str>, bind: &str, hostname: Option<&str>) -> Result<Advertised, String> {
    if let Some(c) = configured {
        let addr = HostPort::parse(c)?;
        return Ok(Advertised { addr, from_hostname: false });
    }
    let bind = HostPort::parse(bind)?;
    if !bind.is_unspecified() {
        return Ok(Advertised { addr: bind, from_hostname: false });
    }
    let name = hostname.ok_or_else(|| "the host name of this machine is unknown".to_string())?;
    let host = Host::parse(name).map_err(|e| format!("the host name cannot be advertised: {e}"))?;
    Ok(Advertised { addr: HostPort { host, port: bind.port }, from_hostname: true })
}

/// This machine's host name for advertising: its fully qualified name when the
/// resolver knows one (`aof-2.aof.prod.svc.cluster.local` in a StatefulSet), else the
/// plain host name. Looked up once per process.
pub fn system_hostname() -> Option<String> {
    static NAME: OnceLock<Option<String>> = OnceLock::new();
    NAME.get_or_init(|| {
        let short = dns_lookup::get_hostname().ok().filter(|h| !h.is_empty())?;
        if short.contains('.') {
            return Some(short);
        }
        let hints = dns_lookup::AddrInfoHints { flags: libc::AI_CANONNAME, ..Default::default() };
        let fqdn = dns_lookup::getaddrinfo(Some(&short), None, Some(hints))
            .ok()
            .and_then(|mut infos| infos.find_map(|i| i.ok().and_then(|i| i.canonname)))
            .filter(|c| c.len() > short.len() && c.starts_with(&format!("{short}.")));
        Some(fqdn.unwrap_or(short))
    })
    .clone()
}

/// The node id of a StatefulSet pod: its host name's ordinal plus one
/// (`aof-0` → 1, `aof-2.aof.prod.svc.cluster.local` → 3). `None` when the first
/// label of the name does not end in `-<digits>`.
pub fn statefulset_node_id(hostname: &str) -> Option<u64> {
    let first = hostname.split('.').next()?;
    let (prefix, ordinal) = first.rsplit_once('-')?;
    if prefix.is_empty() || ordinal.is_empty() || !ordinal.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    ordinal.parse::<u64>().ok()?.checked_add(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        for (text, shown) in [
            ("127.0.0.1:4001", "127.0.0.1:4001"),
            ("0.0.0.0:0", "0.0.0.0:0"),
            ("[::1]:4001", "[::1]:4001"),
            ("[::]:6000", "[::]:6000"),
            ("aof-2.aof:6000", "aof-2.aof:6000"),
            ("AOF-2.Aof.:6000", "aof-2.aof:6000"),
            ("localhost:3000", "localhost:3000"),
        ] {
            assert_eq!(HostPort::parse(text).unwrap().to_string(), shown, "{text}");
        }
        assert!(HostPort::parse("[::]:6000").unwrap().is_unspecified());
        for bad in [
            "127.0.0.1",
            "127.0.0.1:",
            ":4001",
            "127.0.0.1:99999",
            "127.0.0.1:40x1",
            "::1:4001",
            "[::1]4001",
            "[zz]:1",
            "bad host:1",
            "-x-:1",
            "a..b:1",
            "127.0.0:1",
            "",
        ] {
            assert!(HostPort::parse(bad).is_err(), "{bad} should be rejected");
        }
        assert!(HostPort::parse("127.0.0.1:99999").unwrap_err().contains("out of range"));
    }

    #[test]
    fn advertised_address_rules() {
        // configured wins
        let a = advertise(Some("aof-1.aof:6000"), "0.0.0.0:6000", None).unwrap();
        assert_eq!((a.addr.to_string(), a.from_hostname), ("aof-1.aof:6000".into(), false));
        // a concrete bind address is advertised as is
        let a = advertise(None, "10.0.0.5:6000", Some("ignored")).unwrap();
        assert_eq!((a.addr.to_string(), a.from_hostname), ("10.0.0.5:6000".into(), false));
        // 0.0.0.0 / :: : the host name with the bind port
        let a = advertise(None, "0.0.0.0:6000", Some("aof-1.aof.prod.svc.cluster.local")).unwrap();
        assert_eq!((a.addr.to_string(), a.from_hostname), ("aof-1.aof.prod.svc.cluster.local:6000".into(), true));
        let a = advertise(None, "[::]:5000", Some("node-a")).unwrap();
        assert_eq!(a.addr.to_string(), "node-a:5000");
        assert!(advertise(None, "0.0.0.0:6000", None).unwrap_err().contains("host name"));
    }

    #[test]
    fn statefulset_ordinals() {
        assert_eq!(statefulset_node_id("aof-0"), Some(1));
        assert_eq!(statefulset_node_id("aof-2"), Some(3));
        assert_eq!(statefulset_node_id("aof-cluster-12.aof.prod.svc.cluster.local"), Some(13));
        for none in ["aof", "aof-", "-2", "aof-x2", "aof-7d9f8-xk2p4", "aof.x-2", ""] {
            assert_eq!(statefulset_node_id(none), None, "{none}");
        }
    }
}
