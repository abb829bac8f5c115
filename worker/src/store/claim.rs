//! The claim: the one transaction that turns `available` jobs into this worker's `running` jobs,
//! and the named-lock statements that serialise it in `named-lock` mode.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use jobq_config::Rate;
use jobq_producer::{KindName, QueueName};
use sqlx::mysql::MySqlRow;
use sqlx::{MySqlConnection, Row};

use super::finish::{completion_sql, COMPLETION_UPDATE};
use super::keys::{
    lock_and_count_sql, promote_sql, running_now, store_windows_sql, waiting_probe_sql, KeyState,
    NOW_US,
};
use super::sql::{hex, id_list, lit, RawTx, Session};
use super::{micros, opt_text, text, Fence, Token};
use crate::ids::{LockName, WorkerId};
use crate::limits::{self, plan, Candidate, Limits, Verdict, Window};

/// A job this worker just claimed.
#[derive(Clone, Debug)]
pub(crate) struct ClaimedJob {
    pub(crate) id: u64,
    pub(crate) kind: KindName,
    pub(crate) payload: String,
    /// The attempt now running (already incremented).
    pub(crate) attempt: u32,
    pub(crate) max_attempts: u32,
    /// Microseconds from run-at to the claim, on the database clock.
    pub(crate) wait_us: i64,
    pub(crate) token: Token,
    /// Its concurrency key, if it has one.
    pub(crate) concurrency_key: Option<String>,
}

impl ClaimedJob {
    /// The fence every write about this claim carries.
    pub(crate) fn fence(&self) -> Fence {
        Fence {
            id: self.id,
            token: self.token,
        }
    }
}

/// Where a claim stopped reading, in claim order (`priority, run_at, id`): the last job it read.
/// The next claim of the same claimer may start after it (see `ClaimRequest::after`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub(crate) priority: i16,
    /// `run_at` in microseconds since 1970-01-01 00:00:00 (the column's own clock, UTC).
    pub(crate) run_at_us: i64,
    pub(crate) id: u64,
}

/// How concurrent claimers of one queue are kept apart.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ClaimLock<'a> {
    /// `FOR UPDATE SKIP LOCKED`: claimers skip each other's rows.
    SkipLocked,
    /// The caller holds this named lock, so no other jobq claimer competes; the lock is released
    /// in the claim's last round trip, after its COMMIT. The read still skips locked rows: a
    /// producer's uncommitted insert must not stall the queue behind it.
    NamedLock(&'a LockName),
}

/// One claim: up to `limit` available jobs of `queue`, whatever their kind (a job of a kind this
/// worker has no handler for fails its attempt visibly, see `runtime/executor.rs`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ClaimRequest<'a> {
    pub(crate) queue: &'a QueueName,
    pub(crate) limit: u32,
    pub(crate) worker: &'a WorkerId,
    pub(crate) lease: Duration,
    pub(crate) lock: ClaimLock<'a>,
    /// Successes of this worker to complete in the same transaction: their slots are the ones
    /// this claim fills, so the process never has more `running` rows than slots, and one
    /// commit serves both.
    pub(crate) complete: &'a [Fence],
    /// The concurrency keys of the carried completions, with the key limit of their kinds: the
    /// claim promotes their waiting jobs into the slots those completions free.
    pub(crate) freed: &'a BTreeMap<String, u32>,
    /// The results (job id, JSON text) of the carried completions that have one.
    pub(crate) results: &'a [(u64, String)],
    /// The queue's flow limits.
    pub(crate) flow: Flow<'a>,
    /// Read only jobs after this position in claim order: the entries before it were just
    /// claimed by this claimer, and until purge removes them the index still holds them,
    /// delete-marked, for every read from the head to step over (see `runtime/claimer.rs`
    /// for when a claim may skip the head).
    pub(crate) after: Option<&'a Cursor>,
}

/// No keys freed (a claim carrying no keyed completion).
#[cfg(test)]
pub(crate) static NO_KEYS: BTreeMap<String, u32> = BTreeMap::new();

/// A queue's flow limits, as the claim applies them.
#[derive(Clone, Copy)]
pub(crate) struct Flow<'a> {
    /// `queues.NAME.rate_limit`.
    pub(crate) rate: Option<Rate>,
    /// `queues.NAME.key_rate_limit`.
    pub(crate) key_rate: Option<Rate>,
    /// The concurrency-key limit of a job of this kind (`kinds.K.key_limit`, else the queue's).
    pub(crate) key_limit: &'a (dyn Fn(&KindName) -> u32 + Sync),
}

impl Flow<'static> {
    /// No rate limits; a key limit of 1 for every kind.
    #[cfg(test)]
    pub(crate) const DEFAULT: Flow<'static> = Flow {
        rate: None,
        key_rate: None,
        key_limit: &|_| 1,
    };
}

impl std::fmt::Debug for Flow<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flow")
            .field("rate", &self.rate)
            .field("key_rate", &self.key_rate)
            .finish_non_exhaustive()
    }
}

/// Jobs a claim read but did not start because of a concurrency key or key rate limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Throttled {
    /// Sent to `waiting` (their key at its limit).
    pub(crate) waiting: u32,
    /// Deferred to `scheduled` (their key's rate limit used up).
    pub(crate) deferred: u32,
}

/// A claim that failed. When the failure came after the final round trip was sent (its COMMIT
/// may have been applied without the answer arriving), `maybe_claimed` holds the jobs it would
/// have claimed: the caller must reconcile them by their fence (see `transition::unstarted`).
#[derive(Debug)]
pub(crate) struct ClaimError {
    pub(crate) source: sqlx::Error,
    pub(crate) maybe_claimed: Vec<ClaimedJob>,
    /// The claim lost a race to another node (it updated fewer jobs than it read): retry at
    /// once, as after a deadlock.
    pub(crate) contended: bool,
}

impl From<sqlx::Error> for ClaimError {
    fn from(source: sqlx::Error) -> Self {
        ClaimError {
            source,
            maybe_claimed: Vec::new(),
            contended: false,
        }
    }
}

/// What a claim returned: the jobs, how many of `complete` were completed (the others had
/// been taken back), and in named-lock mode whether `RELEASE_LOCK` released.
#[derive(Debug)]
pub(crate) struct Claimed {
    pub(crate) jobs: Vec<ClaimedJob>,
    pub(crate) completed: u64,
    pub(crate) released: bool,
    pub(crate) throttled: Throttled,
    /// The keys this claim sent jobs to `waiting` for. Once the claim has committed they go to
    /// the key promoter: the job that held the slot may have ended meanwhile.
    pub(crate) waited_for: BTreeSet<String>,
    /// Waiting jobs of the carried completions' keys made `available` again.
    pub(crate) unblocked: u64,
    /// The carried completions' keys this claim promoted for (those that had waiting jobs);
    /// the other keys go to the key promoter once the claim has committed.
    pub(crate) promoted_keys: BTreeSet<String>,
    /// The queue's rate limit is used up: a permit frees after this long (database clock).
    pub(crate) rate_wait: Option<Duration>,
    /// The last job the claim read, in claim order (`None`: it read none).
    pub(crate) last: Option<Cursor>,
}

/// Claims in one transaction of two round trips:
///
/// 1. `START TRANSACTION; [completions;] SELECT … FOR UPDATE [SKIP LOCKED]` — complete the
///    carried successes, lock the batch in index order;
/// 2. `UPDATE … SET state = 'running', claim_token = <fresh token>, lease …; INSERT INTO
///    jobq_transitions … SELECT … WHERE claim_token = <token>; COMMIT` (+ `RELEASE_LOCK` in
///    named-lock mode: strictly after the commit, or the next claimer could read rows this
///    claim has not yet committed as taken).
///
/// Flow limits add a round trip each, only where they apply:
/// - a queue with a rate limit locks its `jobq_queues` row first and reads its window; the
///   SELECT then asks for no more jobs than the window allows (none: no SELECT at all);
/// - a batch with concurrency keys locks those keys' rows and counts their running jobs
///   (`keys.rs`) before [`limits::plan`] decides each job: start it, send it to `waiting`,
///   defer it (`scheduled`, key rate), or leave it. The decisions are written in round trip 2.
///
/// On any error the transaction is rolled back, or the session discarded when even that fails.
pub(crate) async fn claim<S: Session>(
    session: &mut S,
    req: ClaimRequest<'_>,
) -> Result<Claimed, ClaimError> {
    let release_sql = match req.lock {
        ClaimLock::SkipLocked => None,
        ClaimLock::NamedLock(name) => {
            Some(format!("; SELECT RELEASE_LOCK({}) AS released", lit(name)))
        }
    };
    let was_released = |rows: &[MySqlRow]| match req.lock {
        ClaimLock::SkipLocked => true,
        ClaimLock::NamedLock(_) => {
            rows.iter()
                .rev()
                .find_map(|r| r.try_get::<Option<i64>, _>("released").ok())
                .flatten()
                == Some(1)
        }
    };
    // The COMMIT and its confirmation: a read, after the COMMIT, of what the transaction
    // should have left (see `end_confirmed`), then `RELEASE_LOCK` in named-lock mode. Any
    // error of any statement fails the round trip; a round trip that ends without the
    // confirmation, or with one that does not match, is never a success.
    let commit_with = |confirm: &str| {
        inject(&format!(
            "COMMIT; {confirm}{}",
            release_sql.as_deref().unwrap_or("")
        ))
    };
    let commit_sql = commit_with("SELECT CAST(1 AS SIGNED) AS committed");
    let nothing = |completed, rows: &[MySqlRow], rate_wait| Claimed {
        jobs: Vec::new(),
        completed,
        released: was_released(rows),
        throttled: Throttled::default(),
        waited_for: BTreeSet::new(),
        unblocked: 0,
        promoted_keys: BTreeSet::new(),
        rate_wait,
        last: None,
    };
    if req.limit == 0 && req.complete.is_empty() {
        return Ok(nothing(0, &[], None));
    }
    let q = lit(req.queue);
    // A queue rate limit: lock the queue's row, then read the clock (after the lock, so the
    // claims of the queue read it in the order they hold the window).
    let queue_rate = req.flow.rate.filter(|_| req.limit > 0);
    // Which keys of the carried completions have waiting jobs (a plain read beside the job
    // SELECT): only those take part in the claim's promotion; the others go to the promoter
    // after the commit (see `Claimed::promoted_keys`).
    let probe = if req.freed.is_empty() {
        String::new()
    } else {
        format!("; {}", waiting_probe_sql(req.queue, req.freed.keys()))
    };
    // language=MySQL
    let read = match queue_rate {
        Some(_) => format!(
            "INSERT INTO jobq_queues (name) VALUES ({q}) ON DUPLICATE KEY UPDATE name = name; \
             SET @jobq_now := UTC_TIMESTAMP(6); \
             SELECT CAST(rate_state AS CHAR) AS rate_state, {NOW_US} AS now_us FROM jobq_queues WHERE name = {q}"
        ),
        None => format!(
            "{}{probe}",
            claim_select(&q, &req.limit.to_string(), req.after)
        ),
    };
    let first = if req.complete.is_empty() {
        read
    } else {
        format!("{}; {read}", completion_sql(req.complete, req.results))
    };
    let (mut tx, (rows, counts)) = RawTx::begin(session, &first).await?;
    // Counts: START TRANSACTION, [the completion statements,] the rest.
    let completed = if req.complete.is_empty() {
        0
    } else {
        counts.get(1 + COMPLETION_UPDATE).copied().unwrap_or(0)
    };
    let mut queue_window = None;
    let mut now_us = None;
    let rows = match queue_rate {
        None => rows,
        Some(rate) => {
            let (state, now) = match rows.last().map(|r| {
                Ok::<_, sqlx::Error>((
                    r.try_get::<Option<String>, _>("rate_state")?,
                    r.try_get::<i64, _>("now_us")?,
                ))
            }) {
                Some(Ok(v)) => v,
                Some(Err(e)) => {
                    tx.rollback().await;
                    return Err(e.into());
                }
                None => {
                    tx.rollback().await;
                    return Err(sqlx::Error::RowNotFound.into());
                }
            };
            let mut w = Window::load(state.as_deref(), rate, now);
            let allowed = w.allowed(rate, now);
            if allowed == 0 {
                let wait = Duration::from_micros((w.frees_at(now) - now).max(1) as u64);
                let (rows, _) = end_confirmed(tx, &commit_sql, 1).await?;
                return Ok(nothing(completed, &rows, Some(wait)));
            }
            now_us = Some(now);
            let limit = allowed.min(req.limit);
            queue_window = Some((rate, w, limit));
            let sql = format!("{}{probe}", claim_select(&q, &limit.to_string(), req.after));
            let (next, (rows, _)) = tx.step(&sql).await?;
            tx = next;
            rows
        }
    };
    let (probed, rows): (Vec<MySqlRow>, Vec<MySqlRow>) = rows
        .into_iter()
        .partition(|r| r.try_column("probe_key").is_ok());
    let mut freed: BTreeMap<String, u32> = BTreeMap::new();
    for r in &probed {
        let k = match text(r, "probe_key") {
            Ok(k) => k,
            Err(e) => {
                tx.rollback().await;
                return Err(e.into());
            }
        };
        if let Some(&limit) = req.freed.get(&k) {
            freed.insert(k, limit);
        }
    }
    if rows.is_empty() && freed.is_empty() {
        let (rows, _) = end_confirmed(tx, &commit_sql, 1).await?;
        return Ok(nothing(completed, &rows, None));
    }
    let token: Token = rand::random();
    // The jobs, and where the read stopped (its last row, in claim order).
    let last_read = |r: &MySqlRow| -> Result<Cursor, sqlx::Error> {
        Ok(Cursor {
            priority: r.try_get("priority")?,
            run_at_us: r.try_get("run_at_us")?,
            id: r.try_get("id")?,
        })
    };
    let decoded: Result<(Vec<ClaimedJob>, Option<Cursor>), sqlx::Error> = rows
        .iter()
        .map(|r| {
            let kind = text(r, "kind")?;
            Ok(ClaimedJob {
                id: r.try_get("id")?,
                kind: KindName::new(&kind).map_err(|e| sqlx::Error::ColumnDecode {
                    index: "kind".into(),
                    source: Box::new(e),
                })?,
                payload: text(r, "payload")?,
                attempt: r.try_get::<u32, _>("attempt")?.saturating_add(1),
                max_attempts: r.try_get("max_attempts")?,
                wait_us: r.try_get::<Option<i64>, _>("wait_us")?.unwrap_or(0),
                token,
                concurrency_key: opt_text(r, "concurrency_key")?,
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .and_then(|jobs| Ok((jobs, rows.last().map(last_read).transpose()?)));
    let (jobs, last) = match decoded {
        Ok(decoded) => decoded,
        Err(e) => {
            tx.rollback().await;
            return Err(e.into());
        }
    };

    // Concurrency keys: lock the keys' rows, count their running jobs, read the clock.
    let mut key_limits: BTreeMap<&str, u32> = BTreeMap::new();
    let limits: Vec<u32> = jobs.iter().map(|j| (req.flow.key_limit)(&j.kind)).collect();
    for (j, &limit) in jobs.iter().zip(&limits) {
        if let Some(k) = j.concurrency_key.as_deref() {
            let e = key_limits.entry(k).or_insert(limit);
            *e = (*e).max(limit);
        }
    }
    for (k, &limit) in &freed {
        let e = key_limits.entry(k.as_str()).or_insert(limit);
        *e = (*e).max(limit);
    }
    let mut keys = KeyState::default();
    if !key_limits.is_empty() {
        let sql = lock_and_count_sql(req.queue, &key_limits, req.flow.key_rate.is_some(), &freed);
        let (next, (rows, _)) = tx.step(&sql).await?;
        tx = next;
        keys = match KeyState::read(&rows) {
            Ok(k) => k,
            Err(e) => {
                tx.rollback().await;
                return Err(e.into());
            }
        };
        now_us = Some(keys.now_us);
    }
    let mut extra_writes = Vec::new();
    let verdicts = match now_us {
        None => vec![Verdict::Claim; jobs.len()],
        Some(now) => {
            let mut windows: HashMap<String, Window> = HashMap::new();
            if let Some(rate) = req.flow.key_rate {
                for (k, state) in &keys.rate {
                    windows.insert(k.clone(), Window::load(state.as_deref(), rate, now));
                }
            }
            let candidates: Vec<Candidate> = jobs
                .iter()
                .zip(&limits)
                .map(|(j, &limit)| Candidate {
                    key: j.concurrency_key.as_deref(),
                    limit,
                })
                .collect();
            let verdicts = plan(
                &candidates,
                Limits {
                    queue_allowed: queue_window.as_ref().map_or(u32::MAX, |w| w.2),
                    key_rate: req.flow.key_rate.map(|r| (r, &mut windows)),
                    running: &keys.running,
                    now_us: now,
                },
            );
            // Rate windows go back with the claim's writes: the key windows read, and the
            // queue's charged with the jobs started, at the clock read after every lock.
            if req.flow.key_rate.is_some() && !windows.is_empty() {
                let texts: BTreeMap<String, String> = windows
                    .iter()
                    .map(|(k, w)| (k.clone(), w.to_text()))
                    .collect();
                extra_writes.push(store_windows_sql(req.queue, &texts));
            }
            if let Some((_, mut w, _)) = queue_window.take() {
                let started = verdicts.iter().filter(|v| **v == Verdict::Claim).count();
                w.charge(now, started as u32);
                // language=MySQL
                // The state is our own ASCII text (digits, ':' and ','), safe to quote.
                extra_writes.push(format!(
                    "UPDATE jobq_queues SET rate_state = '{}' WHERE name = {q}",
                    w.to_text()
                ));
            }
            verdicts
        }
    };
    // The carried completions' keys: their waiting jobs fill the slots now free: the key's
    // limit, less its running jobs, its available jobs outside this batch, and the jobs of this
    // batch that hold a slot (started now, or left available); a batch job sent to wait or
    // deferred frees its place.
    let mut in_batch: HashMap<&str, (u32, u32)> = HashMap::new();
    for (j, v) in jobs.iter().zip(&verdicts) {
        if let Some(k) = j.concurrency_key.as_deref() {
            let e = in_batch.entry(k).or_default();
            e.0 += 1;
            if matches!(v, Verdict::Claim | Verdict::Leave) {
                e.1 += 1;
            }
        }
    }
    let promoted: Vec<u64> = freed
        .keys()
        .flat_map(|k| {
            let limit = key_limits.get(k.as_str()).copied().unwrap_or(1);
            let (read, holding) = in_batch.get(k.as_str()).copied().unwrap_or_default();
            let others = keys
                .available
                .get(k)
                .copied()
                .unwrap_or(0)
                .saturating_sub(read);
            let n = limits::to_promote(
                limit,
                keys.running.get(k).copied().unwrap_or(0) + holding,
                others,
            );
            keys.waiting
                .get(k)
                .into_iter()
                .flatten()
                .copied()
                .take(n as usize)
        })
        .collect();
    let mut claimed = Vec::with_capacity(jobs.len());
    let mut throttled = Throttled::default();
    let mut waiting = Vec::new();
    let mut waited_for = BTreeSet::new();
    let mut deferred = Vec::new();
    let applied: HashMap<String, u32> = key_limits
        .iter()
        .map(|(k, &l)| ((*k).to_owned(), l))
        .collect();
    for (job, verdict) in jobs.into_iter().zip(verdicts) {
        match verdict {
            Verdict::Claim => claimed.push(job),
            Verdict::Wait => {
                waiting.push(job.id);
                waited_for.extend(job.concurrency_key);
            }
            Verdict::Defer(at_us) => {
                deferred.push((job.id, at_us));
                // Its place is free again: the post-commit check below looks at its key too.
                waited_for.extend(job.concurrency_key);
            }
            Verdict::Leave => {}
        }
    }
    throttled.waiting = waiting.len() as u32;
    throttled.deferred = deferred.len() as u32;
    // With limits in play, starts are stamped with the clock read after the locks (the time
    // the rate windows were charged at), so the transitions show exactly what was counted.
    let at = if now_us.is_some() {
        "@jobq_now"
    } else {
        "UTC_TIMESTAMP(6)"
    };
    let mut writes = Vec::new();
    let tok = hex(&token);
    if !claimed.is_empty() {
        let ids = id_list(claimed.iter().map(|j| j.id));
        // language=MySQL
        // The UPDATE is guarded by state = 'available' (always true under the locks just
        // taken); the transitions are written for exactly the rows that now carry this claim's
        // token. The attempt saturates: a row written by another program with attempt = 2^32-1
        // must not make every claim of its queue fail.
        writes.push(format!(
            "UPDATE jobq_jobs FORCE INDEX (PRIMARY) SET state = 'running', attempt = LEAST(attempt + 1, 4294967295), claim_token = {tok}, \
                    worker_id = {worker}, attempted_at = {at}, cancel_requested_at = NULL, cancel_requested_by = NULL, \
                    lease_expires_at = UTC_TIMESTAMP(6) + INTERVAL {lease_us} MICROSECOND \
             WHERE id IN ({ids}) AND state = 'available'; \
             INSERT INTO jobq_transitions (job_id, from_state, to_state, event, attempt, worker_id, at) \
             SELECT id, 'available', 'running', 'claimed', attempt, worker_id, attempted_at \
             FROM jobq_jobs FORCE INDEX (PRIMARY) WHERE id IN ({ids}) AND claim_token = {tok}",
            worker = lit(req.worker),
            lease_us = micros(req.lease),
        ));
    }
    if !waiting.is_empty() {
        let ids = id_list(waiting.iter().copied());
        // language=MySQL
        // Out of the claim index until a job of the key stops running (keys.rs promotes it).
        writes.push(format!(
            "UPDATE jobq_jobs FORCE INDEX (PRIMARY) SET state = 'waiting' WHERE id IN ({ids}) AND state = 'available'; \
             INSERT INTO jobq_transitions (job_id, from_state, to_state, event, attempt, at) \
             SELECT id, 'available', 'waiting', 'throttled', attempt, {at} \
             FROM jobq_jobs FORCE INDEX (PRIMARY) WHERE id IN ({ids}) AND state = 'waiting'"
        ));
    }
    if !deferred.is_empty() {
        let ids = id_list(deferred.iter().map(|d| d.0));
        let cases: String = deferred
            .iter()
            .map(|(id, at_us)| format!(" WHEN {id} THEN {at_us}"))
            .collect();
        // language=MySQL
        // Deferred by the key's rate limit: scheduled for when the limiter expects a permit;
        // maintenance makes them available then, and the claim checks the limit again.
        writes.push(format!(
            "UPDATE jobq_jobs FORCE INDEX (PRIMARY) SET state = 'scheduled', \
                    run_at = TIMESTAMP'1970-01-01 00:00:00' + INTERVAL (CASE id{cases} END) MICROSECOND \
             WHERE id IN ({ids}) AND state = 'available'; \
             INSERT INTO jobq_transitions (job_id, from_state, to_state, event, attempt, at) \
             SELECT id, 'available', 'scheduled', 'throttled', attempt, {at} \
             FROM jobq_jobs FORCE INDEX (PRIMARY) WHERE id IN ({ids}) AND state = 'scheduled'"
        ));
    }
    if !promoted.is_empty() {
        let ids = id_list(promoted.iter().copied());
        writes.push(promote_sql(&ids));
    }
    writes.extend(extra_writes);
    // The confirmation counts the jobs that carry this claim's token now: all of them if the
    // claim committed. (On a Galera node a transaction aborted by a replicated conflict has
    // been seen to answer its later statements, COMMIT included, as if nothing happened;
    // this read, after the COMMIT, sees what actually committed.)
    if claimed.is_empty() {
        writes.push(commit_sql);
    } else {
        writes.push(commit_with(&format!(
            "SELECT COUNT(*) AS committed FROM jobq_jobs FORCE INDEX (PRIMARY) \
             WHERE id IN ({}) AND claim_token = {tok}",
            id_list(claimed.iter().map(|j| j.id))
        )));
    }
    let expected = if claimed.is_empty() {
        1
    } else {
        claimed.len() as i64
    };
    let (rows, counts) = match end_confirmed(tx, &writes.join("; "), expected).await {
        Ok(b) => b,
        // Whatever the error, the COMMIT may have been applied: the server may have answered
        // the statements before it and then failed (the named-lock release after it, a kill,
        // a shutdown), or not answered at all. The caller gives the jobs back, fenced by this
        // claim's token, which changes nothing if the claim did not commit. (Jobs sent to
        // `waiting` by a claim that did commit are promoted by maintenance.)
        Err(source) => {
            // A confirmation that does not match is a conflict lost to another node.
            let contended =
                matches!(&source, sqlx::Error::Protocol(m) if m.contains("carry its token"));
            return Err(ClaimError {
                source,
                maybe_claimed: claimed,
                contended,
            });
        }
    };
    // A job holding a slot of a key this claim counted may have ended meanwhile, and its
    // promotion may have looked for waiting jobs before this claim's committed. Keys that now
    // show a free slot go to the promoter; the others are promoted when their jobs end.
    if !waited_for.is_empty() {
        let limits: BTreeMap<&str, u32> = waited_for
            .iter()
            .map(|k| (k.as_str(), applied.get(k).copied().unwrap_or(1)))
            .collect();
        let budget = super::sql::ROUND_TRIP_BUDGET;
        let read = tokio::time::timeout(budget, running_now(session, req.queue, &limits)).await;
        match read {
            Ok(Ok(running)) => {
                waited_for = limits
                    .iter()
                    .filter(|(k, &limit)| running.get(**k).copied().unwrap_or(0) < limit)
                    .map(|(k, _)| (*k).to_owned())
                    .collect();
            }
            // On an error every key goes to the promoter: the safe side.
            Ok(Err(_)) => {}
            // No answer: the session may still be inside that read; never reuse it.
            Err(_) => session.discard(),
        }
    }
    let updated = counts.first().copied().unwrap_or(0);
    if !claimed.is_empty() && updated != claimed.len() as u64 {
        // Cannot happen under the row locks of one server. On a multi-primary cluster the
        // row locks are node-local, and a job this claim read may have been taken on another
        // node: its handler must not start here. None of them does: the jobs go back fenced
        // by this claim's token, so only those it did take move.
        tracing::warn!(
            expected = claimed.len(),
            updated,
            "the claim updated fewer jobs than it read; giving them all back unstarted"
        );
        return Err(ClaimError {
            source: sqlx::Error::Protocol(format!(
                "the claim updated {updated} of the {} jobs it read",
                claimed.len()
            )),
            maybe_claimed: claimed,
            contended: true,
        });
    }
    Ok(Claimed {
        jobs: claimed,
        completed,
        released: was_released(&rows),
        throttled,
        waited_for,
        unblocked: promoted.len() as u64,
        promoted_keys: freed.into_keys().collect(),
        rate_wait: None,
        last,
    })
}

/// Ends the transaction with `sql` (which ends in the COMMIT and its confirmation, a row with
/// a `committed` column) and checks that the confirmation arrived and reads `expected`.
async fn end_confirmed<S: Session>(
    tx: RawTx<'_, S>,
    sql: &str,
    expected: i64,
) -> Result<super::sql::Batch, sqlx::Error> {
    let b = tx.end(sql).await?;
    let confirmed =
        b.0.iter()
            .rev()
            .find_map(|r| r.try_get::<i64, _>("committed").ok());
    match confirmed {
        Some(n) if n == expected => Ok(b),
        Some(n) => Err(sqlx::Error::Protocol(format!(
            "the claim's COMMIT answered, but {n} of its {expected} jobs carry its token: it did not commit as a whole"
        ))),
        None => Err(sqlx::Error::Protocol(
            "the claim's round trip ended without the COMMIT's confirmation; its outcome is unknown"
                .into(),
        )),
    }
}

#[cfg(test)]
tokio::task_local! {
    /// Tests only: a fault written into the claim's final round trip.
    pub(crate) static INJECT: Inject;
}

/// Tests only: where the claim's final round trip fails.
#[cfg(test)]
#[derive(Clone, Copy, Debug)]
pub(crate) enum Inject {
    /// A statement before the COMMIT fails: nothing commits.
    BeforeCommit,
    /// A statement after the COMMIT fails: the claim commits, its answer is an error.
    AfterCommit,
    /// The COMMIT runs but the confirmation row is missing from the answer.
    NoConfirmation,
}

/// The final round trip's text, with the test's fault (if any) written in.
fn inject(commit_sql: &str) -> String {
    #[cfg(test)]
    if let Ok(fault) = INJECT.try_with(|f| *f) {
        return match fault {
            Inject::BeforeCommit => format!("SELECT * FROM jobq_no_such_table; {commit_sql}"),
            Inject::AfterCommit => format!("{commit_sql}; SELECT * FROM jobq_no_such_table"),
            Inject::NoConfirmation => "COMMIT".to_owned(),
        };
    }
    commit_sql.to_owned()
}

/// The claim's locking read, with the queue and limit given as SQL (literals or `?`).
///
/// `SKIP LOCKED` in both claim modes: in `skip-locked` mode it keeps concurrent claimers apart;
/// in both it steps over rows locked by anyone else, such as a producer's insert not yet
/// committed, which a plain `FOR UPDATE` would wait for (holding the named lock meanwhile).
pub(super) fn claim_select(queue: &str, limit: &str, after: Option<&Cursor>) -> String {
    // language=MySQL
    // The WHERE and ORDER BY match jobq_jobs_claim (queue, state, priority, run_at, id) exactly:
    // the index is read in order, the scan stops after `limit` matching rows, nothing is
    // filesorted, and only returned rows are locked. FORCE INDEX keeps it so on tiny tables,
    // where the optimiser would otherwise prefer a scan (which locks every row it reads).
    // No filter on kind: rows of kinds this worker cannot run would all be read and skipped
    // on every claim (O(backlog) instead of O(batch)); they are claimed and fail instead.
    // The pause check is a constant subquery on jobq_queues' primary key: evaluated once, not
    // locked by the outer FOR UPDATE (a nested query takes no locks without a locking clause
    // of its own), and when the queue is paused the optimiser sees an impossible WHERE and
    // reads no job at all.
    // With a cursor, the read starts after it: (priority, run_at, id) > the cursor's, written
    // out as three ranges of the same index (the server does not range-scan a row
    // comparison), still read in index order.
    let after = match after {
        None => String::new(),
        Some(c) => {
            let (p, i) = (c.priority, c.id);
            let r = format!(
                "TIMESTAMP'1970-01-01 00:00:00' + INTERVAL {} MICROSECOND",
                c.run_at_us
            );
            format!(
                "AND (priority > {p} OR (priority = {p} AND (run_at > {r} OR (run_at = {r} AND id > {i})))) "
            )
        }
    };
    format!(
        "SELECT id, kind, CAST(payload AS CHAR) AS payload, attempt, max_attempts, concurrency_key, \
                TIMESTAMPDIFF(MICROSECOND, run_at, UTC_TIMESTAMP(6)) AS wait_us, \
                priority, TIMESTAMPDIFF(MICROSECOND, TIMESTAMP'1970-01-01 00:00:00', run_at) AS run_at_us \
         FROM jobq_jobs FORCE INDEX (jobq_jobs_claim) \
         WHERE queue = {queue} AND state = 'available' AND run_at <= UTC_TIMESTAMP(6) {after}\
           AND (SELECT COUNT(*) FROM jobq_queues p WHERE p.name = {queue} AND p.paused_at IS NOT NULL) = 0 \
         ORDER BY priority, run_at, id \
         LIMIT {limit} FOR UPDATE SKIP LOCKED"
    )
}

/// The named-lock name of a queue: `jobq:` + SHA1(schema, 0x00, queue), 45 ASCII bytes.
/// Never user text: MariaDB compares names byte-wise and limits them to 192 bytes, MySQL
/// case-folds and limits them to 64 characters; names are server-wide, hence the schema.
pub(crate) async fn lock_name(
    conn: &mut MySqlConnection,
    queue: &QueueName,
) -> Result<LockName, sqlx::Error> {
    // language=MySQL
    // The same name as before the shared helper: `jobq:` + SHA1(database, 0x00, queue).
    let name: String =
        sqlx::query_scalar(&format!("SELECT {}", jobq_sqlkit::lock_name_sql("jobq:")))
            .bind(queue.as_str())
            .fetch_one(conn)
            .await?;
    LockName::from_server(name)
        .ok_or_else(|| sqlx::Error::Protocol("the server returned a malformed lock name".into()))
}

/// `GET_LOCK(name, timeout)`: `Some(true)` acquired, `Some(false)` timed out, `None` error
/// (killed, or a deadlock between named locks).
pub(crate) async fn get_lock(
    conn: &mut MySqlConnection,
    name: &LockName,
    timeout: Duration,
) -> Result<Option<bool>, sqlx::Error> {
    // language=MySQL
    // Fractional timeouts are honoured by MariaDB; a negative one would mean "forever" on MySQL
    // but NULL on MariaDB, so only a positive duration is ever passed.
    let r: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, ?)")
        .bind(name.as_str())
        .bind(timeout.as_secs_f64().max(0.001))
        .fetch_one(conn)
        .await?;
    Ok(r.map(|v| v == 1))
}

/// `RELEASE_LOCK(name)`: true when this session held it and released it.
pub(crate) async fn release_lock(
    conn: &mut MySqlConnection,
    name: &LockName,
) -> Result<bool, sqlx::Error> {
    // language=MySQL
    let r: Option<i64> = sqlx::query_scalar("SELECT RELEASE_LOCK(?)")
        .bind(name.as_str())
        .fetch_one(conn)
        .await?;
    Ok(r == Some(1))
}
