//! Models built from YAML manifests, for the model's tests.

use std::collections::BTreeMap;

use super::{
    build,
    types::{Built, Node, ServiceModel, ServicePortModel},
};
use crate::source::{
    group,
    manifest::{parse_stream, Loaded},
    ServiceName,
};

/// Builds every Service in `yaml` as this node ("node-a") sees it.
pub(crate) fn model_all(yaml: &str) -> BTreeMap<ServiceName, Built> {
    let mut loaded = Loaded::default();
    parse_stream("test.yaml", yaml, &mut loaded);
    assert!(loaded.rejections.is_empty(), "{:?}", loaded.rejections);
    let (grouped, rejections) = group(loaded.objects);
    assert!(rejections.is_empty(), "{rejections:?}");
    let node = Node {
        name: Some("node-a".into()),
    };
    grouped
        .iter()
        .map(|(name, objects)| (name.clone(), build(name, objects, &node)))
        .collect()
}

/// The one proxied Service in `yaml`.
pub(super) fn model(yaml: &str) -> ServiceModel {
    let built = model_all(yaml);
    let mut proxied = built.into_values().filter_map(|b| {
        assert!(b.rejections.is_empty(), "{:?}", b.rejections);
        b.service
    });
    let service = proxied.next().expect("a proxied service");
    assert!(proxied.next().is_none());
    service
}

/// The serving backends of `port` as text, the local ones marked.
pub(super) fn backends(port: &ServicePortModel) -> Vec<String> {
    port.backends
        .iter()
        .map(|b| format!("{}{}", b.addr, if b.local { " local" } else { "" }))
        .collect()
}
