//! The commands of scheduled jobs, and the occurrences an `Advance` creates.

use muster_types::{ScheduledJobId, Timestamp};

use super::{ScheduledJob, ScheduledJobSpec, GRACE_MS};
use crate::error::DomainError;
use crate::event::Event;
use crate::spec::TargetSelector;
use crate::State;

/// Creates a schedule or replaces one (IoT Central's PUT; PATCH is a read-modify-write at the
/// edge with `if_version`).
pub(crate) fn save(
    state: &State,
    id: &ScheduledJobId,
    spec: &ScheduledJobSpec,
    if_version: Option<u64>,
    at: Timestamp,
) -> Result<Vec<Event>, DomainError> {
    let old = state.schedules.get(id);
    // Versions start at 1, so version 0 names "not there yet": a create that two callers race
    // on is decided here, in log order, not by a read before the write.
    if if_version == Some(0) && old.is_some() {
        return Err(DomainError::ScheduledJobExists(id.clone()));
    }
    if let Some(v) = if_version.filter(|v| *v != 0) {
        let actual = old
            .ok_or_else(|| DomainError::ScheduledJobNotFound(id.clone()))?
            .version;
        if actual != v {
            return Err(DomainError::ScheduledJobVersionMismatch {
                id: id.clone(),
                expected: v,
                actual,
            });
        }
    }
    spec.template.validate()?;
    if spec.template.schedule.start_at.is_some() {
        return Err(DomainError::Invalid {
            field: "schedule.start".into(),
            message: "a scheduled job's jobs start at their occurrence; give the start in the \
                      schedule, not in the job template"
                .into(),
        });
    }
    if let TargetSelector::Group(g) = &spec.template.target.selector {
        if !state.registry.groups.contains_key(g) {
            return Err(DomainError::Invalid {
                field: "group".into(),
                message: format!(
                    "device group {g} does not exist; create it first or pick another"
                ),
            });
        }
    }
    spec.schedule.validate()?;
    // The same schedule keeps its place; a changed one starts over from now, after the last
    // occurrence it already had, so no instant is ever created twice.
    let next = match old {
        Some(o) if o.spec.schedule == spec.schedule && o.spec.enabled == spec.enabled => o.next,
        _ => {
            let mut from = at.plus_millis(-GRACE_MS);
            if let Some(last) = old.and_then(|o| o.last_due) {
                from = from.max(last.plus_millis(1));
            }
            spec.schedule.first_at_or_after(from)
        }
    };
    let created = old.map_or(0, |o| o.created);
    let probe = ScheduledJob {
        id: id.clone(),
        spec: spec.clone(),
        version: 0,
        created_at: at,
        updated_at: at,
        next,
        last_due: None,
        created,
        jobs: Vec::new(),
    };
    if probe.completed() && old.is_none_or(|o| !o.completed() || o.spec != *spec) {
        return Err(DomainError::Invalid {
            field: "schedule".into(),
            message: format!(
                "it has no occurrence after {}; give a later start or end",
                at.plus_millis(-GRACE_MS).to_rfc3339()
            ),
        });
    }
    Ok(vec![Event::ScheduledJobSaved {
        id: id.clone(),
        spec: Box::new(spec.clone()),
        next,
        at,
    }])
}

pub(crate) fn delete(
    state: &State,
    id: &ScheduledJobId,
    at: Timestamp,
) -> Result<Vec<Event>, DomainError> {
    if !state.schedules.contains_key(id) {
        return Err(DomainError::ScheduledJobNotFound(id.clone()));
    }
    Ok(vec![Event::ScheduledJobDeleted { id: id.clone(), at }])
}

/// The occurrences due at `at`: at most one per schedule, so catching up after an outage creates
/// them one `Advance` after another, in order (`actions` asks again at once while one is due).
/// An occurrence whose job cannot be created (its group was deleted) is recorded as missed.
pub(crate) fn advance(
    state: &State,
    at: Timestamp,
    create_job: impl Fn(
        &State,
        &muster_types::JobId,
        &crate::spec::JobSpec,
        Timestamp,
    ) -> Result<Vec<Event>, DomainError>,
) -> Vec<Event> {
    let mut events = Vec::new();
    for (id, s) in &state.schedules {
        let Some((occurrence, due)) = s.due(at) else {
            continue;
        };
        let mut n = s.created.saturating_add(1);
        let job = loop {
            match ScheduledJob::job_id(id, n) {
                Some(j) if state.jobs.contains_key(&j) && n < u32::MAX => n += 1,
                other => break other,
            }
        };
        let created = job.ok_or_else(|| DomainError::Invalid {
            field: "id".into(),
            message: "no free job id is left for this schedule".into(),
        });
        match created.and_then(|j| create_job(state, &j, &s.spec.template, at).map(|e| (j, e))) {
            Ok((job, created)) => {
                events.extend(created);
                events.push(Event::ScheduledJobOccurred {
                    id: id.clone(),
                    occurrence,
                    due,
                    job,
                    at,
                });
            }
            Err(e) => events.push(Event::ScheduledJobMissed {
                id: id.clone(),
                occurrence,
                due,
                reason: e.to_string(),
                at,
            }),
        }
    }
    events
}
