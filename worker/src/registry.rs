//! [`Registry`]: the handler of each kind, type-erased so one map holds them all. A worker
//! claims only the kinds registered here.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;

use futures::future::BoxFuture;
use jobq_producer::{Job, KindName};
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::handler::{Handler, JobContext, JobError};

/// Decodes a payload and starts the handler. Type-erased so the registry can hold every kind.
pub(crate) trait ErasedHandler: Send + Sync {
    fn start(
        &self,
        payload: &str,
        ctx: JobContext,
    ) -> Result<BoxFuture<'static, Result<(), JobError>>, serde_json::Error>;
}

struct Typed<J, H> {
    handler: Arc<H>,
    _job: PhantomData<fn() -> J>,
}

impl<J, H> ErasedHandler for Typed<J, H>
where
    J: DeserializeOwned + Send + 'static,
    H: Handler<J>,
{
    fn start(
        &self,
        payload: &str,
        ctx: JobContext,
    ) -> Result<BoxFuture<'static, Result<(), JobError>>, serde_json::Error> {
        let job: J = serde_json::from_str(payload)?;
        let handler = self.handler.clone();
        Ok(Box::pin(async move { handler.handle(job, ctx).await }))
    }
}

/// Handlers by kind. A worker claims only the kinds registered here.
#[derive(Clone, Default)]
pub struct Registry {
    handlers: BTreeMap<KindName, Arc<dyn ErasedHandler>>,
    /// `Job::QUEUE` of each kind registered with its type.
    default_queues: BTreeMap<KindName, String>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.handlers.keys()).finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Registry::default()
    }

    /// Registers `handler` for `J::KIND`: `registry.register::<SendEmail>(send_email)`. A
    /// second handler for one kind is an error.
    pub fn register<J: Job>(&mut self, handler: impl Handler<J>) -> Result<&mut Self> {
        self.insert(J::KIND, handler)?;
        if let Ok(kind) = KindName::new(J::KIND) {
            self.default_queues.insert(kind, J::QUEUE.to_owned());
        }
        Ok(self)
    }

    /// Registers an untyped handler receiving the payload as a JSON value.
    pub fn register_json(
        &mut self,
        kind: &str,
        handler: impl Handler<serde_json::Value>,
    ) -> Result<&mut Self> {
        self.insert(kind, handler)
    }

    fn insert<J, H>(&mut self, kind: &str, handler: H) -> Result<&mut Self>
    where
        J: DeserializeOwned + Send + 'static,
        H: Handler<J>,
    {
        let kind = KindName::new(kind).map_err(Error::InvalidKind)?;
        if self.handlers.contains_key(&kind) {
            return Err(Error::DuplicateKind(kind.to_string()));
        }
        self.handlers.insert(
            kind,
            Arc::new(Typed::<J, H> {
                handler: Arc::new(handler),
                _job: PhantomData,
            }),
        );
        Ok(self)
    }

    /// Registered kinds, sorted.
    pub fn kinds(&self) -> Vec<String> {
        self.handlers.keys().map(|k| k.to_string()).collect()
    }

    /// Kinds registered with their type whose default queue (`Job::QUEUE`) is not among
    /// `worked`, with that queue: their jobs, enqueued without a queue, would wait for another
    /// worker.
    pub fn unworked_defaults(&self, worked: &[String]) -> Vec<(String, String)> {
        self.default_queues
            .iter()
            .filter(|(_, q)| !worked.iter().any(|w| w == *q))
            .map(|(k, q)| (k.to_string(), q.clone()))
            .collect()
    }

    /// Marks the registered kinds as meant for whatever queue they are enqueued on (the
    /// built-ins, which `jobq work --queues …` runs anywhere): no default-queue warning for them.
    pub(crate) fn any_queue(&mut self, kinds: &[&str]) {
        self.default_queues
            .retain(|k, _| !kinds.contains(&k.as_str()));
    }

    pub(crate) fn kind_names(&self) -> Vec<KindName> {
        self.handlers.keys().cloned().collect()
    }

    pub(crate) fn get(&self, kind: &str) -> Option<&Arc<dyn ErasedHandler>> {
        self.handlers.get(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Ping;
    impl Job for Ping {
        const KIND: &'static str = "ping";
    }

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Invoice;
    impl Job for Invoice {
        const KIND: &'static str = "invoice";
        const QUEUE: &'static str = "billing";
    }

    #[test]
    fn kinds_whose_default_queue_is_not_worked_are_named() {
        let mut r = Registry::new();
        r.register::<Ping>(|_: Ping, _ctx: JobContext| async { Ok(()) })
            .unwrap();
        r.register::<Invoice>(|_: Invoice, _ctx: JobContext| async { Ok(()) })
            .unwrap();
        r.register_json("untyped", |_: serde_json::Value, _ctx: JobContext| async {
            Ok(())
        })
        .unwrap();
        let q = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        type Row<'a> = (&'a [&'a str], Vec<(String, String)>);
        let table: [Row; 3] = [
            (&["default"], vec![("invoice".into(), "billing".into())]),
            (&["default", "billing"], vec![]),
            (&["billing"], vec![("ping".into(), "default".into())]),
        ];
        for (worked, expected) in table {
            assert_eq!(r.unworked_defaults(&q(worked)), expected, "{worked:?}");
        }
    }

    #[test]
    fn duplicate_and_invalid_kinds_are_errors() {
        let mut r = Registry::new();
        r.register::<Ping>(|_: Ping, _ctx: JobContext| async { Ok(()) })
            .unwrap();
        assert!(matches!(
            r.register::<Ping>(|_: Ping, _ctx: JobContext| async { Ok(()) }),
            Err(Error::DuplicateKind(k)) if k == "ping"
        ));
        assert!(matches!(
            r.register_json("bad kind", |_: serde_json::Value, _ctx: JobContext| async {
                Ok(())
            }),
            Err(Error::InvalidKind(_))
        ));
        assert_eq!(r.kinds(), vec!["ping"]);
    }
}
