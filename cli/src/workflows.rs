//! `jobq workflows`: list workflows and batches (from their counters), show one with its jobs
//! and graph (`--format dot|mermaid`), enqueue one from a JSON document, cancel or retry one.

use std::collections::BTreeMap;
use std::io::Read;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use jobq_config::Config;
use jobq_worker::{NewJob, OnParentFailure, Workflow, WorkflowId};
use serde::Deserialize;

use crate::common::parse_duration;

#[derive(clap::Args, Debug)]
pub(crate) struct WorkflowsArgs {
    #[command(subcommand)]
    action: Option<WorkflowsAction>,
    /// List as JSON (one array).
    #[arg(long)]
    json: bool,
    /// List at most this many, newest first.
    #[arg(long, default_value_t = 50)]
    limit: u32,
}

#[derive(clap::Subcommand, Debug)]
enum WorkflowsAction {
    /// A workflow: its counts, and every job with its state and its parents.
    Show {
        /// Workflow id.
        id: u64,
        /// Print JSON.
        #[arg(long, conflicts_with = "format")]
        json: bool,
        /// Print the graph instead, as Graphviz dot or a Mermaid flowchart.
        #[arg(long, value_enum)]
        format: Option<GraphFormat>,
    },
    /// Insert a workflow described by a JSON document (README "Workflows" has the format);
    /// `-` reads it from standard input. Prints the workflow's id, then each job's name and id.
    Enqueue {
        /// The document.
        file: String,
    },
    /// Cancel a workflow: its jobs that have not started at once, its running ones at their
    /// worker's next heartbeat.
    Cancel {
        /// Workflow id.
        id: u64,
    },
    /// Run a workflow's failed and cancelled jobs again; what depends on them waits for them
    /// again, completed jobs stay done.
    Retry {
        /// Workflow id.
        id: u64,
    },
}

/// `--format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum GraphFormat {
    /// Graphviz dot (`dot -Tsvg`).
    Dot,
    /// A Mermaid flowchart.
    Mermaid,
}

pub(crate) async fn run(settings: &Config, a: WorkflowsArgs) -> Result<ExitCode> {
    // A document is checked whole before connecting: bad input needs no database.
    let document = match &a.action {
        Some(WorkflowsAction::Enqueue { file }) => Some(read_document(file)?),
        _ => None,
    };
    let pool = crate::common::connected(settings).await?;
    match a.action {
        None => list(&pool, a.json, a.limit).await,
        Some(WorkflowsAction::Show { id, json, format }) => {
            let Some(w) = jobq_worker::workflow(&pool, WorkflowId(id)).await? else {
                anyhow::bail!("workflow {id} does not exist (`jobq workflows` lists them)");
            };
            match (json, format) {
                (true, _) => outln!("{}", serde_json::to_string_pretty(&w)?),
                (false, Some(GraphFormat::Dot)) => out!("{}", jobq_worker::to_dot(&w)),
                (false, Some(GraphFormat::Mermaid)) => out!("{}", jobq_worker::to_mermaid(&w)),
                (false, None) => show(&w),
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(WorkflowsAction::Enqueue { .. }) => {
            let flow = document.expect("read above");
            let producer = jobq_worker::Producer::with_options(
                pool.clone(),
                jobq_worker::producer_options(settings),
            );
            let out = producer.enqueue_workflow(flow).await?;
            let dup = if out.duplicate { " duplicate" } else { "" };
            outln!("workflow {}{dup}", out.id);
            for (name, id) in &out.jobs {
                outln!("{name} {id}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(WorkflowsAction::Cancel { id }) => {
            let done =
                jobq_worker::cancel_workflow(&pool, WorkflowId(id), &crate::acts::actor()).await?;
            outln!(
                "workflow {id} cancelled: {} jobs cancelled now, {} running asked to stop",
                done.now,
                done.later
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(WorkflowsAction::Retry { id }) => {
            let done =
                jobq_worker::retry_workflow(&pool, WorkflowId(id), &crate::acts::actor()).await?;
            outln!(
                "workflow {id} retried: {} jobs available now, {} waiting for their parents",
                done.now,
                done.later
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn list(pool: &sqlx::MySqlPool, json: bool, limit: u32) -> Result<ExitCode> {
    let rows = jobq_worker::list_workflows(pool, limit, None).await?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    use crate::table::{Align::*, Table};
    let mut t = Table::new(&[
        ("id", Right),
        ("name", Left),
        ("state", Left),
        ("jobs", Right),
        ("completed", Right),
        ("discarded", Right),
        ("cancelled", Right),
        ("not ended", Right),
        ("created", Left),
        ("finished", Left),
    ]);
    for w in &rows {
        let name = if w.batch {
            format!("{} (batch)", w.name)
        } else {
            w.name.clone()
        };
        let ended = w.completed + w.discarded + w.cancelled;
        t.row(vec![
            w.id.to_string(),
            crate::common::printable(&name).into_owned(),
            w.state.to_string(),
            w.jobs.to_string(),
            w.completed.to_string(),
            w.discarded.to_string(),
            w.cancelled.to_string(),
            w.jobs.saturating_sub(ended).to_string(),
            w.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            w.finished_at.map_or("-".to_owned(), |f| {
                f.format("%Y-%m-%d %H:%M:%S").to_string()
            }),
        ]);
    }
    t.print();
    Ok(ExitCode::SUCCESS)
}

fn show(w: &jobq_worker::WorkflowDetail) {
    let s = &w.summary;
    outln!(
        "workflow {} {:?}{}: {} ({} jobs: {} completed, {} discarded, {} cancelled)",
        s.id,
        s.name,
        if s.batch { " (batch)" } else { "" },
        s.state,
        s.jobs,
        s.completed,
        s.discarded,
        s.cancelled
    );
    use crate::table::{Align::*, Table};
    let mut t = Table::new(&[
        ("name", Left),
        ("job", Right),
        ("kind", Left),
        ("state", Left),
        ("attempt", Right),
        ("after", Left),
    ]);
    for j in &w.job_list {
        t.row(vec![
            crate::common::printable(&j.name).into_owned(),
            j.id.to_string(),
            j.kind.clone(),
            j.state.to_string(),
            j.attempt.to_string(),
            if j.parents.is_empty() {
                "-".to_owned()
            } else {
                crate::common::printable(&j.parents.join(",")).into_owned()
            },
        ]);
    }
    t.print();
    for c in &w.callbacks {
        match c.job {
            Some(id) => outln!("on_{}: job {id}", c.on),
            None => outln!("on_{}: not enqueued", c.on),
        }
    }
}

/// A workflow document (README "Workflows"): unknown fields are refused, so a typo is an
/// error, not a silently ignored option.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct Document {
    name: String,
    #[serde(default)]
    unique_key: Option<String>,
    #[serde(default)]
    fail_fast: bool,
    jobs: Vec<DocJob>,
    #[serde(default)]
    on_success: Option<DocJob>,
    #[serde(default)]
    on_failure: Option<DocJob>,
    #[serde(default)]
    on_finish: Option<DocJob>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct DocJob {
    #[serde(default)]
    name: Option<String>,
    kind: String,
    #[serde(default)]
    payload: Option<serde_json::Value>,
    #[serde(default)]
    queue: Option<String>,
    #[serde(default)]
    priority: Option<i16>,
    #[serde(default)]
    max_attempts: Option<u32>,
    #[serde(default)]
    delay: Option<String>,
    #[serde(default)]
    concurrency_key: Option<String>,
    #[serde(default)]
    after: Vec<String>,
    #[serde(default)]
    on_parent_failure: Option<String>,
}

impl DocJob {
    fn job(&self, what: &str) -> Result<NewJob> {
        let mut job = NewJob::json(
            self.kind.clone(),
            self.payload.clone().unwrap_or(serde_json::json!({})),
        );
        if let Some(q) = &self.queue {
            job = job.queue(q.clone());
        }
        if let Some(p) = self.priority {
            job = job.priority(p);
        }
        if let Some(n) = self.max_attempts {
            job = job.max_attempts(n);
        }
        if let Some(d) = &self.delay {
            let d: Duration =
                parse_duration(d).map_err(|e| anyhow::anyhow!("{what}: delay: {e}"))?;
            job = job.delay(d);
        }
        if let Some(k) = &self.concurrency_key {
            job = job.concurrency_key(k.clone());
        }
        if let Some(p) = &self.on_parent_failure {
            let p: OnParentFailure = p.parse().map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
            job = job.on_parent_failure(p);
        }
        Ok(job)
    }
}

/// Reads and checks the document at `file` (`-`: standard input) into a workflow.
fn read_document(file: &str) -> Result<Workflow> {
    let text = if file == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the workflow document from standard input")?;
        s
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?
    };
    let doc: Document = serde_json::from_str(&text).map_err(|e| {
        crate::Usage(format!(
            "{file} is not a workflow document ({e}); README \"Workflows\" has the format"
        ))
    })?;
    document_to_workflow(doc)
}

fn document_to_workflow(doc: Document) -> Result<Workflow> {
    let mut flow = Workflow::new(doc.name).fail_fast(doc.fail_fast);
    if let Some(k) = doc.unique_key {
        flow = flow.unique_key(k);
    }
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    for (i, j) in doc.jobs.iter().enumerate() {
        let name = j.name.clone().unwrap_or_else(|| (i + 1).to_string());
        let what = format!("job {name:?}");
        if names.insert(name.clone(), i).is_some() {
            return Err(crate::Usage(format!("two jobs are named {name:?}")).into());
        }
        let after: Vec<&str> = j.after.iter().map(String::as_str).collect();
        flow = flow.job_after(name, j.job(&what)?, &after);
    }
    for (slot, on) in [
        (&doc.on_success, "on_success"),
        (&doc.on_failure, "on_failure"),
        (&doc.on_finish, "on_finish"),
    ] {
        let Some(j) = slot else { continue };
        if j.name.is_some() || !j.after.is_empty() || j.on_parent_failure.is_some() {
            return Err(crate::Usage(format!(
                "{on} takes no name, after or on_parent_failure: it runs once, when the workflow ends"
            ))
            .into());
        }
        let job = j.job(on)?;
        flow = match on {
            "on_success" => flow.on_success(job),
            "on_failure" => flow.on_failure(job),
            _ => flow.on_finish(job),
        };
    }
    Ok(flow)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_becomes_a_workflow_and_typos_are_refused() {
        let doc: Document = serde_json::from_str(
            r#"{"name": "w", "fail_fast": true,
                "jobs": [{"name": "a", "kind": "noop"},
                         {"name": "b", "kind": "noop", "after": ["a"], "on_parent_failure": "ignore"}],
                "on_finish": {"kind": "noop"}}"#,
        )
        .unwrap();
        let flow = document_to_workflow(doc).unwrap();
        assert_eq!(flow.name(), "w");
        let typo =
            serde_json::from_str::<Document>(r#"{"name": "w", "jobs": [], "fail_fats": true}"#)
                .unwrap_err()
                .to_string();
        assert!(typo.contains("unknown field `fail_fats`"), "{typo}");
        let bad: Document = serde_json::from_str(
            r#"{"name": "w", "jobs": [{"kind": "noop", "on_parent_failure": "stop"}]}"#,
        )
        .unwrap();
        let e = document_to_workflow(bad).unwrap_err().to_string();
        assert!(e.contains("cancel, ignore or continue"), "{e}");
    }
}
