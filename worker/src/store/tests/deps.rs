//! Dependencies and workflows in the store: each ending settles its dependents in its own
//! transaction (release, the failure policies, cascades, fail_fast, workflow counters), and a
//! dependent added while its parent runs is not missed by the batched completion.

use jobq_producer::{JobId, NewJob, OnParentFailure, Producer, QueueName, Workflow};
use serde_json::json;
use sqlx::MySqlPool;

use super::super::*;
use super::plain_claim;
use crate::ids::WorkerId;
use crate::machine::attempt::{decide, Backoff, Outcome};
use crate::model::ClaimedJob;
use crate::runtime::claim::claim;

fn noop() -> NewJob {
    NewJob::json("noop", json!({}))
}

/// Claims every available job of `default` (up to 100).
async fn claim_all(db: &MySqlPool) -> Vec<ClaimedJob> {
    let queue = QueueName::new("default").unwrap();
    let worker = WorkerId::generate();
    let mut conn = db.acquire().await.unwrap();
    claim(&mut conn, plain_claim(&queue, &worker, 100))
        .await
        .unwrap()
        .jobs
}

/// Ends `job`'s attempt as `outcome` says, in the path that settles dependents when the claim
/// saw it linked.
async fn end(db: &MySqlPool, job: &ClaimedJob, outcome: Outcome) -> bool {
    let b = Backoff {
        base: std::time::Duration::from_secs(1),
        max: std::time::Duration::from_secs(1),
    };
    let d = decide(&outcome, job.attempt, job.max_attempts, b, 1.0);
    let worker = WorkerId::generate();
    finish_tx(
        db,
        FinishWrite {
            fence: job.fence(),
            attempt: job.attempt,
            worker: &worker,
            decision: &d,
            result: None,
            on_cancel: crate::machine::attempt::overridden_by_cancel,
            linked: job.linked,
            rules: jobq_producer::deps::RULES,
        },
    )
    .await
    .unwrap()
}

async fn state(db: &MySqlPool, id: JobId) -> String {
    sqlx::query_scalar("SELECT CAST(state AS CHAR) FROM jobq_jobs WHERE id = ?")
        .bind(id.0)
        .fetch_one(db)
        .await
        .unwrap()
}

async fn states(db: &MySqlPool, ids: &[JobId]) -> Vec<String> {
    let mut out = Vec::new();
    for &id in ids {
        out.push(state(db, id).await);
    }
    out
}

async fn last_error(db: &MySqlPool, id: JobId) -> String {
    sqlx::query_scalar("SELECT CAST(last_error AS CHAR) FROM jobq_jobs WHERE id = ?")
        .bind(id.0)
        .fetch_one(db)
        .await
        .unwrap()
}

fn claimed(jobs: &[ClaimedJob], id: JobId) -> &ClaimedJob {
    jobs.iter()
        .find(|j| j.id == id.0)
        .unwrap_or_else(|| panic!("job {id} was not claimed"))
}

#[sqlx::test(migrations = false)]
async fn a_diamond_releases_each_child_when_its_last_parent_completes(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let flow = Workflow::new("diamond")
        .job("a", noop())
        .job_after("b", noop(), &["a"])
        .job_after("c", noop(), &["a"])
        .job_after("d", noop(), &["b", "c"]);
    let wf = Producer::new(db.clone())
        .enqueue_workflow(flow)
        .await
        .unwrap();
    let [a, b, c, d] = ["a", "b", "c", "d"].map(|n| wf.jobs[n]);
    assert_eq!(
        states(&db, &[a, b, c, d]).await,
        ["available", "blocked", "blocked", "blocked"]
    );
    // Blocked jobs are never claimed.
    let first = claim_all(&db).await;
    assert_eq!(first.len(), 1);
    assert!(first[0].linked, "the claim sees the job has dependents");
    assert!(end(&db, &first[0], Outcome::Success).await);
    assert_eq!(
        states(&db, &[a, b, c, d]).await,
        ["completed", "available", "available", "blocked"]
    );
    let second = claim_all(&db).await;
    assert_eq!(second.len(), 2);
    assert!(end(&db, claimed(&second, b), Outcome::Success).await);
    assert_eq!(state(&db, d).await, "blocked", "d still waits for c");
    assert!(end(&db, claimed(&second, c), Outcome::Success).await);
    assert_eq!(state(&db, d).await, "available");
    // The release is in the history, from blocked.
    let unblocked: Vec<(u64, String)> = sqlx::query_as(
        "SELECT job_id, CAST(to_state AS CHAR) FROM jobq_transitions \
         WHERE event = 'unblocked' AND from_state = 'blocked' ORDER BY job_id",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(
        unblocked,
        [
            (b.0, "available".into()),
            (c.0, "available".into()),
            (d.0, "available".into())
        ]
    );
    let last = claim_all(&db).await;
    assert!(end(&db, &last[0], Outcome::Success).await);
    let (state, completed, finished): (String, u32, bool) = sqlx::query_as(
        "SELECT CAST(state AS CHAR), completed, finished_at IS NOT NULL FROM jobq_workflows WHERE id = ?",
    )
    .bind(wf.id.0)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(
        (state.as_str(), completed, finished),
        ("completed", 4, true)
    );
}

#[sqlx::test(migrations = false)]
async fn each_policy_answers_a_failed_parent(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let producer = Producer::new(db.clone());
    let p = producer.enqueue(noop().max_attempts(1)).await.unwrap();
    let q = producer
        .enqueue(noop().delay(std::time::Duration::from_secs(3600)))
        .await
        .unwrap();
    let cancel = producer.enqueue(noop().after(p)).await.unwrap();
    let after_cancel = producer.enqueue(noop().after(cancel)).await.unwrap();
    let ignore = producer
        .enqueue(
            noop()
                .after(p)
                .after(q)
                .on_parent_failure(OnParentFailure::Ignore),
        )
        .await
        .unwrap();
    let cont = producer
        .enqueue(
            noop()
                .after(p)
                .after(q)
                .on_parent_failure(OnParentFailure::Continue),
        )
        .await
        .unwrap();
    let jobs = claim_all(&db).await;
    assert_eq!(jobs.len(), 1, "only p is available");
    let failed = Outcome::Error {
        message: "boom".into(),
        retry_after: None,
    };
    assert!(end(&db, &jobs[0], failed).await);
    assert_eq!(state(&db, p).await, "discarded");
    assert_eq!(
        states(&db, &[cancel, after_cancel, ignore, cont]).await,
        ["cancelled", "cancelled", "blocked", "available"]
    );
    let why = last_error(&db, cancel).await;
    assert!(
        why.contains(&format!("parent job {p} ended discarded")),
        "{why}"
    );
    // The cascade: the grandchild names its own parent, cancelled.
    let why = last_error(&db, after_cancel).await;
    assert!(
        why.contains(&format!("parent job {cancel} ended cancelled")),
        "{why}"
    );
    // `ignore` waits for q, then runs.
    sqlx::query("UPDATE jobq_jobs SET run_at = UTC_TIMESTAMP(6), state = 'available' WHERE id = ?")
        .bind(q.0)
        .execute(&db)
        .await
        .unwrap();
    let jobs = claim_all(&db).await;
    assert!(end(&db, claimed(&jobs, q), Outcome::Success).await);
    assert_eq!(state(&db, ignore).await, "available");
    let parents: Vec<(u64, Option<String>)> = sqlx::query_as(
        "SELECT parent_id, CAST(parent_state AS CHAR) FROM jobq_deps WHERE child_id = ? ORDER BY parent_id",
    )
    .bind(ignore.0)
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(
        parents,
        [
            (p.0, Some("discarded".into())),
            (q.0, Some("completed".into()))
        ]
    );
}

#[sqlx::test(migrations = false)]
async fn a_child_added_while_its_parent_runs_is_released_by_the_completion(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let producer = Producer::new(db.clone());
    let parent = producer.enqueue(noop()).await.unwrap();
    let jobs = claim_all(&db).await;
    assert!(!jobs[0].linked, "no dependent when claimed");
    let child = producer.enqueue(noop().after(parent)).await.unwrap();
    assert_eq!(state(&db, child).await, "blocked");
    // The batched path leaves the job alone: it has a dependent now.
    assert_eq!(
        complete_batch(&db, &[jobs[0].fence()], &[]).await.unwrap(),
        0
    );
    assert_eq!(state(&db, parent).await, "running");
    assert!(complete_linked(
        &db,
        jobs[0].fence(),
        Some("{\"n\": 1}"),
        jobq_producer::deps::RULES
    )
    .await
    .unwrap());
    assert_eq!(
        states(&db, &[parent, child]).await,
        ["completed", "available"]
    );
    // So does the single path, for a job claimed without dependents.
    let jobs = claim_all(&db).await;
    let grandchild = producer.enqueue(noop().after(child)).await.unwrap();
    assert!(end(&db, &jobs[0], Outcome::Success).await);
    assert_eq!(state(&db, grandchild).await, "available");
}

#[sqlx::test(migrations = false)]
async fn a_child_of_an_ended_parent_starts_as_its_parent_decides(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let producer = Producer::new(db.clone());
    let done = producer.enqueue(noop()).await.unwrap();
    let failed = producer.enqueue(noop().max_attempts(1)).await.unwrap();
    for job in claim_all(&db).await {
        let outcome = if job.id == done.0 {
            Outcome::Success
        } else {
            Outcome::Discard("no".into())
        };
        assert!(end(&db, &job, outcome).await);
    }
    let a = producer.enqueue(noop().after(done)).await.unwrap();
    let b = producer.enqueue(noop().after(failed)).await.unwrap();
    let c = producer
        .enqueue(
            noop()
                .after(failed)
                .on_parent_failure(OnParentFailure::Ignore),
        )
        .await
        .unwrap();
    assert_eq!(
        states(&db, &[a, b, c]).await,
        ["available", "cancelled", "available"]
    );
    // A parent that does not exist: refused, nothing written.
    let before: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobq_jobs")
        .fetch_one(&db)
        .await
        .unwrap();
    let e = producer
        .enqueue_many(vec![noop(), noop().after(JobId(999_999))])
        .await
        .unwrap_err();
    assert!(
        matches!(e, jobq_producer::Error::NoSuchParent(JobId(999_999))),
        "{e}"
    );
    let after: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobq_jobs")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(before, after);
}

#[sqlx::test(migrations = false)]
async fn fail_fast_cancels_what_has_not_started_and_the_workflow_fails(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let flow = Workflow::new("ff")
        .job("a", noop().max_attempts(1))
        .job("b", noop().delay(std::time::Duration::from_secs(3600)))
        .job_after(
            "c",
            noop().on_parent_failure(OnParentFailure::Ignore),
            &["a"],
        )
        .fail_fast(true);
    let wf = Producer::new(db.clone())
        .enqueue_workflow(flow)
        .await
        .unwrap();
    let jobs = claim_all(&db).await;
    assert_eq!(jobs.len(), 1);
    assert!(end(&db, &jobs[0], Outcome::Discard("bad input".into())).await);
    // c would run (ignore), but fail_fast cancels everything not started.
    assert_eq!(
        states(&db, &[wf.jobs["a"], wf.jobs["b"], wf.jobs["c"]]).await,
        ["discarded", "cancelled", "cancelled"]
    );
    let row: (String, u32, u32, u32) = sqlx::query_as(
        "SELECT CAST(state AS CHAR), completed, discarded, cancelled FROM jobq_workflows WHERE id = ?",
    )
    .bind(wf.id.0)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(row, ("failed".into(), 0, 1, 2));
}

#[sqlx::test(migrations = false)]
async fn a_unique_workflow_is_inserted_once_while_it_runs(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let producer = Producer::new(db.clone());
    let flow = || {
        Workflow::new("nightly")
            .job("a", noop())
            .job_after("b", noop(), &["a"])
            .unique_key("nightly/2026-12-07")
    };
    let first = producer.enqueue_workflow(flow()).await.unwrap();
    let second = producer.enqueue_workflow(flow()).await.unwrap();
    assert!(!first.duplicate);
    assert!(second.duplicate);
    assert_eq!(first.id, second.id);
    assert_eq!(first.jobs, second.jobs);
    let jobs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobq_jobs")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(jobs, 2);
}

#[sqlx::test(migrations = false)]
async fn cancelling_a_blocked_job_cancels_what_depends_on_it(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let producer = Producer::new(db.clone());
    let a = producer.enqueue(noop()).await.unwrap();
    let b = producer.enqueue(noop().after(a)).await.unwrap();
    let c = producer.enqueue(noop().after(b)).await.unwrap();
    let done = apply_act(
        &db,
        crate::model::Act::Cancel,
        &[b.0],
        "test",
        None,
        &|act, state, _, _| crate::machine::acts::decide(act, state),
        jobq_producer::deps::RULES,
    )
    .await
    .unwrap();
    assert!(done[0].1.ok(), "{:?}", done[0].1);
    assert_eq!(
        states(&db, &[a, b, c]).await,
        ["available", "cancelled", "cancelled"]
    );
    let actor: Option<String> = sqlx::query_scalar(
        "SELECT CAST(actor AS CHAR) FROM jobq_transitions WHERE job_id = ? AND to_state = 'cancelled'",
    )
    .bind(c.0)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(actor.as_deref(), Some("test"));
}

/// The repair pass finds blocked jobs whose parents all ended without releasing them (made by
/// hand here) and settles them, a window at a time; a job still waiting for a running parent
/// is left alone.
#[sqlx::test(migrations = false)]
async fn the_repair_pass_settles_what_a_lost_release_left_blocked(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let producer = Producer::new(db.clone());
    let done = producer.enqueue(noop()).await.unwrap();
    let gone = producer.enqueue(noop()).await.unwrap();
    let running = producer.enqueue(noop()).await.unwrap();
    let a = producer.enqueue(noop().after(done)).await.unwrap();
    let b = producer.enqueue(noop().after(gone)).await.unwrap();
    let c = producer.enqueue(noop().after(running)).await.unwrap();
    // A job blocked by hand, with a counter and no edges.
    let d = producer.enqueue(noop()).await.unwrap();
    for sql in [
        format!("UPDATE jobq_jobs SET state = 'completed', finalized_at = UTC_TIMESTAMP(6) WHERE id = {done}"),
        format!("DELETE FROM jobq_jobs WHERE id = {gone}"),
        format!("UPDATE jobq_jobs SET state = 'blocked', pending_parents = 3 WHERE id = {d}"),
    ] {
        sqlx::query(&sql).execute(&db).await.unwrap();
    }
    let jobs = claim_all(&db).await;
    assert_eq!(jobs.len(), 1, "only `running` is available");
    let mut cursor = RepairCursor::default();
    let mut repaired = 0;
    // Four blocked jobs, two a window: the third window finds the end of the range.
    for _ in 0..3 {
        repaired += repair(&db, &mut cursor, 2, jobq_producer::deps::RULES)
            .await
            .unwrap();
    }
    assert_eq!(
        cursor,
        RepairCursor::default(),
        "the range ended, back at the start"
    );
    assert_eq!(repaired, 3);
    assert_eq!(
        states(&db, &[a, b, c, d]).await,
        ["available", "cancelled", "blocked", "available"]
    );
    // The repair's transitions say so.
    let by_repair: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM jobq_transitions WHERE actor = 'jobq:repair' AND event IN ('unblocked', 'cancelled')",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(by_repair, 3);
    // A second pass finds nothing.
    assert_eq!(
        repair(&db, &mut cursor, 100, jobq_producer::deps::RULES)
            .await
            .unwrap(),
        0
    );
}

/// A workflow's retry re-runs what did not complete and re-blocks its children, while a job
/// outside it that runs after one of its jobs keeps what that job's ending did: it is not
/// released early when the re-run completes. A retry of one workflow job alone is refused.
#[sqlx::test(migrations = false)]
async fn a_workflow_retry_leaves_outside_children_as_they_were(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let producer = Producer::new(db.clone());
    let flow = Workflow::new("w")
        .job("a", noop().max_attempts(1))
        .job_after("b", noop(), &["a"]);
    let wf = producer.enqueue_workflow(flow).await.unwrap();
    let (a, b) = (wf.jobs["a"], wf.jobs["b"]);
    let other = producer
        .enqueue(noop().delay(std::time::Duration::from_secs(3600)))
        .await
        .unwrap();
    let outside = producer
        .enqueue(
            noop()
                .after(a)
                .after(other)
                .on_parent_failure(OnParentFailure::Ignore),
        )
        .await
        .unwrap();
    let jobs = claim_all(&db).await;
    assert!(end(&db, claimed(&jobs, a), Outcome::Discard("no".into())).await);
    assert_eq!(
        states(&db, &[a, b, outside]).await,
        ["discarded", "cancelled", "blocked"]
    );
    // One job of a workflow is not retried alone.
    let refused = apply_act(
        &db,
        crate::model::Act::Retry,
        &[a.0],
        "test",
        None,
        &|act, state, _, linked| {
            crate::machine::acts::with_dependencies(
                act,
                state,
                linked,
                crate::machine::acts::decide(act, state),
            )
        },
        jobq_producer::deps::RULES,
    )
    .await
    .unwrap();
    assert!(!refused[0].1.ok(), "{:?}", refused[0].1);
    assert_eq!(state(&db, a).await, "discarded");
    let retried = crate::store::workflows::retry(&db, wf.id.0, "test", jobq_producer::deps::RULES)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((retried.available, retried.blocked), (1, 1));
    assert_eq!(
        states(&db, &[a, b, outside]).await,
        ["available", "blocked", "blocked"]
    );
    let jobs = claim_all(&db).await;
    assert!(end(&db, claimed(&jobs, a), Outcome::Success).await);
    // b runs now; `outside` still waits for `other`, as before the retry.
    assert_eq!(states(&db, &[b, outside]).await, ["available", "blocked"]);
    let wf_state: String = sqlx::query_scalar("SELECT CAST(state AS CHAR) FROM jobq_workflows")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(wf_state, "running");
}
