//! A workflow's insert: its row, its jobs, their names and edges, in the caller's transaction.

use chrono::{DateTime, Utc};
use sqlx::MySqlConnection;

use super::*;

/// A checked workflow's rows: the jobs in parent-first order, each with the indexes of its
/// parents.
pub(crate) struct WorkflowInsert<'a> {
    pub(crate) name: &'a str,
    pub(crate) unique_key: Option<&'a str>,
    pub(crate) fail_fast: bool,
    pub(crate) batch: bool,
    pub(crate) jobs: Vec<(String, JobInsert, Vec<usize>, OnParentFailure)>,
    pub(crate) callbacks: Vec<(deps::Callback, JobInsert)>,
}

/// Inserts a workflow: its row, its jobs (those with parents `blocked`), their names and their
/// edges. A running workflow with the same unique key makes it a duplicate: nothing is
/// inserted and the running one's id and jobs are returned.
pub(crate) async fn insert_workflow(
    conn: &mut MySqlConnection,
    wf: &WorkflowInsert<'_>,
) -> Result<crate::workflow::WorkflowEnqueued> {
    use crate::workflow::{WorkflowEnqueued, WorkflowId};
    // language=MySQL
    let (inc, now): (u64, DateTime<Utc>) =
        sqlx::query_as("SELECT @@auto_increment_increment, UTC_TIMESTAMP(6)")
            .fetch_one(&mut *conn)
            .await?;
    // language=MySQL
    // The unique key is taken while the workflow runs (`unique_active`); a duplicate hands
    // back the running workflow's id, and counting it makes the reply say "updated" (2 rows,
    // not 1: sqlx asks for found rows, so an unchanged row would count as inserted).
    let res = sqlx::query(
        "INSERT INTO jobq_workflows (name, batch, unique_key, fail_fast, jobs, created_at) \
         VALUES (?, ?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE id = LAST_INSERT_ID(id), duplicates = duplicates + 1",
    )
    .bind(wf.name)
    .bind(wf.batch)
    .bind(wf.unique_key)
    .bind(wf.fail_fast)
    .bind(wf.jobs.len() as u32)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    let id = res.last_insert_id();
    if res.rows_affected() != 1 {
        // language=MySQL
        let jobs: Vec<(String, u64)> = sqlx::query_as(
            "SELECT CAST(name AS CHAR), job_id FROM jobq_workflow_jobs WHERE workflow_id = ?",
        )
        .bind(id)
        .fetch_all(&mut *conn)
        .await?;
        return Ok(WorkflowEnqueued {
            id: WorkflowId(id),
            duplicate: true,
            jobs: jobs.into_iter().map(|(n, j)| (n, JobId(j))).collect(),
        });
    }
    let mut dependents = vec![0u32; wf.jobs.len()];
    for (_, _, parents, _) in &wf.jobs {
        for &p in parents {
            dependents[p] += 1;
        }
    }
    let begins: Vec<Begin> = wf
        .jobs
        .iter()
        .zip(&dependents)
        .map(|((_, r, parents, _), &deps)| {
            let mut b = Begin::plain(r, now);
            if !parents.is_empty() {
                b.state = "blocked";
                b.pending = parents.len() as u32;
            }
            b.dependents = deps;
            b.workflow = Some(id);
            b
        })
        .collect();
    let order: Vec<usize> = (0..wf.jobs.len()).collect();
    let mut ids: Vec<u64> = Vec::with_capacity(wf.jobs.len());
    for (start, end) in chunks(&order, |i| wf.jobs[i].1.payload.len()) {
        let chunk: Vec<(&JobInsert, &Begin)> =
            (start..end).map(|i| (&wf.jobs[i].1, &begins[i])).collect();
        ids.extend(
            insert_chunk(conn, &chunk, inc, now)
                .await?
                .into_iter()
                .map(|j| j.0),
        );
    }
    for chunk in order.chunks(CHUNK_ROWS) {
        // language=MySQL
        let mut sql =
            String::from("INSERT INTO jobq_workflow_jobs (workflow_id, name, job_id) VALUES ");
        for (n, &i) in chunk.iter().enumerate() {
            if n > 0 {
                sql.push(',');
            }
            sql.push_str(&format!("({id}, ?, {})", ids[i]));
        }
        let mut q = sqlx::query(&sql);
        for &i in chunk {
            q = q.bind(&wf.jobs[i].0);
        }
        q.execute(&mut *conn).await?;
    }
    let edges: Vec<Edge> = wf
        .jobs
        .iter()
        .enumerate()
        .flat_map(|(c, (_, _, parents, policy))| {
            let ids = &ids;
            parents.iter().map(move |&p| Edge {
                parent: ids[p],
                child: ids[c],
                on_failure: *policy,
                ended: None,
            })
        })
        .collect();
    insert_edges(conn, &edges, now).await?;
    for (on, r) in &wf.callbacks {
        // language=MySQL
        sqlx::query(
            "INSERT INTO jobq_callbacks (workflow_id, on_event, queue, kind, payload, priority, max_attempts, concurrency_key, \
                                         traceparent, tracestate) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(id)
        .bind(on.as_str())
        .bind(&r.queue)
        .bind(&r.kind)
        .bind(&r.payload)
        .bind(r.priority)
        .bind(r.max_attempts)
        .bind(&r.concurrency_key)
        .bind(r.trace.as_ref().map(|t| t.traceparent()))
        .bind(r.trace.as_ref().and_then(|t| t.tracestate()))
        .execute(&mut *conn)
        .await?;
    }
    Ok(WorkflowEnqueued {
        id: WorkflowId(id),
        duplicate: false,
        jobs: wf
            .jobs
            .iter()
            .zip(&ids)
            .map(|((name, ..), &j)| (name.clone(), JobId(j)))
            .collect(),
    })
}
