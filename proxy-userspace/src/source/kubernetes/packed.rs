//! The compact objects packed into bytes while the Kubernetes source keeps
//! them between events: one allocation per object, strings inline,
//! numbers as varints, an endpoint in six bytes (its flags, conditions and
//! IPv4 address; eighteen with an IPv6 address). Unpacked only when a change or a full update needs the
//! object again, which is rare next to how long it is kept.
//!
//! A struct packs its fields in the order [`pack_struct!`] lists them; the
//! listing destructures the struct, so a field added to an object and not
//! packed does not compile. A [`Meta`] packs without its name and namespace:
//! the store's key holds them (`store.rs`).

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::source::objects::{
    ClientIpConfig, Endpoint, EndpointConditions, EndpointPort, EndpointSlice, IpText, Labels,
    LoadBalancerIngress, LoadBalancerStatus, Meta, Name, Service, ServicePort, ServiceSpec,
    ServiceStatus, SessionAffinityConfig,
};

/// Packed bytes, read front to back. Every read returns `None` once the
/// bytes run out or hold what no packing writes.
pub(super) struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    fn byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.bytes.split_first()?;
        self.bytes = rest;
        Some(first)
    }

    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        if len > self.bytes.len() {
            return None;
        }
        let (taken, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Some(taken)
    }

    fn varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }

    /// A length, never more than the bytes left could hold (so corrupt bytes
    /// cannot ask for a huge allocation).
    fn len(&mut self) -> Option<usize> {
        usize::try_from(self.varint()?)
            .ok()
            .filter(|&len| len <= self.bytes.len())
    }

    fn ipv4(&mut self) -> Option<Ipv4Addr> {
        let octets: [u8; 4] = self.take(4)?.try_into().ok()?;
        Some(Ipv4Addr::from(octets))
    }

    fn ipv6(&mut self) -> Option<Ipv6Addr> {
        let octets: [u8; 16] = self.take(16)?.try_into().ok()?;
        Some(Ipv6Addr::from(octets))
    }

    pub(super) fn str(&mut self) -> Option<&'a str> {
        let len = self.len()?;
        std::str::from_utf8(self.take(len)?).ok()
    }

    /// What is left: the object packed after a key.
    pub(super) fn rest(self) -> &'a [u8] {
        self.bytes
    }
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

pub(super) fn put_str(out: &mut Vec<u8>, text: &str) {
    put_varint(out, text.len() as u64);
    out.extend_from_slice(text.as_bytes());
}

/// A value that packs into bytes and back.
pub(super) trait Pack: Sized {
    fn pack(&self, out: &mut Vec<u8>);
    fn unpack(input: &mut Reader<'_>) -> Option<Self>;
}

impl Pack for bool {
    fn pack(&self, out: &mut Vec<u8>) {
        out.push(u8::from(*self));
    }

    fn unpack(input: &mut Reader<'_>) -> Option<Self> {
        match input.byte()? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }
}

/// Zigzag, so small negative numbers stay short too.
impl Pack for i32 {
    fn pack(&self, out: &mut Vec<u8>) {
        put_varint(out, u64::from(((*self << 1) ^ (*self >> 31)) as u32));
    }

    fn unpack(input: &mut Reader<'_>) -> Option<Self> {
        let zigzag = u32::try_from(input.varint()?).ok()?;
        Some((zigzag >> 1) as i32 ^ -((zigzag & 1) as i32))
    }
}

impl Pack for Name {
    fn pack(&self, out: &mut Vec<u8>) {
        put_str(out, self);
    }

    fn unpack(input: &mut Reader<'_>) -> Option<Self> {
        input.str().map(Name::new)
    }
}

impl Pack for String {
    fn pack(&self, out: &mut Vec<u8>) {
        put_str(out, self);
    }

    fn unpack(input: &mut Reader<'_>) -> Option<Self> {
        input.str().map(str::to_string)
    }
}

impl Pack for Box<str> {
    fn pack(&self, out: &mut Vec<u8>) {
        put_str(out, self);
    }

    fn unpack(input: &mut Reader<'_>) -> Option<Self> {
        input.str().map(Box::from)
    }
}

impl<T: Pack> Pack for Option<T> {
    fn pack(&self, out: &mut Vec<u8>) {
        match self {
            None => out.push(0),
            Some(value) => {
                out.push(1);
                value.pack(out);
            }
        }
    }

    fn unpack(input: &mut Reader<'_>) -> Option<Self> {
        match input.byte()? {
            0 => Some(None),
            1 => T::unpack(input).map(Some),
            _ => None,
        }
    }
}

impl<T: Pack> Pack for Box<[T]> {
    fn pack(&self, out: &mut Vec<u8>) {
        put_varint(out, self.len() as u64);
        for item in self.iter() {
            item.pack(out);
        }
    }

    fn unpack(input: &mut Reader<'_>) -> Option<Self> {
        // Every item takes at least one byte, so `len` bounds the count.
        let len = input.len()?;
        (0..len).map(|_| T::unpack(input)).collect()
    }
}

const IP_V4: u8 = 0;
const IP_OTHER: u8 = 1;
const IP_V6: u8 = 2;

impl Pack for IpText {
    fn pack(&self, out: &mut Vec<u8>) {
        match self {
            Self::V4(addr) => {
                out.push(IP_V4);
                out.extend_from_slice(&addr.octets());
            }
            Self::V6(addr) => {
                out.push(IP_V6);
                out.extend_from_slice(&addr.octets());
            }
            Self::Other(text) => {
                out.push(IP_OTHER);
                put_str(out, text);
            }
        }
    }

    fn unpack(input: &mut Reader<'_>) -> Option<Self> {
        match input.byte()? {
            IP_V4 => input.ipv4().map(Self::V4),
            IP_V6 => input.ipv6().map(Self::V6),
            IP_OTHER => input.str().map(|text| Self::Other(text.into())),
            _ => None,
        }
    }
}

/// Two bits per condition: absent, false, true.
impl Pack for EndpointConditions {
    fn pack(&self, out: &mut Vec<u8>) {
        let bits = |condition: Option<bool>| match condition {
            None => 0,
            Some(false) => 1,
            Some(true) => 2,
        };
        out.push(bits(self.ready) | bits(self.serving) << 2 | bits(self.terminating) << 4);
    }

    fn unpack(input: &mut Reader<'_>) -> Option<Self> {
        let byte = input.byte()?;
        let condition = |shift: u8| match byte >> shift & 3 {
            0 => Some(None),
            1 => Some(Some(false)),
            2 => Some(Some(true)),
            _ => None,
        };
        if byte >> 6 != 0 {
            return None;
        }
        Some(Self {
            ready: condition(0)?,
            serving: condition(2)?,
            terminating: condition(4)?,
        })
    }
}

/// An endpoint's flags byte: which address kind follows, and whether the
/// conditions and the node name do.
const ENDPOINT_V4: u8 = 1;
const ENDPOINT_OTHER_ADDRESS: u8 = 2;
const ENDPOINT_CONDITIONS: u8 = 4;
const ENDPOINT_NODE: u8 = 8;
const ENDPOINT_V6: u8 = 16;
/// The bits naming the address kind: at most one is set.
const ENDPOINT_ADDRESS: u8 = ENDPOINT_V4 | ENDPOINT_V6 | ENDPOINT_OTHER_ADDRESS;

impl Pack for Endpoint {
    fn pack(&self, out: &mut Vec<u8>) {
        let Endpoint {
            address,
            conditions,
            node_name,
        } = self;
        let mut flags = match address {
            None => 0,
            Some(IpText::V4(_)) => ENDPOINT_V4,
            Some(IpText::V6(_)) => ENDPOINT_V6,
            Some(IpText::Other(_)) => ENDPOINT_OTHER_ADDRESS,
        };
        if conditions.is_some() {
            flags |= ENDPOINT_CONDITIONS;
        }
        if node_name.is_some() {
            flags |= ENDPOINT_NODE;
        }
        out.push(flags);
        if let Some(conditions) = conditions {
            conditions.pack(out);
        }
        match address {
            None => {}
            Some(IpText::V4(addr)) => out.extend_from_slice(&addr.octets()),
            Some(IpText::V6(addr)) => out.extend_from_slice(&addr.octets()),
            Some(IpText::Other(text)) => put_str(out, text),
        }
        if let Some(node) = node_name {
            node.pack(out);
        }
    }

    fn unpack(input: &mut Reader<'_>) -> Option<Self> {
        let flags = input.byte()?;
        if flags & !(ENDPOINT_ADDRESS | ENDPOINT_CONDITIONS | ENDPOINT_NODE) != 0 {
            return None;
        }
        let conditions = if flags & ENDPOINT_CONDITIONS != 0 {
            Some(EndpointConditions::unpack(input)?)
        } else {
            None
        };
        let address = match flags & ENDPOINT_ADDRESS {
            0 => None,
            ENDPOINT_V4 => Some(IpText::V4(input.ipv4()?)),
            ENDPOINT_V6 => Some(IpText::V6(input.ipv6()?)),
            ENDPOINT_OTHER_ADDRESS => Some(IpText::Other(input.str()?.into())),
            _ => return None,
        };
        let node_name = if flags & ENDPOINT_NODE != 0 {
            Some(Name::unpack(input)?)
        } else {
            None
        };
        Some(Self {
            address,
            conditions,
            node_name,
        })
    }
}

/// Without name and namespace, which the store's key holds.
impl Pack for Meta {
    fn pack(&self, out: &mut Vec<u8>) {
        let Meta {
            name: _,
            namespace: _,
            labels,
            resource_version,
        } = self;
        labels.pack(out);
        resource_version.pack(out);
    }

    fn unpack(input: &mut Reader<'_>) -> Option<Self> {
        Some(Meta {
            name: None,
            namespace: None,
            labels: Labels::unpack(input)?,
            resource_version: Option::unpack(input)?,
        })
    }
}

/// Packs the listed fields in order; every field must be listed.
macro_rules! pack_struct {
    ($type:ident { $($field:ident),* $(,)? }) => {
        impl Pack for $type {
            fn pack(&self, out: &mut Vec<u8>) {
                let $type { $($field),* } = self;
                $($field.pack(out);)*
            }

            fn unpack(input: &mut Reader<'_>) -> Option<Self> {
                Some($type { $($field: Pack::unpack(input)?),* })
            }
        }
    };
}

pack_struct!(Labels {
    service_name,
    service_proxy_name,
});
// `metadata` first in both kinds: the store reads a kept object's metadata
// alone (`store.rs`).
pack_struct!(Service {
    metadata,
    spec,
    status,
});
pack_struct!(ServiceSpec {
    type_,
    cluster_ip,
    cluster_ips,
    ip_families,
    ip_family_policy,
    ports,
    session_affinity,
    session_affinity_config,
    external_ips,
    external_traffic_policy,
    internal_traffic_policy,
    health_check_node_port,
    load_balancer_source_ranges,
});
pack_struct!(ServicePort {
    name,
    protocol,
    port,
    target_port,
    node_port,
});
pack_struct!(SessionAffinityConfig { client_ip });
pack_struct!(ClientIpConfig { timeout_seconds });
pack_struct!(ServiceStatus { load_balancer });
pack_struct!(LoadBalancerStatus { ingress });
pack_struct!(LoadBalancerIngress { ip, ip_mode });
pack_struct!(EndpointSlice {
    metadata,
    address_type,
    ports,
    endpoints,
});
pack_struct!(EndpointPort {
    name,
    protocol,
    port,
});

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn round_trip<T: Pack>(value: &T) -> (T, usize) {
        let mut bytes = Vec::new();
        value.pack(&mut bytes);
        let mut reader = Reader::new(&bytes);
        let back = T::unpack(&mut reader).expect("unpacks");
        assert!(reader.rest().is_empty(), "every byte read");
        (back, bytes.len())
    }

    /// Everything the model reads, set to something other than its default.
    fn full_service() -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "41",
                "labels": {"service.kubernetes.io/service-proxy-name": "other", "a": "b"}},
            "spec": {
                "type": "LoadBalancer", "clusterIP": "10.96.0.10",
                "clusterIPs": ["10.96.0.10", "fd00::10"],
                "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "RequireDualStack",
                "ports": [
                    {"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080, "nodePort": 30080},
                    {"name": "named", "port": 443, "targetPort": "https"},
                    {"port": -1},
                ],
                "sessionAffinity": "ClientIP",
                "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 10800}},
                "externalIPs": ["192.168.1.5", "fd00:192:168::5", "not-an-ip"],
                "externalTrafficPolicy": "Local", "internalTrafficPolicy": "Cluster",
                "healthCheckNodePort": 32000,
                "loadBalancerSourceRanges": ["10.0.0.0/8", "fd00:10::/32"],
            },
            "status": {"loadBalancer": {"ingress": [
                {"ip": "192.168.2.1", "ipMode": "Proxy"}, {"hostname": "lb.example"},
                {"ip": "fd00:192:168::2"},
            ]}},
        }))
        .unwrap()
    }

    fn full_slice() -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": "web-abcde", "namespace": "shop",
                "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "protocol": "TCP", "port": 8080}, {}],
            "endpoints": [
                {"addresses": ["10.1.0.1"], "conditions": {"ready": true, "serving": true, "terminating": false}, "nodeName": "node-a"},
                {"addresses": ["fd00::1"], "conditions": {"ready": false}},
                {"addresses": [], "conditions": {}},
                {"addresses": ["10.1.0.2"]},
            ],
        }))
        .unwrap()
    }

    /// Debug shows every field, so equal text is equal objects (the objects
    /// carry no `PartialEq` of their own).
    fn same<T: std::fmt::Debug>(a: &T, b: &T) {
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
    }

    fn without_key<T: crate::source::objects::Object>(mut object: T) -> T {
        object.metadata_mut().name = None;
        object.metadata_mut().namespace = None;
        object
    }

    #[test]
    fn objects_come_back_as_they_were_packed_but_for_the_key() {
        let service = full_service();
        let (back, _) = round_trip(&service);
        same(&back, &without_key(service));
        let slice = full_slice();
        let (back, _) = round_trip(&slice);
        same(&back, &without_key(slice));
        same(&round_trip(&Service::default()).0, &Service::default());
        same(
            &round_trip(&EndpointSlice::default()).0,
            &EndpointSlice::default(),
        );
    }

    #[test]
    fn a_ready_ipv4_endpoint_takes_six_bytes() {
        let endpoint = Endpoint {
            address: Some(IpText::V4(Ipv4Addr::new(10, 1, 2, 3))),
            conditions: Some(EndpointConditions {
                ready: Some(true),
                serving: Some(true),
                terminating: Some(false),
            }),
            node_name: None,
        };
        let (back, len) = round_trip(&endpoint);
        same(&back, &endpoint);
        assert_eq!(len, 6);
    }

    #[test]
    fn an_ipv6_endpoint_keeps_its_sixteen_bytes() {
        let endpoint = Endpoint {
            address: Some(IpText::V6("fd00:10:244::5".parse().unwrap())),
            conditions: Some(EndpointConditions {
                ready: Some(true),
                serving: Some(true),
                terminating: Some(false),
            }),
            node_name: Some(Name::new("node-a")),
        };
        let (back, len) = round_trip(&endpoint);
        same(&back, &endpoint);
        // Flags, conditions, the address, the node name's length and text.
        assert_eq!(len, 1 + 1 + 16 + 1 + 6);
        // Two address kinds at once is no packing.
        assert!(
            Endpoint::unpack(&mut Reader::new(&[ENDPOINT_V4 | ENDPOINT_V6, 0, 0, 0, 0])).is_none()
        );
    }

    #[test]
    fn every_condition_state_comes_back() {
        let states = [None, Some(false), Some(true)];
        for ready in states {
            for serving in states {
                for terminating in states {
                    let conditions = EndpointConditions {
                        ready,
                        serving,
                        terminating,
                    };
                    assert_eq!(round_trip(&conditions).0, conditions);
                }
            }
        }
    }

    #[test]
    fn numbers_keep_their_sign_and_range() {
        for value in [0, 1, -1, 63, -64, 300, i32::MAX, i32::MIN] {
            assert_eq!(round_trip(&value).0, value);
        }
        assert_eq!(round_trip(&5i32).1, 1);
    }

    #[test]
    fn truncated_or_corrupt_bytes_unpack_to_none_without_panicking() {
        let mut bytes = Vec::new();
        full_slice().pack(&mut bytes);
        for len in 0..bytes.len() {
            assert!(
                EndpointSlice::unpack(&mut Reader::new(&bytes[..len])).is_none(),
                "{len} of {} bytes",
                bytes.len()
            );
        }
        // A length far beyond the bytes, and an unknown tag.
        let mut huge = Vec::new();
        put_varint(&mut huge, u64::MAX >> 1);
        assert!(Box::<[Endpoint]>::unpack(&mut Reader::new(&huge)).is_none());
        assert!(IpText::unpack(&mut Reader::new(&[7])).is_none());
        assert!(Endpoint::unpack(&mut Reader::new(&[0x80])).is_none());
    }
}
