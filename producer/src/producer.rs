//! [`Producer`] and [`NewJob`]: validate jobs, then insert them (one, many in multi-row
//! statements, or inside the caller's transaction), all or nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{MySqlConnection, MySqlPool};

use crate::deps::OnParentFailure;
use crate::error::{Error, Result};
use crate::hook::EnqueueHook;
use crate::job::{validate_kind, validate_queue, Job, JobId, DEFAULT_QUEUE};
use crate::json::{self, PORTABLE_MAX_DEPTH};
use crate::store;
use crate::trace::TraceContext;
use crate::workflow::{Batch, Workflow, WorkflowEnqueued};

/// Limits and defaults of a [`Producer`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProducerOptions {
    /// Largest payload accepted, in bytes of JSON text. Default 1 MiB.
    pub max_payload_bytes: usize,
    /// Attempts a job gets unless it says otherwise. Default 25.
    pub default_max_attempts: u32,
    /// Deepest nesting of a payload accepted. Default [`PORTABLE_MAX_DEPTH`] (31, what
    /// MariaDB accepts); MySQL accepts up to [`MYSQL_MAX_DEPTH`] (100).
    pub max_json_depth: u32,
}

impl Default for ProducerOptions {
    fn default() -> Self {
        ProducerOptions {
            max_payload_bytes: 1 << 20,
            default_max_attempts: 25,
            max_json_depth: PORTABLE_MAX_DEPTH,
        }
    }
}

/// When a new job may first run.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
enum When {
    #[default]
    Now,
    Delay(Duration),
    At(DateTime<Utc>),
}

/// A job to enqueue: kind, JSON payload and options.
///
/// Build it with [`NewJob::new`] (typed), [`NewJob::json`] or [`NewJob::raw`] (untyped), then
/// chain options. Nothing is checked until it is enqueued.
#[derive(Clone, Debug)]
pub struct NewJob {
    kind: String,
    payload: Payload,
    queue: Option<String>,
    priority: i16,
    when: When,
    max_attempts: Option<u32>,
    unique_key: Option<String>,
    unique_period: Option<Duration>,
    on_duplicate: OnDuplicate,
    concurrency_key: Option<String>,
    after: Vec<JobId>,
    on_parent_failure: OnParentFailure,
    trace: Trace,
}

/// Which trace context a job stores.
#[derive(Clone, Debug, Default)]
enum Trace {
    /// The current span's, if any (feature `otel`), read when the job is enqueued.
    #[default]
    Current,
    /// This one.
    Given(TraceContext),
    /// None.
    Off,
}

/// What enqueueing a duplicate of a unique job does (see [`NewJob::unique_key`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnDuplicate {
    /// Keep the existing job as it is (the default).
    #[default]
    Keep,
    /// If the existing job has never started (`available` or `scheduled`, attempt 0), replace
    /// its payload, priority and run-at with the new job's (debounce); otherwise keep it.
    Replace,
}

#[derive(Clone, Debug)]
enum Payload {
    /// Serialised by us: known to be JSON.
    Json(String),
    /// Given as text: must be parsed to be checked.
    Raw(String),
    /// A typed job failed to serialise; reported at enqueue.
    Failed(String),
}

impl NewJob {
    /// A typed job, in `J::QUEUE`.
    pub fn new<J: Job>(job: &J) -> Result<Self> {
        let text = serde_json::to_string(job).map_err(|source| Error::Serialize {
            kind: J::KIND.to_owned(),
            source,
        })?;
        Ok(NewJob::with_payload(J::KIND, Payload::Json(text)).queue(J::QUEUE))
    }

    /// An untyped job from a JSON value.
    pub fn json(kind: impl Into<String>, payload: serde_json::Value) -> Self {
        let payload = match serde_json::to_string(&payload) {
            Ok(text) => Payload::Json(text),
            Err(e) => Payload::Failed(e.to_string()),
        };
        NewJob::with_payload(kind, payload)
    }

    /// An untyped job from JSON text; the text is checked to be JSON at enqueue.
    pub fn raw(kind: impl Into<String>, payload: impl Into<String>) -> Self {
        NewJob::with_payload(kind, Payload::Raw(payload.into()))
    }

    fn with_payload(kind: impl Into<String>, payload: Payload) -> Self {
        NewJob {
            kind: kind.into(),
            payload,
            queue: None,
            priority: 0,
            when: When::Now,
            max_attempts: None,
            unique_key: None,
            unique_period: None,
            on_duplicate: OnDuplicate::Keep,
            concurrency_key: None,
            after: Vec::new(),
            on_parent_failure: OnParentFailure::Cancel,
            trace: Trace::Current,
        }
    }

    /// The queue. Default `"default"` (or `J::QUEUE` for typed jobs).
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// Priority: lower runs first. Default 0.
    pub fn priority(mut self, priority: i16) -> Self {
        self.priority = priority;
        self
    }

    /// Run no earlier than `delay` from now (database clock).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.when = When::Delay(delay);
        self
    }

    /// Run no earlier than `at`.
    pub fn run_at(mut self, at: DateTime<Utc>) -> Self {
        self.when = When::At(at);
        self
    }

    /// Attempts before the job is discarded. Default: the producer's `default_max_attempts`.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = Some(n);
        self
    }

    /// Makes the job unique: while a job of the same kind with this key is `available`,
    /// `scheduled`, `running` or `retryable`, enqueueing another inserts nothing and returns the
    /// existing job's id (see [`Producer::insert`] to learn which happened). Enforced by a
    /// unique index in the database, so it holds across any number of producers. Any text of
    /// 1 to 255 characters.
    pub fn unique_key(mut self, key: impl Into<String>) -> Self {
        self.unique_key = Some(key.into());
        self
    }

    /// Keeps the unique key taken for `period` after the job is completed, discarded or
    /// cancelled (by default a finished job frees its key at once): "at most once per hour".
    /// Needs [`unique_key`](NewJob::unique_key). Retention deleting the job ends the hold.
    pub fn unique_period(mut self, period: Duration) -> Self {
        self.unique_period = Some(period);
        self
    }

    /// Gives the job a concurrency key: at most `key_limit` jobs of its queue with the same key
    /// run at once, across every worker process (`queues.NAME.key_limit`, `kinds.NAME.key_limit`,
    /// default 1). Jobs over the limit wait (state `waiting`) and start as soon as a job of
    /// their key stops running. Any text of 1 to 255 characters, e.g. a customer id.
    pub fn concurrency_key(mut self, key: impl Into<String>) -> Self {
        self.concurrency_key = Some(key.into());
        self
    }

    /// What a duplicate of this unique job does to the existing one (default: keep it).
    pub fn on_duplicate(mut self, what: OnDuplicate) -> Self {
        self.on_duplicate = what;
        self
    }

    /// Runs after job `parent` (call it once per parent): the job starts `blocked` and becomes
    /// `available` (or `scheduled`, by its run-at) in the transaction that ends its last
    /// parent. A parent that already completed counts as done; one that does not exist on the
    /// job's server fails the enqueue ([`Error::NoSuchParent`]). What a failed parent does is
    /// [`on_parent_failure`](NewJob::on_parent_failure)'s. For a graph of new jobs, see
    /// [`crate::Workflow`].
    pub fn after(mut self, parent: JobId) -> Self {
        if !self.after.contains(&parent) {
            self.after.push(parent);
        }
        self
    }

    /// What this job does when a parent ends without completing (discarded or cancelled):
    /// default [`OnParentFailure::Cancel`].
    pub fn on_parent_failure(mut self, policy: OnParentFailure) -> Self {
        self.on_parent_failure = policy;
        self
    }

    /// Stores `context` with the job, so its handler's span continues that trace, instead of
    /// the current span's (which the feature `otel` stores by default). For a context that
    /// came from elsewhere: an incoming request's `traceparent` header, another process.
    pub fn trace_context(mut self, context: TraceContext) -> Self {
        self.trace = Trace::Given(context);
        self
    }

    /// Stores no trace context with the job, not even the current span's.
    pub fn without_trace(mut self) -> Self {
        self.trace = Trace::Off;
        self
    }

    /// The kind name.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The policy set by [`on_parent_failure`](NewJob::on_parent_failure).
    pub(crate) fn parent_failure(&self) -> OnParentFailure {
        self.on_parent_failure
    }

    /// The parents set by [`after`](NewJob::after).
    pub(crate) fn parents(&self) -> &[JobId] {
        &self.after
    }

    pub(crate) fn check(self, opts: &ProducerOptions) -> Result<store::JobInsert> {
        validate_kind(&self.kind)?;
        let queue = self.queue.unwrap_or_else(|| DEFAULT_QUEUE.to_owned());
        validate_queue(&queue)?;
        let payload = match self.payload {
            Payload::Json(text) => text,
            Payload::Raw(text) => {
                serde_json::from_str::<&serde_json::value::RawValue>(&text)
                    .map_err(Error::InvalidJson)?;
                text
            }
            Payload::Failed(message) => {
                return Err(Error::Serialize {
                    kind: self.kind,
                    source: serde_json::Error::io(std::io::Error::other(message)),
                })
            }
        };
        if payload.len() > opts.max_payload_bytes {
            return Err(Error::PayloadTooLarge {
                size: payload.len(),
                limit: opts.max_payload_bytes,
            });
        }
        json::check(&payload, opts.max_json_depth).map_err(|message| Error::Invalid {
            field: "payload",
            message,
        })?;
        if let Some(k) = &self.unique_key {
            check_key_length("unique_key", k)?;
        }
        if let Some(k) = &self.concurrency_key {
            check_key_length("concurrency_key", k)?;
        }
        let unique_period_us = match (self.unique_period, &self.unique_key) {
            (None, _) => None,
            (Some(_), None) => {
                return Err(Error::Invalid {
                    field: "unique_period",
                    message: "needs a unique_key".to_owned(),
                })
            }
            (Some(p), Some(_)) => Some(micros_up_to_a_century(p, "unique_period")?),
        };
        if !self.after.is_empty() && self.on_duplicate == OnDuplicate::Replace {
            return Err(Error::Invalid {
                field: "after",
                message: "a job with parents cannot replace a duplicate (on_duplicate = replace); \
                          keep the default"
                    .to_owned(),
            });
        }
        let max_attempts = self.max_attempts.unwrap_or(opts.default_max_attempts);
        if max_attempts == 0 {
            return Err(Error::Invalid {
                field: "max_attempts",
                message: "must be at least 1".to_owned(),
            });
        }
        let (run_at, delay_us) = match self.when {
            When::Now => (None, 0),
            When::Delay(d) => (None, micros_up_to_a_century(d, "delay")?),
            When::At(at) => {
                // DATETIME(6) holds years 1000..=9999; before 1970 is surely a mistake.
                use chrono::Datelike;
                if !(1970..=9999).contains(&at.year()) {
                    return Err(Error::Invalid {
                        field: "run_at",
                        message: format!("{at} is out of range (years 1970 to 9999)"),
                    });
                }
                (Some(at), 0)
            }
        };
        Ok(store::JobInsert {
            queue,
            kind: self.kind,
            payload,
            priority: self.priority,
            run_at,
            delay_us,
            max_attempts,
            unique_key: self.unique_key,
            unique_period_us,
            replace: self.on_duplicate == OnDuplicate::Replace,
            concurrency_key: self.concurrency_key,
            parents: self.after,
            on_parent_failure: self.on_parent_failure,
            trace: match self.trace {
                Trace::Current => TraceContext::current(),
                Trace::Given(t) => Some(t),
                Trace::Off => None,
            },
        })
    }
}

/// Inserts jobs. Cheap to clone (it holds pool handles).
///
/// Jobs go to the producer's pool, or for the queues given to [`Producer::route`] to that
/// queue's own server (README "Outgrowing one server").
#[derive(Clone, Debug)]
pub struct Producer {
    pool: MySqlPool,
    opts: ProducerOptions,
    /// The other servers, each with the queues that live there.
    routes: Arc<Routes>,
    /// Called after each enqueue of its own commits ([`Producer::with_hook`]).
    hook: Option<Arc<dyn EnqueueHook>>,
    /// Whether single enqueues from concurrent tasks are written together (`group.rs`).
    group_commit: bool,
    /// The waiting single enqueues, shared by the producer's clones.
    groups: Arc<crate::group::Groups>,
}

/// Queues on other servers than the producer's own pool.
#[derive(Clone, Debug, Default)]
struct Routes {
    /// One pool per server, in the order [`Producer::route`] was called.
    servers: Vec<MySqlPool>,
    /// Queue name to its index in `servers`.
    queues: BTreeMap<String, usize>,
}

impl Producer {
    /// A producer over `pool` with default options.
    pub fn new(pool: MySqlPool) -> Self {
        Producer::with_options(pool, ProducerOptions::default())
    }

    /// A producer with explicit limits and defaults.
    pub fn with_options(pool: MySqlPool, opts: ProducerOptions) -> Self {
        Producer {
            pool,
            opts,
            routes: Arc::default(),
            hook: None,
            group_commit: true,
            groups: Arc::default(),
        }
    }

    /// Calls `hook` after every enqueue that commits in the producer's own transaction (see
    /// [`EnqueueHook`]); the test kit's inline mode is one. A later call replaces it.
    pub fn with_hook(mut self, hook: Arc<dyn EnqueueHook>) -> Self {
        self.hook = Some(hook);
        self
    }

    /// Tells the hook, if any, of jobs inserted and committed on `pool`.
    async fn committed(&self, pool: &MySqlPool, ids: impl Iterator<Item = JobId>) {
        if let Some(hook) = &self.hook {
            let ids: Vec<JobId> = ids.collect();
            if !ids.is_empty() {
                hook.enqueued(pool, &ids).await;
            }
        }
    }

    /// Sends the jobs of `queues` to the server of `pool` instead of the producer's own (what
    /// `[queues.NAME] database_url` says for workers). Call it once per other server, with all
    /// of that server's queues: each call is one server, and one enqueue call may not span two.
    /// A later route of a queue replaces an earlier one.
    pub fn route<Q: Into<String>>(
        mut self,
        queues: impl IntoIterator<Item = Q>,
        pool: MySqlPool,
    ) -> Self {
        // Groups of waiting enqueues belong to one set of routes: a producer routed anew
        // starts its own (a clone routed differently must not write the other's jobs).
        self.groups = Arc::default();
        let routes = Arc::make_mut(&mut self.routes);
        routes.servers.push(pool);
        let at = routes.servers.len() - 1;
        for q in queues {
            routes.queues.insert(q.into(), at);
        }
        self
    }

    /// The pool this producer writes to (for queues not routed elsewhere).
    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    /// The pool the jobs of `queue` are written to.
    pub fn pool_of(&self, queue: &str) -> &MySqlPool {
        match self.routes.queues.get(queue) {
            Some(&i) => &self.routes.servers[i],
            None => &self.pool,
        }
    }

    /// The one server all of `rows` go to; an enqueue call is one transaction on one server.
    fn server_of(&self, rows: &[store::JobInsert]) -> Result<&MySqlPool> {
        self.server_of_queues(rows.iter().map(|r| r.queue.as_str()))
    }

    /// The one server all of `queues` live on (one enqueue call is one transaction on one
    /// server); the first queue decides, any other on another server is refused.
    fn server_of_queues<'q>(
        &self,
        mut queues: impl Iterator<Item = &'q str>,
    ) -> Result<&MySqlPool> {
        let server = |q: &str| self.routes.queues.get(q).copied();
        let first = queues.next().expect("at least one job");
        if let Some(other) = queues.find(|q| server(q) != server(first)) {
            return Err(Error::SeveralServers {
                first: first.to_owned(),
                other: other.to_owned(),
            });
        }
        Ok(self.pool_of(first))
    }

    /// The one server a workflow's jobs and callbacks all go to.
    fn server_of_workflow(&self, w: &store::WorkflowInsert<'_>) -> Result<&MySqlPool> {
        let jobs = w.jobs.iter().map(|j| j.1.queue.as_str());
        self.server_of_queues(jobs.chain(w.callbacks.iter().map(|c| c.1.queue.as_str())))
    }

    /// Waits until job `id` has finished (completed, discarded or cancelled) and returns how:
    /// its state, its result (`ctx.set_result`) or its last error. `Ok(None)` when `timeout`
    /// passed first (the job goes on). The job's row is read by primary key, first after
    /// 5 ms, then at doubling intervals up to 500 ms: a few reads a second at most, whatever
    /// the job takes; and at once when a worker in this process writes the job's outcome.
    pub async fn wait_for(&self, id: JobId, timeout: Duration) -> Result<Option<JobEnd>> {
        wait_on(&self.pool, id, timeout).await
    }

    /// [`Producer::wait_for`], calling `seen` with each log line the job writes
    /// (`ctx.log`) and each change of its progress (`ctx.progress`) as they are stored. The
    /// job is read every [`crate::FOLLOW_INTERVAL`] (three reads by primary key or index
    /// range) while it runs; lines and progress stored before it ended are all reported
    /// before this returns.
    pub async fn follow(
        &self,
        id: JobId,
        timeout: Duration,
        mut seen: impl FnMut(crate::Followed) + Send,
    ) -> Result<Option<JobEnd>> {
        crate::follow::follow(&self.pool, id, timeout, &mut seen).await
    }

    /// [`Producer::follow`] for a job of `queue`, read on that queue's server.
    pub async fn follow_in(
        &self,
        queue: &str,
        id: JobId,
        timeout: Duration,
        mut seen: impl FnMut(crate::Followed) + Send,
    ) -> Result<Option<JobEnd>> {
        crate::follow::follow(self.pool_of(queue), id, timeout, &mut seen).await
    }

    /// [`Producer::wait_for`] for a job of `queue`, read on that queue's server (job ids are
    /// per server; see [`Producer::route`]).
    pub async fn wait_for_in(
        &self,
        queue: &str,
        id: JobId,
        timeout: Duration,
    ) -> Result<Option<JobEnd>> {
        wait_on(self.pool_of(queue), id, timeout).await
    }

    /// Inserts one job and returns its id (for a duplicate unique job, the existing job's id).
    /// Its transaction is its own, or shared with the single enqueues of other tasks through
    /// this producer at the same moment (README "Group commit"; [`Producer::group_commit`]).
    pub async fn enqueue(&self, job: NewJob) -> Result<JobId> {
        Ok(self.insert(job).await?.id)
    }

    /// Inserts many jobs with multi-row INSERTs (chunked) in one transaction: all or none.
    /// Returns the ids in input order (for duplicate unique jobs, the existing jobs' ids).
    pub async fn enqueue_many(&self, jobs: Vec<NewJob>) -> Result<Vec<JobId>> {
        Ok(ids(self.insert_many(jobs).await?))
    }

    /// Like [`enqueue`](Producer::enqueue), and says whether the job was a duplicate of a
    /// unique job already waiting or running (then nothing was inserted).
    ///
    /// Concurrent single enqueues through one producer (or its clones) share transactions
    /// (README "Group commit"; [`Producer::group_commit`] turns it off).
    pub async fn insert(&self, job: NewJob) -> Result<Enqueued> {
        let row = job.check(&self.opts)?;
        // Unique jobs, jobs with parents, and a producer with a hook: alone, as before.
        if !self.group_commit
            || self.hook.is_some()
            || row.unique_key.is_some()
            || !row.parents.is_empty()
        {
            return Ok(self.insert_rows(std::slice::from_ref(&row)).await?[0]);
        }
        let server = self.routes.queues.get(&row.queue).copied();
        let group = self.groups.of(server);
        let (reply, answer) = tokio::sync::oneshot::channel();
        match group.push(row, reply) {
            crate::group::Joined::Start => {
                // No write under way: one starts, in a task of its own (a caller that stops
                // waiting must not cut the others' write short). The writer is made before
                // the task: a task that never runs still lets the next call start another.
                let writer = crate::group::Group::writer(group);
                let producer = self.clone();
                tokio::spawn(async move { crate::group::write(&producer, writer).await });
            }
            crate::group::Joined::Wait => {}
            // Too many calls wait already: this one writes alone.
            crate::group::Joined::Full(row) => {
                return Ok(self.insert_rows(std::slice::from_ref(&row)).await?[0]);
            }
        }
        answer.await.map_err(|_| Error::GroupLost)?
    }

    /// Whether concurrent single enqueues ([`Producer::enqueue`], [`Producer::insert`]) share
    /// one transaction and one commit (on by default; `producer.group_commit`). Off, each is a
    /// transaction of its own.
    pub fn group_commit(mut self, on: bool) -> Self {
        self.group_commit = on;
        self
    }

    /// Like [`enqueue_many`](Producer::enqueue_many), reporting duplicates per job; a
    /// duplicate does not fail the batch.
    pub async fn insert_many(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        self.insert_rows(&self.check_all(jobs)?).await
    }

    /// Inserts checked rows in one transaction of their server (retried whole if the server
    /// rolled it back), then records and reports them.
    pub(crate) async fn insert_rows(&self, rows: &[store::JobInsert]) -> Result<Vec<Enqueued>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let pool = self.server_of(rows)?;
        // Producers racing for one unique key can deadlock inside the server (each waits on
        // the others' shared lock on the duplicate key): the server rolls one transaction back
        // whole, so the whole transaction is retried.
        let out = run_again_if_rolled_back(|| async {
            // Before the transaction takes a connection of the pool.
            let running = store::running_holders(pool, rows, PEEK_WAIT).await;
            let mut tx = store::begin(pool).await?;
            let out = store::insert_jobs(&mut tx, rows, &running).await?;
            tx.commit().await?;
            Ok(out)
        })
        .await?;
        record_enqueued(rows, &out);
        self.committed(pool, out.iter().filter(|e| !e.duplicate).map(|e| e.id))
            .await;
        Ok(out)
    }

    /// Inserts one job through the caller's connection, usually `&mut *tx` of the caller's own
    /// transaction: the job exists only if the caller commits. The job goes to the server of
    /// `conn`, whatever [`Producer::route`] says: use a connection of the queue's server
    /// ([`Producer::pool_of`]). Producers racing for one unique key can deadlock inside the
    /// server, which then rolls the caller's whole transaction back: that is
    /// [`Error::RolledBack`], and the caller runs its transaction again.
    ///
    /// Open the transaction with sqlx (`pool.begin()`, `conn.begin()`): one opened with a raw
    /// `BEGIN` statement is invisible to sqlx, so jobq takes the connection for one outside a
    /// transaction (a replacing duplicate would then run its own, and its `BEGIN` would commit
    /// yours).
    pub async fn enqueue_in(&self, conn: &mut MySqlConnection, job: NewJob) -> Result<JobId> {
        let ids = self.enqueue_many_in(conn, vec![job]).await?;
        Ok(ids[0])
    }

    /// Like [`enqueue_many_in`](Producer::enqueue_many_in), reporting duplicates per job.
    pub async fn insert_many_in(
        &self,
        conn: &mut MySqlConnection,
        jobs: Vec<NewJob>,
    ) -> Result<Vec<Enqueued>> {
        let rows = self.check_all(jobs)?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        // Inside the caller's transaction (one sqlx knows of), a deadlock rolled all of it
        // back: say so, typed, so the caller knows to run it again (it is not ours to retry).
        // Outside one, the statements before the deadlock committed on their own: a plain
        // database error.
        use sqlx::{Database, TransactionManager};
        let in_tx = <sqlx::MySql as Database>::TransactionManager::get_transaction_depth(conn) > 0;
        // Read on the queue's server; counts only if `conn` writes there too.
        // Outside a transaction each statement commits at once: no lock outlives it, nothing
        // to look for.
        let running = if in_tx {
            store::running_holders(self.pool_of(&rows[0].queue), &rows, PEEK_WAIT).await
        } else {
            store::RunningHolders::default()
        };
        let out = store::insert_jobs(conn, &rows, &running)
            .await
            .map_err(|e| match e {
                Error::Database(e) if in_tx => Error::from_database(e),
                other => other,
            })?;
        record_enqueued(&rows, &out);
        Ok(out)
    }

    /// Inserts many jobs through the caller's connection (see [`Producer::enqueue_in`]).
    ///
    /// Outside a transaction each chunk commits on its own; inside one, nothing is visible
    /// until the caller commits. Validation still happens before the first write.
    pub async fn enqueue_many_in(
        &self,
        conn: &mut MySqlConnection,
        jobs: Vec<NewJob>,
    ) -> Result<Vec<JobId>> {
        Ok(ids(self.insert_many_in(conn, jobs).await?))
    }

    /// Inserts a [`Workflow`] in one transaction: every job, its name and its edges, or
    /// nothing. The graph is checked first (names, parents, cycles) and all its jobs must go to
    /// one server ([`Error::SeveralServers`]). A workflow with the unique key of one still
    /// running is a duplicate: nothing is inserted and the running one is returned.
    pub async fn enqueue_workflow(&self, workflow: Workflow) -> Result<WorkflowEnqueued> {
        let (checked, rows) = self.check_workflow(workflow)?;
        let insert = workflow_insert(&checked, rows, &self.opts);
        let pool = self.server_of_workflow(&insert)?;
        let out = run_again_if_rolled_back(|| async {
            let mut tx = store::begin(pool).await?;
            let out = store::insert_workflow(&mut tx, &insert).await?;
            tx.commit().await?;
            Ok(out)
        })
        .await?;
        record_workflow(&out, checked.batch);
        if !out.duplicate {
            self.committed(pool, out.jobs.values().copied()).await;
        }
        Ok(out)
    }

    /// [`enqueue_workflow`](Producer::enqueue_workflow) through the caller's connection,
    /// usually `&mut *tx` of the caller's transaction (see [`Producer::enqueue_in`]).
    pub async fn enqueue_workflow_in(
        &self,
        conn: &mut MySqlConnection,
        workflow: Workflow,
    ) -> Result<WorkflowEnqueued> {
        let (checked, rows) = self.check_workflow(workflow)?;
        let insert = workflow_insert(&checked, rows, &self.opts);
        self.server_of_workflow(&insert)?;
        let out = store::insert_workflow(conn, &insert)
            .await
            .map_err(|e| match e {
                Error::Database(e) => Error::from_database(e),
                other => other,
            })?;
        record_workflow(&out, checked.batch);
        Ok(out)
    }

    /// Inserts a [`Batch`]: its jobs and callbacks, in one transaction (see
    /// [`enqueue_workflow`](Producer::enqueue_workflow); a batch is a workflow without edges).
    pub async fn enqueue_batch(&self, batch: Batch) -> Result<WorkflowEnqueued> {
        self.enqueue_workflow(batch.into_workflow()).await
    }

    /// Checks a workflow's graph and each of its jobs; a job of a workflow cannot be unique
    /// on its own (the workflow can). Callbacks take no parents, delay or unique key.
    fn check_workflow(
        &self,
        workflow: Workflow,
    ) -> Result<(crate::workflow::Checked, Vec<store::JobInsert>)> {
        let mut checked = workflow.check()?;
        for (on, job) in &checked.callbacks {
            let row = job.clone().check(&self.opts)?;
            if row.unique_key.is_some()
                || !row.parents.is_empty()
                || row.run_at.is_some()
                || row.delay_us != 0
            {
                return Err(Error::Invalid {
                    field: "workflow",
                    message: format!(
                        "its on_{} callback has a unique key, parents or a delay; a callback \
                         runs once, when the workflow ends: give it none of these",
                        on.as_str()
                    ),
                });
            }
        }
        let mut rows = Vec::with_capacity(checked.jobs.len());
        for step in &mut checked.jobs {
            let job = std::mem::replace(&mut step.job, NewJob::json("x", serde_json::Value::Null));
            let row = job.check(&self.opts)?;
            if row.unique_key.is_some() {
                return Err(Error::Invalid {
                    field: "workflow",
                    message: format!(
                        "job {:?} has a unique_key; jobs of a workflow cannot be unique on their \
                         own: give the workflow a unique_key instead",
                        step.name
                    ),
                });
            }
            rows.push(row);
        }
        Ok((checked, rows))
    }

    /// Validates `jobs` against `opts` without writing anything: the checks every enqueue makes
    /// first (names, JSON, size, attempts, run-at).
    pub fn validate(jobs: &[NewJob], opts: &ProducerOptions) -> Result<()> {
        for j in jobs {
            j.clone().check(opts)?;
        }
        Ok(())
    }

    fn check_all(&self, jobs: Vec<NewJob>) -> Result<Vec<store::JobInsert>> {
        jobs.into_iter().map(|j| j.check(&self.opts)).collect()
    }
}

/// The rows of a checked workflow, for the store.
fn workflow_insert<'a>(
    checked: &'a crate::workflow::Checked,
    rows: Vec<store::JobInsert>,
    opts: &ProducerOptions,
) -> store::WorkflowInsert<'a> {
    store::WorkflowInsert {
        name: &checked.name,
        unique_key: checked.unique_key.as_deref(),
        fail_fast: checked.fail_fast,
        batch: checked.batch,
        jobs: checked
            .jobs
            .iter()
            .zip(rows)
            .map(|(s, r)| (s.name.clone(), r, s.parents.clone(), s.on_failure))
            .collect(),
        callbacks: checked
            .callbacks
            .iter()
            .map(|(on, job)| {
                let row = job.clone().check(opts).expect("checked by check_workflow");
                (*on, row)
            })
            .collect(),
    }
}

/// `d` in microseconds, refused (as `field`) beyond 100 years.
fn micros_up_to_a_century(d: Duration, field: &'static str) -> Result<i64> {
    i64::try_from(d.as_micros())
        .ok()
        .filter(|us| *us <= 100 * 365 * 86_400 * 1_000_000)
        .ok_or_else(|| Error::Invalid {
            field,
            message: format!("{d:?} is too long; use at most 100 years"),
        })
}

/// How often a transaction the server rolled back for a deadlock is tried in all.
const DEADLOCK_TRIES: u64 = 5;

/// How long an enqueue of unique jobs waits for a connection to look for running duplicates
/// (`store::running_holders`) before it goes on without knowing (a saturated pool, or one
/// whose last connection the caller holds).
const PEEK_WAIT: Duration = Duration::from_millis(50);

/// Runs `transaction` (one whole transaction, begun and committed inside) again while the server
/// rolls it back for a deadlock ([`Error::RolledBack`], or a deadlock of a transaction of its
/// own), at most 5 times in all, a few milliseconds apart. For an enqueue in a transaction of
/// the caller's that may race other producers for a unique key.
pub async fn run_again_if_rolled_back<T, F, Fut>(mut transaction: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut tries = 0;
    loop {
        tries += 1;
        match transaction().await {
            Err(e)
                if tries < DEADLOCK_TRIES
                    && (matches!(e, Error::RolledBack(_)) || store::is_deadlock(&e)) =>
            {
                tokio::time::sleep(Duration::from_millis(2 * tries)).await;
            }
            done => return done,
        }
    }
}

/// The most characters a unique or concurrency key may have (`jobq_jobs.unique_key` and
/// `concurrency_key` are VARCHAR(255)).
pub const UNIQUE_KEY_CHARS: usize = 255;

/// A unique or concurrency key must be 1 to [`UNIQUE_KEY_CHARS`] characters.
fn check_key_length(field: &'static str, key: &str) -> Result<()> {
    let chars = key.chars().count();
    if (1..=UNIQUE_KEY_CHARS).contains(&chars) {
        return Ok(());
    }
    Err(Error::Invalid {
        field,
        message: format!(
            "must be 1 to {UNIQUE_KEY_CHARS} characters, not {chars}; hash a longer key"
        ),
    })
}

/// How a job ended, as [`Producer::wait_for`] saw it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct JobEnd {
    /// The job.
    pub id: JobId,
    /// Its state: final when returned by `wait_for`.
    pub state: crate::job::JobState,
    /// What its handler stored with its success, if anything.
    pub result: Option<serde_json::Value>,
    /// Its last error, if any.
    pub error: Option<String>,
}

/// What an insert did with one job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Enqueued {
    /// The new job's id, or for a duplicate the id of the unique job already there.
    pub id: JobId,
    /// True if the job was a duplicate of a unique job waiting or running: nothing inserted.
    pub duplicate: bool,
    /// True if the duplicate replaced the existing job's payload, priority and run-at
    /// ([`OnDuplicate::Replace`] and the job had not started).
    pub replaced: bool,
}

/// Reads job `id` on `pool` until it is final or `timeout` passed (see [`Producer::wait_for`]).
async fn wait_on(pool: &MySqlPool, id: JobId, timeout: Duration) -> Result<Option<JobEnd>> {
    let written = crate::notify::watch(id.0);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        let end = store::job_end(pool, id)
            .await?
            .ok_or(Error::NoSuchJob(id))?;
        if end.state.is_final() {
            return Ok(Some(end));
        }
        if !crate::notify::pause_until(deadline, pause, &written).await {
            return Ok(None);
        }
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

fn ids(out: Vec<Enqueued>) -> Vec<JobId> {
    out.into_iter().map(|e| e.id).collect()
}

/// Counts a workflow or batch this process inserted (`jobq_workflows_started_total`).
fn record_workflow(out: &WorkflowEnqueued, batch: bool) {
    if !out.duplicate {
        let kind = if batch { "batch" } else { "workflow" };
        metrics::counter!("jobq_workflows_started_total", "kind" => kind).increment(1);
    }
}

fn record_enqueued(rows: &[store::JobInsert], out: &[Enqueued]) {
    let inserted = || rows.iter().zip(out).filter(|(_, e)| !e.duplicate);
    crate::notify::notify(
        inserted()
            .filter(|(r, _)| r.run_at.is_none() && r.delay_us == 0)
            .map(|(r, _)| r.queue.as_str()),
    );
    let mut counts: BTreeMap<(&str, &str, bool), u64> = BTreeMap::new();
    for (r, e) in rows.iter().zip(out) {
        *counts.entry((&r.queue, &r.kind, e.duplicate)).or_default() += 1;
    }
    for ((queue, kind, duplicate), n) in counts {
        let name = if duplicate {
            "jobq_jobs_duplicates_total"
        } else {
            "jobq_jobs_enqueued_total"
        };
        metrics::counter!(name, "queue" => queue.to_owned(), "kind" => kind.to_owned())
            .increment(n);
    }
}

#[cfg(test)]
mod tests;
