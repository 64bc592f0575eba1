//! `muster job create`'s rollout flags (issue 16): an exponential rate, abort criteria, retry
//! backoff and a gate between batches, parsed into the same JobSpec a `--file` gives.
//!
//! Each value is parsed here and checked with the domain's own validation of that part before
//! anything is sent, so a mistyped flag is named at once (and never half-applied); the server
//! checks the whole spec again.

use anyhow::{anyhow, bail};
use muster_domain::rollout::{
    AbortCriterion, Backoff, ExponentialRate, FailureKind, Gate, GateAction, RateCriterion,
};
use muster_domain::{DomainError, Threshold};
use muster_proto::pb;

/// The rollout flags of `job create` (flattened into its arguments).
#[derive(Debug, Default, clap::Args)]
pub struct RolloutArgs {
    /// Exponential rate: start at this many devices per minute and raise it by
    /// --rate-factor every --rate-increase-after devices (AWS IoT Jobs' exponentialRate).
    #[arg(long, value_name = "PER_MINUTE", requires_all = ["rate_factor", "rate_increase_after"])]
    pub rate_base: Option<u32>,
    /// The exponential rate's increment factor, 1.1 to 5.0 with one decimal (e.g. 2 or 1.5).
    #[arg(long, value_name = "FACTOR", requires = "rate_base")]
    pub rate_factor: Option<String>,
    /// When the exponential rate rises: every N devices notified (`notified:N`) or succeeded
    /// (`succeeded:N`).
    #[arg(long, value_name = "notified:N|succeeded:N", requires = "rate_base")]
    pub rate_increase_after: Option<String>,
    /// The exponential rate never goes above this many devices per minute.
    #[arg(long, value_name = "PER_MINUTE", requires = "rate_base")]
    pub rate_max: Option<u32>,

    /// Cancel the job when failures of a kind pass a limit, counted over the devices finished
    /// so far: `KIND:LIMIT[:min=N]`, KIND failed, timedOut, notConnected or any, LIMIT a count
    /// (`3`) or a percentage (`10%`), min the devices that must have finished first. Repeatable;
    /// the first crossed cancels. Example: `--abort failed:10%:min=20`.
    #[arg(long, value_name = "KIND:LIMIT[:min=N]")]
    pub abort: Vec<String>,

    /// Wait before retrying a failed or timed-out device (needs --max-attempts 2 or more):
    /// `base=DURATION[,factor=F][,max=DURATION][,jitter=P%]`, durations like 500ms, 2s, 1m; the
    /// delay is base * factor^(attempt-1) up to max, less up to the jitter. factor defaults to
    /// 2, max to base, jitter to 0. Example: `--backoff base=1s,factor=2,max=1m,jitter=20%`.
    #[arg(long, value_name = "SPEC")]
    pub backoff: Option<String>,
    /// Like --backoff, for failed devices only (overrides --backoff for them).
    #[arg(long, value_name = "SPEC")]
    pub backoff_failed: Option<String>,
    /// Like --backoff, for timed-out devices only (overrides --backoff for them).
    #[arg(long, value_name = "SPEC")]
    pub backoff_timed_out: Option<String>,

    /// Gate between batches: the next batch starts only when at least this percentage of the
    /// finished batch's devices succeeded (`95` or `95%`); otherwise the job pauses until
    /// `muster job continue` (or is cancelled, with --gate-on-failure cancel).
    #[arg(long, value_name = "PERCENT")]
    pub gate_success: Option<String>,
    /// What a batch that falls short of --gate-success does: pause (default) or cancel.
    #[arg(long, value_name = "pause|cancel", requires = "gate_success")]
    pub gate_on_failure: Option<String>,
    /// Pause after every batch but the last until `muster job continue` (a canary first).
    #[arg(long)]
    pub pause_after_each_batch: bool,
}

/// The parts of the spec the flags give.
#[derive(Debug, Default, PartialEq)]
pub struct Parsed {
    pub exponential: Option<pb::ExponentialRate>,
    pub gate: Option<pb::Gate>,
    pub abort: Vec<pb::AbortCriterion>,
    pub backoff_failed: Option<pb::Backoff>,
    pub backoff_timed_out: Option<pb::Backoff>,
}

impl RolloutArgs {
    /// Parses and checks every flag; an error names the flag and what to write instead.
    pub fn parse(&self) -> anyhow::Result<Parsed> {
        let exponential = match self.rate_base {
            None => None,
            Some(base) => {
                let e = ExponentialRate {
                    base_per_minute: base,
                    increment_factor_tenths: factor_tenths(
                        self.rate_factor.as_deref().unwrap_or_default(),
                    )?,
                    criterion: rate_criterion(
                        self.rate_increase_after.as_deref().unwrap_or_default(),
                    )?,
                    maximum_per_minute: self
                        .rate_max
                        .unwrap_or(muster_domain::rollout::rate::MAX_RATE_PER_MINUTE),
                };
                e.validate().map_err(|e| flag_error(&e, rate_flag))?;
                Some(e.into())
            }
        };
        let abort: Vec<AbortCriterion> = self
            .abort
            .iter()
            .map(|a| abort_criterion(a))
            .collect::<anyhow::Result<_>>()?;
        muster_domain::rollout::abort::validate(&abort)
            .map_err(|e| flag_error(&e, |_| "--abort"))?;
        let backoff =
            |flag: &'static str, text: Option<&String>| text.map(|t| backoff(flag, t)).transpose();
        let both = backoff("--backoff", self.backoff.as_ref())?;
        let failed = backoff("--backoff-failed", self.backoff_failed.as_ref())?.or(both);
        let timed_out = backoff("--backoff-timed-out", self.backoff_timed_out.as_ref())?.or(both);
        let gate = if self.gate_success.is_some() || self.pause_after_each_batch {
            let on_failure = match self.gate_on_failure.as_deref().unwrap_or("pause") {
                "pause" => GateAction::Pause,
                "cancel" => GateAction::Cancel,
                other => bail!("--gate-on-failure: expected pause or cancel, got {other:?}"),
            };
            let g = Gate {
                success_percent: match &self.gate_success {
                    Some(p) => percent("--gate-success", p)?,
                    None => 0,
                },
                on_failure,
                pause_after_each_batch: self.pause_after_each_batch,
            };
            g.validate()
                .map_err(|e| flag_error(&e, |_| "--gate-success"))?;
            Some(g.into())
        } else {
            None
        };
        Ok(Parsed {
            exponential,
            gate,
            abort: abort.into_iter().map(Into::into).collect(),
            backoff_failed: failed.map(Into::into),
            backoff_timed_out: timed_out.map(Into::into),
        })
    }
}

/// The flag that sets an exponential-rate field the domain names.
fn rate_flag(field: &str) -> &'static str {
    if field.ends_with("incrementFactor") {
        "--rate-factor"
    } else if field.ends_with("rateIncreaseCriteria") {
        "--rate-increase-after"
    } else if field.ends_with("maximumPerMinute") {
        "--rate-max"
    } else {
        "--rate-base"
    }
}

/// The domain's message under the flag's name, with the field's last part (the domain names
/// fields as the REST body spells them; the flag is what this user typed).
fn flag_error(e: &DomainError, flag: impl Fn(&str) -> &'static str) -> anyhow::Error {
    match e {
        DomainError::Invalid { field, message } => {
            let leaf = field.rsplit('.').next().unwrap_or(field);
            anyhow!("{}: {leaf} {message}", flag(field))
        }
        other => anyhow!("{}: {other}", flag("")),
    }
}

/// `2` -> 20, `1.5` -> 15: one decimal, as AWS's incrementFactor.
fn factor_tenths(text: &str) -> anyhow::Result<u32> {
    let bad = || {
        anyhow!("--rate-factor: expected a number from 1.1 to 5.0 with at most one decimal, like 2 or 1.5, got {text:?}")
    };
    let (whole, tenth) = match text.trim().split_once('.') {
        Some((w, t)) if t.len() == 1 => (w, t),
        Some((w, "")) => (w, "0"),
        Some(_) => return Err(bad()),
        None => (text.trim(), "0"),
    };
    let whole: u32 = whole.parse().map_err(|_| bad())?;
    let tenth: u32 = tenth.parse().map_err(|_| bad())?;
    whole
        .checked_mul(10)
        .and_then(|w| w.checked_add(tenth))
        .ok_or_else(bad)
}

/// `notified:10` or `succeeded:10`.
fn rate_criterion(text: &str) -> anyhow::Result<RateCriterion> {
    let bad = || {
        anyhow!(
            "--rate-increase-after: expected notified:N or succeeded:N (N devices), got {text:?}"
        )
    };
    let (kind, n) = text.split_once(':').ok_or_else(bad)?;
    let n: u32 = n.trim().parse().map_err(|_| bad())?;
    match kind.trim() {
        "notified" => Ok(RateCriterion::NotifiedDevices(n)),
        "succeeded" => Ok(RateCriterion::SucceededDevices(n)),
        _ => Err(bad()),
    }
}

/// `95` or `95%`.
fn percent(flag: &str, text: &str) -> anyhow::Result<u32> {
    let t = text.trim();
    t.strip_suffix('%')
        .unwrap_or(t)
        .trim()
        .parse()
        .map_err(|_| {
            anyhow!("{flag}: expected a percentage from 0 to 100, like 95 or 95%, got {text:?}")
        })
}

/// `KIND:LIMIT[:min=N]`.
fn abort_criterion(text: &str) -> anyhow::Result<AbortCriterion> {
    let bad = |why: &str| {
        anyhow!(
            "--abort {text:?}: {why}; write KIND:LIMIT[:min=N], e.g. failed:10%:min=20 or any:5"
        )
    };
    let mut parts = text.split(':');
    let kind = parts.next().unwrap_or_default().trim();
    let kind = FailureKind::parse(kind)
        .ok_or_else(|| bad("the kind is failed, timedOut, notConnected or any"))?;
    let limit = parts
        .next()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .ok_or_else(|| bad("the limit is missing"))?;
    let threshold = match limit.strip_suffix('%') {
        Some(p) => Threshold::Percentage(
            p.trim()
                .parse()
                .map_err(|_| bad("the limit is a count like 5 or a percentage like 10%"))?,
        ),
        None => Threshold::Count(
            limit
                .parse()
                .map_err(|_| bad("the limit is a count like 5 or a percentage like 10%"))?,
        ),
    };
    let min_finished = match parts.next() {
        None => 0,
        Some(m) => m
            .trim()
            .strip_prefix("min=")
            .and_then(|n| n.trim().parse().ok())
            .ok_or_else(|| {
                bad("the third part is min=N, the devices finished before it applies")
            })?,
    };
    if parts.next().is_some() {
        return Err(bad("too many parts"));
    }
    let c = AbortCriterion {
        kind,
        threshold,
        min_finished,
    };
    muster_domain::rollout::abort::validate(&[c]).map_err(|e| {
        let flag = format!("--abort {text:?}");
        match e {
            DomainError::Invalid { message, .. } => anyhow!("{flag}: the limit {message}"),
            other => anyhow!("{flag}: {other}"),
        }
    })?;
    Ok(c)
}

/// `base=1s,factor=2,max=1m,jitter=20%`.
fn backoff(flag: &str, text: &str) -> anyhow::Result<Backoff> {
    let bad = |why: String| {
        anyhow!("{flag} {text:?}: {why}; write base=DURATION[,factor=F][,max=DURATION][,jitter=P%], e.g. base=1s,factor=2,max=1m")
    };
    let (mut base, mut factor, mut max, mut jitter) = (None, None, None, None);
    for part in text.split(',') {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| bad(format!("{part:?} is not key=value")))?;
        let value = value.trim();
        match key.trim() {
            "base" => base = Some(millis(value).map_err(bad)?),
            "max" => max = Some(millis(value).map_err(bad)?),
            "factor" => {
                factor = Some(
                    value
                        .parse()
                        .map_err(|_| bad(format!("factor {value:?} is not a whole number")))?,
                )
            }
            "jitter" => {
                jitter = Some(
                    value
                        .strip_suffix('%')
                        .unwrap_or(value)
                        .trim()
                        .parse()
                        .map_err(|_| bad(format!("jitter {value:?} is not a percentage")))?,
                )
            }
            other => return Err(bad(format!("{other:?} is not base, factor, max or jitter"))),
        }
    }
    let base_ms = base.ok_or_else(|| bad("base= is required".into()))?;
    let b = Backoff {
        base_ms,
        factor: factor.unwrap_or(2),
        max_ms: max.unwrap_or(base_ms),
        jitter_percent: jitter.unwrap_or(0),
    };
    b.validate("backoff").map_err(|e| {
        flag_error(&e, |_| match flag {
            "--backoff-failed" => "--backoff-failed",
            "--backoff-timed-out" => "--backoff-timed-out",
            _ => "--backoff",
        })
    })?;
    Ok(b)
}

/// `500ms`, `2s`, `1m`, `1h` (or a bare number of milliseconds) in milliseconds.
fn millis(text: &str) -> Result<u32, String> {
    let (digits, scale) = if let Some(d) = text.strip_suffix("ms") {
        (d, 1)
    } else if let Some(d) = text.strip_suffix('s') {
        (d, 1000)
    } else if let Some(d) = text.strip_suffix('m') {
        (d, 60_000)
    } else if let Some(d) = text.strip_suffix('h') {
        (d, 3_600_000)
    } else {
        (text, 1)
    };
    digits
        .trim()
        .parse::<u32>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| format!("{text:?} is not a duration like 500ms, 2s, 1m or 1h"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn err(args: RolloutArgs) -> String {
        args.parse().unwrap_err().to_string()
    }

    #[test]
    fn every_flag_lands_in_the_spec() {
        let p = RolloutArgs {
            rate_base: Some(5),
            rate_factor: Some("1.5".into()),
            rate_increase_after: Some("succeeded:20".into()),
            rate_max: Some(200),
            abort: vec!["failed:10%:min=20".into(), "any:3".into()],
            backoff: Some("base=1s,factor=3,max=1m,jitter=20%".into()),
            backoff_timed_out: Some("base=250ms".into()),
            gate_success: Some("95%".into()),
            gate_on_failure: Some("cancel".into()),
            pause_after_each_batch: true,
            ..Default::default()
        }
        .parse()
        .unwrap();
        let e = p.exponential.unwrap();
        assert_eq!(
            (
                e.base_per_minute,
                e.increment_factor_tenths,
                e.maximum_per_minute
            ),
            (5, 15, 200)
        );
        assert_eq!(
            e.criterion,
            Some(pb::exponential_rate::Criterion::SucceededDevices(20))
        );
        assert_eq!(p.abort.len(), 2);
        assert_eq!(p.abort[0].kind, pb::FailureKind::Failed as i32);
        assert_eq!(p.abort[0].min_finished, 20);
        assert_eq!(p.abort[1].kind, pb::FailureKind::Any as i32);
        let f = p.backoff_failed.unwrap();
        assert_eq!(
            (f.base_ms, f.factor, f.max_ms, f.jitter_percent),
            (1000, 3, 60_000, 20)
        );
        let t = p.backoff_timed_out.unwrap();
        assert_eq!((t.base_ms, t.factor, t.max_ms), (250, 2, 250));
        let g = p.gate.unwrap();
        assert_eq!(g.success_percent, 95);
        assert_eq!(g.on_failure, pb::GateAction::Cancel as i32);
        assert!(g.pause_after_each_batch);
        // Nothing given: nothing set.
        assert_eq!(RolloutArgs::default().parse().unwrap(), Parsed::default());
    }

    #[test]
    fn bad_values_name_their_flag() {
        let cases = [
            (
                RolloutArgs {
                    rate_base: Some(5),
                    rate_factor: Some("1.55".into()),
                    rate_increase_after: Some("notified:1".into()),
                    ..Default::default()
                },
                "--rate-factor",
            ),
            (
                RolloutArgs {
                    rate_base: Some(5),
                    rate_factor: Some("9".into()),
                    rate_increase_after: Some("notified:1".into()),
                    ..Default::default()
                },
                "--rate-factor",
            ),
            (
                RolloutArgs {
                    rate_base: Some(5),
                    rate_factor: Some("2".into()),
                    rate_increase_after: Some("sent:1".into()),
                    ..Default::default()
                },
                "--rate-increase-after",
            ),
            (
                RolloutArgs {
                    rate_base: Some(50),
                    rate_factor: Some("2".into()),
                    rate_increase_after: Some("notified:1".into()),
                    rate_max: Some(10),
                    ..Default::default()
                },
                "--rate-max",
            ),
            (
                RolloutArgs {
                    abort: vec!["weird:1".into()],
                    ..Default::default()
                },
                "--abort",
            ),
            (
                RolloutArgs {
                    abort: vec!["failed:150%".into()],
                    ..Default::default()
                },
                "--abort",
            ),
            (
                RolloutArgs {
                    abort: vec!["failed:5:minimum=3".into()],
                    ..Default::default()
                },
                "--abort",
            ),
            (
                RolloutArgs {
                    backoff: Some("1s".into()),
                    ..Default::default()
                },
                "--backoff",
            ),
            (
                RolloutArgs {
                    backoff_failed: Some("base=2s,max=1s".into()),
                    ..Default::default()
                },
                "--backoff-failed",
            ),
            (
                RolloutArgs {
                    gate_success: Some("101".into()),
                    ..Default::default()
                },
                "--gate-success",
            ),
            (
                RolloutArgs {
                    gate_success: Some("90".into()),
                    gate_on_failure: Some("stop".into()),
                    ..Default::default()
                },
                "--gate-on-failure",
            ),
        ];
        for (args, flag) in cases {
            let message = err(args);
            assert!(message.starts_with(flag), "{flag}: {message}");
        }
    }

    #[test]
    fn durations_and_factors() {
        assert_eq!(millis("500ms"), Ok(500));
        assert_eq!(millis("2s"), Ok(2000));
        assert_eq!(millis("1m"), Ok(60_000));
        assert_eq!(millis("750"), Ok(750));
        assert!(millis("2 weeks").is_err());
        assert!(millis("9999999h").is_err());
        assert_eq!(factor_tenths("2").unwrap(), 20);
        assert_eq!(factor_tenths("1.5").unwrap(), 15);
        assert_eq!(factor_tenths("3.").unwrap(), 30);
        assert!(factor_tenths("1.25").is_err());
        assert!(factor_tenths("").is_err());
        assert!(factor_tenths("-1").is_err());
    }
}
