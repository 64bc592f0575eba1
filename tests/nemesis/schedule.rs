//! The nemesis's seeded schedule: which fault, on which node, when, for how long. Pure, so the
//! same seed replays the same schedule (print it, rerun with `MUSTER_NEMESIS_SEED`).

use std::time::Duration;

/// SplitMix64: small, seedable, good enough to pick faults (no dependency for it).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in `lo..=hi` milliseconds.
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

/// One fault. Nodes are 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// Node `n` is cut off from both others, both ways (a minority of one).
    Isolate(usize),
    /// Whichever node leads when the fault starts is cut off.
    IsolateLeader,
    /// Two nodes cannot reach each other; the third reaches both (a bridge).
    Bridge(usize),
    /// `from` cannot send to `to`; the other way works.
    OneWay { from: usize, to: usize },
    /// `kill -9`, restarted when the fault ends.
    Kill(usize),
    /// SIGSTOP, SIGCONT when the fault ends.
    Pause(usize),
    /// Restarted with its command clock `ms` milliseconds off; restarted without at the end.
    Skew { node: usize, ms: i64 },
    /// Every chunk of the node's peer links held `ms` (plus up to as much again) in the proxy.
    Delay { node: usize, ms: u64 },
    /// The proxy cuts the node's peer connections mid-chunk, `per_mille` of chunks.
    Lossy { node: usize, per_mille: u64 },
    /// The node's data directory (a tmpfs of its own, always the last node's) filled with a
    /// ballast file until `leave_mib` MiB are free (0: not a byte), deleted at the end.
    DiskFull { node: usize, leave_mib: u64 },
    /// Restarted with the store's crash point `point` armed for its `nth` pass
    /// (`MUSTER_TEST_CRASH_AT`); the workload drives it there and it aborts, or the fault ends
    /// first; either way it is restarted without. `leader`: whichever node leads when the fault
    /// starts (`node` is then resolved). For a snapshot install point the node is also cut off
    /// for most of the fault (held longer after the first round of kinds), so that it may fall
    /// behind far enough to need one.
    CrashPoint {
        node: usize,
        leader: bool,
        point: &'static str,
        nth: u32,
    },
}

impl Fault {
    /// A short name, for counting faults by kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Isolate(_) => "isolate",
            Fault::IsolateLeader => "isolate-leader",
            Fault::Bridge(_) => "bridge",
            Fault::OneWay { .. } => "one-way",
            Fault::Kill(_) => "kill-9",
            Fault::Pause(_) => "sigstop",
            Fault::Skew { .. } => "clock-skew",
            Fault::Delay { .. } => "delay",
            Fault::Lossy { .. } => "drop",
            Fault::DiskFull { .. } => "disk-full",
            Fault::CrashPoint { .. } => "crash-point",
        }
    }

    /// A crash point passed only while a snapshot from the leader is installed: the node must
    /// first fall behind (it is cut off for most of the fault).
    pub fn needs_lag(&self) -> bool {
        use muster_store::crashpoint as cp;
        matches!(self, Fault::CrashPoint { point, .. }
            if *point == cp::INSTALL_TREES_LOADED || *point == cp::INSTALL_META_WRITTEN)
    }

    /// Every kind, for reports.
    pub const KINDS: [&'static str; KINDS] = [
        "isolate",
        "isolate-leader",
        "bridge",
        "one-way",
        "kill-9",
        "sigstop",
        "clock-skew",
        "delay",
        "drop",
        "disk-full",
        "crash-point",
    ];
}

/// How many kinds of fault there are.
const KINDS: usize = 11;

/// A fault held for `hold`, after `quiet` without one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub quiet: Duration,
    pub fault: Fault,
    pub hold: Duration,
}

/// Steps filling about `total` for a cluster of `nodes`, from `seed`.
pub fn schedule(seed: u64, total: Duration, nodes: usize) -> Vec<Step> {
    let mut rng = Rng::new(seed);
    let mut steps = Vec::new();
    let mut used = Duration::ZERO;
    let n = nodes as u64;
    // The first faults are every kind once, in a seeded order and held briefly, so that a
    // short run covers them all; after that each is drawn at random.
    let mut first: Vec<u64> = (0..KINDS as u64).collect();
    for i in (1..first.len()).rev() {
        first.swap(i, rng.below(i as u64 + 1) as usize);
    }
    loop {
        let (quiet, mut hold) = if steps.len() < KINDS {
            (rng.millis(300, 800), rng.millis(1_500, 2_600))
        } else {
            (rng.millis(500, 2_000), rng.millis(1_500, 5_000))
        };
        let node = 1 + rng.below(n) as usize;
        let other = 1 + ((node as u64 + rng.below(n - 1)) % n) as usize;
        let pick = first
            .get(steps.len())
            .copied()
            .unwrap_or_else(|| rng.below(KINDS as u64));
        let fault = match pick {
            0 => Fault::Isolate(node),
            1 => Fault::IsolateLeader,
            2 => Fault::Bridge(node),
            3 => Fault::OneWay {
                from: node,
                to: other,
            },
            4 => Fault::Kill(node),
            5 => Fault::Pause(node),
            7 => Fault::Delay {
                node,
                ms: 20 + rng.below(400),
            },
            8 => Fault::Lossy {
                node,
                per_mille: 5 + rng.below(100),
            },
            9 => Fault::DiskFull {
                node: nodes,
                leave_mib: [0, 4][rng.below(2) as usize],
            },
            10 => {
                use muster_store::crashpoint as cp;
                // The first round's fault is short: the point every apply passes (so CI's run
                // reaches one); after that any point.
                let point = if steps.len() < KINDS {
                    cp::APPLY_EVENTS_WRITTEN
                } else {
                    cp::ALL[rng.below(cp::ALL.len() as u64) as usize]
                };
                // Applies pass their points many times a second; the others once in a while.
                let nth = if point == cp::APPLY_EVENTS_WRITTEN {
                    1 + rng.below(30) as u32
                } else {
                    1
                };
                Fault::CrashPoint {
                    node,
                    leader: rng.below(3) == 0,
                    point,
                    nth,
                }
            }
            _ => {
                let ms = rng.below(120_001) as i64 - 60_000;
                Fault::Skew { node, ms }
            }
        };
        if steps.len() >= KINDS && fault.needs_lag() {
            // Long enough to fall behind the log the leader keeps behind its last snapshot
            // (100 entries in the nemesis: `MUSTER_TEST_LOG_KEEP`), and to be sent a snapshot.
            hold = rng.millis(8_000, 15_000);
        }
        if used + quiet + hold > total {
            return steps;
        }
        used += quiet + hold;
        steps.push(Step { quiet, fault, hold });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_schedule_and_another_seed_another() {
        let a = schedule(7, Duration::from_secs(120), 3);
        assert_eq!(a, schedule(7, Duration::from_secs(120), 3));
        assert_ne!(a, schedule(8, Duration::from_secs(120), 3));
    }

    #[test]
    fn the_first_faults_are_every_kind_once_within_forty_seconds() {
        for seed in 0..50 {
            let steps = schedule(seed, Duration::from_secs(40), 3);
            let kinds: std::collections::BTreeSet<_> =
                steps.iter().take(KINDS).map(|s| s.fault.kind()).collect();
            assert_eq!(kinds.len(), KINDS, "seed {seed}: {steps:?}");
        }
    }

    #[test]
    fn a_long_schedule_fits_its_time_and_has_every_kind_on_valid_nodes() {
        let total = Duration::from_secs(600);
        for nodes in [3, 5] {
            let steps = schedule(1, total, nodes);
            let used: Duration = steps.iter().map(|s| s.quiet + s.hold).sum();
            assert!(used <= total);
            for kind in Fault::KINDS {
                assert!(steps.iter().any(|s| s.fault.kind() == kind), "{kind}");
            }
            let valid = |n: usize| (1..=nodes).contains(&n);
            for s in &steps {
                match s.fault {
                    Fault::OneWay { from, to } => assert!(from != to && valid(from) && valid(to)),
                    Fault::Isolate(n) | Fault::Bridge(n) | Fault::Kill(n) | Fault::Pause(n) => {
                        assert!(valid(n))
                    }
                    Fault::Skew { node, ms } => assert!(valid(node) && ms.abs() <= 60_000),
                    Fault::Delay { node, ms } => assert!(valid(node) && ms < 500),
                    Fault::Lossy { node, per_mille } => {
                        assert!(valid(node) && per_mille > 0 && per_mille < 1000)
                    }
                    Fault::DiskFull { node, .. } => assert_eq!(node, nodes),
                    Fault::CrashPoint {
                        node, point, nth, ..
                    } => assert!(
                        valid(node)
                            && muster_store::crashpoint::ALL.contains(&point)
                            && (1..=30).contains(&nth)
                    ),
                    Fault::IsolateLeader => {}
                }
            }
            // After the first round, an install point's fault is long enough to fall behind.
            for s in steps.iter().skip(KINDS).filter(|s| s.fault.needs_lag()) {
                assert!(s.hold >= Duration::from_secs(8), "{s:?}");
            }
        }
    }
}
