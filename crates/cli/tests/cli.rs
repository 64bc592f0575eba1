//! The binary's own surface. Besides checking it, this file makes `cargo test --workspace`
//! build `target/<profile>/muster`, which the end-to-end tests in `tests/` start.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

fn muster() -> Command {
    Command::new(env!("CARGO_BIN_EXE_muster"))
}

#[test]
fn help_lists_the_commands() {
    let out = muster().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["serve", "job", "device", "group", "devsim"] {
        assert!(text.contains(cmd), "--help does not mention {cmd}: {text}");
    }
}

#[test]
fn a_bad_address_is_a_clear_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let out = muster()
        .args(["serve", "--http-addr", "not-an-address", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("http_addr"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_missing_config_file_is_named() {
    let out = muster()
        .args(["serve", "--config", "/nonexistent/muster.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/muster.toml"));
}

#[test]
fn a_bad_rollout_flag_is_named_before_connecting() {
    // Nothing listens on port 1: an error about the flag proves nothing was sent.
    let out = muster()
        .args(["job", "create", "j", "--method", "reboot", "--group", "g"])
        .args(["--rate-base", "5", "--rate-factor", "1.55"])
        .args(["--rate-increase-after", "notified:10"])
        .args(["--endpoint", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--rate-factor") && err.contains("1.55"),
        "{err}"
    );
    assert!(!err.contains("connect"), "{err}");
}

#[test]
fn auth_sign_names_a_token_file_it_cannot_read() {
    let out = muster()
        .args(["auth", "sign", "--token", "@/nonexistent/admin.credential"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/admin.credential"), "{err}");
}
