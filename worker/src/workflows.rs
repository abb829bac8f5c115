//! Workflows and batches for operators, the public API behind `jobq workflows` and the console:
//! list them (from the counters their jobs' endings keep), show one with its jobs and graph
//! (Graphviz dot or Mermaid), cancel one, retry one.

use chrono::{DateTime, Utc};
use jobq_producer::deps::FlowState;
use jobq_producer::{JobId, JobState, WorkflowId};
use serde::Serialize;
use sqlx::MySqlPool;

use crate::error::{Error, Result};
use crate::model::{Act, Acted};
use crate::store::workflows as store;

/// A workflow as `jobq workflows` lists it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WorkflowSummary {
    /// Its id.
    pub id: WorkflowId,
    /// The name it was enqueued with.
    pub name: String,
    /// A batch (independent jobs with callbacks) rather than a graph.
    pub batch: bool,
    /// `running` until every job ended, then `completed`, `failed` or `cancelled`.
    pub state: FlowState,
    /// How many jobs it has.
    pub jobs: u32,
    /// Jobs that ended completed.
    pub completed: u32,
    /// Jobs that ended discarded.
    pub discarded: u32,
    /// Jobs that ended cancelled.
    pub cancelled: u32,
    /// When it was enqueued (UTC).
    pub created_at: DateTime<Utc>,
    /// When its last job ended.
    pub finished_at: Option<DateTime<Utc>>,
}

/// One job of a workflow.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WorkflowJob {
    /// Its name in the workflow.
    pub name: String,
    /// The job's id.
    pub id: JobId,
    /// Its state now.
    pub state: JobState,
    /// Its kind.
    pub kind: String,
    /// Its current or last attempt (0: never started).
    pub attempt: u32,
    /// The names of the jobs it runs after.
    pub parents: Vec<String>,
}

/// A workflow with its jobs and callbacks.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WorkflowDetail {
    /// Its row.
    #[serde(flatten)]
    pub summary: WorkflowSummary,
    /// Its jobs, parents first (in id order).
    pub job_list: Vec<WorkflowJob>,
    /// Its callbacks and the job each became, once enqueued.
    pub callbacks: Vec<WorkflowCallback>,
}

/// A callback of a workflow or batch.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WorkflowCallback {
    /// `success`, `failure` or `finish`.
    pub on: String,
    /// The job it became, once the workflow ended so.
    pub job: Option<JobId>,
}

fn summary(r: store::FlowRow) -> Result<WorkflowSummary> {
    Ok(WorkflowSummary {
        id: WorkflowId(r.id),
        name: r.name,
        batch: r.batch,
        state: r.state.parse().map_err(Error::Invalid)?,
        jobs: r.jobs,
        completed: r.completed,
        discarded: r.discarded,
        cancelled: r.cancelled,
        created_at: r.created_at,
        finished_at: r.finished_at,
    })
}

/// The newest workflows first, at most `limit`, older than `before` if given.
pub async fn list_workflows(
    pool: &MySqlPool,
    limit: u32,
    before: Option<WorkflowId>,
) -> Result<Vec<WorkflowSummary>> {
    store::list(pool, limit, before.map(|b| b.0))
        .await?
        .into_iter()
        .map(summary)
        .collect()
}

/// Workflow `id` with its jobs, their parents and its callbacks; `None` if there is none.
pub async fn workflow(pool: &MySqlPool, id: WorkflowId) -> Result<Option<WorkflowDetail>> {
    let Some(row) = store::one(pool, id.0).await? else {
        return Ok(None);
    };
    let (jobs, edges, callbacks) = store::graph(pool, id.0).await?;
    let names: std::collections::HashMap<u64, String> =
        jobs.iter().map(|j| (j.1, j.0.clone())).collect();
    let mut parents: std::collections::HashMap<u64, Vec<String>> = std::collections::HashMap::new();
    for (p, c) in &edges {
        parents
            .entry(*c)
            .or_default()
            .push(names.get(p).cloned().unwrap_or_else(|| p.to_string()));
    }
    let job_list = jobs
        .into_iter()
        .map(|(name, jid, state, kind, attempt)| {
            Ok(WorkflowJob {
                parents: parents.remove(&jid).unwrap_or_default(),
                name,
                id: JobId(jid),
                state: state.parse().map_err(Error::Invalid)?,
                kind,
                attempt,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(WorkflowDetail {
        summary: summary(row)?,
        job_list,
        callbacks: callbacks
            .into_iter()
            .map(|(on, job)| WorkflowCallback {
                on,
                job: job.map(JobId),
            })
            .collect(),
    }))
}

/// What an act on a whole workflow did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WorkflowActed {
    /// Cancel: jobs cancelled at once; retry: jobs made available.
    pub now: u32,
    /// Cancel: running jobs asked to stop (they end `cancelled` at their worker's next
    /// heartbeat); retry: jobs blocked again until their parents complete.
    pub later: u32,
}

/// Cancels workflow `id`: its jobs that have not started end `cancelled` at once, its running
/// ones get a cancel request (as `jobq cancel` does), and the workflow ends `cancelled` once
/// every job has ended. Refused for a workflow that has already ended.
pub async fn cancel_workflow(
    pool: &MySqlPool,
    id: WorkflowId,
    actor: &str,
) -> Result<WorkflowActed> {
    let open = match store::mark_cancelled(pool, id.0).await? {
        None => return Err(Error::Invalid(format!("workflow {id} does not exist"))),
        Some(Err(state)) => {
            return Err(Error::Invalid(format!(
                "workflow {id} is {state}: it has already ended; nothing to cancel"
            )))
        }
        Some(Ok(open)) => open,
    };
    let ids: Vec<JobId> = open.into_iter().map(JobId).collect();
    let mut out = WorkflowActed::default();
    for (_, acted) in crate::acts::act_on_jobs(pool, Act::Cancel, &ids, actor).await? {
        match acted {
            Acted::Done { .. } => out.now += 1,
            Acted::CancelRequested => out.later += 1,
            _ => {}
        }
    }
    Ok(out)
}

/// Retries workflow `id`: its jobs that did not complete (discarded or cancelled) run again,
/// `available` or, while a parent of theirs has not completed, `blocked`; what depends on them
/// waits for them again; jobs that completed are left as they are. The workflow is `running`
/// again and its callbacks run at its next end.
pub async fn retry_workflow(
    pool: &MySqlPool,
    id: WorkflowId,
    actor: &str,
) -> Result<WorkflowActed> {
    let actor: String = actor.chars().take(128).collect();
    match store::retry(pool, id.0, &actor, jobq_producer::deps::RULES).await? {
        None => Err(Error::Invalid(format!("workflow {id} does not exist"))),
        Some(Err(why)) => Err(Error::Invalid(format!(
            "workflow {id} cannot be retried: {why}"
        ))),
        Some(Ok(r)) => Ok(WorkflowActed {
            now: r.available,
            later: r.blocked,
        }),
    }
}

/// The graph of `w` in Graphviz dot: one node per job (its name, kind and state, filled by
/// state), one arrow per edge, parent to child.
pub fn to_dot(w: &WorkflowDetail) -> String {
    let mut out = format!("digraph \"workflow {}\" {{\n  rankdir=LR;\n", w.summary.id);
    for j in &w.job_list {
        out.push_str(&format!(
            "  \"{}\" [label=\"{}\\n{} · {}\", style=filled, fillcolor=\"{}\"];\n",
            escape(&j.name),
            escape(&j.name),
            escape(&j.kind),
            j.state,
            colour(j.state)
        ));
    }
    for j in &w.job_list {
        for p in &j.parents {
            out.push_str(&format!(
                "  \"{}\" -> \"{}\";\n",
                escape(p),
                escape(&j.name)
            ));
        }
    }
    out.push_str("}\n");
    out
}

/// The graph of `w` as a Mermaid flowchart, nodes styled by state.
pub fn to_mermaid(w: &WorkflowDetail) -> String {
    let mut out = String::from("flowchart LR\n");
    let node = |i: usize| format!("j{i}");
    let index: std::collections::HashMap<&str, usize> = w
        .job_list
        .iter()
        .enumerate()
        .map(|(i, j)| (j.name.as_str(), i))
        .collect();
    for (i, j) in w.job_list.iter().enumerate() {
        out.push_str(&format!(
            "  {}[\"{} · {} · {}\"]:::{}\n",
            node(i),
            j.name.replace('"', "'"),
            j.kind,
            j.state,
            j.state
        ));
    }
    for (i, j) in w.job_list.iter().enumerate() {
        for p in &j.parents {
            if let Some(&pi) = index.get(p.as_str()) {
                out.push_str(&format!("  {} --> {}\n", node(pi), node(i)));
            }
        }
    }
    for s in JobState::ALL {
        out.push_str(&format!("  classDef {s} fill:{}\n", colour(s)));
    }
    out
}

/// The fill colour of a job in state `s`, in both graph formats and the console.
pub(crate) fn colour(s: JobState) -> &'static str {
    match s {
        JobState::Completed => "#b7e4c7",
        JobState::Discarded => "#f4a6a6",
        JobState::Cancelled => "#d9d9d9",
        JobState::Running => "#a9d6f5",
        JobState::Blocked => "#fff3b0",
        JobState::Retryable => "#ffd6a5",
        _ => "#ffffff",
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}
