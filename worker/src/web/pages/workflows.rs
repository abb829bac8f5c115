//! Workflows and batches: the list (from the counters their jobs' endings keep, never a count
//! over jobs) and one workflow with its graph drawn (nodes coloured by state, each a link to
//! its job), its jobs, its callbacks, and the cancel and retry buttons.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use jobq_producer::WorkflowId;
use serde::Deserialize;

use crate::web::{render, App, Ctx, Problem};
use crate::workflows::{colour, WorkflowDetail, WorkflowSummary};

use super::*;

/// The most jobs a workflow page draws and lists (a bigger one points to the CLI).
pub(crate) const DRAWN_JOBS: usize = 300;

pub(crate) struct FlowLine {
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(crate) batch: bool,
    pub(crate) state: String,
    pub(crate) jobs: u32,
    pub(crate) completed: u32,
    pub(crate) discarded: u32,
    pub(crate) cancelled: u32,
    pub(crate) open: u32,
    pub(crate) created: String,
    pub(crate) finished: String,
}

impl From<&WorkflowSummary> for FlowLine {
    fn from(w: &WorkflowSummary) -> Self {
        FlowLine {
            id: w.id.0,
            name: w.name.clone(),
            batch: w.batch,
            state: w.state.to_string(),
            jobs: w.jobs,
            completed: w.completed,
            discarded: w.discarded,
            cancelled: w.cancelled,
            open: w
                .jobs
                .saturating_sub(w.completed + w.discarded + w.cancelled),
            created: time(w.created_at),
            finished: w.finished_at.map_or("-".to_owned(), time),
        }
    }
}

#[derive(Template)]
#[template(path = "workflows.html")]
pub(crate) struct Workflows {
    page: Layout,
    flows: Vec<FlowLine>,
    /// The id to page on from (`?before=`), when there may be older ones.
    older: Option<u64>,
}

#[derive(Deserialize, Default)]
pub(crate) struct FlowsQuery {
    #[serde(default)]
    before: Option<u64>,
}

/// Workflows listed per page.
const PAGE: u32 = 50;

pub(crate) async fn workflows(
    State(app): State<App>,
    Extension(ctx): Extension<Ctx>,
    Query(q): Query<FlowsQuery>,
) -> Result<Response, Problem> {
    let rows = crate::list_workflows(&app.pool, PAGE, q.before.map(WorkflowId)).await?;
    let older = (rows.len() as u32 == PAGE)
        .then(|| rows.last().map(|w| w.id.0))
        .flatten();
    Ok(render(&Workflows {
        page: Layout::new(&app, &ctx, "Workflows", "workflows"),
        flows: rows.iter().map(FlowLine::from).collect(),
        older,
    }))
}

/// One node of the drawing: its box and labels.
pub(crate) struct Node {
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(crate) kind: String,
    pub(crate) state: &'static str,
    pub(crate) fill: &'static str,
    pub(crate) x: u32,
    pub(crate) y: u32,
}

/// One arrow of the drawing, parent's right edge to child's left edge.
pub(crate) struct Arrow {
    pub(crate) x1: u32,
    pub(crate) y1: u32,
    pub(crate) x2: u32,
    pub(crate) y2: u32,
}

/// A workflow's graph laid out in columns: a job's column is the longest path from a job
/// without parents to it, so every arrow points right.
pub(crate) struct Drawing {
    pub(crate) width: u32,
    pub(crate) height: u32,
    /// Each node's box.
    pub(crate) node_w: u32,
    pub(crate) node_h: u32,
    pub(crate) nodes: Vec<Node>,
    pub(crate) arrows: Vec<Arrow>,
}

/// A node's box, and the gaps between columns and rows.
pub(crate) const NODE_W: u32 = 170;
pub(crate) const NODE_H: u32 = 38;
const GAP_X: u32 = 50;
const GAP_Y: u32 = 14;

/// Lays `w`'s jobs out (see [`Drawing`]).
pub(crate) fn layout(w: &WorkflowDetail) -> Drawing {
    let n = w.job_list.len();
    let index: std::collections::HashMap<&str, usize> = w
        .job_list
        .iter()
        .enumerate()
        .map(|(i, j)| (j.name.as_str(), i))
        .collect();
    let parents: Vec<Vec<usize>> = w
        .job_list
        .iter()
        .map(|j| {
            j.parents
                .iter()
                .filter_map(|p| index.get(p.as_str()).copied())
                .collect()
        })
        .collect();
    // Longest path, relaxed until nothing moves (at most n rounds: the graph has no cycle).
    let mut column = vec![0usize; n];
    for _ in 0..n {
        let mut moved = false;
        for c in 0..n {
            let want = parents[c].iter().map(|&p| column[p] + 1).max().unwrap_or(0);
            if want > column[c] {
                column[c] = want;
                moved = true;
            }
        }
        if !moved {
            break;
        }
    }
    let mut rows_in = vec![0u32; n.max(1)];
    let mut place = vec![(0u32, 0u32); n];
    for i in 0..n {
        let c = column[i];
        place[i] = (
            GAP_X / 2 + c as u32 * (NODE_W + GAP_X),
            GAP_Y + rows_in[c] * (NODE_H + GAP_Y),
        );
        rows_in[c] += 1;
    }
    let columns = column.iter().max().map_or(0, |m| m + 1) as u32;
    let rows = rows_in.iter().copied().max().unwrap_or(0);
    let nodes = w
        .job_list
        .iter()
        .zip(&place)
        .map(|(j, &(x, y))| Node {
            id: j.id.0,
            name: clip(&j.name, 22),
            kind: clip(&j.kind, 16),
            state: j.state.as_str(),
            fill: colour(j.state),
            x,
            y,
        })
        .collect();
    let mut arrows = Vec::new();
    for (c, ps) in parents.iter().enumerate() {
        for &p in ps {
            arrows.push(Arrow {
                x1: place[p].0 + NODE_W,
                y1: place[p].1 + NODE_H / 2,
                x2: place[c].0,
                y2: place[c].1 + NODE_H / 2,
            });
        }
    }
    Drawing {
        node_w: NODE_W,
        node_h: NODE_H,
        width: columns * (NODE_W + GAP_X),
        height: rows * (NODE_H + GAP_Y) + GAP_Y,
        nodes,
        arrows,
    }
}

pub(crate) struct FlowJobLine {
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(crate) kind: String,
    pub(crate) state: String,
    pub(crate) attempt: u32,
    pub(crate) after: String,
}

#[derive(Template)]
#[template(path = "workflow.html")]
pub(crate) struct WorkflowPage {
    page: Layout,
    flow: FlowLine,
    fail_note: String,
    drawing: Option<Drawing>,
    jobs: Vec<FlowJobLine>,
    more: usize,
    callbacks: Vec<(String, Option<u64>)>,
    can_cancel: bool,
    can_retry: bool,
}

#[derive(Deserialize, Default)]
pub(crate) struct FlowQuery {
    #[serde(default)]
    did: String,
    #[serde(default)]
    refused: String,
}

pub(crate) async fn workflow(
    State(app): State<App>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
    Query(q): Query<FlowQuery>,
) -> Result<Response, Problem> {
    let id: u64 = id.parse().map_err(|_| {
        Problem::new(
            StatusCode::NOT_FOUND,
            format!("{id:?} is not a workflow id (a positive number)"),
        )
    })?;
    let Some(w) = crate::workflow(&app.pool, WorkflowId(id)).await? else {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            format!("no workflow {id}"),
        ));
    };
    let flash = match (q.did.as_str(), q.refused.as_str()) {
        ("cancel", _) => Some((format!("Workflow {id} was cancelled: its jobs that had not started are cancelled, its running ones stop at their worker's next heartbeat."), true)),
        ("retry", _) => Some((format!("Workflow {id} runs again: its failed and cancelled jobs are waiting to run."), true)),
        (_, "cancel") => Some((format!("Workflow {id} was not cancelled: it has already ended."), false)),
        (_, "retry") => Some((format!("Workflow {id} was not retried: none of its jobs failed or was cancelled (or it still runs them)."), false)),
        _ => None,
    };
    let (flash, good) = flash.map_or((None, true), |(t, g)| (Some(t), g));
    let failed = w.job_list.iter().any(|j| {
        matches!(
            j.state,
            jobq_producer::JobState::Discarded | jobq_producer::JobState::Cancelled
        )
    });
    let s = &w.summary;
    let fail_note = if s.batch {
        "a batch: independent jobs with callbacks".to_owned()
    } else {
        String::new()
    };
    let drawing = (w.job_list.len() <= DRAWN_JOBS).then(|| layout(&w));
    let jobs = w
        .job_list
        .iter()
        .take(DRAWN_JOBS)
        .map(|j| FlowJobLine {
            id: j.id.0,
            name: j.name.clone(),
            kind: j.kind.clone(),
            state: j.state.to_string(),
            attempt: j.attempt,
            after: if j.parents.is_empty() {
                "-".to_owned()
            } else {
                clip(&j.parents.join(", "), 80)
            },
        })
        .collect();
    let page = WorkflowPage {
        page: Layout::new(&app, &ctx, format!("Workflow {id}"), "workflows").flash(flash, good),
        flow: FlowLine::from(s),
        fail_note,
        drawing,
        jobs,
        more: w.job_list.len().saturating_sub(DRAWN_JOBS),
        callbacks: w
            .callbacks
            .iter()
            .map(|c| (c.on.clone(), c.job.map(|j| j.0)))
            .collect(),
        can_cancel: s.state == jobq_producer::deps::FlowState::Running,
        can_retry: failed,
    };
    Ok(render(&page))
}
