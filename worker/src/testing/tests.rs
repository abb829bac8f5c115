//! The test kit's own tests, each helper against a real database: assertions (in an open
//! transaction, and a failing one's message), `perform_job`'s outcomes, `Drain` with its
//! clock, workflows, and the inline and manual modes.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use jobq_producer::{Batch, Job, JobState, NewJob, Producer, Workflow};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::MySqlPool;

use super::*;
use crate::{JobContext, JobError, Registry};

#[derive(Serialize, Deserialize)]
struct Invoice {
    order: u64,
}
impl Job for Invoice {
    const KIND: &'static str = "invoice";
    const QUEUE: &'static str = "billing";
}

#[derive(Serialize, Deserialize)]
struct Step {
    /// What the handler does: "ok", "fail", "retry_after", "snooze", "discard", "cancel",
    /// "panic", "slow", "write", "write_fail", "chain".
    act: String,
}
impl Job for Step {
    const KIND: &'static str = "step";
}

fn step(act: &str) -> Step {
    Step { act: act.into() }
}

/// Handlers for `step` (and `invoice`, which always succeeds); `step`'s "chain" enqueues an
/// invoice through `producer`.
fn registry(producer: Producer) -> Registry {
    let mut r = Registry::new();
    r.register::<Invoice>(|i: Invoice, ctx: JobContext| async move {
        ctx.set_result(&json!({ "invoiced": i.order }))?;
        Ok(())
    })
    .unwrap();
    r.register::<Step>(move |s: Step, ctx: JobContext| {
        let producer = producer.clone();
        async move {
            match s.act.as_str() {
                "ok" => Ok(()),
                "log" => {
                    ctx.log("hello");
                    ctx.progress(50.0, "half");
                    Ok(())
                }
                "fail" => Err(JobError::retry("upstream said 503")),
                "retry_after" => Err(JobError::retry_after("later", Duration::from_secs(90))),
                "snooze" => Err(JobError::snooze(Duration::from_secs(600))),
                "discard" => Err(JobError::discard("bad input")),
                "cancel" => Err(JobError::cancel("not needed")),
                "panic" => panic!("boom"),
                "slow" => {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    Ok(())
                }
                "write" | "write_fail" => {
                    let mut tx = ctx.tx().await?;
                    sqlx::query("INSERT INTO effects (v) VALUES (1)")
                        .execute(&mut **tx)
                        .await?;
                    if s.act == "write_fail" {
                        return Err(JobError::retry("after writing"));
                    }
                    Ok(())
                }
                "chain" => {
                    producer
                        .enqueue(NewJob::new(&Invoice { order: 9 })?)
                        .await
                        .map_err(JobError::retry)?;
                    Ok(())
                }
                other => Err(JobError::discard(format!("unknown act {other}"))),
            }
        }
    })
    .unwrap();
    r
}

async fn setup(db: &MySqlPool) -> (Producer, Registry) {
    jobq_producer::migrate(db).await.unwrap();
    sqlx::query("CREATE TABLE effects (v INT NOT NULL)")
        .execute(db)
        .await
        .unwrap();
    let producer = Producer::new(db.clone());
    (producer.clone(), registry(producer))
}

async fn effects(db: &MySqlPool) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM effects")
        .fetch_one(db)
        .await
        .unwrap()
}

/// The panic message of a future that panicked.
async fn panic_of(f: impl std::future::Future<Output = ()>) -> String {
    let p = AssertUnwindSafe(f).catch_unwind().await.unwrap_err();
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

#[sqlx::test(migrations = false)]
async fn assertions_see_the_tests_own_transaction(db: MySqlPool) {
    let (producer, _) = setup(&db).await;
    let mut tx = db.begin().await.unwrap();
    let id = producer
        .enqueue_in(
            &mut tx,
            NewJob::new(&Invoice { order: 7 })
                .unwrap()
                .queue("billing")
                .priority(3),
        )
        .await
        .unwrap();
    let found = assert_enqueued(
        &mut *tx,
        Expect::job(&Invoice { order: 7 })
            .queue("billing")
            .priority(3),
    )
    .await;
    assert_eq!(found.id, id);
    assert_eq!(found.state, JobState::Available);
    // Not committed: the pool's other sessions do not see it.
    refute_enqueued(&db, Expect::kind("invoice")).await;
    tx.commit().await.unwrap();
    assert_enqueued(&db, Expect::kind("invoice").payload(json!({"order": 7}))).await;
    let all = all_enqueued(&db, Expect::any()).await.unwrap();
    assert_eq!(all.len(), 1);
    // A scheduled job, by its due time.
    let at = chrono::Utc::now() + chrono::Duration::hours(2);
    producer
        .enqueue(NewJob::new(&Invoice { order: 8 }).unwrap().run_at(at))
        .await
        .unwrap();
    assert_enqueued(
        &db,
        Expect::kind("invoice")
            .state(JobState::Scheduled)
            .scheduled_at(at),
    )
    .await;
    refute_enqueued(
        &db,
        Expect::kind("invoice").scheduled_at(at + chrono::Duration::minutes(5)),
    )
    .await;
}

/// A failing assertion names what was expected and lists what was enqueued instead, with why
/// each did not match; a failing refutation lists the matches.
#[sqlx::test(migrations = false)]
async fn failing_assertions_say_what_was_there(db: MySqlPool) {
    let (producer, _) = setup(&db).await;
    let id = producer
        .enqueue(NewJob::new(&Invoice { order: 7 }).unwrap())
        .await
        .unwrap();
    let m = panic_of(async {
        assert_enqueued(&db, Expect::kind("invoice").payload(json!({"order": 8}))).await;
    })
    .await;
    assert!(
        m.starts_with("expected a job enqueued with kind = \"invoice\", payload ⊇ {\"order\":8}"),
        "{m}"
    );
    assert!(
        m.contains(&format!("#{id} invoice on \"billing\", available"))
            && m.contains("{\"order\":7} (payload.order is 7)"),
        "{m}"
    );
    let m = panic_of(async { refute_enqueued(&db, Expect::kind("invoice")).await }).await;
    assert!(
        m.contains("expected no job enqueued with kind = \"invoice\"") && m.contains("1 match"),
        "{m}"
    );
}

/// Each outcome a handler can have, through the real handler, and what the runtime decides.
#[sqlx::test(migrations = false)]
async fn perform_job_returns_each_outcome(db: MySqlPool) {
    let (_, registry) = setup(&db).await;
    let p = perform_job(&db, &registry, &Invoice { order: 5 })
        .await
        .unwrap();
    assert_eq!(p.outcome, Outcome::Completed);
    assert_eq!(p.state, JobState::Completed);
    assert_eq!(p.result, Some(json!({"invoiced": 5})));

    let s = |act: &str| Perform::new(&step(act)).unwrap();
    let secs = |n| Some(Duration::from_secs(n));
    // (act, attempt, what the handler did, the state, the delay, the error's start)
    type Row<'a> = (&'a str, u32, Outcome, JobState, Option<Duration>, &'a str);
    let table: Vec<Row> = vec![
        ("ok", 1, Outcome::Completed, JobState::Completed, None, ""),
        (
            "fail",
            1,
            Outcome::Failed,
            JobState::Retryable,
            secs(1),
            "upstream said 503",
        ),
        (
            "fail",
            3,
            Outcome::Failed,
            JobState::Retryable,
            secs(4),
            "upstream said 503",
        ),
        (
            "fail",
            25,
            Outcome::Failed,
            JobState::Discarded,
            None,
            "upstream said 503 (attempt 25 of 25",
        ),
        (
            "retry_after",
            1,
            Outcome::Failed,
            JobState::Retryable,
            secs(90),
            "later",
        ),
        (
            "snooze",
            1,
            Outcome::Snoozed,
            JobState::Scheduled,
            secs(600),
            "",
        ),
        (
            "discard",
            1,
            Outcome::Discarded,
            JobState::Discarded,
            None,
            "bad input",
        ),
        (
            "cancel",
            1,
            Outcome::Cancelled,
            JobState::Cancelled,
            None,
            "not needed",
        ),
        (
            "panic",
            1,
            Outcome::Panicked,
            JobState::Retryable,
            secs(1),
            "handler panicked: boom",
        ),
    ];
    for (act, attempt, outcome, state, delay, error) in table {
        let p = s(act).attempt(attempt).run(&db, &registry).await.unwrap();
        assert_eq!(
            (p.outcome, p.state, p.delay),
            (outcome, state, delay),
            "{act} at attempt {attempt}: {p:?}"
        );
        assert!(
            p.error.as_deref().unwrap_or("").starts_with(error),
            "{act}: {p:?}"
        );
    }
    // The payload does not decode: discarded at once.
    let p = Perform::raw("step", "{\"nope\": 1}")
        .run(&db, &registry)
        .await
        .unwrap();
    assert_eq!(
        (p.outcome, p.state),
        (Outcome::Undecodable, JobState::Discarded)
    );
    // No handler for the kind: retried, saying which kinds there are.
    let p = Perform::json("unknown", json!({}))
        .run(&db, &registry)
        .await
        .unwrap();
    assert_eq!(
        (p.outcome, p.state),
        (Outcome::NoHandler, JobState::Retryable)
    );
    assert!(p.error.unwrap().contains("invoice, step"));
    // A timeout from the configuration.
    let mut settings = jobq_config::Settings::default();
    settings.worker.job_timeout = Duration::from_millis(50);
    let config = settings.validate().unwrap();
    let p = s("slow").config(&config).run(&db, &registry).await.unwrap();
    assert_eq!(
        (p.outcome, p.state),
        (Outcome::TimedOut, JobState::Retryable)
    );
    // Log lines and progress come back with the outcome.
    let p = s("log").run(&db, &registry).await.unwrap();
    assert_eq!(p.logs, ["hello"]);
    assert_eq!(p.progress, Some((50.0, Some("half".to_owned()))));
    // ctx.tx(): committed with a success, rolled back with a failure.
    assert!(s("write").run(&db, &registry).await.unwrap().is_completed());
    assert_eq!(effects(&db).await, 1);
    let p = s("write_fail").run(&db, &registry).await.unwrap();
    assert_eq!(p.state, JobState::Retryable);
    assert_eq!(effects(&db).await, 1);
}

/// A drain runs a queue's jobs and what they enqueue, writes every outcome as a worker does,
/// and reaches a backoff by moving its clock, not by sleeping.
#[sqlx::test(migrations = false)]
async fn drain_runs_jobs_and_moves_its_clock(db: MySqlPool) {
    let (producer, registry) = setup(&db).await;
    for act in ["ok", "fail", "snooze", "discard", "chain", "log"] {
        producer
            .enqueue(NewJob::new(&step(act)).unwrap())
            .await
            .unwrap();
    }
    let mut drain = Drain::new(&db, &registry).unwrap();
    let d = drain.queue("default").await.unwrap();
    assert_eq!(
        (
            d.completed,
            d.retryable,
            d.snoozed,
            d.discarded,
            d.cancelled
        ),
        (3, 1, 1, 1, 0),
        "{d:?}"
    );
    // The drain stored the "log" job's line and progress, as a worker does.
    let logged = assert_enqueued(&db, Expect::job(&step("log")).state(JobState::Completed)).await;
    let lines = crate::job_logs(&db, logged.id, 0, 10).await.unwrap();
    assert_eq!(
        lines.iter().map(|l| l.line.as_str()).collect::<Vec<_>>(),
        ["hello"]
    );
    let progress = crate::job_progress(&db, logged.id).await.unwrap().unwrap();
    assert_eq!(progress.percent, 50.0);
    // "chain" enqueued an invoice into `billing`, not drained; drained next.
    let invoice = assert_enqueued(&db, Expect::kind("invoice").queue("billing")).await;
    let d = drain.queue("billing").await.unwrap();
    assert_eq!((d.completed, d.total()), (1, 1));
    assert_eq!(d.runs[0].id, invoice.id);
    let end = crate::job_with_history(&db, invoice.id).await.unwrap();
    assert_eq!(end.0.state, JobState::Completed);
    assert_eq!(end.0.result, Some(json!({"invoiced": 9})));
    let events: Vec<&str> = end.1.iter().map(|t| t.event.as_str()).collect();
    assert_eq!(events, ["enqueued", "claimed", "completed"]);
    // The failed job waits for its 1 s backoff: nothing is due until the clock moves.
    assert_eq!(drain.queue("default").await.unwrap().total(), 0);
    drain.advance(Duration::from_secs(2));
    let d = drain.queue("default").await.unwrap();
    assert_eq!(
        (d.retryable, d.total()),
        (1, 1),
        "attempt 2 fails again: {d:?}"
    );
    assert_eq!(d.runs[0].attempt, 2);
    // with_scheduled: the clock jumps to each next due job until none is left: the failing
    // job runs out of attempts (25, its backoff capped at an hour: about 13 hours of test
    // clock), while the snooze (600 s) runs and snoozes again every 10 minutes, forever:
    // ended by the limit.
    let mut drain = drain.with_scheduled(true).limit(300);
    let e = drain.queue("default").await.unwrap_err();
    assert!(e.to_string().contains("the drain ran 300 attempts"), "{e}");
    // The limit is checked before a claim: nothing is left `running`.
    let running = all_enqueued(&db, Expect::any().state(JobState::Running))
        .await
        .unwrap();
    assert!(running.is_empty(), "{running:?}");
    // Two queues at once, in claim order across them.
    let producer = Producer::new(db.clone());
    producer
        .enqueue(NewJob::new(&Invoice { order: 1 }).unwrap())
        .await
        .unwrap();
    producer
        .enqueue(NewJob::new(&step("ok")).unwrap().queue("other"))
        .await
        .unwrap();
    let d = Drain::new(&db, &registry)
        .unwrap()
        .queues(&["billing", "other"])
        .await
        .unwrap();
    assert_eq!((d.completed, d.total()), (2, 2), "{d:?}");
    let failing = assert_enqueued(&db, Expect::job(&step("fail")).state(JobState::Discarded)).await;
    assert_eq!(failing.attempt, 25);
    assert!(
        drain.ahead() > Duration::from_secs(3600),
        "{:?}",
        drain.ahead()
    );
}

/// A child waits blocked on its parent; a drain runs the workflow to its callback.
#[sqlx::test(migrations = false)]
async fn workflows_are_asserted_and_drained(db: MySqlPool) {
    let (producer, registry) = setup(&db).await;
    let w = producer
        .enqueue_workflow(
            Workflow::new("order-7")
                .job("charge", NewJob::new(&step("ok")).unwrap())
                .job_after(
                    "bill",
                    NewJob::new(&Invoice { order: 7 }).unwrap().queue("default"),
                    &["charge"],
                )
                .on_success(
                    NewJob::new(&Invoice { order: 70 })
                        .unwrap()
                        .queue("default"),
                ),
        )
        .await
        .unwrap();
    let charge = w.jobs["charge"];
    let bill = assert_enqueued(
        &db,
        Expect::kind("invoice")
            .state(JobState::Blocked)
            .after(charge)
            .workflow(w.id),
    )
    .await;
    assert_eq!(bill.id, w.jobs["bill"]);
    refute_enqueued(&db, Expect::job(&Invoice { order: 70 })).await;
    let d = Drain::new(&db, &registry).unwrap().all().await.unwrap();
    assert_eq!((d.completed, d.total()), (3, 3), "{d:?}");
    let ran: Vec<u64> = d.runs.iter().map(|r| r.id.0).collect();
    assert_eq!(&ran[..2], &[charge.0, bill.id.0]);
    let callback = all_enqueued(
        &db,
        Expect::job(&Invoice { order: 70 }).state(JobState::Completed),
    )
    .await
    .unwrap();
    assert_eq!(callback.len(), 1);
    assert_eq!(ran[2], callback[0].id.0);
    // A batch's callback, the same way.
    producer
        .enqueue_batch(
            Batch::new("two")
                .job(NewJob::new(&step("ok")).unwrap())
                .job(NewJob::new(&step("discard")).unwrap())
                .on_failure(
                    NewJob::new(&Invoice { order: 71 })
                        .unwrap()
                        .queue("default"),
                ),
        )
        .await
        .unwrap();
    let d = Drain::new(&db, &registry)
        .unwrap()
        .queue("default")
        .await
        .unwrap();
    assert_eq!((d.completed, d.discarded), (2, 1), "{d:?}");
    assert_enqueued(
        &db,
        Expect::job(&Invoice { order: 71 }).state(JobState::Completed),
    )
    .await;
}

/// Inline mode runs a job before its enqueue returns (and what it enqueues); manual mode
/// only records.
#[sqlx::test(migrations = false)]
async fn inline_and_manual_modes(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let mut registry = Registry::new();
    let seen = calls.clone();
    registry
        .register::<Invoice>(move |_: Invoice, _ctx: JobContext| {
            let seen = seen.clone();
            async move {
                seen.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .unwrap();
    // `step` enqueues an invoice through the attached producer (set once it exists).
    let attached: Arc<std::sync::OnceLock<Producer>> = Arc::default();
    let inner = attached.clone();
    registry
        .register::<Step>(move |s: Step, _ctx: JobContext| {
            let inner = inner.clone();
            async move {
                let p = inner.get().expect("attached");
                let order = if s.act == "forever" { 0 } else { 5 };
                let job = if s.act == "forever" {
                    NewJob::new(&step("forever"))?
                } else {
                    NewJob::new(&Invoice { order })?
                };
                p.enqueue(job).await.map_err(JobError::retry)?;
                Ok(())
            }
        })
        .unwrap();
    let inline = Inline::new(&db, &registry, Mode::Inline).unwrap();
    let producer = inline.attach(Producer::new(db.clone()));
    attached.set(producer.clone()).unwrap();
    let id = producer
        .enqueue(NewJob::new(&Invoice { order: 1 }).unwrap())
        .await
        .unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "ran before enqueue returned"
    );
    assert_enqueued(&db, Expect::kind("invoice").state(JobState::Completed)).await;
    assert_eq!(inline.enqueued(), vec![id]);
    assert_eq!(inline.runs().len(), 1);
    assert!(inline.runs()[0].performed.is_completed());
    // A delayed job waits, as documented.
    producer
        .enqueue(
            NewJob::new(&Invoice { order: 2 })
                .unwrap()
                .delay(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // A job whose handler enqueues another: both run before the first enqueue returns.
    producer
        .enqueue(NewJob::new(&step("chain")).unwrap())
        .await
        .unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the enqueued invoice ran too"
    );
    assert_eq!(inline.runs().len(), 3);
    // A job that enqueues itself is stopped at the depth limit: the innermost enqueue panics
    // in its handler, which fails that job with the reason.
    producer
        .enqueue(NewJob::new(&step("forever")).unwrap())
        .await
        .unwrap();
    let stopped: Vec<_> = inline
        .runs()
        .into_iter()
        .filter(|r| r.performed.outcome == Outcome::Panicked)
        .collect();
    assert_eq!(stopped.len(), 1, "{stopped:?}");
    let why = stopped[0].performed.error.clone().unwrap_or_default();
    assert!(why.contains("nested 16 runs deep"), "{why}");

    let manual = Inline::new(&db, &registry, Mode::Manual).unwrap();
    let producer = manual.attach(Producer::new(db.clone()));
    let ids = producer
        .enqueue_many(vec![
            NewJob::new(&Invoice { order: 3 }).unwrap(),
            NewJob::new(&Invoice { order: 4 }).unwrap(),
        ])
        .await
        .unwrap();
    assert_eq!(manual.enqueued(), ids);
    assert_eq!(calls.load(Ordering::SeqCst), 2, "manual mode runs nothing");
    assert_enqueued(&db, Expect::job(&Invoice { order: 4 })).await;
}
