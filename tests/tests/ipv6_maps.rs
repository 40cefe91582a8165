//! The agent's IPv6 entries in the object's IPv6 maps: written through the
//! harness (the agent's own map values and store), read back as a
//! restarted agent reads them. The packet paths of IPv6 are tested apart.

use std::net::{IpAddr, Ipv6Addr};

use kxdp_testbed::datapath::{pod_key6, Datapath};
use proxy_common::maps::{PROTO_TCP, PROTO_UDP};
use proxy_userspace::{
    frontend_text::frontend_text,
    sync::entries::{BackendMapValue, FrontendMapKey},
};

fn v6(text: &str) -> Ipv6Addr {
    text.parse().unwrap()
}

#[test]
fn ipv6_services_backends_and_ranges_survive_a_reopen_beside_ipv4_ones() {
    let mut dp = Datapath::load();
    dp.add_service(
        "10.96.0.10".parse().unwrap(),
        80,
        PROTO_TCP,
        1,
        &[("10.244.1.5".parse().unwrap(), 8080)],
    );
    dp.add_service6(
        v6("fd00:10:96::a"),
        53,
        PROTO_UDP,
        2,
        &[(v6("fd00:10:244::5"), 5353), (v6("fd00:10:244::6"), 5353)],
    );
    dp.allow_source(2, v6("fd00:203::"), 32);
    dp.reopen_maps();
    let contents = dp.contents();
    let frontends: Vec<(String, u32)> = contents
        .frontends
        .iter()
        .map(|(key, value)| (frontend_text(key), value.id))
        .collect();
    assert_eq!(
        frontends,
        [
            ("10.96.0.10:80/TCP".to_string(), 1),
            ("[fd00:10:96::a]:53/UDP".to_string(), 2)
        ]
    );
    let key = FrontendMapKey::from(pod_key6(v6("fd00:10:96::a"), 53, PROTO_UDP));
    assert!(contents.frontends.contains_key(&key));
    // Backend ids of both families in one space, each in its family's array.
    let backends: Vec<(u32, IpAddr, bool)> = contents
        .backends
        .iter()
        .map(|(id, b)| (id, b.addr(), matches!(b, BackendMapValue::V6(_))))
        .collect();
    let id = Datapath::backend_id;
    assert_eq!(
        backends,
        [
            (id(1, 0), "10.244.1.5".parse().unwrap(), false),
            (id(2, 0), "fd00:10:244::5".parse().unwrap(), true),
            (id(2, 1), "fd00:10:244::6".parse().unwrap(), true),
        ]
    );
    let ranges: Vec<String> = contents
        .source_ranges
        .iter()
        .map(|r| format!("{} {}", r.frontend_id, r.cidr))
        .collect();
    assert_eq!(ranges, ["2 fd00:203::/32"]);
    assert_eq!(contents.tables[&2].members, [id(2, 0), id(2, 1)]);
    // Gone again through the same store.
    dp.remove_frontend(key);
    dp.remove_backend(id(2, 0));
    let contents = dp.contents();
    assert_eq!(contents.frontends.len(), 1);
    assert_eq!(contents.backends.len(), 2);
}
