//! `kxdp unload`: the only way to take the datapath down. Unpinning the links
//! detaches the programs; unpinning the maps frees them.

use std::{fs, io, path::Path};

use anyhow::Context as _;

use crate::dataplane::{interfaces, maps, nic, sockets, LINKS_DIR};

fn remove_if_present(path: &Path, remove: fn(&Path) -> io::Result<()>) -> io::Result<bool> {
    match remove(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

pub fn run(pin_path: &Path) -> anyhow::Result<()> {
    if !pin_path.exists() {
        println!("nothing to unload: {} does not exist", pin_path.display());
        return Ok(());
    }
    let links_dir = pin_path.join(LINKS_DIR);
    let detached = |what: io::Result<usize>| {
        what.with_context(|| format!("detaching links under {}", links_dir.display()))
    };
    let links = detached(interfaces::detach_all(&links_dir))?
        + detached(nic::detach_all(&links_dir))?
        + detached(sockets::detach_all(&links_dir))?;
    let mut removed_maps = 0;
    let names = maps::ALL
        .iter()
        .map(|m| m.name)
        .chain(maps::RETIRED)
        .chain(maps::RENAMED.iter().map(|(old, _)| *old));
    for name in names {
        let path = pin_path.join(name);
        if remove_if_present(&path, |p| fs::remove_file(p))
            .with_context(|| format!("removing {}", path.display()))?
        {
            removed_maps += 1;
        }
    }
    remove_if_present(&links_dir, |p| fs::remove_dir(p))
        .with_context(|| format!("removing {}", links_dir.display()))?;
    fs::remove_dir(pin_path)
        .with_context(|| format!("removing {} (unexpected files left?)", pin_path.display()))?;
    println!(
        "detached {links} links, removed {removed_maps} maps and {}",
        pin_path.display()
    );
    Ok(())
}
