//! The kernel feature probe (`dataplane::probe`): on a kernel of the VM
//! matrix it finds exactly what that kernel line lacks (`cargo xtask
//! vm-test` names it in `KXDP_EXPECT_MISSING`); on any kernel, its answers
//! agree with the functions the kernel was built with.

use kxdp_testbed::privileged::require_root;
use proxy_userspace::{dataplane::probe, features::Feature};

fn kernel_has_function(symbols: &str, name: &str) -> bool {
    symbols
        .lines()
        .any(|l| l.split_whitespace().nth(2) == Some(name))
}

#[test]
fn the_probe_finds_what_this_kernel_lacks() {
    require_root("the kernel probe");
    let (probed, loadout) = probe::this_kernel(false).expect("probing the kernel");
    let missing: Vec<&str> = probed.missing().map(Feature::name).collect();
    eprintln!("missing here: {missing:?}");
    if let Ok(expected) = std::env::var("KXDP_EXPECT_MISSING") {
        assert_eq!(missing.join(","), expected);
    }
    let symbols = std::fs::read_to_string("/proc/kallsyms").expect("/proc/kallsyms");
    assert_eq!(
        probed.has(Feature::Tcx),
        kernel_has_function(&symbols, "tcx_link_attach")
    );
    assert_eq!(
        probed.has(Feature::KtimeCoarse),
        kernel_has_function(&symbols, "bpf_ktime_get_coarse_ns")
    );
    assert_eq!(loadout.classic_tc, !probed.has(Feature::Tcx));
}

/// Kernels before 5.14 have no `SO_NETNS_COOKIE`: the agent learns its
/// network namespace's cookie from a program on its cgroup that records a
/// marker socket. Agents learning at once from several namespaces of one
/// cgroup (as the test suites run them) each get their own namespace's.
#[test]
fn agents_learning_their_netns_cookie_at_once_each_get_their_own() {
    use proxy_userspace::dataplane::netns_cookie;
    require_root("learning the netns cookie");
    const LEARNERS: usize = 6;
    const ROUNDS: usize = 10;
    let barrier = std::sync::Barrier::new(LEARNERS);
    let learnt: Vec<Vec<u64>> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..LEARNERS)
            .map(|_| {
                scope.spawn(|| {
                    // SAFETY: moves only this thread into a new network
                    // namespace, which goes when the thread ends.
                    assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
                    let own = netns_cookie::from_socket_option().ok();
                    barrier.wait();
                    (0..ROUNDS)
                        .map(|_| {
                            let cookie = netns_cookie::learn().expect("learning the cookie");
                            if let Some(own) = own {
                                assert_eq!(cookie, own, "another namespace's cookie");
                            }
                            cookie
                        })
                        .collect()
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    for (i, cookies) in learnt.iter().enumerate() {
        assert!(
            cookies.iter().all(|c| *c == cookies[0]),
            "learner {i} learnt several cookies: {cookies:?}"
        );
        for other in &learnt[i + 1..] {
            assert_ne!(cookies[0], other[0], "two namespaces, one cookie");
        }
    }
}
