//! Frontend keys and backend values of either family, as the syncer and
//! its store handle them: each goes to the map of its family (`FRONTENDS`
//! or `FRONTENDS6`, `BACKEND_SLOTS` or `BACKEND_SLOTS6`), while frontend
//! and backend ids are one space over both.

use std::net::IpAddr;

use proxy_common::{
    addr::{addr6_from_net, addr_from_net},
    maps::{port_from_net, BackendValue, BackendValue6, FrontendKey, FrontendKey6},
};

/// A frontends map key: an IPv4 frontend keeps its 32-bit key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FrontendMapKey {
    V4(FrontendKey),
    V6(FrontendKey6),
}

impl FrontendMapKey {
    pub fn addr(&self) -> IpAddr {
        match self {
            Self::V4(key) => addr_from_net(key.addr).into(),
            Self::V6(key) => addr6_from_net(key.addr).into(),
        }
    }

    /// The port, host order.
    pub fn port(&self) -> u16 {
        port_from_net(match self {
            Self::V4(key) => key.port,
            Self::V6(key) => key.port,
        })
    }

    pub fn proto(&self) -> u8 {
        match self {
            Self::V4(key) => key.proto,
            Self::V6(key) => key.proto,
        }
    }

    /// `SCOPE_POD` or `SCOPE_NODE`.
    pub fn scope(&self) -> u8 {
        match self {
            Self::V4(key) => key.scope,
            Self::V6(key) => key.scope,
        }
    }
}

impl From<FrontendKey> for FrontendMapKey {
    fn from(key: FrontendKey) -> Self {
        Self::V4(key)
    }
}

impl From<FrontendKey6> for FrontendMapKey {
    fn from(key: FrontendKey6) -> Self {
        Self::V6(key)
    }
}

/// A backend slot's value: an IPv4 backend keeps its 8-byte value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackendMapValue {
    V4(BackendValue),
    V6(BackendValue6),
}

impl BackendMapValue {
    pub fn addr(&self) -> IpAddr {
        match self {
            Self::V4(value) => addr_from_net(value.addr).into(),
            Self::V6(value) => addr6_from_net(value.addr).into(),
        }
    }

    /// The port, host order.
    pub fn port(&self) -> u16 {
        port_from_net(match self {
            Self::V4(value) => value.port,
            Self::V6(value) => value.port,
        })
    }

    /// `BACKEND_*` bits.
    pub fn flags(&self) -> u8 {
        match self {
            Self::V4(value) => value.flags,
            Self::V6(value) => value.flags,
        }
    }
}
