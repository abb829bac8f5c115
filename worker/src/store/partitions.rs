//! The history table's partitions (`maintenance.history_partition`, README "History at
//! scale"): what the server lists for `jobq_transitions`, and the DDL that converts it, creates
//! partitions ahead (split off `pmax`, empty, so no rows are copied) and drops old ones (a file
//! removed, no row deleted). Which partitions is decided in `machine::partitions`.
//!
//! An ALTER waits for the metadata lock of every transaction using the table, and statements
//! arriving meanwhile queue behind it; the runtime runs these on a connection of its own with
//! a short `lock_wait_timeout` ([`limit_ddl_wait`]), so a roll gives up (and is tried again
//! later) rather than hold the writers up behind a long transaction.

use chrono::NaiveDateTime;
use sqlx::{Executor, MySqlConnection, MySqlPool};

use crate::model::{Partition, MAX_PARTITION};

/// How `jobq_transitions` is laid out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum HistoryLayout {
    /// One table, not partitioned.
    Plain,
    /// Partitioned by range of `at`, as jobq makes it (the partitions in order).
    ByTime(Vec<Partition>),
    /// Partitioned some other way (by hand): jobq leaves it alone. The text says how.
    Other(String),
}

/// A row of `information_schema.PARTITIONS`: name, method, expression, description.
type PartitionRow = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// How `jobq_transitions` is laid out now.
pub(crate) async fn history_layout(pool: &MySqlPool) -> Result<HistoryLayout, sqlx::Error> {
    // language=MySQL
    // An unpartitioned table has one row, with NULL names.
    let rows: Vec<PartitionRow> = sqlx::query_as(
        "SELECT CAST(PARTITION_NAME AS CHAR), CAST(PARTITION_METHOD AS CHAR), \
                    CAST(PARTITION_EXPRESSION AS CHAR), CAST(PARTITION_DESCRIPTION AS CHAR) \
             FROM information_schema.PARTITIONS \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'jobq_transitions' \
             ORDER BY PARTITION_ORDINAL_POSITION",
    )
    .fetch_all(pool)
    .await?;
    let Some((first_name, method, expr, _)) = rows.first() else {
        return Err(sqlx::Error::Protocol(
            "jobq_transitions is missing: run `jobq migrate`".into(),
        ));
    };
    if first_name.is_none() {
        return Ok(HistoryLayout::Plain);
    }
    let method = method.as_deref().unwrap_or("");
    let expr = expr.as_deref().unwrap_or("");
    if method != "RANGE COLUMNS" || expr.trim_matches('`') != "at" {
        return Ok(HistoryLayout::Other(format!(
            "partitioned by {method} ({expr})"
        )));
    }
    let mut parts = Vec::with_capacity(rows.len());
    for (name, _, _, description) in rows {
        let name = name.unwrap_or_default();
        let description = description.unwrap_or_default();
        let below = match description.as_str() {
            "MAXVALUE" => None,
            d => {
                match NaiveDateTime::parse_from_str(d.trim_matches('\''), "%Y-%m-%d %H:%M:%S%.f") {
                    Ok(t) => Some(t),
                    Err(_) => {
                        return Ok(HistoryLayout::Other(format!(
                            "partition {name} is bounded by {d}, not a time"
                        )))
                    }
                }
            }
        };
        parts.push(Partition { name, below });
    }
    Ok(HistoryLayout::ByTime(parts))
}

/// Whether `jobq_transitions` is partitioned by time as jobq makes it (history then goes by
/// whole partitions, not with its jobs).
pub(crate) async fn history_by_time(pool: &MySqlPool) -> Result<bool, sqlx::Error> {
    Ok(matches!(
        history_layout(pool).await?,
        HistoryLayout::ByTime(_)
    ))
}

/// The database's clock (UTC), which stamps `at`.
pub(crate) async fn server_now(pool: &MySqlPool) -> Result<NaiveDateTime, sqlx::Error> {
    // language=MySQL
    sqlx::query_scalar("SELECT UTC_TIMESTAMP()")
        .fetch_one(pool)
        .await
}

/// When the oldest history was written, as near as the start of the primary key says (ids
/// grow with time): O(1), where `MIN(at)` would scan an unindexed column.
pub(crate) async fn oldest_history(pool: &MySqlPool) -> Result<Option<NaiveDateTime>, sqlx::Error> {
    // language=MySQL
    sqlx::query_scalar("SELECT at FROM jobq_transitions ORDER BY id LIMIT 1")
        .fetch_optional(pool)
        .await
}

/// How many rows `pmax` holds, counting up to `limit` (rows there were written past every
/// bound: a roll that splits it copies them, blocking writes meanwhile).
pub(crate) async fn rows_past_bounds(pool: &MySqlPool, limit: u64) -> Result<u64, sqlx::Error> {
    // language=MySQL
    let n: i64 = sqlx::query_scalar(&format!(
        "SELECT COUNT(*) FROM (SELECT 1 FROM jobq_transitions PARTITION (`{MAX_PARTITION}`) LIMIT ?) t"
    ))
    .bind(limit)
    .fetch_one(pool)
    .await?;
    Ok(n.max(0) as u64)
}

/// Makes the ALTERs of `conn` wait at most `secs` for the table's metadata lock.
pub(crate) async fn limit_ddl_wait(
    conn: &mut MySqlConnection,
    secs: u32,
) -> Result<(), sqlx::Error> {
    // language=MySQL
    conn.execute(sqlx::raw_sql(&format!(
        "SET SESSION lock_wait_timeout = {}",
        secs.max(1)
    )))
    .await?;
    Ok(())
}

/// The partition list of `bounds` (ascending), then `pmax`.
fn definitions(bounds: &[NaiveDateTime], name: impl Fn(NaiveDateTime) -> String) -> String {
    let mut defs: Vec<String> = bounds
        .iter()
        .map(|b| {
            format!(
                "PARTITION `{}` VALUES LESS THAN ('{}')",
                name(*b),
                b.format("%Y-%m-%d %H:%M:%S")
            )
        })
        .collect();
    defs.push(format!(
        "PARTITION `{MAX_PARTITION}` VALUES LESS THAN (MAXVALUE)"
    ));
    defs.join(", ")
}

/// Converts `jobq_transitions` to partitions below `bounds`, named by `name`, and `pmax`.
/// Copies the table. The primary key becomes (id, at): a partitioned table's unique keys
/// must hold the column it is partitioned by (ids stay unique by `AUTO_INCREMENT`).
pub(crate) async fn partition_history(
    conn: &mut MySqlConnection,
    bounds: &[NaiveDateTime],
    name: impl Fn(NaiveDateTime) -> String,
) -> Result<(), sqlx::Error> {
    // language=MySQL
    let sql = format!(
        "ALTER TABLE jobq_transitions DROP PRIMARY KEY, ADD PRIMARY KEY (id, at) \
         PARTITION BY RANGE COLUMNS(at) ({})",
        definitions(bounds, name)
    );
    conn.execute(sqlx::raw_sql(&sql)).await?;
    Ok(())
}

/// Makes `jobq_transitions` one table again (copies it; the primary key stays (id, at)).
pub(crate) async fn unpartition_history(conn: &mut MySqlConnection) -> Result<(), sqlx::Error> {
    // language=MySQL
    conn.execute(sqlx::raw_sql(
        "ALTER TABLE jobq_transitions REMOVE PARTITIONING",
    ))
    .await?;
    Ok(())
}

/// Creates partitions below `bounds` (ascending, all past the last bound) by splitting `pmax`:
/// empty while the roll keeps ahead of the clock, so no row moves.
pub(crate) async fn add_partitions(
    conn: &mut MySqlConnection,
    bounds: &[NaiveDateTime],
    name: impl Fn(NaiveDateTime) -> String,
) -> Result<(), sqlx::Error> {
    // language=MySQL
    let sql = format!(
        "ALTER TABLE jobq_transitions REORGANIZE PARTITION `{MAX_PARTITION}` INTO ({})",
        definitions(bounds, name)
    );
    conn.execute(sqlx::raw_sql(&sql)).await?;
    Ok(())
}

/// Drops the partitions `names` with their rows: O(1) per partition, no row deleted one by one,
/// no purge lag.
pub(crate) async fn drop_partitions(
    conn: &mut MySqlConnection,
    names: &[String],
) -> Result<(), sqlx::Error> {
    if let Some(bad) = names
        .iter()
        .find(|n| n.contains('`') || n.as_str() == MAX_PARTITION)
    {
        return Err(sqlx::Error::Protocol(format!(
            "refusing to drop history partition {bad:?}"
        )));
    }
    let list: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    // language=MySQL
    let sql = format!(
        "ALTER TABLE jobq_transitions DROP PARTITION {}",
        list.join(", ")
    );
    conn.execute(sqlx::raw_sql(&sql)).await?;
    Ok(())
}
