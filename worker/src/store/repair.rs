//! The repair pass (maintenance leader): blocked jobs whose parents have all ended without
//! releasing them (a lost release: a bug, a hand edit) are found a window at a time and
//! settled as their parents' endings would have (`deps.rs`).

use std::collections::{BTreeMap, BTreeSet};

use jobq_producer::deps::{ChildMove, Rules};
use jobq_producer::JobState;

use super::deps::{decode, settle_with, unblock};
use super::sql::id_list;

/// The actor of the transitions the repair pass writes, so they tell from a parent's ending.
pub(crate) const REPAIR_ACTOR: &str = "jobq:repair";

/// Where the repair pass stands in the `blocked` range of `jobq_jobs_due`: the (run-at, id) of
/// the last job it looked at, or the start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RepairCursor(Option<(chrono::DateTime<chrono::Utc>, u64)>);

/// One window of the repair pass (leader): looks at up to `window` blocked jobs past `cursor`
/// (a plain read of `jobq_jobs_due`'s `blocked` range, so a pass costs a window whatever the
/// number of blocked jobs) and settles those whose parents have all ended: an edge left
/// unresolved by a lost release (a bug, a hand edit, a row deleted by hand) is resolved as its
/// parent's ending would have, and a job whose edges are all resolved but which is still
/// blocked (a counter edited by hand) is released. Returns how many blocked jobs it repaired;
/// moves the cursor, back to the start at the end of the range.
pub(crate) async fn repair(
    pool: &sqlx::MySqlPool,
    cursor: &mut RepairCursor,
    window: u32,
    rules: Rules,
) -> Result<u64, sqlx::Error> {
    let after = match cursor.0 {
        None => String::new(),
        Some((at, id)) => format!(
            "AND (run_at > '{0}' OR (run_at = '{0}' AND id > {id})) ",
            at.format("%Y-%m-%d %H:%M:%S%.6f")
        ),
    };
    // language=MySQL
    let seen: Vec<(u64, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(&format!(
        "SELECT id, run_at FROM jobq_jobs FORCE INDEX (jobq_jobs_due) \
         WHERE state = 'blocked' {after}ORDER BY run_at, id LIMIT ?"
    ))
    .bind(window)
    .fetch_all(pool)
    .await?;
    cursor.0 = match seen.last() {
        Some(&(id, at)) if seen.len() as u32 == window => Some((at, id)),
        _ => None,
    };
    if seen.is_empty() {
        return Ok(0);
    }
    let ids = id_list(seen.iter().map(|(id, _)| *id));
    // language=MySQL
    // Each candidate's unresolved edges with the state of the parent (NULL: no such row).
    let open: Vec<(u64, u64, Option<String>)> = sqlx::query_as(&format!(
        "SELECT d.child_id, d.parent_id, CAST(p.state AS CHAR) FROM jobq_deps d FORCE INDEX (jobq_deps_child) \
         LEFT JOIN jobq_jobs p ON p.id = d.parent_id \
         WHERE d.child_id IN ({ids}) AND d.resolved_at IS NULL"
    ))
    .fetch_all(pool)
    .await?;
    let mut waiting: BTreeSet<u64> = BTreeSet::new();
    let mut ended: BTreeMap<u64, JobState> = BTreeMap::new();
    for (child, parent, state) in &open {
        let state: Option<JobState> = state
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(decode)?;
        match state {
            Some(s) if !s.is_final() => {
                waiting.insert(*child);
            }
            // A parent row gone without resolving its edges was deleted by hand: as cancelled.
            s => {
                ended.insert(*parent, s.unwrap_or(JobState::Cancelled));
            }
        }
    }
    let stuck: Vec<u64> = seen
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| !waiting.contains(id))
        .collect();
    if stuck.is_empty() {
        return Ok(0);
    }
    let mut tx = super::begin(pool).await?;
    let list = id_list(stuck.iter().copied());
    // language=MySQL
    // Locked, and still blocked: a release that landed meanwhile leaves nothing to repair.
    let still: Vec<u64> = sqlx::query_scalar(&format!(
        "SELECT id FROM jobq_jobs FORCE INDEX (PRIMARY) WHERE id IN ({list}) AND state = 'blocked' ORDER BY id FOR UPDATE"
    ))
    .fetch_all(&mut *tx)
    .await?;
    if still.is_empty() {
        tx.rollback().await?;
        return Ok(0);
    }
    let parents: Vec<(u64, JobState)> = open
        .iter()
        .filter(|(c, ..)| still.contains(c))
        .map(|(_, p, _)| (*p, ended[p]))
        .collect::<BTreeMap<_, _>>()
        .into_iter()
        .collect();
    let settled = settle_with(&mut tx, &parents, Some(REPAIR_ACTOR), rules, false).await?;
    // Still blocked with every edge resolved: the counter was wrong. Released, as its last
    // parent's ending would have.
    let list = id_list(still.iter().copied());
    // language=MySQL
    let left: Vec<u64> = sqlx::query_scalar(&format!(
        "SELECT j.id FROM jobq_jobs j FORCE INDEX (PRIMARY) WHERE j.id IN ({list}) AND j.state = 'blocked' \
           AND NOT EXISTS (SELECT 1 FROM jobq_deps d WHERE d.child_id = j.id AND d.resolved_at IS NULL)"
    ))
    .fetch_all(&mut *tx)
    .await?;
    if !left.is_empty() {
        // language=MySQL
        sqlx::query(&format!(
            "UPDATE jobq_jobs SET pending_parents = 0 WHERE id IN ({})",
            id_list(left.iter().copied())
        ))
        .execute(&mut *tx)
        .await?;
        let release: Vec<u64> = left
            .into_iter()
            .filter(|_| (rules.child)(JobState::Blocked, 0, &[]) == ChildMove::Release)
            .collect();
        unblock(&mut tx, &release, Some(REPAIR_ACTOR)).await?;
    }
    tx.commit().await?;
    crate::metrics::workflows_finished(&settled.workflows_ended);
    Ok(still.len() as u64)
}
