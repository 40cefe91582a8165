//! Sources turn the outside world into Kubernetes objects (DESIGN.md §1).
//! Every source yields the same [`Objects`], so each semantic rule lives once,
//! in the model.

pub mod cluster_ip;
pub mod manifest;

use std::fmt;

use k8s_openapi::api::{
    core::v1::{Endpoints, Service},
    discovery::v1::EndpointSlice,
};

/// Everything a source knows at one moment.
#[derive(Clone, Debug, Default)]
pub struct Objects {
    pub services: Vec<Service>,
    pub endpoint_slices: Vec<EndpointSlice>,
    /// Legacy Endpoints, used for a Service only when it has no EndpointSlice.
    pub endpoints: Vec<Endpoints>,
}

/// An object (or part of one) that was skipped, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// Kind, namespace/name and, for manifests, where it came from.
    pub object: String,
    pub reason: String,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.object, self.reason)
    }
}
