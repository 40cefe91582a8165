//! How full the pinned maps are, for `kxdp status` and `/metrics`. The
//! kernel keeps no entry count a reader can ask for, so entries are counted
//! by walking keys, up to a cap that keeps the walk short.

use std::path::Path;

use aya::{
    maps::{HashMap, MapData, MapError, MapInfo},
    Pod,
};
use proxy_common::maps::{CtEntry, CtEntry6, FlowKey, FlowKey6};

use super::DataplaneError;

pub const CONNTRACK: &str = "CONNTRACK";
pub const CONNTRACK6: &str = "CONNTRACK6";
/// Connection-tracking entries counted per look (1 µs or so each); past it
/// the count says "at least".
pub const CONNTRACK_COUNT_CAP: u32 = 65_536;

/// Entries found, and whether the walk saw them all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Count {
    pub entries: u32,
    /// False when the walk stopped at its cap.
    pub complete: bool,
}

/// Counts the keys `keys` yields, stopping at `cap`. Under churn (an LRU
/// evicting the key the walk stands on restarts it) the count is approximate.
pub fn count_keys<K: Pod>(
    keys: impl Iterator<Item = Result<K, MapError>>,
    cap: u32,
) -> Result<Count, MapError> {
    let mut entries = 0;
    for key in keys {
        key?;
        if entries == cap {
            return Ok(Count {
                entries,
                complete: false,
            });
        }
        entries += 1;
    }
    Ok(Count {
        entries,
        complete: true,
    })
}

/// `max_entries` of the map pinned as `name` under `pin_path`.
pub fn capacity(pin_path: &Path, name: &'static str) -> Result<u32, DataplaneError> {
    MapInfo::from_pin(pin_path.join(super::maps::pinned_as(name)))
        .map(|info| info.max_entries())
        .map_err(|e| DataplaneError::Map(name, e))
}

/// The pinned connection-tracking tables of both families, read only.
pub struct Conntrack {
    v4: HashMap<MapData, FlowKey, CtEntry>,
    v6: HashMap<MapData, FlowKey6, CtEntry6>,
}

pub(crate) fn open_hash<K: Pod, V: Pod>(
    pin_path: &Path,
    name: &'static str,
) -> Result<HashMap<MapData, K, V>, DataplaneError> {
    MapData::from_pin(pin_path.join(name))
        .and_then(aya::maps::Map::from_map_data)
        .and_then(HashMap::try_from)
        .map_err(|e| DataplaneError::Map(name, e))
}

impl Conntrack {
    pub fn open(pin_path: &Path) -> Result<Self, DataplaneError> {
        Ok(Self {
            v4: open_hash(pin_path, CONNTRACK)?,
            v6: open_hash(pin_path, CONNTRACK6)?,
        })
    }

    /// Each table's entries, up to [`CONNTRACK_COUNT_CAP`] each, by map
    /// name: `CONNTRACK` (IPv4), then `CONNTRACK6`.
    pub fn count(&self) -> Result<[(&'static str, Count); 2], MapError> {
        Ok([
            (CONNTRACK, count_keys(self.v4.keys(), CONNTRACK_COUNT_CAP)?),
            (CONNTRACK6, count_keys(self.v6.keys(), CONNTRACK_COUNT_CAP)?),
        ])
    }
}

/// The IP family a connection-tracking map holds, as metrics label it.
pub fn conntrack_family(map: &str) -> &'static str {
    if map == CONNTRACK6 {
        "ipv6"
    } else {
        "ipv4"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counting_stops_at_the_cap_and_says_so() {
        let keys = |n: u32| (0..n).map(Ok::<u32, MapError>);
        let complete = |entries| Count {
            entries,
            complete: true,
        };
        assert_eq!(count_keys(keys(0), 3).unwrap(), complete(0));
        assert_eq!(count_keys(keys(3), 3).unwrap(), complete(3));
        assert_eq!(
            count_keys(keys(1_000), 3).unwrap(),
            Count {
                entries: 3,
                complete: false
            }
        );
    }
}
