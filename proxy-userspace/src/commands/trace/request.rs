//! What `kxdp trace` is asked: a packet's source, destination, protocol
//! and where the datapath sees it, parsed from the command line (pure).

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
};

use crate::model::types::Protocol;

/// Where the packet is seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Via {
    /// Leaving a pod: tc on its interface (cluster IPs, and external
    /// addresses and node ports short-circuited to their Service).
    Pod,
    /// Arriving from outside: XDP on a NIC (node ports, LoadBalancer and
    /// external IPs).
    Nic,
    /// A host process's (or, with --socket-lb all, a pod's) socket: the
    /// cgroup socket hooks decide at connect() or sendmsg().
    Host,
}

/// `SRC[:PORT]`: a client address, with its port if known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Source {
    pub addr: IpAddr,
    pub port: Option<u16>,
}

impl FromStr for Source {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(socket) = s.parse::<SocketAddr>() {
            return Ok(Self {
                addr: socket.ip(),
                port: Some(socket.port()),
            });
        }
        let bare = s.trim_start_matches('[').trim_end_matches(']');
        bare.parse::<IpAddr>()
            .map(|addr| Self { addr, port: None })
            .map_err(|_| format!("'{s}' is not a source (ADDR or ADDR:PORT, [ADDR]:PORT for IPv6)"))
    }
}

/// `DST:PORT[/tcp|udp|sctp]`: the address the packet is sent to (TCP if the
/// protocol is not given).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Destination {
    pub addr: SocketAddr,
    pub protocol: Protocol,
}

impl FromStr for Destination {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("'{s}' is not a destination (ADDR:PORT[/tcp|udp|sctp], [ADDR]:PORT for IPv6)")
        };
        let (addr, protocol) = match s.rsplit_once('/') {
            Some((addr, proto)) => {
                let protocol = match proto.to_ascii_lowercase().as_str() {
                    "tcp" => Protocol::Tcp,
                    "udp" => Protocol::Udp,
                    "sctp" => Protocol::Sctp,
                    _ => return Err(bad()),
                };
                (addr, protocol)
            }
            None => (s, Protocol::Tcp),
        };
        let addr = addr.parse::<SocketAddr>().map_err(|_| bad())?;
        Ok(Self { addr, protocol })
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.protocol)
    }
}

/// A packet to trace.
#[derive(Clone, Copy, Debug)]
pub struct Request {
    pub source: Source,
    pub destination: Destination,
    pub via: Via,
}

impl Request {
    /// Source and destination must be of one family, as a packet's are.
    pub fn new(source: Source, destination: Destination, via: Via) -> Result<Self, String> {
        if source.addr.is_ipv4() != destination.addr.is_ipv4() {
            return Err(format!(
                "{} and {} are of different families: a packet's addresses are of one",
                source.addr,
                destination.addr.ip()
            ));
        }
        Ok(Self {
            source,
            destination,
            via,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_take_a_port_or_none_in_either_family() {
        let parse = |s: &str| s.parse::<Source>();
        assert_eq!(
            parse("10.0.0.2:40000").unwrap(),
            Source {
                addr: "10.0.0.2".parse().unwrap(),
                port: Some(40000)
            }
        );
        assert_eq!(parse("10.0.0.2").unwrap().port, None);
        assert_eq!(parse("[fd00::2]:53").unwrap().port, Some(53));
        assert_eq!(parse("fd00::2").unwrap().port, None);
        assert_eq!(parse("[fd00::2]").unwrap().port, None);
        for bad in [
            "",
            "10.0.0",
            "10.0.0.2:",
            "10.0.0.2:70000",
            "host:80",
            "fd00::2:x",
        ] {
            let error = parse(bad).unwrap_err();
            assert!(error.contains("is not a source"), "{bad}: {error}");
        }
    }

    #[test]
    fn destinations_need_a_port_and_default_to_tcp() {
        let parse = |s: &str| s.parse::<Destination>();
        let dns = parse("10.96.0.10:53/udp").unwrap();
        assert_eq!((dns.addr.port(), dns.protocol), (53, Protocol::Udp));
        assert_eq!(parse("10.96.0.10:80").unwrap().protocol, Protocol::Tcp);
        assert_eq!(
            parse("10.96.0.10:99/SCTP").unwrap().protocol,
            Protocol::Sctp
        );
        assert_eq!(
            parse("[fd00::a]:80/TCP").unwrap().to_string(),
            "[fd00::a]:80/TCP"
        );
        for bad in [
            "10.96.0.10",
            "10.96.0.10:80/icmp",
            "10.96.0.10:80/",
            "fd00::a:80",
        ] {
            let error = parse(bad).unwrap_err();
            assert!(error.contains("is not a destination"), "{bad}: {error}");
        }
    }

    #[test]
    fn a_packet_is_of_one_family() {
        let source = "10.0.0.2".parse().unwrap();
        let error = Request::new(source, "[fd00::a]:80".parse().unwrap(), Via::Pod).unwrap_err();
        assert!(error.contains("different families"), "{error}");
    }
}
