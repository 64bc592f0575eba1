//! The harness's own network namespace and the partitions inside it.
//!
//! The test re-runs itself under `unshare -n` (the kernel frees the namespace, with every rule
//! in it, when its last process exits: nothing to clean up on the host, even after a panic).
//! Inside, node N listens on 127.0.0.(10+N) and runs with group id 6000+N; a `nat` rule gives
//! every connection a node opens the source address of that node, so that a rule matching the
//! sending node's group and the receiving node's address cuts one direction of one link, for
//! connections opened either way. Clients and Mosquitto run as root's group on 127.0.0.1 and
//! are never cut off. Peer (Raft) traffic goes through the harness's proxy (`proxy.rs`): node N
//! is reached at 127.0.1.N, and the proxy dials N from 127.0.2.M for a connection node M
//! opened, so a cut also drops what a node sends to either of those addresses.

use std::process::Command;

use anyhow::{bail, Context};

/// Set in the re-run test process: it is inside the namespace.
pub const INSIDE: &str = "MUSTER_NEMESIS_NETNS";
const CHAIN: &str = "NEMESIS";

/// Node `n`'s address (1-based).
pub fn node_ip(n: usize) -> String {
    format!("127.0.0.{}", 10 + n)
}

/// Where the other nodes dial node `n`'s Raft port: its proxy.
pub fn proxy_ip(n: usize) -> String {
    format!("127.0.1.{n}")
}

/// The address the proxy dials from on node `n`'s behalf.
pub fn origin_ip(n: usize) -> String {
    format!("127.0.2.{n}")
}

/// Node `n`'s group id: what the partition rules match on.
pub fn node_gid(n: usize) -> u32 {
    6000 + n as u32
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("run {program} (.ci/run installs iptables and iproute2)"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Inside the namespace: loopback up, one source-address rule per node, an empty chain for
/// partitions.
pub fn setup(nodes: usize) -> anyhow::Result<()> {
    run("ip", &["link", "set", "lo", "up"])?;
    run("iptables", &["-N", CHAIN])?;
    run("iptables", &["-A", "OUTPUT", "-j", CHAIN])?;
    for n in 1..=nodes {
        let gid = node_gid(n).to_string();
        let ip = node_ip(n);
        run(
            "iptables",
            &[
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-m",
                "owner",
                "--gid-owner",
                &gid,
                "-j",
                "SNAT",
                "--to-source",
                &ip,
            ],
        )?;
    }
    Ok(())
}

/// Drops everything node `from` sends to node `to` (one direction): to its own address, to
/// its proxy, and to the proxy's connections made on `to`'s behalf.
pub fn cut(from: usize, to: usize) -> anyhow::Result<()> {
    let gid = node_gid(from).to_string();
    for ip in [node_ip(to), proxy_ip(to), origin_ip(to)] {
        run(
            "iptables",
            &[
                "-A",
                CHAIN,
                "-m",
                "owner",
                "--gid-owner",
                &gid,
                "-d",
                &ip,
                "-j",
                "DROP",
            ],
        )?;
    }
    Ok(())
}

/// Removes every partition; returns how many packets the partition rules dropped.
pub fn heal() -> anyhow::Result<u64> {
    let out = Command::new("iptables")
        .args(["-L", CHAIN, "-v", "-n", "-x"])
        .output()?;
    // Rule lines start with the packet count; the two header lines do not parse.
    let dropped = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    run("iptables", &["-F", CHAIN])?;
    Ok(dropped)
}

/// Whether this process may make a namespace (root, `unshare` and `iptables` present).
pub fn available() -> Result<(), String> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map_err(|e| e.to_string())?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Err("not root: network namespaces and iptables need root".into());
    }
    for tool in ["unshare", "iptables", "ip"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !found {
            return Err(format!("{tool} is not installed (.ci/run installs it)"));
        }
    }
    Ok(())
}

/// Runs test `name` of this test executable again inside a new network namespace, with
/// `--include-ignored` so an opt-in test runs there too; fails when it fails.
pub fn rerun_inside(name: &str) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    // -m too: the full-disk fault mounts a tmpfs, which then vanishes with the run.
    let status = Command::new("unshare")
        .args(["-n", "-m"])
        .arg("--")
        .arg(exe)
        .args([
            name,
            "--exact",
            "--nocapture",
            "--include-ignored",
            "--test-threads",
            "1",
        ])
        .env(INSIDE, "1")
        .status()
        .context("unshare -n")?;
    if !status.success() {
        bail!("the nemesis run inside its namespace failed ({status}); see its output above");
    }
    Ok(())
}
