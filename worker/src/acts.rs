//! Operators' acts on jobs, the public API: cancel, retry, discard by id or by filter
//! (`jobq cancel|retry|discard`, the console). What each act does in each state is decided in
//! `machine/acts.rs` (table-tested); `store/acts.rs` locks the jobs, applies that rule, and
//! records each change as a transition naming who asked. An id without a job is reported as
//! such.

use jobq_producer::{JobId, JobState};
use serde::Serialize;
use sqlx::MySqlPool;

use crate::error::Result;
use crate::model::{Act, ActRule, Acted};
use crate::store::{JobFilter, JobOrder};

/// Applies `act` to the jobs `ids` on behalf of `actor` (recorded with each transition; the
/// CLI passes `cli:USER@HOST`). Returns what happened to each, in order.
pub async fn act_on_jobs(
    pool: &MySqlPool,
    act: Act,
    ids: &[JobId],
    actor: &str,
) -> Result<Vec<(JobId, Acted)>> {
    let rule = |a: Act, s: JobState, _: bool, linked: bool| {
        crate::machine::acts::with_dependencies(a, s, linked, crate::machine::acts::decide(a, s))
    };
    act_with(pool, act, ids, actor, None, &rule).await
}

/// [`act_on_jobs`] with the rule that decides each job from the state found under its lock.
async fn act_with(
    pool: &MySqlPool,
    act: Act,
    ids: &[JobId],
    actor: &str,
    error: Option<&str>,
    rule: ActRule<'_>,
) -> Result<Vec<(JobId, Acted)>> {
    // The column holds 128 characters.
    let actor: String = actor.chars().take(128).collect();
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(1000) {
        let raw: Vec<u64> = chunk.iter().map(|i| i.0).collect();
        for (id, acted) in crate::store::apply_act(
            pool,
            act,
            &raw,
            &actor,
            error,
            rule,
            jobq_producer::deps::RULES,
        )
        .await?
        {
            out.push((JobId(id), acted));
        }
    }
    Ok(out)
}

/// Applies `act` to the jobs `ids` listed in state `listed` with error text `error` (a page of
/// an act by filter): each is checked again under its row lock, and one no longer in `listed`,
/// or whose error no longer contains `error`, is skipped.
async fn act_on_listed(
    pool: &MySqlPool,
    act: Act,
    listed: JobState,
    error: Option<&str>,
    ids: &[JobId],
    actor: &str,
) -> Result<Vec<(JobId, Acted)>> {
    let rule = move |a: Act, s: JobState, m: bool, linked: bool| {
        crate::machine::acts::with_dependencies(
            a,
            s,
            linked,
            crate::machine::acts::decide_listed(a, listed, s, m),
        )
    };
    act_with(pool, act, ids, actor, error, &rule).await
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
        for (_, acted) in
            act_on_listed(pool, act, state, filter.error.as_deref(), &ids, actor).await?
        {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every job's id, in order.
    async fn all_ids(pool: &MySqlPool) -> Vec<JobId> {
        sqlx::query_scalar::<_, u64>("SELECT id FROM jobq_jobs ORDER BY id")
            .fetch_all(pool)
            .await
            .unwrap()
            .into_iter()
            .map(JobId)
            .collect()
    }

    /// An act by filter re-checks each job under its row lock: a job listed as `scheduled`
    /// that started before the act reached it gets no cancel request (before, it was asked to
    /// stop); the job still scheduled is cancelled.
    #[sqlx::test(migrations = false)]
    async fn an_act_by_filter_skips_a_job_that_changed_since_listed(pool: MySqlPool) {
        jobq_producer::migrate(&pool).await.unwrap();
        sqlx::raw_sql(
            "INSERT INTO jobq_jobs (queue, kind, payload, state, attempt, claim_token, lease_expires_at) \
             VALUES ('default', 'noop', '{}', 'running', 1, X'0123456789abcdef0123456789abcdef', \
                     UTC_TIMESTAMP(6) + INTERVAL 1 HOUR); \
             INSERT INTO jobq_jobs (queue, kind, payload, state, run_at) \
             VALUES ('default', 'noop', '{}', 'scheduled', UTC_TIMESTAMP(6) + INTERVAL 1 HOUR)",
        )
        .execute(&pool)
        .await
        .unwrap();
        let ids = all_ids(&pool).await;
        let out = act_on_listed(&pool, Act::Cancel, JobState::Scheduled, None, &ids, "test")
            .await
            .unwrap();
        assert!(
            matches!(&out[0].1, Acted::Refused { state: JobState::Running, why } if why.contains("no longer scheduled")),
            "{out:?}"
        );
        assert_eq!(
            out[1].1,
            Acted::Done {
                from: JobState::Scheduled,
                to: JobState::Cancelled
            }
        );
        let asked: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM jobq_jobs WHERE cancel_requested_at IS NOT NULL",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(asked, 0, "the job that started meanwhile was asked to stop");
    }

    /// An act by filter with an error text re-checks the text under the row lock: a job that
    /// failed again meanwhile with another error is not retried; the one whose error still
    /// contains the text (LIKE's wildcards matched literally) is.
    #[sqlx::test(migrations = false)]
    async fn an_act_by_filter_skips_a_job_whose_error_changed(pool: MySqlPool) {
        jobq_producer::migrate(&pool).await.unwrap();
        sqlx::raw_sql(
            "INSERT INTO jobq_jobs (queue, kind, payload, state, attempt, finalized_at, last_error) \
             VALUES ('default', 'noop', '{}', 'discarded', 1, UTC_TIMESTAMP(6), 'smtp 100% down'), \
                    ('default', 'noop', '{}', 'discarded', 2, UTC_TIMESTAMP(6), 'disk full')",
        )
        .execute(&pool)
        .await
        .unwrap();
        let ids = all_ids(&pool).await;
        // Both were listed by "100% down"; the second has failed again since, with another error.
        let out = act_on_listed(
            &pool,
            Act::Retry,
            JobState::Discarded,
            Some("100% down"),
            &ids,
            "test",
        )
        .await
        .unwrap();
        assert_eq!(
            out[0].1,
            Acted::Done {
                from: JobState::Discarded,
                to: JobState::Available
            }
        );
        assert!(
            matches!(&out[1].1, Acted::Refused { state: JobState::Discarded, why } if why.contains("error no longer")),
            "{out:?}"
        );
    }
}
