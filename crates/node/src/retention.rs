//! Retention on the leader: `[retention]` in the node's settings, and the loop that proposes
//! `Command::ApplyRetention` when `muster_domain::retention_due` says a finished job is past a
//! limit. What is dropped is decided in the core from the command's leader-stamped time, so every
//! replica and every replay agree; this loop only decides *when* to ask.

use std::time::Duration;

use muster_cluster::{now, Cluster};
use muster_domain::{retention_due, Command, Retention, RetentionDue};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::NodeError;

/// `[retention]`: how long finished jobs keep their per-device detail, and themselves, counted
/// from when they ended. Durations like `30d`, `12h`, `15m`, `90s`, `500ms`; absent: keep forever.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// After this, a finished job's device list is dropped (its summary stays). IoT Hub: `30d`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_jobs: Option<String>,
    /// After this, a finished job is removed altogether (its events stay in the log).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jobs: Option<String>,
}

impl RetentionConfig {
    /// The limits in milliseconds, or an error naming the setting and what it accepts.
    pub fn limits(&self) -> Result<Retention, NodeError> {
        let parse = |name: &str, v: &Option<String>| {
            v.as_deref()
                .map(|s| {
                    parse_duration_ms(s).ok_or_else(|| {
                        NodeError::Config(format!(
                            "retention.{name}: `{s}` is not a duration; write a positive number with a unit: ms, s, m, h or d (e.g. 30d, 12h)"
                        ))
                    })
                })
                .transpose()
        };
        Ok(Retention {
            finished_jobs_ms: parse("finished_jobs", &self.finished_jobs)?,
            jobs_ms: parse("jobs", &self.jobs)?,
        })
    }
}

/// `30d`, `12h`, `15m`, `90s`, `500ms` in milliseconds; `None` for anything else, zero included.
pub fn parse_duration_ms(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let per = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(per).filter(|ms| *ms > 0)
}

/// While this node leads: proposes `ApplyRetention` whenever something is due, and otherwise
/// looks again when the next job will be due, or when an applied entry may have ended a job
/// (at least every 10 s, at most twice a second).
pub(crate) async fn run(cluster: Cluster, limits: Retention, mut stop: watch::Receiver<bool>) {
    if !limits.is_set() {
        return;
    }
    let mut updates = cluster.reader().subscribe();
    loop {
        if *stop.borrow() {
            return;
        }
        let t = now();
        let mut wait = Duration::from_secs(10);
        match cluster.reader().read(|s| retention_due(s, &limits, t)) {
            RetentionDue::Now => {
                let cmd = Command::ApplyRetention {
                    finished_jobs_ms: limits.finished_jobs_ms,
                    jobs_ms: limits.jobs_ms,
                    at: now(),
                };
                if let Err(e) = cluster.write_if_leader(cmd).await {
                    tracing::debug!("retention: {e}");
                    wait = Duration::from_secs(1);
                } else {
                    continue;
                }
            }
            RetentionDue::At(at) => {
                let ms = (at.millis() - now().millis()).clamp(1, 10_000);
                wait = Duration::from_millis(ms as u64);
            }
            RetentionDue::Never => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            r = updates.recv() => {
                if let Err(tokio::sync::broadcast::error::RecvError::Closed) = r {
                    return;
                }
                // A running job applies entries many times a second: look at most twice a
                // second, not once per entry (each look scans the job summaries).
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            _ = stop.changed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_only() {
        assert_eq!(parse_duration_ms("30d"), Some(2_592_000_000));
        assert_eq!(parse_duration_ms("12h"), Some(43_200_000));
        assert_eq!(parse_duration_ms("2s"), Some(2_000));
        assert_eq!(parse_duration_ms("500ms"), Some(500));
        assert_eq!(parse_duration_ms(" 15m "), Some(900_000));
        for bad in [
            "",
            "30",
            "d",
            "0s",
            "-1d",
            "1.5h",
            "3w",
            "99999999999999999999d",
        ] {
            assert_eq!(parse_duration_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn limits_name_the_bad_setting() {
        let c = RetentionConfig {
            finished_jobs: Some("30d".into()),
            jobs: Some("forever".into()),
        };
        let e = c.limits().unwrap_err().to_string();
        assert!(e.contains("retention.jobs") && e.contains("forever"), "{e}");
        let ok = RetentionConfig {
            finished_jobs: Some("2s".into()),
            jobs: None,
        };
        assert_eq!(
            ok.limits().unwrap(),
            Retention {
                finished_jobs_ms: Some(2_000),
                jobs_ms: None
            }
        );
    }
}
