//! The history layout (`maintenance.history_partition`, README "History at scale"): `jobq
//! migrate` converts `jobq_transitions` to partitions by time (or back) with
//! [`apply_history_layout`], and the maintenance leader rolls them ([`roll`]): partitions
//! created ahead of the clock, partitions past `history_retention` dropped whole. Which
//! partitions is decided in `machine::partitions`; the DDL is in `store::partitions`.

use std::time::Duration;

use chrono::TimeDelta;
use sqlx::MySqlPool;

use crate::machine::partitions::{self as decide, Plan, Rolling};
use crate::store::{self, HistoryLayout};
use crate::{Config, Error, Result};

/// How long a roll's ALTER waits for the table's metadata lock (every transaction writing
/// history holds it until it ends; statements arriving meanwhile wait behind the ALTER). Short,
/// so a long transaction makes the roll give up, to try again at the next, rather than stall
/// the writers.
const ROLL_WAIT_SECS: u32 = 2;

/// What [`apply_history_layout`] found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HistoryReport {
    /// Whether `jobq_transitions` is partitioned now.
    pub partitioned: bool,
    /// Whether the table was converted (to partitions, or back to one table).
    pub converted: bool,
    /// Partitions created ahead.
    pub added: usize,
    /// Partitions dropped (retention).
    pub dropped: usize,
    /// Partitions the table has now (0: not partitioned).
    pub partitions: usize,
}

/// Brings `jobq_transitions` to the layout `config` asks for
/// (`maintenance.history_partition`): converts it to partitions by time, or back to one table
/// (either copies the table, so it refuses while a worker runs), and on a partitioned table
/// creates partitions ahead and drops those past `history_retention`, as the leader does. Run
/// by `jobq migrate` after the migrations.
pub async fn apply_history_layout(pool: &MySqlPool, config: &Config) -> Result<HistoryReport> {
    let layout = store::history_layout(pool).await?;
    let mut report = HistoryReport::default();
    match (layout, config.history_partition()) {
        (HistoryLayout::Other(how), _) => {
            return Err(Error::Invalid(format!(
                "jobq_transitions is {how}, a layout jobq did not make; make it one table again \
                 (ALTER TABLE jobq_transitions REMOVE PARTITIONING) for jobq to manage it"
            )))
        }
        (HistoryLayout::Plain, None) => {}
        (HistoryLayout::Plain, Some(width)) => {
            let rolling = rolling(config, width);
            let now = store::server_now(pool).await?;
            let oldest = store::oldest_history(pool).await?;
            let bounds = decide::initial(now, oldest, &rolling);
            let mut conn = pool.acquire().await?;
            jobq_producer::refuse_while_workers_run(
                &mut conn,
                "partitioning jobq_transitions (maintenance.history_partition) copies the table",
            )
            .await?;
            store::partition_history(&mut conn, &bounds, decide::name).await?;
            report.converted = true;
            report.added = bounds.len() + 1;
        }
        (HistoryLayout::ByTime(_), None) => {
            let mut conn = pool.acquire().await?;
            jobq_producer::refuse_while_workers_run(
                &mut conn,
                "making jobq_transitions one table again (maintenance.history_partition = \"0s\") \
                 copies the table",
            )
            .await?;
            store::unpartition_history(&mut conn).await?;
            report.converted = true;
        }
        (HistoryLayout::ByTime(parts), Some(width)) => {
            let plan = decide::plan(
                store::server_now(pool).await?,
                &parts,
                &rolling(config, width),
            )
            .map_err(|why| Error::Invalid(format!("jobq_transitions: {why}")))?;
            let mut conn = pool.acquire().await?;
            apply(&mut conn, &plan).await?;
            report.added = plan.add.len();
            report.dropped = plan.drop.len();
        }
    }
    match store::history_layout(pool).await? {
        HistoryLayout::ByTime(parts) => {
            report.partitioned = true;
            report.partitions = parts.len();
        }
        _ => report.partitioned = false,
    }
    Ok(report)
}

/// The rolling rules for a width (validated whole hours) and the configured retention.
fn rolling(config: &Config, width: Duration) -> Rolling {
    Rolling {
        width: TimeDelta::from_std(width).unwrap_or(TimeDelta::days(1)),
        retention: config
            .history_retention()
            .map(|r| TimeDelta::from_std(r).unwrap_or(TimeDelta::MAX)),
    }
}

/// Creates the partitions of `plan` ahead, then drops its old ones.
async fn apply(conn: &mut sqlx::MySqlConnection, plan: &Plan) -> Result<()> {
    if !plan.add.is_empty() {
        store::add_partitions(conn, &plan.add, decide::name).await?;
    }
    if !plan.drop.is_empty() {
        store::drop_partitions(conn, &plan.drop).await?;
    }
    Ok(())
}

/// What a leader's roll found: whether history is partitioned by time (so retention leaves
/// history rows to the partitions), and what it did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Rolled {
    pub(crate) by_time: bool,
    pub(crate) plan: Plan,
}

/// The leader's roll: on a table partitioned by time, creates partitions ahead and drops those
/// past retention, with a short wait for the metadata lock (on a connection of its own, closed
/// after). The width is the configured one, or, where this process has none configured, the
/// table's own (its two newest bounds apart). A plain table is left alone.
pub(crate) async fn roll(pool: &MySqlPool, config: &Config) -> Result<Rolled> {
    let parts = match store::history_layout(pool).await? {
        HistoryLayout::ByTime(parts) => parts,
        _ => return Ok(Rolled::default()),
    };
    let width = config.history_partition().or_else(|| {
        let bounds: Vec<_> = parts.iter().filter_map(|p| p.below).collect();
        match bounds.as_slice() {
            [.., a, b] => (*b - *a).to_std().ok().filter(|d| !d.is_zero()),
            _ => None,
        }
    });
    let Some(width) = width else {
        return Ok(Rolled {
            by_time: true,
            plan: Plan::default(),
        });
    };
    let plan = decide::plan(
        store::server_now(pool).await?,
        &parts,
        &rolling(config, width),
    )
    .map_err(|why| Error::Invalid(format!("jobq_transitions: {why}")))?;
    if !plan.is_empty() {
        let mut conn = crate::db::dedicated(pool, config.database().lock_wait_timeout_secs).await?;
        store::limit_ddl_wait(&mut conn, ROLL_WAIT_SECS).await?;
        let applied = apply(&mut conn, &plan).await;
        let _ = sqlx::Connection::close(conn).await;
        applied?;
    }
    Ok(Rolled {
        by_time: true,
        plan,
    })
}
