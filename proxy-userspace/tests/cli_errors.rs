//! The read-only commands' bad input: one line on stderr, exit code 1,
//! nothing on stdout. Needs no datapath (and no root): each case fails
//! before or at opening the pins.

use std::process::Command;

fn kxdp(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kxdp"))
        .args(args)
        .output()
        .expect("run kxdp");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_one_line_error(args: &[&str], says: &str) {
    let (code, stdout, stderr) = kxdp(args);
    assert_eq!(code, 1, "{args:?}: {stderr}");
    assert!(stdout.is_empty(), "{args:?}: {stdout}");
    assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
    assert!(stderr.starts_with("kxdp: "), "{args:?}: {stderr}");
    assert!(stderr.contains(says), "{args:?}: {stderr}");
}

#[test]
fn a_malformed_address_is_named() {
    let pins = ["--pin-path", "/nonexistent/kxdp"];
    for (args, says) in [
        (["10.0.0", "10.96.0.10:80"], "'10.0.0' is not a source"),
        (
            ["10.0.0.2", "10.96.0.10"],
            "'10.96.0.10' is not a destination",
        ),
        (
            ["10.0.0.2", "10.96.0.10:80/icmp"],
            "'10.96.0.10:80/icmp' is not a destination",
        ),
        (["10.0.0.2", "[fd00::a]:80"], "different families"),
    ] {
        let mut all = vec!["trace"];
        all.extend(args);
        all.extend(pins);
        assert_one_line_error(&all, says);
    }
}

#[test]
fn a_monitor_reason_no_event_has_is_named() {
    assert_one_line_error(
        &[
            "monitor",
            "--reason",
            "bogus",
            "--pin-path",
            "/nonexistent/kxdp",
        ],
        "--reason bogus: no event has it",
    );
}

#[test]
fn a_pin_path_without_a_datapath_is_named() {
    for command in [
        vec!["services"],
        vec!["services", "web", "-n", "shop"],
        vec!["trace", "10.0.0.2:40000", "10.96.0.10:80"],
        vec!["monitor", "--count", "1"],
    ] {
        let mut args = command.clone();
        args.extend(["--pin-path", "/nonexistent/kxdp"]);
        assert_one_line_error(
            &args,
            "no kxdp maps under /nonexistent/kxdp (is the agent loaded?)",
        );
    }
}
