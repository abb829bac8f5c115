//! Integration tests against a real MySQL/MariaDB (DATABASE_URL, default from .cargo/config.toml).
//! Every test gets its own database from `#[sqlx::test]`, so they run in parallel.

mod cli;
mod common;
mod core;
mod crash;
mod http;
mod outcomes;
mod procs;
mod prom;
mod restart;
