//! The benchmark smoke check `cargo xtask test` runs on the report of
//! `cargo xtask bench --quick`: every section is there and filled.

use std::path::Path;

use anyhow::{bail, ensure, Context as _};

/// Section headings every full report has, in order.
const SECTIONS: &[&str] = &[
    "## Headline",
    "## 1. Per-packet cost",
    "## 2. Through a ClusterIP",
    "## 3. Control plane",
    "## 4. Maglev tables",
    "## 5. Packets per second in real traffic",
];

/// Cells some table row of each section must hold, so a part that ran but
/// measured nothing is caught.
const REQUIRED_ROWS: &[(&str, &[&str])] = &[
    (
        "## Headline",
        &[
            "| 1 |",
            "| one TCP stream, Gbit/s, veth offloads off |",
            "| one TCP stream, Gbit/s, veth offloads on |",
            "| ClusterIP established hit",
            "| NodePort new flow, local backend",
            "| NodePort new flow, remote backend",
        ],
    ),
    (
        "## 1. Per-packet cost",
        &[
            "| floor (empty XDP)",
            "| established",
            "| new flow",
            "| reply",
            "| IPv6 established",
            "| IPv6 reply",
            "| monitor listening: established",
            "| floor (empty XDP), one repetition per call",
            "| NodePort new flow, local backend",
            "| NodePort new flow, remote backend",
            "| IPv6 NodePort established, local backend",
            "| IPv6 NodePort new flow, remote backend",
        ],
    ),
    (
        "## 2. Through a ClusterIP",
        &[
            "| no proxy (pod IP) |",
            "| kxdp |",
            "| kube-proxy iptables (nft backend) |",
            "| kube-proxy iptables (legacy) |",
            "| kube-proxy nftables |",
        ],
    ),
    (
        "## 3. Control plane",
        &[
            "| kxdp (pipeline → maps)",
            "| kube-proxy iptables",
            "| kube-proxy nftables",
        ],
    ),
    (
        "## 4. Maglev tables",
        &[
            "| built in userspace |",
            "| kernel memory",
            "| one frontend's table rebuilt and live, 1000 backends",
            "| slots moved when 1 of 1000 backends goes",
        ],
    ),
    (
        "## 5. Packets per second in real traffic",
        &[
            "| NodePort established, remote backend | kxdp |",
            "| NodePort established, local backend | empty program |",
            "| NodePort new flows, local backend | no program |",
            "| ClusterIP established, from a pod | kxdp |",
            "| ClusterIP new flows, from a pod | empty program |",
        ],
    ),
];

/// The text of section `heading`: up to the next `## ` heading.
fn section<'a>(report: &'a str, heading: &str) -> Option<&'a str> {
    let start = report.find(heading)?;
    let body = &report[start + heading.len()..];
    let end = body.find("\n## ").map_or(body.len(), |i| i + 1);
    Some(&body[..end])
}

/// Checks the report text; `dir` is where its figures must be.
pub fn check(report: &str, dir: &Path) -> anyhow::Result<()> {
    for heading in SECTIONS {
        let body = section(report, heading).with_context(|| format!("no section {heading:?}"))?;
        let rows = body
            .lines()
            .filter(|l| l.starts_with('|') && !l.starts_with("|---") && !l.starts_with("| ---"))
            .count();
        // A header row and at least one row of figures.
        ensure!(rows >= 2, "section {heading:?} has no table rows");
    }
    for (heading, needles) in REQUIRED_ROWS {
        let body = section(report, heading).expect("checked above");
        for needle in *needles {
            ensure!(
                body.lines()
                    .any(|l| l.starts_with('|') && l.contains(needle)),
                "section {heading:?} has no row with {needle:?}"
            );
        }
    }
    for bad in ["NaN", "inf |", "| – | – |"] {
        if let Some(line) = report.lines().find(|l| l.contains(bad)) {
            bail!("the report has an unfilled figure ({bad:?}): {line}");
        }
    }
    let figures: Vec<&str> = report
        .lines()
        .filter_map(|l| l.strip_prefix("![")?.split_once("](")?.1.strip_suffix(')'))
        .collect();
    ensure!(
        figures.len() >= 4,
        "the report shows {} figures, expected 4",
        figures.len()
    );
    for file in figures {
        let svg = std::fs::read_to_string(dir.join(file))
            .with_context(|| format!("figure {file} is missing"))?;
        ensure!(
            svg.contains("<svg") && svg.contains("<circle"),
            "figure {file} has no data points"
        );
    }
    Ok(())
}

pub fn check_file(path: &Path) -> anyhow::Result<()> {
    let report =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    check(&report, dir).with_context(|| format!("benchmark report {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled() -> String {
        "# kxdp benchmark report\n\n## Headline\n\n| N other Services | kxdp |\n|---:|---:|\n| 1 | 7000 (0.99×) |\n\
         | one TCP stream, Gbit/s, veth offloads off | 4.1 |\n| one TCP stream, Gbit/s, veth offloads on | 11 |\n\n| target | measured | met? |\n|---|---|---|\n\
         | ClusterIP established hit ≤ 3× | 5.4× | **no** |\n| NodePort new flow, local backend ≤ 4× | 14× | **no** |\n\
         | NodePort new flow, remote backend ≤ 5× | 16× | **no** |\n\n\
         ## 1. Per-packet cost of the pod and NIC programs\n\n| path | ns |\n|---|---:|\n| floor (empty XDP) | 26 |\n\
         | established (CT hit) | 170 |\n| new flow (x) | 900 |\n| reply (y) | 140 |\n\
         | IPv6 established (CT hit) | 190 |\n| IPv6 reply (y) | 150 |\n\
         | monitor listening: established (CT hit) | 171 |\n\
         | floor (empty XDP), one repetition per call | 70 |\n| NodePort new flow, local backend (z) | 1000 |\n\
         | NodePort new flow, remote backend (w) | 1100 |\n\
         | IPv6 NodePort established, local backend (v) | 180 |\n\
         | IPv6 NodePort new flow, remote backend (w) | 1150 |\n\n\
         ## 2. Through a ClusterIP while N other Services exist\n\n| other | path | conn/s |\n|---:|---|---:|\n\
         | 1 | no proxy (pod IP) | 1 |\n| 1 | kxdp | 1 |\n| 1 | kube-proxy iptables (nft backend) | 1 |\n\
         | 1 | kube-proxy iptables (legacy) | 1 |\n| 1 | kube-proxy nftables | 1 |\n\n\
         ![a](a.svg)\n\n![b](b.svg)\n\n\
         ## 3. Control plane: programming Services\n\n| services | by |\n|---|---|\n\
         | kxdp (pipeline → maps) | 36 |\n| kube-proxy iptables (nft backend) | 744 |\n| kube-proxy nftables | 1289 |\n\n\
         ![c](c.svg)\n\n![d](d.svg)\n\n\
         ## 4. Maglev tables\n\n| Maglev | value |\n|---|---:|\n| built in userspace | 1002 ms |\n\
         | kernel memory of the arena and its index (fixed at load) | 64.5 MiB |\n\
         | one frontend's table rebuilt and live, 1000 backends, in place (M = 16381), p50 / p99 | 3025 / 10596 µs |\n\
         | slots moved when 1 of 1000 backends goes (M = 16381) | 0.0064 (1/N = 0.0010) |\n\n\
         ## 5. Packets per second in real traffic\n\n| hook | path | program | Mpps |\n|---|---|---|---:|\n\
         | XDP, NIC | NodePort established, remote backend | kxdp | 0.4 |\n\
         | XDP, NIC | NodePort established, local backend | empty program | 0.3 |\n\
         | XDP, NIC | NodePort new flows, local backend | no program | 0.3 |\n\
         | tc, pod interface | ClusterIP established, from a pod | kxdp | 0.3 |\n\
         | tc, pod interface | ClusterIP new flows, from a pod | empty program | 0.2 |\n"
            .to_string()
    }

    /// A directory of figures of its own per test (they run in parallel),
    /// removed when dropped, a failing test's too.
    struct Figures(std::path::PathBuf);

    impl std::ops::Deref for Figures {
        type Target = Path;

        fn deref(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Figures {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn figures_dir(test: &str) -> Figures {
        let dir =
            std::env::temp_dir().join(format!("kxdp-bench-check-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        for f in ["a.svg", "b.svg", "c.svg", "d.svg"] {
            std::fs::write(dir.join(f), "<svg><circle/></svg>").expect("write");
        }
        Figures(dir)
    }

    #[test]
    fn a_filled_report_passes() {
        check(&filled(), &figures_dir("a_filled_report_passes")).expect("filled report");
    }

    #[test]
    fn the_report_in_the_repository_passes() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/bench/REPORT.md");
        check_file(&path).expect("docs/bench/REPORT.md is complete");
    }

    #[test]
    fn a_missing_section_fails() {
        let report = filled().replace("## 3. Control plane", "## 3. Something else");
        let error = check(&report, &figures_dir("a_missing_section_fails"))
            .expect_err("no control plane")
            .to_string();
        assert!(error.contains("Control plane"), "{error}");
    }

    #[test]
    fn a_missing_proxy_row_fails() {
        let report = filled().replace("| 1 | kube-proxy iptables (legacy) | 1 |\n", "");
        let error = check(&report, &figures_dir("a_missing_proxy_row_fails"))
            .expect_err("no legacy row")
            .to_string();
        assert!(error.contains("legacy"), "{error}");
    }

    #[test]
    fn an_empty_table_fails() {
        let rows = filled();
        let start = rows.find("| floor (empty XDP) | 26 |").expect("first row");
        let end = rows.find("\n\n## 2.").expect("section end");
        let report = format!("{}{}", &rows[..start], &rows[end + 1..]);
        assert!(check(&report, &figures_dir("an_empty_table_fails")).is_err());
    }

    #[test]
    fn a_missing_figure_fails() {
        let dir = figures_dir("a_missing_figure_fails");
        std::fs::remove_file(dir.join("c.svg")).expect("rm");
        let error = check(&filled(), &dir).expect_err("no c.svg").to_string();
        assert!(error.contains("c.svg"), "{error}");
    }

    #[test]
    fn an_unmeasured_value_fails() {
        let report = filled().replace("| 1 | 7000 (0.99×) |", "| 1 | NaN |");
        assert!(check(&report, &figures_dir("an_unmeasured_value_fails")).is_err());
    }
}
