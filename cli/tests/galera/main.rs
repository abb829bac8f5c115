//! The multi-primary tests: a private 3-node Galera cluster (`support/galera.rs`) with worker
//! processes on its nodes, node and worker crashes. A test binary of its own, so the cluster's
//! three servers never share the 2 cores with the other slow tests (their timing-sensitive
//! leases and leaders would starve). `cargo test --test galera`.

#[path = "../support/galera.rs"]
mod galera;
#[path = "../support/http.rs"]
mod http;
#[path = "../support/procs.rs"]
mod procs;

mod on_galera;
