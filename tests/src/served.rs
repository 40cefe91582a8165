//! What an agent's pinned maps serve, read afresh as the datapath reads
//! them: each frontend with the backends its Maglev table names, and every
//! frontend the datapath could not serve whole (a table missing, or naming
//! a backend id with no backend).
//! The fault suites check these after every kind of interruption.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::Path,
};

use proxy_userspace::{
    dataplane::maps::BpfMaps,
    frontend_text::{frontend_text, scope_label},
};

/// One frontend: its table size as the frontend holds it (0: no backend)
/// and its backends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServedFrontend {
    pub table_size: u32,
    pub backends: BTreeSet<IpAddr>,
}

/// A frontend's address, port and scope (`pod`, `node`: `scope_label`).
pub type FrontendId = (IpAddr, u16, &'static str);

#[derive(Debug, Default)]
pub struct Served {
    pub frontends: BTreeMap<FrontendId, ServedFrontend>,
    /// Frontends the datapath cannot serve whole (not in `frontends`), as
    /// `ADDR:PORT/PROTO: why`.
    pub broken: BTreeMap<FrontendId, String>,
}

/// Reads the maps pinned under `pin_path` (opened afresh: the Maglev
/// tables are decoded from the arena as it is now). A reading is no
/// snapshot: the agent may move a table to a new block, and reuse the old
/// one once the datapath is done with it, between the reading of the index
/// and of the blocks. So a frontend counts as broken only if it is in every
/// one of five readings, 10 ms apart.
pub fn read_served(pin_path: &Path) -> anyhow::Result<Served> {
    let mut served = read_once(pin_path)?;
    for _ in 0..4 {
        if served.broken.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
        let mut again = read_once(pin_path)?;
        // Broken before and whole now: as it is now.
        served
            .broken
            .retain(|id, _| match again.frontends.remove(id) {
                Some(frontend) => {
                    served.frontends.insert(*id, frontend);
                    false
                }
                None => again.broken.contains_key(id),
            });
    }
    Ok(served)
}

fn read_once(pin_path: &Path) -> anyhow::Result<Served> {
    let maps = BpfMaps::open_pinned(pin_path)?;
    let contents = maps.read_contents()?;
    let mut served = Served::default();
    for (key, value) in &contents.frontends {
        let name = frontend_text(key);
        let id = (key.addr(), key.port(), scope_label(key));
        let mut backends = BTreeSet::new();
        // The datapath reads a table's size off the table; the frontend's
        // says only whether it has one.
        if value.table_size > 0 {
            let Some(table) = contents.tables.get(&value.id).filter(|t| t.size > 0) else {
                served.broken.insert(id, format!("{name}: no Maglev table"));
                continue;
            };
            for member in &table.members {
                // A backend the agent wrote after the backends were read
                // (it writes them before the tables naming them) is read
                // again where it is now.
                let backend = match contents.backends.get(*member) {
                    Some(backend) => Some(backend),
                    None => maps.backend(*member, key.addr().is_ipv6())?,
                };
                match backend {
                    Some(backend) => {
                        backends.insert(backend.addr());
                    }
                    None => {
                        let why = format!("{name}: backend id {member} is empty");
                        served.broken.insert(id, why);
                    }
                }
            }
        }
        if served.broken.contains_key(&id) {
            continue;
        }
        served.frontends.insert(
            id,
            ServedFrontend {
                table_size: value.table_size,
                backends,
            },
        );
    }
    Ok(served)
}
