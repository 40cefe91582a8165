//! The model's types: a validated Service with its ports and backends, what
//! building made of one Service's objects, and the node the agent runs on.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
};

use proxy_common::maps::{PROTO_SCTP, PROTO_TCP, PROTO_UDP};

use crate::{
    cidr::IpCidr,
    source::{Rejection, RejectionKind, ServiceName},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// Kubernetes' protocol field; absent means TCP.
    pub(super) fn parse(field: Option<&str>) -> Result<Self, (RejectionKind, String)> {
        match field.unwrap_or("TCP") {
            "TCP" => Ok(Self::Tcp),
            "UDP" => Ok(Self::Udp),
            "SCTP" => Ok(Self::Sctp),
            other => Err((
                RejectionKind::UnsupportedProtocol,
                format!("protocol {other} is not TCP, UDP or SCTP"),
            )),
        }
    }

    pub fn ip_proto(self) -> u8 {
        match self {
            Self::Tcp => PROTO_TCP,
            Self::Udp => PROTO_UDP,
            Self::Sctp => PROTO_SCTP,
        }
    }

    pub fn from_ip_proto(proto: u8) -> Option<Self> {
        match proto {
            PROTO_TCP => Some(Self::Tcp),
            PROTO_UDP => Some(Self::Udp),
            PROTO_SCTP => Some(Self::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        })
    }
}

/// One endpoint serving a Service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    /// Of the family of the slice it came from.
    pub addr: SocketAddr,
    /// The endpoint runs on this node (its `nodeName` is `--node-name`).
    pub local: bool,
}

/// One port of a Service with the backends that serve it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePortModel {
    /// The port's name ("" for an unnamed single port).
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    /// The port's `nodePort`, for types NodePort and LoadBalancer only (a
    /// LoadBalancer with `allocateLoadBalancerNodePorts: false` has none).
    pub node_port: Option<u16>,
    /// Serving backends, sorted and unique, of both families (a frontend
    /// takes those of its own).
    pub backends: Vec<Backend>,
    /// Endpoints still listed but not taking new connections (terminating,
    /// not ready): their existing connections go on. Sorted and unique.
    pub draining: Vec<Backend>,
}

/// An address from outside the cluster network the Service answers on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ExternalAddr {
    pub addr: IpAddr,
    /// A LoadBalancer ingress IP (`loadBalancerSourceRanges` apply), not
    /// only an `externalIP`.
    pub load_balancer: bool,
}

/// `spec.type` of a Service the dataplane proxies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceType {
    ClusterIp,
    NodePort,
    LoadBalancer,
}

/// A Service the dataplane proxies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceModel {
    pub name: ServiceName,
    pub service_type: ServiceType,
    /// One per family at most, the primary first (`clusterIPs`' order).
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<ServicePortModel>,
    /// `sessionAffinity: ClientIP` timeout in seconds; `None` without affinity.
    pub affinity_timeout: Option<u32>,
    /// `externalIPs` and LoadBalancer ingress IPs, sorted, one per address.
    pub external_addrs: Vec<ExternalAddr>,
    /// `externalTrafficPolicy: Local` on a Service reachable from outside.
    pub external_policy_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub internal_policy_local: bool,
    /// `healthCheckNodePort` of a Service with `externalTrafficPolicy: Local`.
    pub health_check_node_port: Option<u16>,
    /// `loadBalancerSourceRanges` of both families; `None` lets every
    /// client in. With `Some`, a family none of whose ranges is listed lets
    /// no client of that family in: dropping a range never widens access.
    pub source_ranges: Option<Vec<IpCidr>>,
}

/// What the model made of one Service's objects.
#[derive(Debug, Default)]
pub struct Built {
    /// `None` when nothing is proxied: absent, headless, ExternalName,
    /// another proxy's, or rejected.
    pub service: Option<ServiceModel>,
    pub rejections: Vec<Rejection>,
}

/// The node the agent runs on, for telling local endpoints apart.
#[derive(Clone, Debug, Default)]
pub struct Node {
    pub name: Option<String>,
}

impl Node {
    pub(super) fn is_local(&self, node_name: Option<&str>) -> bool {
        self.name.is_some() && self.name.as_deref() == node_name
    }
}
