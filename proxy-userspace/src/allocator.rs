//! The agent's allocator settings: mimalloc, tuned so the heap a full sync
//! swells (decoding, Maglev builds) goes back to the system as soon as it
//! is freed. The `kxdp` binary runs [`tune`] among its constructors; the
//! bench does too, so the pipeline it times allocates as the agent does.

/// Options of mimalloc 3 by their place in `mi_option_t` (mimalloc.h of
/// the vendored sources, which `libmimalloc-sys` does not name).
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
const MI_OPTION_ALLOW_THP: libmimalloc_sys::mi_option_t = 43;

/// Commits arena memory only as it is used, purges freed pages at once
/// instead of after a delay (which only passes on a later call into the
/// allocator, and an idle agent makes none), and asks for no transparent
/// huge pages (a 2 MiB page stays resident for one live object). To be run
/// among the program's constructors (an `.init_array` entry): the first
/// arena, made at the runtime's first allocation before `main`, must be
/// made this way too. Measured at 30,000 Services from manifests: resident
/// 75 MiB (peak 135 MiB); with the defaults 154 MiB (peak 180 MiB), set
/// from `main` 82 MiB (peak 144 MiB), glibc 118 MiB (peak 147 MiB).
pub extern "C" fn tune() {
    // SAFETY: sets three of the allocator's options; no memory is touched.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0);
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0);
        libmimalloc_sys::mi_option_set(MI_OPTION_ALLOW_THP, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The options' places in the vendored `mimalloc.h`'s `mi_option_t`.
    #[test]
    fn the_allocator_options_are_the_ones_named() {
        let header =
            std::fs::read_to_string(concat!(env!("KXDP_MIMALLOC_INCLUDE_DIR"), "/mimalloc.h"))
                .unwrap();
        let start = header.find("typedef enum mi_option_e {").unwrap();
        let end = start + header[start..].find("} mi_option_t;").unwrap();
        // One option a line, in order, until the first aliased one.
        let options: Vec<&str> = header[start..end]
            .lines()
            .skip(1)
            .map(|line| line.split("//").next().unwrap_or("").trim())
            .filter(|line| line.starts_with("mi_option_") || line.starts_with("_mi_option_last"))
            .map_while(|line| line.strip_suffix(','))
            .collect();
        let place = |name: &str| options.iter().position(|o| *o == name).unwrap() as i32;
        assert_eq!(
            place("mi_option_arena_eager_commit"),
            MI_OPTION_ARENA_EAGER_COMMIT
        );
        assert_eq!(place("mi_option_purge_delay"), MI_OPTION_PURGE_DELAY);
        assert_eq!(place("mi_option_allow_thp"), MI_OPTION_ALLOW_THP);
    }
}
