//! Services and EndpointSlices as the API server sends them (JSON, one
//! object a line, seeded with kubectl's output), decoded into the agent's
//! compact objects as the Kubernetes source decodes them, then through the
//! pipeline: see `common/pipeline.rs` for what is checked. A line that
//! does not decode is what the watcher reports and skips.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use proxy_userspace::source::{
    objects::{EndpointSlice, Service},
    Objects,
};

#[path = "common/pipeline.rs"]
mod pipeline;

fn decode(text: &str) -> Objects {
    let mut objects = Objects::default();
    for line in text.lines() {
        if line.contains("\"EndpointSlice\"") {
            if let Ok(slice) = serde_json::from_str::<EndpointSlice>(line) {
                objects.endpoint_slices.push(Arc::new(slice));
            }
        } else if let Ok(service) = serde_json::from_str::<Service>(line) {
            objects.services.push(Arc::new(service));
        }
    }
    objects
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    pipeline::check(|| pipeline::full_update(decode(text)));
});
