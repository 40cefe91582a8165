//! Manifest streams (any text, seeded with kubectl's output) through the
//! manifest reader, clusterIP allocation and the agent's pipeline: see
//! `common/pipeline.rs` for what is checked.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxy_userspace::source::{cluster_ip, manifest};

#[path = "common/pipeline.rs"]
mod pipeline;

fn first_half(text: &str) -> &str {
    let mut cut = text.len() / 2;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    &text[..text[..cut].rfind("\n---").unwrap_or(0)]
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let cidrs = "10.96.0.0/16,fd00:10:96::/108"
        .parse()
        .expect("service CIDRs");
    pipeline::check(|whole| {
        // The part: the documents of the stream's first half.
        let text = if whole { text } else { first_half(text) };
        let mut loaded = manifest::Loaded::default();
        manifest::parse_stream("fuzz.yaml", text, &mut loaded);
        cluster_ip::allocate(&mut loaded.objects.services, cidrs);
        let mut update = pipeline::full_update(loaded.objects);
        update.rejections.splice(0..0, loaded.rejections);
        update
    });
});
