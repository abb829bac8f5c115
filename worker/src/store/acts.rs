//! Operators' acts on jobs by id: cancel, retry, discard. Each runs in one short transaction
//! that locks the jobs it reads (`FOR UPDATE`, waiting at most the session's lock timeout for
//! a claim or a completion in flight), decides per job from the state it found
//! (the rule it is given, `machine/acts.rs`), and writes the change with its transition, the actor recorded.
//! Jobs it ends are settled (`deps.rs`) in the same transaction: their dependents are
//! released or cancelled, their workflows counted.

use jobq_producer::JobState;
use sqlx::{MySqlPool, Row};

use super::sql::marks;
use crate::model::{Act, ActRule, Acted};

/// A job as the act found it.
struct Found {
    id: u64,
    state: JobState,
    attempt: u32,
    /// Still matches the act by filter's error text (true without one).
    matches: bool,
    /// Runs after other jobs or belongs to a workflow.
    linked: bool,
}

/// Applies `act` to `ids` (at most a few thousand per call) on behalf of `actor`. Returns what
/// happened to each id, in the order given.
pub(crate) async fn apply(
    pool: &MySqlPool,
    act: Act,
    ids: &[u64],
    actor: &str,
    error: Option<&str>,
    decide: ActRule<'_>,
    rules: jobq_producer::deps::Rules,
) -> Result<Vec<(u64, Acted)>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut tx = super::begin(pool).await?;
    // language=MySQL
    // `matches`: whether the job's error still contains the filter's text, as the listing
    // matched it (LIKE's wildcards escaped), read under the row lock; 1 without a text.
    let matches = match error {
        Some(_) => "COALESCE(last_error LIKE CONCAT('%', ?, '%'), 0)",
        None => "1",
    };
    let sql = format!(
        "SELECT id, CAST(state AS CHAR) AS state, attempt, CAST({matches} AS SIGNED) AS matches, \
                CAST(workflow_id IS NOT NULL OR EXISTS (SELECT 1 FROM jobq_deps d WHERE d.child_id = jobq_jobs.id) AS SIGNED) AS linked \
         FROM jobq_jobs WHERE id IN ({}) FOR UPDATE",
        marks(ids.len())
    );
    let mut q = sqlx::query(&sql);
    if let Some(text) = error {
        q = q.bind(super::listing::like_literal(text));
    }
    for id in ids {
        q = q.bind(id);
    }
    let mut found = std::collections::HashMap::new();
    for r in q.fetch_all(&mut *tx).await? {
        let state: String = r.try_get("state")?;
        let f = Found {
            id: r.try_get("id")?,
            state: state
                .parse()
                .map_err(|e: String| sqlx::Error::Decode(e.into()))?,
            attempt: r.try_get("attempt")?,
            matches: r.try_get::<i64, _>("matches")? == 1,
            linked: r.try_get::<i64, _>("linked")? == 1,
        };
        found.insert(f.id, f);
    }
    let mut out = Vec::with_capacity(ids.len());
    for &id in ids {
        let Some(f) = found.get(&id) else {
            out.push((id, Acted::NotFound));
            continue;
        };
        let acted = decide(act, f.state, f.matches, f.linked);
        let written = match acted {
            Acted::Done { from, to } => write_done(&mut tx, act, f, from, to, actor).await?,
            Acted::CancelRequested => {
                // language=MySQL
                sqlx::query(
                    "UPDATE jobq_jobs SET cancel_requested_at = COALESCE(cancel_requested_at, UTC_TIMESTAMP(6)), \
                            cancel_requested_by = COALESCE(cancel_requested_by, ?) \
                     WHERE id = ? AND state = 'running'",
                )
                .bind(actor)
                .bind(id)
                .execute(&mut *tx)
                .await?;
                acted
            }
            other => other,
        };
        out.push((id, written));
    }
    // Jobs this act ended: their dependents and workflows hear of it in this transaction.
    let ended: Vec<(u64, JobState)> = out
        .iter()
        .filter_map(|(id, a)| match a {
            Acted::Done { to, .. } if to.is_final() => Some((*id, *to)),
            _ => None,
        })
        .collect();
    let mut flows = Vec::new();
    if !ended.is_empty() {
        flows = super::deps::settle(&mut tx, &ended, Some(actor), rules)
            .await?
            .workflows_ended;
    }
    tx.commit().await?;
    crate::metrics::workflows_finished(&flows);
    Ok(out)
}

/// Writes a decided state change and its transition. A retried unique job whose key a newer
/// job holds now cannot come back (the unique index says so): refused, nothing written.
async fn write_done(
    tx: &mut sqlx::MySqlConnection,
    act: Act,
    f: &Found,
    from: JobState,
    to: JobState,
    actor: &str,
) -> Result<Acted, sqlx::Error> {
    // language=MySQL
    // A retry starts over: due now, not finalized, one attempt more if all were used; a
    // cancel or discard is final now.
    let update = match to {
        JobState::Available => {
            "UPDATE jobq_jobs SET state = 'available', run_at = UTC_TIMESTAMP(6), finalized_at = NULL, \
                    max_attempts = GREATEST(max_attempts, LEAST(attempt + 1, 4294967295)), \
                    cancel_requested_at = NULL, cancel_requested_by = NULL, lease_expires_at = NULL \
             WHERE id = ? AND state = ?"
        }
        _ => {
            "UPDATE jobq_jobs SET state = ?, finalized_at = UTC_TIMESTAMP(6), lease_expires_at = NULL \
             WHERE id = ? AND state = ?"
        }
    };
    let mut q = sqlx::query(update);
    if to != JobState::Available {
        q = q.bind(to.as_str());
    }
    let res = q.bind(f.id).bind(from.as_str()).execute(&mut *tx).await;
    match res {
        Ok(r) if r.rows_affected() == 1 => {}
        Ok(_) => {
            return Ok(Acted::Refused {
                state: f.state,
                why: "it changed meanwhile".into(),
            })
        }
        Err(e) if crate::error::is_number(&e, crate::error::codes::DUPLICATE_KEY) => {
            return Ok(Acted::Refused {
                state: f.state,
                why: "a newer job holds its unique key".into(),
            })
        }
        Err(e) => return Err(e),
    }
    // language=MySQL
    sqlx::query(
        "INSERT INTO jobq_transitions (job_id, from_state, to_state, event, attempt, error, actor, at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, UTC_TIMESTAMP(6))",
    )
    .bind(f.id)
    .bind(from.as_str())
    .bind(to.as_str())
    .bind(act.event().as_str())
    .bind(f.attempt)
    .bind(format!("{} by {actor}", act.past()))
    .bind(actor)
    .execute(&mut *tx)
    .await?;
    Ok(Acted::Done { from, to })
}
