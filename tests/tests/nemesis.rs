//! The nemesis (issue 18): three real nodes, Mosquitto and devsim in a network namespace of the
//! test's own, concurrent clients, and a seeded schedule of faults (partitions: one node cut
//! off, the leader cut off, a bridge, one way; kill -9 and restart; SIGSTOP and SIGCONT; a
//! node's command clock skewed by up to a minute; slow and lossy peer links through the
//! harness's proxy; a full disk; a node restarted with one of the store's crash points armed,
//! which the workload drives it into). Afterwards every node's state, event log and audit chain is
//! checked against the recorded history (`muster_tests::nemesis::history`), which prints a
//! counterexample when a rule fails.
//!
//! - `nemesis_short`: CI's bounded run, about 40 s of faults (every kind once) with seed 18
//!   (`MUSTER_NEMESIS_SEED` changes it);
//! - `nemesis_soak` (opt-in): `MUSTER_NEMESIS_SECS=600 MUSTER_NEMESIS_NODES=5 cargo test -p
//!   muster-tests --test nemesis -- --ignored nemesis_soak --nocapture` (3 nodes by default;
//!   `MUSTER_NEMESIS_LOG_KEEP=100` puts snapshot installs and their crash points in reach, and
//!   finds the node that does not start again after a kill during an install: not fixed yet).
//!
//! Each test re-runs itself under `unshare -n -m` (root only: CI runs as root; elsewhere it is
//! skipped with a message, and fails under `CI`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use muster_tests::nemesis::{self, net, Config};

fn seed() -> u64 {
    std::env::var("MUSTER_NEMESIS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(18)
}

/// Runs `config` inside a namespace of its own (re-running test `name` there), and fails with
/// the checker's counterexample if the history does not hold.
fn nemesis_test(name: &str, config: Config) {
    if std::env::var_os(net::INSIDE).is_none() {
        if let Err(why) = net::available() {
            if std::env::var_os("CI").is_some() {
                panic!("the nemesis needs root, unshare and iptables: {why}");
            }
            eprintln!("skipped: {why}");
            return;
        }
        net::rerun_inside(name).unwrap();
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let out = match rt.block_on(nemesis::run(config)) {
        Ok(out) => out,
        Err(e) => {
            // The error carries the nodes' logs: long, so it goes to a file too.
            let path = std::env::temp_dir().join(format!("muster-nemesis-{name}.error"));
            let _ = std::fs::write(&path, format!("{e:?}"));
            panic!(
                "the nemesis run failed ({} has it all): {e:?}",
                path.display()
            );
        }
    };
    let r = &out.report;
    eprintln!(
        "nemesis: {:?} in {:.0?}; faults {:?}; effects {:?}; crash points (armed, reached) {:?}",
        name,
        started.elapsed(),
        out.faults,
        out.effects,
        out.points
    );
    eprintln!("{r}");
    if !r.is_valid() {
        let path = std::env::temp_dir().join(format!("muster-nemesis-{name}.history"));
        nemesis::save_history(&path, &out.history).unwrap();
        panic!(
            "the history does not hold (the whole history is in {}):\n{r}\nschedule: {:#?}\n{}",
            path.display(),
            out.schedule,
            out.logs
        );
    }
    assert!(r.acknowledged > 0, "no operation was acknowledged: {r}");
    let unexpected = out.effects.get("exits-unexpected-restarted");
    assert!(
        unexpected.is_none(),
        "{unexpected:?} nodes exited on their own, not on a full disk (their logs end the run's \
         output above):\n{}",
        out.logs
    );
    assert!(!out.faults.is_empty(), "no fault was injected");
}

#[test]
fn nemesis_short() {
    nemesis_test(
        "nemesis_short",
        Config {
            seed: seed(),
            nodes: 3,
            duration: Duration::from_secs(40),
            clients: 4,
            sim_devices: 20,
            twin_devices: 4,
            log_keep: None,
        },
    );
}

#[test]
#[ignore = "a long soak: MUSTER_NEMESIS_SECS=600 cargo test -p muster-tests --test nemesis -- --ignored nemesis_soak"]
fn nemesis_soak() {
    let secs = std::env::var("MUSTER_NEMESIS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let nodes = match std::env::var("MUSTER_NEMESIS_NODES").as_deref() {
        Ok("5") => 5,
        Ok("3") | Err(_) => 3,
        Ok(other) => panic!("MUSTER_NEMESIS_NODES is 3 or 5, not {other}"),
    };
    nemesis_test(
        "nemesis_soak",
        Config {
            seed: seed(),
            nodes,
            duration: Duration::from_secs(secs),
            clients: 6,
            sim_devices: 50,
            twin_devices: 6,
            log_keep: std::env::var("MUSTER_NEMESIS_LOG_KEEP")
                .ok()
                .and_then(|s| s.parse().ok()),
        },
    );
}
