//! Telling a handler's panic from any other. The executor runs each handler inside
//! [`in_handler`]'s task-local scope; the hook [`install_panic_hook`] installs reads it, so a
//! handler's panic is one warning line naming the job (the attempt fails and is retried), while
//! a panic anywhere else (a bug in jobq, or a task the application spawned) is reported as
//! such, at error level, with the previous hook's full report.

use std::future::Future;

use jobq_producer::KindName;

tokio::task_local! {
    static HANDLER: (u64, KindName);
}

/// Runs `fut` (a handler's future) as the handler of job `id` of kind `kind`.
pub(crate) fn in_handler<F: Future>(
    id: u64,
    kind: KindName,
    fut: F,
) -> impl Future<Output = F::Output> {
    HANDLER.scope((id, kind), fut)
}

/// The job whose handler is running on this thread right now, if any.
fn running_handler() -> Option<(u64, KindName)> {
    HANDLER.try_with(|h| h.clone()).ok()
}

/// Installs a panic hook that logs a job handler's panic as one warning line with the job's id
/// and kind (the runtime catches it and fails the attempt), and any other panic at error level
/// followed by the previous hook's report. `jobq work` installs it; an application embedding
/// the worker may call it once at start.
pub fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| match running_handler() {
        Some((job_id, kind)) => {
            tracing::warn!(job_id, kind = %kind, panic = %info, "handler panicked; the attempt fails");
        }
        None => {
            tracing::error!(panic = %info, "panic outside any job handler (a bug in jobq, or in a task the application spawned)");
            previous(info);
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use std::panic::AssertUnwindSafe;

    #[tokio::test]
    async fn only_panics_inside_a_handler_are_attributed_to_it() {
        let kind = KindName::new("k").unwrap();
        let inside = in_handler(7, kind.clone(), async {
            let seen = running_handler();
            let r = AssertUnwindSafe(async { panic!("in the handler") })
                .catch_unwind()
                .await;
            (seen, r.is_err())
        })
        .await;
        assert_eq!(inside, (Some((7, kind)), true));
        assert_eq!(running_handler(), None, "outside any handler");
        // A task the handler spawns is not the handler.
        let spawned = in_handler(8, KindName::new("k").unwrap(), async {
            tokio::spawn(async { running_handler() }).await.unwrap()
        })
        .await;
        assert_eq!(spawned, None);
    }
}
