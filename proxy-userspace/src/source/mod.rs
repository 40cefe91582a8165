//! Sources turn the outside world into Kubernetes objects (docs/ARCHITECTURE.md, "Data flow"),
//! kept in the compact forms of [`objects`]. Every source yields the same
//! [`Update`]s, grouped per Service, so each semantic rule lives once, in
//! the model. Beside them, [`node_addresses`] reads the node's own
//! addresses, the node facts the plan takes.

mod block_yaml;
pub mod cluster_ip;
pub mod intern;
pub mod kubernetes;
pub mod manifest;
pub mod node_addresses;
pub mod objects;

use std::{collections::BTreeMap, fmt, sync::Arc};

use self::objects::{EndpointSlice, Endpoints, Meta, Name, Service};

/// Label linking an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Label by which another proxy claims a Service (kube-proxy skips those too).
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";

/// Everything a source knows at one moment, as flat lists. Objects are
/// shared with the source that keeps them, never copied.
#[derive(Clone, Debug, Default)]
pub struct Objects {
    pub services: Vec<Arc<Service>>,
    pub endpoint_slices: Vec<Arc<EndpointSlice>>,
    /// Legacy Endpoints, used for a Service only when it has no EndpointSlice.
    pub endpoints: Vec<Arc<Endpoints>>,
}

/// `namespace/name` of a Service. Interned: the plan, the claims of its
/// frontends and the models all name a Service, and share one allocation
/// per name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceName {
    pub namespace: Name,
    pub name: Name,
}

impl ServiceName {
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: Name::new(namespace),
            name: Name::new(name),
        }
    }

    /// The name of the object described by `meta` (no namespace means
    /// "default"), sharing the names `meta` holds.
    pub fn of(meta: &Meta) -> Self {
        Self::within(meta, meta.name.clone())
    }

    /// The Service the slice described by `meta` belongs to, from its label.
    pub fn owner(meta: &Meta) -> Option<Self> {
        let service = meta.labels.service_name.clone()?;
        Some(Self::within(meta, Some(service)))
    }

    /// `name` in the namespace of `meta`.
    fn within(meta: &Meta, name: Option<Name>) -> Self {
        Self {
            namespace: meta
                .namespace
                .clone()
                .unwrap_or_else(|| Name::new("default")),
            name: name.unwrap_or_else(|| Name::new("")),
        }
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The objects that make up one Service: all the model needs to build it.
#[derive(Clone, Debug, Default)]
pub struct ServiceObjects {
    /// `None` when the Service does not exist (deleted, or endpoints only).
    pub service: Option<Arc<Service>>,
    pub slices: Vec<Arc<EndpointSlice>>,
    /// Legacy Endpoints (manifests only: the API server mirrors them to slices).
    pub endpoints: Option<Arc<Endpoints>>,
}

/// Whether an update describes everything or only what changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The complete state: a Service not in it no longer exists.
    Full,
    /// Only the Services in it changed; the others are as they were.
    Changed,
}

/// What a source delivers each time something changes.
#[derive(Clone, Debug)]
pub struct Update {
    pub scope: Scope,
    pub services: BTreeMap<ServiceName, ServiceObjects>,
    /// Objects the source could not use (bad documents, orphan slices).
    pub rejections: Vec<Rejection>,
}

/// Groups flat objects per Service. EndpointSlices without the service-name
/// label cannot belong to any Service and are rejected.
pub fn group(objects: Objects) -> (BTreeMap<ServiceName, ServiceObjects>, Vec<Rejection>) {
    let mut grouped: BTreeMap<ServiceName, ServiceObjects> = BTreeMap::new();
    let mut rejections = Vec::new();
    for service in objects.services {
        let name = ServiceName::of(&service.metadata);
        grouped.entry(name).or_default().service = Some(service);
    }
    for slice in objects.endpoint_slices {
        match ServiceName::owner(&slice.metadata) {
            Some(name) => grouped.entry(name).or_default().slices.push(slice),
            None => rejections.push(Rejection::new(
                format!("EndpointSlice {}", ServiceName::of(&slice.metadata)),
                RejectionKind::MissingServiceLabel,
                format!("no {SERVICE_NAME_LABEL} label"),
            )),
        }
    }
    for endpoints in objects.endpoints {
        let name = ServiceName::of(&endpoints.metadata);
        grouped.entry(name).or_default().endpoints = Some(endpoints);
    }
    (grouped, rejections)
}

/// Why an object was skipped, as a small fixed set (a metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RejectionKind {
    /// Not YAML, no kind/apiVersion/name, or fields of the wrong type.
    InvalidDocument,
    MissingServiceLabel,
    InvalidAddress,
    InvalidPort,
    UnsupportedProtocol,
    NoClusterIp,
    /// Cluster IPs that disagree with `ipFamilies` or `ipFamilyPolicy`.
    InvalidIpFamily,
    InvalidSessionAffinity,
    /// `externalTrafficPolicy` or `internalTrafficPolicy` neither Cluster nor Local.
    InvalidTrafficPolicy,
    /// Another Service already serves the same address, port and protocol.
    FrontendConflict,
    /// The Service's frontends or backends would not fit in the maps: it
    /// waits, whole, until they do.
    NoRoom,
}

impl RejectionKind {
    pub const ALL: [Self; 11] = [
        Self::InvalidDocument,
        Self::MissingServiceLabel,
        Self::InvalidAddress,
        Self::InvalidPort,
        Self::UnsupportedProtocol,
        Self::NoClusterIp,
        Self::InvalidIpFamily,
        Self::InvalidSessionAffinity,
        Self::InvalidTrafficPolicy,
        Self::FrontendConflict,
        Self::NoRoom,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidDocument => "invalid_document",
            Self::MissingServiceLabel => "missing_service_label",
            Self::InvalidAddress => "invalid_address",
            Self::InvalidPort => "invalid_port",
            Self::UnsupportedProtocol => "unsupported_protocol",
            Self::NoClusterIp => "no_cluster_ip",
            Self::InvalidIpFamily => "invalid_ip_family",
            Self::InvalidSessionAffinity => "invalid_session_affinity",
            Self::InvalidTrafficPolicy => "invalid_traffic_policy",
            Self::FrontendConflict => "frontend_conflict",
            Self::NoRoom => "no_room",
        }
    }
}

/// An object (or part of one) that was skipped, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// Kind, namespace/name and, for manifests, where it came from.
    pub object: String,
    pub kind: RejectionKind,
    pub reason: String,
}

impl Rejection {
    pub fn new(object: impl Into<String>, kind: RejectionKind, reason: impl Into<String>) -> Self {
        Self {
            object: object.into(),
            kind,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.object, self.reason)
    }
}
