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

/// The objects of `text`'s lines (every other one unless `every_line`), by
/// their `kind`.
fn decode(text: &str, every_line: bool) -> Objects {
    let mut objects = Objects::default();
    for line in text.lines().step_by(if every_line { 1 } else { 2 }) {
        let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        match value.get("kind").and_then(|k| k.as_str()) {
            Some("EndpointSlice") => {
                if let Ok(slice) = serde_json::from_value::<EndpointSlice>(value) {
                    objects.endpoint_slices.push(Arc::new(slice));
                }
            }
            _ => {
                if let Ok(service) = serde_json::from_value::<Service>(value) {
                    objects.services.push(Arc::new(service));
                }
            }
        }
    }
    objects
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    pipeline::check(|whole| pipeline::full_update(decode(text, whole)));
});
