//! The decision layer: every decision about a job's next state, pure (no sqlx, no tokio, no
//! clock: time comes in as a value) and table-tested. The store (`store/`) reads what a
//! decision needs and writes what it says; the runtime (`runtime/`) passes the values between
//! them (see `model/` for the values).
//!
//! - `attempt.rs`: how an attempt ended (retry, backoff, discard, snooze, cancel), a lease that
//!   expired, a completion that could not be committed, the cancel-request rules, and which
//!   state changes are valid at all;
//! - `claim.rs`: what a claim does with the jobs it read and the keys it locked;
//! - `flow.rs`: concurrency keys and rate windows, which `claim.rs` and promotions apply;
//! - `prefetch.rs`: how many jobs a claim may take ahead of free slots (`auto`);
//! - `acts.rs`: operators' cancel, retry and discard;
//! - `schedule.rs`: which slots of a recurring schedule to enqueue now;
//! - `partitions.rs`: which history partitions to create ahead and which to drop.

pub(crate) mod acts;
pub(crate) mod attempt;
pub(crate) mod claim;
pub(crate) mod flow;
pub(crate) mod partitions;
pub(crate) mod prefetch;
pub(crate) mod schedule;

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// The `.rs` files of `src/<dir>`, with their text.
    fn sources(dir: &str) -> Vec<(String, String)> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(dir);
        let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "rs"))
            .map(|p| {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                (name, std::fs::read_to_string(&p).unwrap())
            })
            .collect();
        out.sort();
        assert!(!out.is_empty(), "no sources in {}", dir.display());
        out
    }

    /// The layering README's Development section states, checked on the source: the decision
    /// layer does no I/O and reads no clock; the store (its SQL files; `tests.rs` runs whole
    /// claims) imports no decision module; the values between them are data.
    #[test]
    fn the_machine_is_pure_and_the_store_decides_nothing() {
        let impure = [
            "sqlx::",
            "tokio::",
            "crate::store",
            "crate::runtime",
            "::now(",
            "rand::",
            "std::fs",
            "std::net",
        ];
        // (This file only declares the modules, and names the words below.)
        let decisions = sources("machine")
            .into_iter()
            .filter(|(n, _)| n != "mod.rs");
        for (name, text) in decisions.chain(sources("model")) {
            for word in impure {
                assert!(!text.contains(word), "{name} mentions {word}");
            }
        }
        for (name, text) in sources("store") {
            if name == "tests.rs" {
                continue;
            }
            for word in ["crate::machine", "crate::runtime", "crate::acts::"] {
                assert!(!text.contains(word), "store/{name} imports {word}");
            }
        }
    }
}
