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
    /// Why the roll failed, when the configuration asked for no layout (the leader rolls
    /// again later); with a width configured, a failed roll fails the call.
    pub roll_failed: Option<String>,
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
            let rolling = Rolling {
                width: width_of(width),
                retention: retention(config, true),
            };
            let now = store::server_now(pool).await?;
            let oldest = store::oldest_history(pool).await?;
            let bounds = decide::initial(now, oldest, &rolling);
            convert(pool, config, Conversion::ToPartitions(bounds)).await?;
            report.converted = true;
        }
        (HistoryLayout::ByTime(_), HistoryPartitioning::OneTable) => {
            convert(pool, config, Conversion::ToOneTable).await?;
            report.converted = true;
        }
        (HistoryLayout::ByTime(parts), asked) => {
            // `jobq migrate` moves rows out of pmax however many, with the workers stopped
            // when they are many (the way to catch up after a long absence of leaders).
            let rolled = roll_parts(pool, config, parts, Roller::Migrate).await;
            report.added = rolled.plan.add.len();
            report.dropped = rolled.plan.drop.len();
            if let Some(e) = rolled.error {
                // Asked for nothing (the key unset), a roll that failed is the leader's to
                // do again: a warning, not a failed migration.
                if asked == HistoryPartitioning::AsItIs {
                    report.roll_failed = Some(e.to_string());
                } else {
                    return Err(e);
                }
            }
        }
    }
    if let HistoryLayout::ByTime(parts) = store::history_layout(pool).await? {
        report.partitioned = true;
        report.partitions = parts.len();
    }
    Ok(report)
}

/// A change of layout, which copies the table.
enum Conversion {
    /// To partitions below these bounds (and `pmax`).
    ToPartitions(Vec<chrono::NaiveDateTime>),
    /// Back to one table.
    ToOneTable,
}

/// Converts the table as `to` says, on a connection of its own waiting at most
/// [`CONVERT_WAIT_SECS`] for the metadata lock, refusing while a worker runs.
async fn convert(pool: &MySqlPool, config: &Config, to: Conversion) -> Result<()> {
    let action = match to {
        Conversion::ToPartitions(_) => {
            "partitioning jobq_transitions (maintenance.history_partition) copies the table"
        }
        Conversion::ToOneTable => {
            "making jobq_transitions one table again (maintenance.history_partition = \"0s\") \
             copies the table"
        }
    };
    let mut conn = ddl_connection(pool, config, CONVERT_WAIT_SECS).await?;
    let done = async {
        jobq_producer::refuse_while_workers_run(&mut conn, action).await?;
        match &to {
            Conversion::ToPartitions(bounds) => {
                store::partition_history(&mut conn, bounds, decide::name).await?
            }
            Conversion::ToOneTable => store::unpartition_history(&mut conn).await?,
        }
        Ok::<(), Error>(())
    }
    .await;
    let _ = sqlx::Connection::close(conn).await;
    done
}

/// A connection of its own for DDL, whose ALTERs wait at most `secs` for the metadata lock.
async fn ddl_connection(pool: &MySqlPool, config: &Config, secs: u32) -> Result<MySqlConnection> {
    let db = config.database();
    let mut conn = tokio::time::timeout(
        db.connect_timeout,
        crate::db::dedicated(pool, db.lock_wait_timeout_secs),
    )
    .await
    .map_err(|_| Error::Deadline(db.connect_timeout))??;
    store::limit_ddl_wait(&mut conn, secs).await?;
    Ok(conn)
}

fn width_of(width: std::time::Duration) -> TimeDelta {
    TimeDelta::from_std(width).unwrap_or(TimeDelta::days(1))
}

/// How long history is kept by a roll: the configured retention when the width came from the
/// configuration (`configured`); else forever, since a process that was not told the layout
/// does not know the retention meant for it and only keeps partitions ahead.
fn retention(config: &Config, configured: bool) -> Option<TimeDelta> {
    if !configured {
        return None;
    }
    config
        .history_retention()
        .map(|r| TimeDelta::from_std(r).unwrap_or(TimeDelta::MAX))
}

/// What a roll found and did: whether history is partitioned by time (so retention leaves
/// history rows to the partitions, whatever happened after the layout was read), the plan it
/// applied, whether the configuration knew the layout, and the error that stopped it, if any.
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

/// Who rolls: the leader (a short metadata-lock wait, at most [`LEADER_MOVES_AT_MOST`] rows
/// moved out of `pmax`) or `jobq migrate` (moving more only with the workers stopped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Roller {
    Leader,
    Migrate,
}

/// The leader's roll: on a table partitioned by time, creates partitions ahead and drops those
/// past retention (see [`rolling`]), each ALTER waiting at most [`ROLL_WAIT_SECS`] for the
/// metadata lock. A plain table is left alone. Fails only when the layout cannot be read.
pub(crate) async fn roll(pool: &MySqlPool, config: &Config) -> Result<Rolled> {
    match store::history_layout(pool).await? {
        HistoryLayout::ByTime(parts) => Ok(roll_parts(pool, config, parts, Roller::Leader).await),
        _ => Ok(Rolled::default()),
    }
}

/// Errors that mean another process changed the partitions meanwhile (so planning again from
/// what is there now makes sense): a duplicate partition name, a partition missing from a
/// drop list, an unknown partition, a range not strictly increasing, a reorganize that
/// changes the ranges.
fn rolled_meanwhile(e: &Error) -> bool {
    const CODES: [u16; 5] = [1517, 1507, 1735, 1493, 1520];
    matches!(e, Error::Database(d) if jobq_sqlkit::number(d).is_some_and(|n| CODES.contains(&n)))
}

/// A roll of `parts` by `who`. The adds and the drops are applied apart (a failed add does not
/// hold retention up); when one fails because another process rolled at the same moment, the
/// layout is read and planned again, once. Any other failure (a lock wait that ran out) ends
/// the roll, to be tried again at the next.
async fn roll_parts(
    pool: &MySqlPool,
    config: &Config,
    parts: Vec<Partition>,
    who: Roller,
) -> Rolled {
    let configured = config.history_partition().map(width_of);
    let mut rolled = Rolled {
        by_time: true,
        configured: configured.is_some(),
        ..Rolled::default()
    };
    let Some(width) = configured.or_else(|| decide::width_of(&parts)) else {
        return rolled;
    };
    let rules = Rolling {
        width,
        retention: retention(config, configured.is_some()),
    };
    if let Err(e) = roll_with(pool, config, parts, who, &rules, &mut rolled).await {
        rolled.error = Some(e);
    }
    rolled
}

async fn roll_with(
    pool: &MySqlPool,
    config: &Config,
    mut parts: Vec<Partition>,
    who: Roller,
    rules: &Rolling,
    rolled: &mut Rolled,
) -> Result<()> {
    for attempt in 0..2 {
        let mut plan = decide::plan(store::server_now(pool).await?, &parts, rules)
            .map_err(|why| Error::Invalid(format!("jobq_transitions: {why}")))?;
        let mut wait = ROLL_WAIT_SECS;
        if !plan.add.is_empty() {
            let waiting = store::rows_past_bounds(pool, LEADER_MOVES_AT_MOST + 1).await?;
            if waiting > LEADER_MOVES_AT_MOST {
                match who {
                    Roller::Leader => {
                        rolled.left_in_pmax = Some(waiting);
                        plan.add.clear();
                    }
                    Roller::Migrate => {
                        let mut conn = pool.acquire().await?;
                        jobq_producer::refuse_while_workers_run(
                            &mut conn,
                            &format!(
                                "moving the more than {LEADER_MOVES_AT_MOST} history rows written \
                                 past the last partition (pmax) into partitions copies them"
                            ),
                        )
                        .await?;
                        wait = CONVERT_WAIT_SECS;
                    }
                }
            }
        }
        if plan.is_empty() {
            return Ok(());
        }
        let mut conn = ddl_connection(pool, config, wait).await?;
        let mut error = None;
        if !plan.add.is_empty() {
            if let Err(e) = store::add_partitions(&mut conn, &plan.add, decide::name).await {
                error = Some(Error::from(e));
                plan.add.clear();
            }
        }
        // After a lock wait that ran out, the drop would wait as long again: not now.
        let gave_up = error.as_ref().is_some_and(|e| !rolled_meanwhile(e));
        if gave_up {
            plan.drop.clear();
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
            None => return Ok(()),
            Some(e) if attempt == 1 || !rolled_meanwhile(&e) => return Err(e),
            Some(_) => match store::history_layout(pool).await? {
                HistoryLayout::ByTime(now) => parts = now,
                _ => return Ok(()),
            },
        }
    }
    Ok(())
}
