//! The Kubernetes objects as the sources keep them: only the fields the
//! model reads, decoded straight from the API server's JSON or a manifest's
//! YAML. Lists are boxed slices, exactly as long as they are (a vector
//! grown while decoding keeps up to twice the room). Fields not listed here are skipped unread, so their content (or
//! type) never fails a document; a field listed here of the wrong type
//! does. Repeated strings are interned ([`Name`]), IP addresses are kept
//! as numbers, and of an endpoint's addresses only the first, the one
//! every consumer uses.
//!
//! Field names and nesting follow the Kubernetes API, so the model reads
//! these as it would read the full objects.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use serde::{de, Deserialize, Deserializer};

pub use super::intern::Name;
use super::{SERVICE_NAME_LABEL, SERVICE_PROXY_NAME_LABEL};

/// The metadata the model and the sources read.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Meta {
    pub name: Option<Name>,
    pub namespace: Option<Name>,
    #[serde(default, deserialize_with = "or_default")]
    pub labels: Labels,
    /// Read by kube's watcher while decoding; never stored (see
    /// `kubernetes.rs`).
    pub resource_version: Option<String>,
}

/// The two labels that matter to a proxy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Labels {
    /// `kubernetes.io/service-name`: the Service an EndpointSlice belongs to.
    pub service_name: Option<Name>,
    /// `service.kubernetes.io/service-proxy-name` is set: another proxy
    /// implementation claims the Service.
    pub service_proxy_name: bool,
}

impl<'de> Deserialize<'de> for Labels {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = Labels;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of strings")
            }

            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Labels, A::Error> {
                let mut labels = Labels::default();
                // Every value is read as a string, as the API types it.
                while let Some(key) = map.next_key::<LabelKey>()? {
                    match key {
                        LabelKey::ServiceName => labels.service_name = Some(map.next_value()?),
                        LabelKey::ServiceProxyName => {
                            map.next_value::<AnyString>()?;
                            labels.service_proxy_name = true;
                        }
                        LabelKey::Other => {
                            map.next_value::<AnyString>()?;
                        }
                    }
                }
                Ok(labels)
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

/// A label's key, as far as a proxy cares.
enum LabelKey {
    ServiceName,
    ServiceProxyName,
    Other,
}

impl<'de> Deserialize<'de> for LabelKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        read_str(deserializer, |key| match key {
            SERVICE_NAME_LABEL => Self::ServiceName,
            SERVICE_PROXY_NAME_LABEL => Self::ServiceProxyName,
            _ => Self::Other,
        })
    }
}

/// A string that is checked to be one and dropped.
struct AnyString;

impl<'de> Deserialize<'de> for AnyString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        read_str(deserializer, |_| Self)
    }
}

/// `read` applied to a string, lent where the decoder can lend it: the
/// strings a proxy only looks at are never copied. Asked for as any value,
/// so YAML's `name: 123` is the number it reads as and is refused (YAML
/// asked for a string would hand over the text): a manifest decoded
/// straight from its text is judged as one decoded through a YAML tree.
fn read_str<'de, D, T, F>(deserializer: D, read: F) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    F: FnOnce(&str) -> T,
{
    struct Visitor<F>(F);
    impl<T, F: FnOnce(&str) -> T> de::Visitor<'_> for Visitor<F> {
        type Value = T;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
            Ok((self.0)(text))
        }
    }
    deserializer.deserialize_any(Visitor(read))
}

/// An IP address field: an address of either family as a number, anything
/// else (`None`, a typo) as written, for the model to judge and name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IpText {
    V4(Ipv4Addr),
    V6(Ipv6Addr),
    Other(Box<str>),
}

impl IpText {
    pub fn new(text: &str) -> Self {
        match text.parse::<IpAddr>() {
            Ok(addr) => addr.into(),
            Err(_) => Self::Other(text.into()),
        }
    }

    /// The address, if the field holds one.
    pub fn addr(&self) -> Option<IpAddr> {
        match self {
            Self::V4(addr) => Some(IpAddr::V4(*addr)),
            Self::V6(addr) => Some(IpAddr::V6(*addr)),
            Self::Other(_) => None,
        }
    }
}

impl From<IpAddr> for IpText {
    fn from(addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(addr) => Self::V4(addr),
            IpAddr::V6(addr) => Self::V6(addr),
        }
    }
}

/// What the API types read for a missing address: empty, not an address.
impl Default for IpText {
    fn default() -> Self {
        Self::Other("".into())
    }
}

impl fmt::Display for IpText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::V4(addr) => addr.fmt(f),
            Self::V6(addr) => addr.fmt(f),
            Self::Other(text) => f.write_str(text),
        }
    }
}

impl<'de> Deserialize<'de> for IpText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        read_str(deserializer, Self::new)
    }
}

/// A `v1` Service.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Service {
    #[serde(default, deserialize_with = "or_default")]
    pub metadata: Meta,
    pub spec: Option<ServiceSpec>,
    pub status: Option<ServiceStatus>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    #[serde(rename = "type")]
    pub type_: Option<Name>,
    #[serde(rename = "clusterIP")]
    pub cluster_ip: Option<IpText>,
    #[serde(rename = "clusterIPs")]
    pub cluster_ips: Option<Box<[IpText]>>,
    /// `IPv4` / `IPv6`, one per cluster IP, in the same order.
    pub ip_families: Option<Box<[Name]>>,
    /// `SingleStack`, `PreferDualStack` or `RequireDualStack`.
    pub ip_family_policy: Option<Name>,
    pub ports: Option<Box<[ServicePort]>>,
    pub session_affinity: Option<Name>,
    pub session_affinity_config: Option<SessionAffinityConfig>,
    #[serde(rename = "externalIPs")]
    pub external_ips: Option<Box<[IpText]>>,
    pub external_traffic_policy: Option<Name>,
    pub internal_traffic_policy: Option<Name>,
    pub health_check_node_port: Option<i32>,
    pub load_balancer_source_ranges: Option<Box<[Box<str>]>>,
}

/// A Service port; the numbers stay as written so a rejection can quote them.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    pub name: Option<Name>,
    pub protocol: Option<Name>,
    /// Absent reads as 0 (out of range), as the API types default it.
    #[serde(default)]
    pub port: i32,
    /// `targetPort` when it is a number; a named one resolves per slice.
    #[serde(default, deserialize_with = "target_port_number")]
    pub target_port: Option<i32>,
    pub node_port: Option<i32>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct SessionAffinityConfig {
    #[serde(rename = "clientIP")]
    pub client_ip: Option<ClientIpConfig>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientIpConfig {
    pub timeout_seconds: Option<i32>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    pub load_balancer: Option<LoadBalancerStatus>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct LoadBalancerStatus {
    pub ingress: Option<Box<[LoadBalancerIngress]>>,
}

/// A load balancer's ingress point; a hostname-only one has no `ip`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerIngress {
    pub ip: Option<IpText>,
    pub ip_mode: Option<Name>,
}

/// A `discovery.k8s.io/v1` EndpointSlice.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSlice {
    #[serde(default, deserialize_with = "or_default")]
    pub metadata: Meta,
    pub address_type: Option<Name>,
    pub ports: Option<Box<[EndpointPort]>>,
    #[serde(default, deserialize_with = "or_default")]
    pub endpoints: Box<[Endpoint]>,
}

/// A port of an EndpointSlice or of a legacy Endpoints subset.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct EndpointPort {
    pub name: Option<Name>,
    pub protocol: Option<Name>,
    pub port: Option<i32>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// The first of `addresses`: addresses are fungible and consumers use
    /// the first (as kube-proxy does). `None` when the list is empty.
    #[serde(default, rename = "addresses", deserialize_with = "first_of_addresses")]
    pub address: Option<IpText>,
    pub conditions: Option<EndpointConditions>,
    pub node_name: Option<Name>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct EndpointConditions {
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
}

/// Legacy `v1` Endpoints (manifests only: the API server mirrors them into
/// slices).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Endpoints {
    #[serde(default, deserialize_with = "or_default")]
    pub metadata: Meta,
    pub subsets: Option<Box<[EndpointSubset]>>,
}

/// Ready addresses and their ports; `notReadyAddresses` never serve.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct EndpointSubset {
    pub addresses: Option<Box<[EndpointAddress]>>,
    pub ports: Option<Box<[EndpointPort]>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointAddress {
    #[serde(default)]
    pub ip: IpText,
    pub node_name: Option<Name>,
}

/// `null` reads as the default, as it does for the API types.
fn or_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// The number of an int-or-string `targetPort`; `None` for a name.
fn target_port_number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<i32>, D::Error> {
    struct Visitor;
    impl de::Visitor<'_> for Visitor {
        type Value = Option<i32>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a 32-bit integer or a string")
        }

        fn visit_unit<E: de::Error>(self) -> Result<Option<i32>, E> {
            Ok(None)
        }

        fn visit_i64<E: de::Error>(self, value: i64) -> Result<Option<i32>, E> {
            i32::try_from(value)
                .map(Some)
                .map_err(|_| E::invalid_value(de::Unexpected::Signed(value), &self))
        }

        fn visit_u64<E: de::Error>(self, value: u64) -> Result<Option<i32>, E> {
            i32::try_from(value)
                .map(Some)
                .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(value), &self))
        }

        fn visit_str<E: de::Error>(self, _name: &str) -> Result<Option<i32>, E> {
            Ok(None)
        }
    }
    deserializer.deserialize_any(Visitor)
}

/// The first string of a list of addresses; the others are checked to be
/// strings and dropped.
fn first_of_addresses<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<IpText>, D::Error> {
    struct Visitor;
    impl<'de> de::Visitor<'de> for Visitor {
        type Value = Option<IpText>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of addresses")
        }

        fn visit_unit<E: de::Error>(self) -> Result<Option<IpText>, E> {
            Ok(None)
        }

        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Option<IpText>, A::Error> {
            let first = seq.next_element::<IpText>()?;
            while seq.next_element::<AnyString>()?.is_some() {}
            Ok(first)
        }
    }
    deserializer.deserialize_any(Visitor)
}

/// What every kept object has: its metadata.
pub trait Object {
    fn metadata(&self) -> &Meta;
    fn metadata_mut(&mut self) -> &mut Meta;
}

impl Object for Service {
    fn metadata(&self) -> &Meta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut Meta {
        &mut self.metadata
    }
}

impl Object for EndpointSlice {
    fn metadata(&self) -> &Meta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut Meta {
        &mut self.metadata
    }
}

impl Object for Endpoints {
    fn metadata(&self) -> &Meta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut Meta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn reads_what_kubectl_writes() {
        // `kubectl create service clusterip x --tcp=80:8080 --dry-run=client -o yaml`
        let yaml = include_str!("../../../tests/fixtures/kubectl-clusterip-x.yaml");
        let service: Service = serde_norway::from_str(yaml).unwrap();
        assert_eq!(service.metadata.name.as_deref(), Some("x"));
        assert_eq!(service.metadata.labels, Labels::default());
        let spec = service.spec.unwrap();
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
        assert!(spec.cluster_ip.is_none());
        let port = &spec.ports.unwrap()[0];
        assert_eq!(port.name.as_deref(), Some("80-8080"));
        assert_eq!(port.protocol.as_deref(), Some("TCP"));
        assert_eq!((port.port, port.target_port), (80, Some(8080)));
        assert!(service
            .status
            .unwrap()
            .load_balancer
            .unwrap()
            .ingress
            .is_none());
    }

    /// A Service as the API server sends it, with every field a proxy ignores.
    fn api_service() -> serde_json::Value {
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {
                "name": "web", "namespace": "shop", "uid": "4f1c", "resourceVersion": "8812",
                "creationTimestamp": "2026-01-02T03:04:05Z",
                "labels": {"app": "web", "service.kubernetes.io/service-proxy-name": "other"},
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"spec\":{}}"},
                "managedFields": [{
                    "manager": "kubectl-client-side-apply", "operation": "Update",
                    "apiVersion": "v1", "time": "2026-01-02T03:04:05Z", "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:spec": {"f:ports": {".": {}, "k:{\"port\":80,\"protocol\":\"TCP\"}": {}}}}
                }],
                "finalizers": ["service.kubernetes.io/load-balancer-cleanup"]
            },
            "spec": {
                "type": "LoadBalancer", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00::10"],
                "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "PreferDualStack",
                "selector": {"app": "web"},
                "ports": [
                    {"name": "http", "protocol": "TCP", "port": 80, "targetPort": "web", "nodePort": 30080, "appProtocol": "http"},
                    {"name": "dns", "protocol": "UDP", "port": 53, "targetPort": 5353, "nodePort": 30053}
                ],
                "sessionAffinity": "ClientIP",
                "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}},
                "externalIPs": ["198.51.100.7"],
                "externalTrafficPolicy": "Local", "internalTrafficPolicy": "Cluster",
                "healthCheckNodePort": 32000,
                "loadBalancerSourceRanges": ["203.0.113.0/24"],
                "allocateLoadBalancerNodePorts": true, "trafficDistribution": "PreferClose"
            },
            "status": {
                "loadBalancer": {"ingress": [
                    {"ip": "192.0.2.10", "ipMode": "VIP", "ports": [{"port": 80, "protocol": "TCP"}]},
                    {"hostname": "lb.example.com"}
                ]},
                "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-02T03:04:05Z", "reason": "", "message": ""}]
            }
        })
    }

    #[test]
    fn reads_what_the_api_server_writes_and_keeps_only_what_the_model_reads() {
        let service: Service = serde_json::from_value(api_service()).unwrap();
        let meta = &service.metadata;
        assert_eq!(
            (meta.name.as_deref(), meta.namespace.as_deref()),
            (Some("web"), Some("shop"))
        );
        assert!(meta.labels.service_proxy_name && meta.labels.service_name.is_none());
        assert_eq!(meta.resource_version.as_deref(), Some("8812"));
        let spec = service.spec.as_ref().unwrap();
        let v4 = |text: &str| IpText::V4(text.parse().unwrap());
        assert_eq!(spec.cluster_ip, Some(v4("10.96.0.10")));
        assert_eq!(
            spec.cluster_ips,
            Some([v4("10.96.0.10"), IpText::V6("fd00::10".parse().unwrap())].into())
        );
        let families: Vec<&str> = spec
            .ip_families
            .iter()
            .flatten()
            .map(|f| f.as_str())
            .collect();
        assert_eq!(families, ["IPv4", "IPv6"]);
        assert_eq!(spec.ip_family_policy.as_deref(), Some("PreferDualStack"));
        let ports = spec.ports.as_ref().unwrap();
        assert_eq!(
            (ports[0].target_port, ports[0].node_port),
            (None, Some(30080))
        );
        assert_eq!(
            (ports[1].target_port, ports[1].node_port),
            (Some(5353), Some(30053))
        );
        let timeout = spec
            .session_affinity_config
            .as_ref()
            .unwrap()
            .client_ip
            .as_ref();
        assert_eq!(timeout.unwrap().timeout_seconds, Some(600));
        assert_eq!(spec.external_ips, Some([v4("198.51.100.7")].into()));
        assert_eq!(spec.external_traffic_policy.as_deref(), Some("Local"));
        assert_eq!(spec.health_check_node_port, Some(32000));
        let ingress = service
            .status
            .unwrap()
            .load_balancer
            .unwrap()
            .ingress
            .unwrap();
        assert_eq!(ingress[0].ip, Some(v4("192.0.2.10")));
        assert_eq!(ingress[0].ip_mode.as_deref(), Some("VIP"));
        assert!(ingress[1].ip.is_none());

        let slice: EndpointSlice = serde_json::from_value(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {
                "name": "web-abcde", "namespace": "shop", "generateName": "web-",
                "labels": {SERVICE_NAME_LABEL: "web", "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
                "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": "2026-01-02T03:04:05Z"},
                "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": "web", "uid": "4f1c", "controller": true, "blockOwnerDeletion": true}],
                "managedFields": [{"manager": "kube-controller-manager", "operation": "Update", "fieldsType": "FieldsV1", "fieldsV1": {"f:endpoints": {}}}]
            },
            "addressType": "IPv4",
            "ports": [{"name": "http", "protocol": "TCP", "port": 8080, "appProtocol": "http"}],
            "endpoints": [
                {
                    "addresses": ["10.244.1.2", "10.244.9.9"], "nodeName": "node-a", "hostname": "web-0", "zone": "z1",
                    "conditions": {"ready": false, "serving": true, "terminating": true},
                    "targetRef": {"kind": "Pod", "name": "web-0", "namespace": "shop", "uid": "p"},
                    "hints": {"forZones": [{"name": "z1"}], "forNodes": [{"name": "node-a"}]},
                    "deprecatedTopology": {"kubernetes.io/hostname": "node-a"}
                },
                {"addresses": []},
                {"addresses": ["not-an-ip"], "nodeName": "node-a"}
            ]
        }))
        .unwrap();
        assert_eq!(slice.metadata.labels.service_name.as_deref(), Some("web"));
        assert_eq!(slice.address_type.as_deref(), Some("IPv4"));
        let port = &slice.ports.as_ref().unwrap()[0];
        assert_eq!(
            (port.name.as_deref(), port.port),
            (Some("http"), Some(8080))
        );
        let [first, empty, invalid] = &slice.endpoints[..] else {
            panic!("{:?}", slice.endpoints);
        };
        assert_eq!(first.address, Some(v4("10.244.1.2")), "the first address");
        let conditions = (Some(false), Some(true), Some(true));
        let seen = first.conditions.unwrap();
        assert_eq!((seen.ready, seen.serving, seen.terminating), conditions);
        assert!(empty.address.is_none() && empty.conditions.is_none());
        assert_eq!(invalid.address, Some(IpText::Other("not-an-ip".into())));
        // One node name for every endpoint on that node.
        let (a, b) = (
            first.node_name.as_ref().unwrap(),
            invalid.node_name.as_ref().unwrap(),
        );
        assert!(std::ptr::eq(a.as_str(), b.as_str()));
    }

    #[test]
    fn a_field_read_with_the_wrong_type_fails_and_says_where() {
        let mut service = api_service();
        service["spec"]["ports"][0]["port"] = json!("eighty");
        let error = serde_json::from_value::<Service>(service).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("invalid type: string \"eighty\""),
            "{error}"
        );
        for (field, value) in [
            ("healthCheckNodePort", json!(true)),
            ("clusterIP", json!(10)),
            ("externalIPs", json!("198.51.100.7")),
        ] {
            let mut service = api_service();
            service["spec"][field] = value;
            assert!(
                serde_json::from_value::<Service>(service).is_err(),
                "{field}"
            );
        }
        let mut service = api_service();
        service["metadata"]["labels"]["app"] = json!(1);
        assert!(
            serde_json::from_value::<Service>(service).is_err(),
            "labels are strings"
        );
        let mut service = api_service();
        service["spec"]["ports"][0]["targetPort"] = json!(1_i64 << 40);
        assert!(
            serde_json::from_value::<Service>(service).is_err(),
            "beyond i32"
        );
    }
}
