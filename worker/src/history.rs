//! The history layout (`maintenance.history_partition`, README "History at scale"): `jobq
//! migrate` converts `jobq_transitions` to partitions by time (or back) with
//! [`apply_history_layout`], and the maintenance leader rolls them ([`roll`]): partitions
//! created ahead of the clock, partitions past `history_retention` dropped whole. Which
//! partitions is decided in `machine::partitions`; the DDL is in `store::partitions`.
//!
//! Every ALTER runs on a connection of its own with a bounded wait for the table's metadata
//! lock: statements arriving while an ALTER waits queue behind it, so the wait is short for a
//! roll (it is tried again at the next) and longer, but bounded, for a conversion (which runs
//! with the workers stopped).

use chrono::TimeDelta;
use jobq_config::HistoryPartitioning;
use sqlx::{MySqlConnection, MySqlPool};

use crate::machine::partitions::{self as decide, Plan, Rolling};
use crate::model::Partition;
use crate::store::{self, HistoryLayout};
use crate::{Config, Error, Result};

/// How long a roll's ALTER waits for the table's metadata lock (every transaction writing
/// history holds it until it ends; statements arriving meanwhile wait behind the ALTER).
const ROLL_WAIT_SECS: u32 = 2;
/// How long a conversion's ALTER waits for it (workers are stopped; a reader may not be).
const CONVERT_WAIT_SECS: u32 = 30;
/// The most rows in `pmax` (written while no roll kept ahead of the clock) the leader moves
/// into a new partition itself: the move copies them with writes blocked. Past this,
/// `jobq migrate` does it.
const LEADER_MOVES_AT_MOST: u64 = 100_000;

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
/// for `0s` (either copies the table, so it refuses while a worker runs), and on a table
/// partitioned by jobq creates partitions ahead and, with a width configured, drops those past
/// `history_retention`, as the leader does. Unset, the layout is left as it is. Run by `jobq
/// migrate` after the migrations.
pub async fn apply_history_layout(pool: &MySqlPool, config: &Config) -> Result<HistoryReport> {
    let layout = store::history_layout(pool).await?;
    let asked = config.history_partitioning();
    let mut report = HistoryReport::default();
    match (layout, asked) {
        (HistoryLayout::Other(_), HistoryPartitioning::AsItIs)
        | (HistoryLayout::Plain, HistoryPartitioning::AsItIs | HistoryPartitioning::OneTable) => {}
        (HistoryLayout::Other(how), _) => {
            return Err(Error::Invalid(format!(
                "jobq_transitions is {how}, a layout jobq did not make; make it one table again \
                 (ALTER TABLE jobq_transitions REMOVE PARTITIONING) for jobq to manage it, or \
                 leave maintenance.history_partition unset"
            )))
        }
        (HistoryLayout::Plain, HistoryPartitioning::Every(width)) => {
            let rolling = rolling(config, Some(width_of(width)));
            let now = store::server_now(pool).await?;
            let oldest = store::oldest_history(pool).await?;
            let bounds = decide::initial(now, oldest, &rolling);
            let mut conn = ddl_connection(pool, config, CONVERT_WAIT_SECS).await?;
            let done = async {
                jobq_producer::refuse_while_workers_run(
                    &mut conn,
                    "partitioning jobq_transitions (maintenance.history_partition) copies the table",
                )
                .await?;
                store::partition_history(&mut conn, &bounds, decide::name).await?;
                Ok::<(), Error>(())
            }
            .await;
            let _ = sqlx::Connection::close(conn).await;
            done?;
            report.converted = true;
        }
        (HistoryLayout::ByTime(_), HistoryPartitioning::OneTable) => {
            let mut conn = ddl_connection(pool, config, CONVERT_WAIT_SECS).await?;
            let done = async {
                jobq_producer::refuse_while_workers_run(
                    &mut conn,
                    "making jobq_transitions one table again (maintenance.history_partition = \
                     \"0s\") copies the table",
                )
                .await?;
                store::unpartition_history(&mut conn).await?;
                Ok::<(), Error>(())
            }
            .await;
            let _ = sqlx::Connection::close(conn).await;
            done?;
            report.converted = true;
        }
        (HistoryLayout::ByTime(parts), _) => {
            // `jobq migrate` moves rows out of pmax however many (it is the documented way
            // to catch up after a long absence of leaders).
            let rolled = roll_parts(pool, config, parts, u64::MAX).await?;
            if let Some(e) = rolled.error {
                return Err(e);
            }
            report.added = rolled.plan.add.len();
            report.dropped = rolled.plan.drop.len();
        }
    }
    if let HistoryLayout::ByTime(parts) = store::history_layout(pool).await? {
        report.partitioned = true;
        report.partitions = parts.len();
    }
    Ok(report)
}

/// A connection of its own for DDL, whose ALTERs wait at most `secs` for the metadata lock.
async fn ddl_connection(pool: &MySqlPool, config: &Config, secs: u32) -> Result<MySqlConnection> {
    let mut conn = crate::db::dedicated(pool, config.database().lock_wait_timeout_secs).await?;
    store::limit_ddl_wait(&mut conn, secs).await?;
    Ok(conn)
}

fn width_of(width: std::time::Duration) -> TimeDelta {
    TimeDelta::from_std(width).unwrap_or(TimeDelta::days(1))
}

/// The rolling rules for a width, and the configured retention when `width` came from the
/// configuration: a process that was not told the layout drops nothing (it does not know the
/// retention meant for it), it only keeps partitions ahead.
fn rolling(config: &Config, configured: Option<TimeDelta>) -> Rolling {
    match configured {
        Some(width) => Rolling {
            width,
            retention: config
                .history_retention()
                .map(|r| TimeDelta::from_std(r).unwrap_or(TimeDelta::MAX)),
        },
        None => Rolling {
            width: TimeDelta::days(1),
            retention: None,
        },
    }
}

/// What a roll found and did: whether history is partitioned by time (so retention leaves
/// history rows to the partitions, even when the DDL failed), the plan it applied, whether the
/// configuration knew the layout, and the DDL's error, if any.
#[derive(Debug, Default)]
pub(crate) struct Rolled {
    pub(crate) by_time: bool,
    pub(crate) plan: Plan,
    /// Whether this process's configuration sets the width (else it dropped nothing).
    pub(crate) configured: bool,
    /// Rows waiting in `pmax`, left there (more than the leader moves itself).
    pub(crate) left_in_pmax: Option<u64>,
    pub(crate) error: Option<Error>,
}

/// The leader's roll: on a table partitioned by time, creates partitions ahead and drops those
/// past retention (see [`rolling`]), each ALTER waiting at most [`ROLL_WAIT_SECS`] for the
/// metadata lock. A plain table is left alone.
pub(crate) async fn roll(pool: &MySqlPool, config: &Config) -> Result<Rolled> {
    match store::history_layout(pool).await? {
        HistoryLayout::ByTime(parts) => roll_parts(pool, config, parts, LEADER_MOVES_AT_MOST).await,
        _ => Ok(Rolled::default()),
    }
}

/// A roll of `parts`, moving at most `may_move` rows out of `pmax`. The adds and the drops are
/// applied apart (a failed add does not hold retention up); on a failure (another process
/// rolling at the same moment) the layout is read and planned again, once.
async fn roll_parts(
    pool: &MySqlPool,
    config: &Config,
    parts: Vec<Partition>,
    may_move: u64,
) -> Result<Rolled> {
    let configured = config.history_partition().map(width_of);
    let width = configured.or_else(|| decide::width_of(&parts));
    let Some(width) = width else {
        return Ok(Rolled {
            by_time: true,
            ..Rolled::default()
        });
    };
    let rules = Rolling {
        width,
        ..rolling(config, configured)
    };
    let mut rolled = Rolled {
        by_time: true,
        configured: configured.is_some(),
        ..Rolled::default()
    };
    let mut parts = parts;
    for attempt in 0..2 {
        let mut plan = decide::plan(store::server_now(pool).await?, &parts, &rules)
            .map_err(|why| Error::Invalid(format!("jobq_transitions: {why}")))?;
        if !plan.add.is_empty() {
            let waiting = store::rows_past_bounds(pool, may_move.saturating_add(1)).await?;
            if waiting > may_move {
                rolled.left_in_pmax = Some(waiting);
                plan.add.clear();
            }
        }
        if plan.is_empty() {
            rolled.plan = plan;
            return Ok(rolled);
        }
        let mut conn = ddl_connection(pool, config, ROLL_WAIT_SECS).await?;
        let mut error = None;
        if !plan.add.is_empty() {
            if let Err(e) = store::add_partitions(&mut conn, &plan.add, decide::name).await {
                error = Some(Error::from(e));
                plan.add.clear();
            }
        }
        if !plan.drop.is_empty() {
            if let Err(e) = store::drop_partitions(&mut conn, &plan.drop).await {
                error.get_or_insert(Error::from(e));
                plan.drop.clear();
            }
        }
        let _ = sqlx::Connection::close(conn).await;
        rolled.plan.add.extend(plan.add);
        rolled.plan.drop.extend(plan.drop);
        match error {
            None => return Ok(rolled),
            Some(e) if attempt == 1 => rolled.error = Some(e),
            Some(_) => match store::history_layout(pool).await? {
                HistoryLayout::ByTime(now) => parts = now,
                _ => return Ok(rolled),
            },
        }
    }
    Ok(rolled)
}
