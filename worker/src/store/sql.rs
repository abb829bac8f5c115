//! The literal layer: the only way values enter SQL text.
//!
//! The hot paths send several statements in one round trip as text (no server-side prepared
//! statements), so some values are spliced into the SQL. Only types that can hold nothing but
//! validated content may be spliced: [`SqlText`] is implemented for queue and kind names, worker
//! ids and lock names, each checked when it was made, and numbers and tokens are formatted by
//! the functions here. Everything else is bound with `?`.

use std::ops::DerefMut;

use futures::future::BoxFuture;
use jobq_producer::{KindName, QueueName};
use sqlx::mysql::MySqlRow;
use sqlx::pool::PoolConnection;
use sqlx::{MySql, MySqlConnection};

use crate::ids::{LockName, WorkerId};

use super::Token;

/// Text that may be spliced into SQL as a quoted literal: validated names only.
pub(crate) trait SqlText: sealed::Sealed {
    /// The validated text.
    fn sql_text(&self) -> &str;
}

mod sealed {
    pub(crate) trait Sealed {}
    impl Sealed for jobq_producer::QueueName {}
    impl Sealed for jobq_producer::KindName {}
    impl Sealed for crate::ids::WorkerId {}
    impl Sealed for crate::ids::LockName {}
}

impl SqlText for QueueName {
    fn sql_text(&self) -> &str {
        self.as_str()
    }
}
impl SqlText for KindName {
    fn sql_text(&self) -> &str {
        self.as_str()
    }
}
impl SqlText for WorkerId {
    fn sql_text(&self) -> &str {
        self.as_str()
    }
}
impl SqlText for LockName {
    fn sql_text(&self) -> &str {
        self.as_str()
    }
}

/// Quotes a validated name as a string literal. The types behind [`SqlText`] admit only
/// `[A-Za-z0-9_.:-]`; the escaping is a second line of defence.
pub(crate) fn lit(v: &impl SqlText) -> String {
    quote(v.sql_text())
}

fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            '\0' => out.push_str("\\0"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// A token as a hex literal, `X'…'`.
pub(crate) fn hex(t: &Token) -> String {
    jobq_sqlkit::hex_literal(t)
}

/// Text of any content (a concurrency key) as a hex literal of its UTF-8 bytes, `X'…'`, so
/// nothing in it can end the literal. The key columns are VARBINARY: compared byte for byte.
pub(crate) fn text_lit(s: &str) -> String {
    jobq_sqlkit::hex_literal(s.as_bytes())
}

/// Ids as a comma-separated list of integer literals.
pub(crate) fn id_list(ids: impl Iterator<Item = u64>) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for (i, id) in ids.enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{id}");
    }
    out
}

/// `n` placeholders: `?,?,?`.
pub(crate) fn marks(n: usize) -> String {
    let mut s = String::with_capacity(n * 2);
    for i in 0..n {
        s.push_str(if i == 0 { "?" } else { ",?" });
    }
    s
}

/// Rows of a multi-statement query and the affected-row count of each statement in order.
pub(crate) type Batch = (Vec<MySqlRow>, Vec<u64>);

/// Runs a multi-statement text query in one round trip.
pub(crate) fn batch<'a>(
    conn: &'a mut MySqlConnection,
    sql: &'a str,
) -> BoxFuture<'a, Result<Batch, sqlx::Error>> {
    // Boxed with explicit lifetimes: an `async fn` here trips rustc's higher-ranked lifetime
    // inference for sqlx's `Executor` when the caller's future must be `Send`.
    Box::pin(async move {
        use futures::TryStreamExt;
        use sqlx::Executor;
        let mut rows = Vec::new();
        let mut counts = Vec::new();
        let mut stream = conn.fetch_many(sqlx::raw_sql(sql));
        while let Some(item) = stream.try_next().await? {
            match item {
                sqlx::Either::Left(done) => counts.push(done.rows_affected()),
                sqlx::Either::Right(row) => rows.push(row),
            }
        }
        Ok((rows, counts))
    })
}

/// A connection that can host a raw transaction, and be thrown away if one is left open.
pub(crate) trait Session: DerefMut<Target = MySqlConnection> + Send {
    /// Marks the connection as unusable: it must never serve anyone again.
    fn discard(&mut self);
}

impl Session for PoolConnection<MySql> {
    fn discard(&mut self) {
        // Closed instead of returned: the pool never hands out a session inside a transaction.
        self.close_on_drop();
    }
}

/// A connection of its own (outside the pool) for a loop that must not queue behind handlers
/// for a pooled one (the heartbeat, a named-lock claimer). Once a raw transaction on it could not be ended it is
/// [`broken`](Dedicated::is_broken) and must be dropped.
pub(crate) struct Dedicated {
    conn: MySqlConnection,
    broken: bool,
}

impl Dedicated {
    pub(crate) fn new(conn: MySqlConnection) -> Self {
        Dedicated {
            conn,
            broken: false,
        }
    }

    /// Whether the session may have been left inside a transaction.
    pub(crate) fn is_broken(&self) -> bool {
        self.broken
    }
}

impl std::ops::Deref for Dedicated {
    type Target = MySqlConnection;
    fn deref(&self) -> &MySqlConnection {
        &self.conn
    }
}

impl DerefMut for Dedicated {
    fn deref_mut(&mut self) -> &mut MySqlConnection {
        &mut self.conn
    }
}

impl Session for Dedicated {
    fn discard(&mut self) {
        self.broken = true;
    }
}

/// How long one round trip of a raw transaction may go unanswered. Its statements wait at most
/// `innodb_lock_wait_timeout` (5 s in worker sessions) for a lock each, so an answer much later
/// than that is not coming: the round trip fails, the session is discarded (closing it makes
/// the server roll the transaction back), and the caller's error path runs, instead of a
/// transaction held open for as long as the connection lives.
pub(crate) const ROUND_TRIP_BUDGET: std::time::Duration = std::time::Duration::from_secs(15);

/// A transaction begun with raw `START TRANSACTION` text (so it can share a round trip with the
/// statements after it). sqlx does not know it is open, so this guard does: unless it ends with
/// a successful `COMMIT` or `ROLLBACK`, the session is discarded on drop, including when the
/// future running it is cancelled. A connection can never go back to its pool mid-transaction.
pub(crate) struct RawTx<'s, S: Session> {
    session: &'s mut S,
    open: bool,
    /// A round trip got no answer within the budget: never send anything more on it.
    hung: bool,
}

impl<'s, S: Session> RawTx<'s, S> {
    /// `START TRANSACTION; <sql>` in one round trip. On error the transaction is rolled back.
    pub(crate) async fn begin(session: &'s mut S, sql: &str) -> Result<(Self, Batch), sqlx::Error> {
        let mut tx = RawTx {
            session,
            open: true,
            hung: false,
        };
        let text = format!("START TRANSACTION; {sql}");
        let b = tx.round_trip(&text).await?;
        Ok((tx, b))
    }

    /// Runs `sql`, which must end the transaction (`…; COMMIT` or `ROLLBACK`). On error the
    /// transaction is rolled back.
    pub(crate) async fn end(mut self, sql: &str) -> Result<Batch, sqlx::Error> {
        let b = self.round_trip(sql).await?;
        self.open = false;
        Ok(b)
    }

    /// Runs `sql` inside the open transaction. On error the transaction is rolled back and the
    /// guard consumed with it.
    pub(crate) async fn step(mut self, sql: &str) -> Result<(Self, Batch), sqlx::Error> {
        let b = self.round_trip(sql).await?;
        Ok((self, b))
    }

    /// One round trip within [`ROUND_TRIP_BUDGET`]; on error the transaction is rolled back
    /// (not on a session that did not answer: that one is only discarded).
    async fn round_trip(&mut self, sql: &str) -> Result<Batch, sqlx::Error> {
        match tokio::time::timeout(ROUND_TRIP_BUDGET, batch(&mut *self.session, sql)).await {
            Ok(Ok(b)) => Ok(b),
            Ok(Err(e)) => {
                self.rollback().await;
                Err(e)
            }
            Err(_) => {
                self.hung = true;
                tracing::warn!(budget = ?ROUND_TRIP_BUDGET,
                    "a transaction's round trip got no answer in time; dropping its session");
                Err(sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no answer from the database within the round-trip budget",
                )))
            }
        }
    }

    /// Marks the transaction ended by a `COMMIT` that was part of the statements already sent.
    pub(crate) fn committed(mut self) {
        self.open = false;
    }

    /// Ends the transaction with `ROLLBACK` (1205 leaves it open and holding its locks). If the
    /// rollback itself fails, or does not answer within the budget, or the session already
    /// failed to answer, the session is discarded when the guard drops.
    pub(crate) async fn rollback(&mut self) {
        if self.hung {
            return;
        }
        match tokio::time::timeout(ROUND_TRIP_BUDGET, batch(&mut *self.session, "ROLLBACK")).await {
            Ok(Ok(_)) => self.open = false,
            Ok(Err(_)) => {}
            Err(_) => self.hung = true,
        }
    }
}

impl<S: Session> Drop for RawTx<'_, S> {
    fn drop(&mut self) {
        if self.open {
            self.session.discard();
        }
    }
}

/// A transaction on a pooled connection of its own ([`jobq_sqlkit::OwnedTx`]): ended by a
/// confirmed COMMIT or ROLLBACK within their budget, or its connection is closed, so a pass or
/// a write cut off by a timeout never leaves a transaction open in the pool.
pub(crate) async fn begin(pool: &sqlx::MySqlPool) -> Result<OwnedTx, sqlx::Error> {
    OwnedTx::begin(pool).await
}

pub(crate) use jobq_sqlkit::OwnedTx;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_escapes_whatever_it_is_given() {
        assert_eq!(quote("default"), "'default'");
        assert_eq!(quote("a'b"), "'a''b'");
        assert_eq!(quote("a\\'b"), "'a\\\\''b'");
        assert_eq!(quote("nul\0"), "'nul\\0'");
        let q = QueueName::new("mail.high:2-x_y").unwrap();
        assert_eq!(lit(&q), "'mail.high:2-x_y'");
        let k = KindName::new("send_email").unwrap();
        assert_eq!(lit(&k), "'send_email'");
    }

    #[test]
    fn numbers_tokens_and_placeholders() {
        assert_eq!(hex(&[0u8; 16]), format!("X'{}'", "0".repeat(32)));
        let mut t = [0u8; 16];
        t[0] = 0xab;
        t[15] = 0x01;
        assert_eq!(hex(&t), format!("X'ab{}01'", "0".repeat(28)));
        assert_eq!(
            id_list([1u64, 22, u64::MAX].into_iter()),
            "1,22,18446744073709551615"
        );
        assert_eq!(id_list(std::iter::empty()), "");
        assert_eq!(marks(3), "?,?,?");
        assert_eq!(text_lit("a'é"), "X'6127c3a9'");
        assert_eq!(text_lit(""), "X''");
        assert_eq!(marks(0), "");
    }
}
