//! [`Workflow`]: a named graph of new jobs, checked whole (names, parents, cycles, one server)
//! before anything is written, then inserted in one transaction (`store::insert_workflow`).

use std::collections::{BTreeMap, BTreeSet};

use crate::deps::{Callback, OnParentFailure};
use crate::error::{Error, Result};
use crate::job::JobId;
use crate::producer::NewJob;

/// The most characters a workflow's name or one of its job names may have.
pub const WORKFLOW_NAME_CHARS: usize = 128;

/// A workflow's id (`jobq_workflows.id`).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct WorkflowId(pub u64);

impl std::fmt::Display for WorkflowId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A graph of new jobs, each with a name unique in the workflow and the names of the jobs it
/// runs after; inserted whole by [`crate::Producer::enqueue_workflow`]. A job with parents
/// starts `blocked` and becomes `available` in the transaction that ends its last parent;
/// what it does when a parent fails is its [`NewJob::on_parent_failure`].
///
/// ```no_run
/// # async fn demo(producer: jobq_producer::Producer) -> Result<(), jobq_producer::Error> {
/// use jobq_producer::{NewJob, Workflow};
/// use serde_json::json;
///
/// // a → (b, c) → d: b and c run once a completes, d once both have.
/// let flow = Workflow::new("nightly-report")
///     .job("a", NewJob::json("fetch", json!({"day": "2026-12-07"})))
///     .job_after("b", NewJob::json("sum", json!({})), &["a"])
///     .job_after("c", NewJob::json("count", json!({})), &["a"])
///     .job_after("d", NewJob::json("mail", json!({})), &["b", "c"])
///     .unique_key("report/2026-12-07");
/// let started = producer.enqueue_workflow(flow).await?;
/// println!("workflow {} with job d = {}", started.id, started.jobs["d"]);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Workflow {
    name: String,
    jobs: Vec<Step>,
    unique_key: Option<String>,
    fail_fast: bool,
    batch: bool,
    callbacks: BTreeMap<Callback, NewJob>,
}

/// One job of a workflow.
#[derive(Clone, Debug)]
struct Step {
    name: String,
    job: NewJob,
    after: Vec<String>,
}

/// What [`crate::Producer::enqueue_workflow`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkflowEnqueued {
    /// The new workflow, or for a duplicate the running workflow with the same unique key.
    pub id: WorkflowId,
    /// True if a workflow with the same unique key is still running: nothing was inserted.
    pub duplicate: bool,
    /// Each job's id by its name in the workflow (for a duplicate, the existing workflow's).
    pub jobs: BTreeMap<String, JobId>,
}

impl Workflow {
    /// An empty workflow named `name` (1 to 128 characters; shown by `jobq workflows`).
    pub fn new(name: impl Into<String>) -> Workflow {
        Workflow {
            name: name.into(),
            jobs: Vec::new(),
            unique_key: None,
            fail_fast: false,
            batch: false,
            callbacks: BTreeMap::new(),
        }
    }

    /// Adds a job without parents: it starts as a plain job would.
    pub fn job(self, name: impl Into<String>, job: NewJob) -> Workflow {
        self.job_after(name, job, &[])
    }

    /// Adds a job that runs after the jobs named `after` (added before or after it).
    pub fn job_after(mut self, name: impl Into<String>, job: NewJob, after: &[&str]) -> Workflow {
        self.jobs.push(Step {
            name: name.into(),
            job,
            after: after.iter().map(|s| (*s).to_owned()).collect(),
        });
        self
    }

    /// Makes the workflow unique: while a workflow with this key is running (not every job has
    /// ended), enqueueing another inserts nothing and returns the running one.
    pub fn unique_key(mut self, key: impl Into<String>) -> Workflow {
        self.unique_key = Some(key.into());
        self
    }

    /// When any job of the workflow ends without completing, cancel every job of it that has
    /// not started (`blocked`, `available`, `scheduled` or `waiting`, never attempted).
    pub fn fail_fast(mut self, yes: bool) -> Workflow {
        self.fail_fast = yes;
        self
    }

    /// Enqueues `job` when every job of the workflow has completed: once, in the transaction
    /// that ends the last of them. It takes no parents, delay or unique key of its own.
    pub fn on_success(mut self, job: NewJob) -> Workflow {
        self.callbacks.insert(Callback::Success, job);
        self
    }

    /// Enqueues `job` when every job has ended and some did not complete (see
    /// [`on_success`](Workflow::on_success)).
    pub fn on_failure(mut self, job: NewJob) -> Workflow {
        self.callbacks.insert(Callback::Failure, job);
        self
    }

    /// Enqueues `job` when every job has ended, however (see
    /// [`on_success`](Workflow::on_success)).
    pub fn on_finish(mut self, job: NewJob) -> Workflow {
        self.callbacks.insert(Callback::Finish, job);
        self
    }

    /// The workflow's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Checks the graph: names, parents, no cycle. Returns the jobs in an order where every
    /// parent comes before its children, with each job's parents as indexes into that order.
    pub(crate) fn check(self) -> Result<Checked> {
        check_name("workflow name", &self.name)?;
        if self.jobs.is_empty() {
            return Err(invalid("a workflow needs at least one job".to_owned()));
        }
        if let Some(k) = &self.unique_key {
            let n = k.chars().count();
            if !(1..=255).contains(&n) {
                return Err(invalid(format!(
                    "its unique_key must be 1 to 255 characters, not {n}"
                )));
            }
        }
        let mut index: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, s) in self.jobs.iter().enumerate() {
            check_name("job name", &s.name)?;
            if index.insert(&s.name, i).is_some() {
                return Err(invalid(format!("two jobs are named {:?}", s.name)));
            }
            if !s.job.parents().is_empty() {
                return Err(invalid(format!(
                    "job {:?} names parents by id (NewJob::after); inside a workflow name them \
                     by their workflow names",
                    s.name
                )));
            }
        }
        let mut parents: Vec<Vec<usize>> = Vec::with_capacity(self.jobs.len());
        for s in &self.jobs {
            let mut ps = Vec::new();
            for p in &s.after {
                let Some(&i) = index.get(p.as_str()) else {
                    return Err(invalid(format!(
                        "job {:?} runs after {p:?}, which is not a job of this workflow",
                        s.name
                    )));
                };
                if !ps.contains(&i) {
                    ps.push(i);
                }
            }
            parents.push(ps);
        }
        let order = topological(&parents).map_err(|cycle| {
            let names: Vec<&str> = cycle.iter().map(|&i| self.jobs[i].name.as_str()).collect();
            invalid(format!(
                "its jobs depend on each other in a cycle: {}",
                names.join(" → ")
            ))
        })?;
        let mut position = vec![0; order.len()];
        for (at, &i) in order.iter().enumerate() {
            position[i] = at;
        }
        let mut steps: Vec<Option<Step>> = self.jobs.into_iter().map(Some).collect();
        let jobs = order
            .iter()
            .map(|&i| {
                let s = steps[i].take().expect("each job once");
                let policy = s.job.parent_failure();
                CheckedStep {
                    name: s.name,
                    job: s.job,
                    parents: parents[i].iter().map(|&p| position[p]).collect(),
                    on_failure: policy,
                }
            })
            .collect();
        Ok(Checked {
            name: self.name,
            unique_key: self.unique_key,
            fail_fast: self.fail_fast,
            batch: self.batch,
            jobs,
            callbacks: self.callbacks.into_iter().collect(),
        })
    }
}

/// A group of independent jobs with callbacks: `on_success` once every job completed,
/// `on_failure` once every job ended and some did not complete, `on_finish` once every job
/// ended. Each callback is enqueued exactly once, in the transaction that ends the batch's
/// last job, whichever worker ends it. Inserted by [`crate::Producer::enqueue_batch`]; its jobs
/// are named `1`, `2`, … in the order added (`jobq workflows show` lists them).
///
/// ```no_run
/// # async fn demo(producer: jobq_producer::Producer) -> Result<(), jobq_producer::Error> {
/// use jobq_producer::{Batch, NewJob};
/// use serde_json::json;
///
/// let mut batch = Batch::new("import-2026-12-07");
/// for file in ["a.csv", "b.csv", "c.csv"] {
///     batch = batch.job(NewJob::json("import", json!({ "file": file })));
/// }
/// let batch = batch
///     .on_success(NewJob::json("notify", json!({"text": "import done"})))
///     .on_failure(NewJob::json("notify", json!({"text": "import failed"})));
/// let started = producer.enqueue_batch(batch).await?;
/// println!("batch {}", started.id);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Batch {
    flow: Workflow,
}

impl Batch {
    /// An empty batch named `name`.
    pub fn new(name: impl Into<String>) -> Batch {
        let mut flow = Workflow::new(name);
        flow.batch = true;
        Batch { flow }
    }

    /// Adds a job.
    pub fn job(mut self, job: NewJob) -> Batch {
        let name = (self.flow.jobs.len() + 1).to_string();
        self.flow = self.flow.job(name, job);
        self
    }

    /// See [`Workflow::on_success`].
    pub fn on_success(mut self, job: NewJob) -> Batch {
        self.flow = self.flow.on_success(job);
        self
    }

    /// See [`Workflow::on_failure`].
    pub fn on_failure(mut self, job: NewJob) -> Batch {
        self.flow = self.flow.on_failure(job);
        self
    }

    /// See [`Workflow::on_finish`].
    pub fn on_finish(mut self, job: NewJob) -> Batch {
        self.flow = self.flow.on_finish(job);
        self
    }

    /// See [`Workflow::unique_key`].
    pub fn unique_key(mut self, key: impl Into<String>) -> Batch {
        self.flow = self.flow.unique_key(key);
        self
    }

    /// The workflow it is stored as.
    pub(crate) fn into_workflow(self) -> Workflow {
        self.flow
    }
}

/// A workflow whose graph is checked; its jobs in parent-first order.
#[derive(Debug)]
pub(crate) struct Checked {
    pub(crate) name: String,
    pub(crate) unique_key: Option<String>,
    pub(crate) fail_fast: bool,
    pub(crate) batch: bool,
    pub(crate) jobs: Vec<CheckedStep>,
    pub(crate) callbacks: Vec<(Callback, NewJob)>,
}

#[derive(Debug)]
pub(crate) struct CheckedStep {
    pub(crate) name: String,
    pub(crate) job: NewJob,
    /// Indexes of its parents in [`Checked::jobs`], all before it.
    pub(crate) parents: Vec<usize>,
    pub(crate) on_failure: OnParentFailure,
}

fn invalid(message: String) -> Error {
    Error::Invalid {
        field: "workflow",
        message,
    }
}

fn check_name(what: &str, name: &str) -> Result<()> {
    let n = name.chars().count();
    if (1..=WORKFLOW_NAME_CHARS).contains(&n) {
        return Ok(());
    }
    Err(invalid(format!(
        "a {what} must be 1 to {WORKFLOW_NAME_CHARS} characters, not {n}"
    )))
}

/// Kahn's order of a graph given as each node's parents; `Err` holds the nodes of one cycle.
fn topological(parents: &[Vec<usize>]) -> std::result::Result<Vec<usize>, Vec<usize>> {
    let n = parents.len();
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut waiting: Vec<usize> = vec![0; n];
    for (c, ps) in parents.iter().enumerate() {
        waiting[c] = ps.len();
        for &p in ps {
            children[p].push(c);
        }
    }
    let mut ready: Vec<usize> = (0..n).filter(|&i| waiting[i] == 0).rev().collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop() {
        order.push(i);
        for &c in children[i].iter().rev() {
            waiting[c] -= 1;
            if waiting[c] == 0 {
                ready.push(c);
            }
        }
    }
    if order.len() == n {
        return Ok(order);
    }
    // Every node left waits on another one left: walk parents until one repeats.
    let left: BTreeSet<usize> = (0..n).filter(|&i| waiting[i] > 0).collect();
    let mut path = vec![*left.iter().next().expect("a node is left")];
    loop {
        let last = *path.last().expect("non-empty");
        let next = parents[last]
            .iter()
            .copied()
            .find(|p| left.contains(p))
            .expect("a node left has a parent left");
        if let Some(at) = path.iter().position(|&p| p == next) {
            let mut cycle: Vec<usize> = path[at..].to_vec();
            cycle.reverse();
            cycle.push(cycle[0]);
            return Err(cycle);
        }
        path.push(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job() -> NewJob {
        NewJob::json("noop", json!({}))
    }

    fn names(c: &Checked) -> Vec<&str> {
        c.jobs.iter().map(|s| s.name.as_str()).collect()
    }

    #[test]
    fn parents_come_first_whatever_the_order_they_were_added_in() {
        let c = Workflow::new("w")
            .job_after("d", job(), &["b", "c"])
            .job_after("b", job(), &["a"])
            .job_after("c", job(), &["a"])
            .job("a", job())
            .check()
            .unwrap();
        assert_eq!(names(&c), ["a", "b", "c", "d"]);
        assert_eq!(c.jobs[3].parents, [1, 2]);
        assert_eq!(c.jobs[1].parents, [0]);
    }

    #[test]
    fn bad_graphs_are_refused_with_what_is_wrong() {
        let cases = [
            (
                Workflow::new("w").job_after("a", job(), &["zz"]),
                "runs after \"zz\", which is not a job of this workflow",
            ),
            (
                Workflow::new("w").job("a", job()).job("a", job()),
                "two jobs are named \"a\"",
            ),
            (
                Workflow::new("w")
                    .job("r", job())
                    .job_after("a", job(), &["c", "r"])
                    .job_after("b", job(), &["a"])
                    .job_after("c", job(), &["b"]),
                "cycle: ",
            ),
            (
                Workflow::new("w").job_after("a", job(), &["a"]),
                "cycle: a → a",
            ),
            (Workflow::new("w"), "at least one job"),
            (
                Workflow::new("").job("a", job()),
                "workflow name must be 1 to 128",
            ),
            (
                Workflow::new("w").job("a", job().after(JobId(3))),
                "names parents by id",
            ),
        ];
        for (wf, want) in cases {
            let e = wf.check().unwrap_err().to_string();
            assert!(e.contains(want), "{e} lacks {want}");
            assert!(e.starts_with("invalid workflow: "), "{e}");
        }
    }

    #[test]
    fn a_cycle_is_named_node_by_node() {
        let e = Workflow::new("w")
            .job_after("a", job(), &["c"])
            .job_after("b", job(), &["a"])
            .job_after("c", job(), &["b"])
            .check()
            .unwrap_err()
            .to_string();
        // The three names, in dependency order, back to the first.
        let cycle = e.split("cycle: ").nth(1).unwrap();
        let parts: Vec<&str> = cycle.split(" → ").collect();
        assert_eq!(parts.len(), 4, "{e}");
        assert_eq!(parts[0], parts[3]);
        let mut seen: Vec<&str> = parts[..3].to_vec();
        seen.sort();
        assert_eq!(seen, ["a", "b", "c"]);
    }

    #[test]
    fn wide_fan_in_and_fan_out_check_in_linear_order() {
        let mut wf = Workflow::new("w").job("root", job());
        let names: Vec<String> = (0..1000).map(|i| format!("p{i}")).collect();
        for n in &names {
            wf = wf.job_after(n.clone(), job(), &["root"]);
        }
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let c = wf.job_after("sink", job(), &refs).check().unwrap();
        assert_eq!(c.jobs.len(), 1002);
        assert_eq!(c.jobs[0].name, "root");
        assert_eq!(c.jobs[1001].name, "sink");
        assert_eq!(c.jobs[1001].parents.len(), 1000);
    }
}
