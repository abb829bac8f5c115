//! README "Testing your handlers": this file is the README's example, word for word.
use std::time::Duration;

use jobq_worker::testing::{assert_enqueued, perform_job, Drain, Expect, Outcome};
use jobq_worker::{Job, JobContext, JobError, JobState, NewJob, Producer, Registry};
use serde::{Deserialize, Serialize};
use sqlx::MySqlPool;

// The application's code.
#[derive(Serialize, Deserialize)]
struct SendInvoice {
    order_id: u64,
}
impl Job for SendInvoice {
    const KIND: &'static str = "send_invoice";
    const QUEUE: &'static str = "billing";
}

/// Places an order and enqueues its invoice in the same transaction.
async fn place_order(
    db: &MySqlPool,
    producer: &Producer,
    order_id: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut tx = db.begin().await?;
    sqlx::query("INSERT INTO orders (id) VALUES (?)")
        .bind(order_id)
        .execute(&mut *tx)
        .await?;
    producer
        .enqueue_in(&mut tx, NewJob::new(&SendInvoice { order_id })?)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// The handlers, with the mail service's answer given (a real application passes a client).
fn registry(mail_status: u16) -> Registry {
    let mut registry = Registry::new();
    registry
        .register::<SendInvoice>(move |job: SendInvoice, ctx: JobContext| async move {
            if mail_status == 503 {
                return Err(JobError::retry_after(
                    "mail service: 503",
                    Duration::from_secs(30),
                ));
            }
            ctx.set_result(&format!("invoice for order {} sent", job.order_id))?;
            Ok(())
        })
        .expect("one handler per kind");
    registry
}

async fn setup(db: &MySqlPool) {
    jobq_worker::testing::migrate(db).await.unwrap(); // jobq's tables
    sqlx::query("CREATE TABLE orders (id BIGINT PRIMARY KEY)")
        .execute(db)
        .await
        .unwrap();
}

// The tests: each gets a fresh database from #[sqlx::test] (DATABASE_URL names the server).
#[sqlx::test(migrations = false)]
async fn placing_an_order_enqueues_its_invoice(db: MySqlPool) {
    setup(&db).await;
    place_order(&db, &Producer::new(db.clone()), 7)
        .await
        .unwrap();
    let job = assert_enqueued(
        &db,
        Expect::job(&SendInvoice { order_id: 7 }).queue("billing"),
    )
    .await;
    assert_eq!(job.state, JobState::Available);
}

#[sqlx::test(migrations = false)]
async fn a_503_is_retried_in_30_seconds(db: MySqlPool) {
    setup(&db).await;
    let done = perform_job(&db, &registry(503), &SendInvoice { order_id: 7 })
        .await
        .unwrap();
    assert_eq!(done.outcome, Outcome::Failed);
    assert_eq!(done.state, JobState::Retryable);
    assert_eq!(done.delay, Some(Duration::from_secs(30)));
}

#[sqlx::test(migrations = false)]
async fn the_billing_queue_drains(db: MySqlPool) {
    setup(&db).await;
    place_order(&db, &Producer::new(db.clone()), 7)
        .await
        .unwrap();
    let drained = Drain::new(&db, &registry(200))
        .unwrap()
        .queue("billing")
        .await
        .unwrap();
    assert_eq!(drained.completed, 1);
    let done = assert_enqueued(&db, Expect::kind("send_invoice").state(JobState::Completed)).await;
    assert_eq!(done.attempt, 1);
}
