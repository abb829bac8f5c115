//! Operators' acts on jobs, the public API: cancel, retry, discard by id or by filter
//! (`jobq cancel|retry|discard`, the console). What each act does in each state is decided in
//! `machine/acts.rs` (table-tested); `store/acts.rs` locks the jobs, applies that rule, and
//! records each change as a transition naming who asked. An id without a job is reported as
//! such.

use jobq_producer::{JobId, JobState};
use serde::Serialize;
use sqlx::MySqlPool;

use crate::error::Result;
use crate::model::{Act, Acted};
use crate::store::{JobFilter, JobOrder};

/// Applies `act` to the jobs `ids` on behalf of `actor` (recorded with each transition; the
/// CLI passes `cli:USER@HOST`). Returns what happened to each, in order.
pub async fn act_on_jobs(
    pool: &MySqlPool,
    act: Act,
    ids: &[JobId],
    actor: &str,
) -> Result<Vec<(JobId, Acted)>> {
    // The column holds 128 characters.
    let actor: String = actor.chars().take(128).collect();
    let actor = actor.as_str();
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(1000) {
        let raw: Vec<u64> = chunk.iter().map(|i| i.0).collect();
        for (id, acted) in
            crate::store::apply_act(pool, act, &raw, actor, crate::machine::acts::decide).await?
        {
            out.push((JobId(id), acted));
        }
    }
    Ok(out)
}

/// Jobs acted on per transaction when acting on a filter.
const FILTER_BATCH: u32 = 1000;

/// What [`act_on_filter`] did, counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ActTally {
    /// Jobs moved.
    pub done: u64,
    /// Running jobs whose worker was asked to cancel them.
    pub cancel_requested: u64,
    /// Jobs that had changed meanwhile so the act no longer applied (or were gone).
    pub skipped: u64,
}

/// Applies `act` to every job in `state` that matches `filter`'s queue, kind and error text,
/// a batch of 1,000 per transaction (each locks only its own jobs, briefly), walking the
/// state's index range newest first. The filter's order, cursor and limit are ignored.
pub async fn act_on_filter(
    pool: &MySqlPool,
    act: Act,
    state: JobState,
    filter: &JobFilter,
    actor: &str,
) -> Result<ActTally> {
    let mut tally = ActTally::default();
    let mut page_filter = JobFilter {
        state: Some(state),
        limit: FILTER_BATCH,
        after: None,
        after_run_at: None,
        order: JobOrder::RunAt,
        examine: None,
        ..filter.clone()
    };
    loop {
        let page = crate::store::list_jobs(pool, &page_filter).await?;
        let Some(last) = page.last() else { break };
        // The cursor as this page saw it: acting on the jobs may move their run-at (a retry
        // makes it now), which must not move the walk.
        page_filter.after = Some(last.id);
        page_filter.after_run_at = Some(last.run_at);
        let ids: Vec<JobId> = page.iter().map(|j| j.id).collect();
        for (_, acted) in act_on_jobs(pool, act, &ids, actor).await? {
            match acted {
                Acted::Done { .. } => tally.done += 1,
                Acted::CancelRequested => tally.cancel_requested += 1,
                Acted::Refused { .. } | Acted::NotFound => tally.skipped += 1,
            }
        }
        if page.len() < FILTER_BATCH as usize {
            break;
        }
    }
    Ok(tally)
}

/// How many jobs in `state` match `filter`'s queue, kind and error text: what
/// [`act_on_filter`] would act on now (the console's confirmation shows it).
pub async fn count_jobs(pool: &MySqlPool, state: JobState, filter: &JobFilter) -> Result<i64> {
    Ok(crate::store::count_jobs(pool, state, filter).await?)
}
