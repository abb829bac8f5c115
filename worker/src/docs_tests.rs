//! README and the code in step: the metrics table against every metric name the crates define
//! (and every outcome of `jobq_jobs_finished_total`); the configuration table and
//! `config/jobq.example.toml` against every key of the settings types. A key, metric or outcome
//! added to the code and not to the docs (or the reverse) fails here.

use std::collections::BTreeSet;

const README: &str = include_str!("../../README.md");
const EXAMPLE: &str = include_str!("../../config/jobq.example.toml");

/// The rows of the Markdown table whose header row starts with `| first |`.
fn table_rows(first: &str) -> Vec<Vec<String>> {
    let mut lines = README
        .lines()
        .skip_while(|l| !l.starts_with(&format!("| {first} |")))
        .skip(2);
    let mut rows = Vec::new();
    for l in lines.by_ref() {
        if !l.starts_with('|') {
            break;
        }
        rows.push(
            l.trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_owned())
                .collect(),
        );
    }
    assert!(!rows.is_empty(), "README has no table headed `| {first} |`");
    rows
}

/// The `code` spans of `cell`.
fn code_spans(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// `a_{x,y}_b` → `a_x_b`, `a_y_b`.
fn expand_braces(name: &str) -> Vec<String> {
    match (name.find('{'), name.find('}')) {
        (Some(open), Some(close)) => name[open + 1..close]
            .split(',')
            .map(|alt| format!("{}{alt}{}", &name[..open], &name[close + 1..]))
            .collect(),
        _ => vec![name.to_owned()],
    }
}

/// `pub const NAME: &str = "jobq_…";` in a metrics source file.
fn defined_in(source: &str) -> Vec<String> {
    source
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub const "))
        .filter_map(|l| l.split('"').nth(1))
        .filter(|n| n.starts_with("jobq_") && !n.ends_with('_'))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_metrics_table_names_every_metric_and_outcome() {
    let rows = table_rows("metric");
    let documented: BTreeSet<String> = rows
        .iter()
        .flat_map(|r| code_spans(&r[0]))
        .flat_map(|n| expand_braces(&n))
        .collect();
    let mut defined: BTreeSet<String> = defined_in(include_str!("metrics.rs"))
        .into_iter()
        .chain(defined_in(include_str!("../../lock/src/metrics.rs")))
        .collect();
    defined.extend(crate::metrics::DEPTH_STATES.map(crate::metrics::depth_name));
    // Recorded by the producer crate with literal names.
    for (file, source) in [
        (
            "producer.rs",
            include_str!("../../producer/src/producer.rs"),
        ),
        (
            "failover.rs",
            include_str!("../../producer/src/failover.rs"),
        ),
    ] {
        let names: Vec<&str> = source
            .split('"')
            .skip(1)
            .step_by(2)
            .filter(|s| s.starts_with("jobq_") && s.ends_with("_total"))
            .collect();
        assert!(!names.is_empty(), "no metric found in producer/src/{file}");
        defined.extend(names.into_iter().map(str::to_owned));
    }
    assert_eq!(
        documented, defined,
        "README's metrics table (left) and the metric names in the code (right) differ"
    );
    let finished = rows
        .iter()
        .find(|r| r[0] == "`jobq_jobs_finished_total`")
        .expect("a row for jobq_jobs_finished_total");
    let listed: BTreeSet<String> = code_spans(&finished[3]).into_iter().collect();
    let outcomes: BTreeSet<String> = crate::metrics::finished_outcomes()
        .map(str::to_owned)
        .collect();
    assert_eq!(listed, outcomes, "outcomes of jobq_jobs_finished_total");
}

/// Every key of the settings types, dotted: `worker.concurrency`, `queues.NAME.key_limit`,
/// `schedules.cron`. From their serde form, so a new field cannot be missed.
fn settings_keys() -> BTreeSet<String> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut BTreeSet<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            _ => {
                out.insert(prefix.to_owned());
            }
        }
    }
    let mut keys = BTreeSet::new();
    let mut all = serde_json::to_value(jobq_config::Settings::default()).unwrap();
    let obj = all.as_object_mut().unwrap();
    for map in ["queues", "kinds", "schedules"] {
        obj.remove(map);
    }
    walk("", &all, &mut keys);
    let q = serde_json::to_value(jobq_config::QueueOverrides::default()).unwrap();
    walk("queues.NAME", &q, &mut keys);
    let k = serde_json::to_value(jobq_config::KindOverrides::default()).unwrap();
    walk("kinds.NAME", &k, &mut keys);
    let s: jobq_config::ScheduleSettings = serde_json::from_value(serde_json::json!({
        "name": "n", "cron": "* * * * *", "kind": "k"
    }))
    .unwrap();
    walk("schedules", &serde_json::to_value(s).unwrap(), &mut keys);
    keys
}

#[test]
fn the_configuration_table_names_every_key() {
    let mut documented = BTreeSet::new();
    for row in table_rows("key") {
        let keys = code_spans(&row[0]);
        let first = keys.first().cloned().unwrap_or_default();
        let section = first.rsplit_once('.').map(|(s, _)| s.to_owned());
        for key in &keys {
            match key.strip_suffix(".*") {
                // `queues.NAME.*`: the fields are the meaning's code spans.
                Some(prefix) => {
                    for field in code_spans(&row[2]) {
                        documented.insert(format!("{prefix}.{field}"));
                    }
                }
                // `worker.backoff_base` / `backoff_max`: the second is in the first's section.
                None if !key.contains('.') && key != &first => {
                    let section = section.as_deref().expect("a section before a bare key");
                    documented.insert(format!("{section}.{key}"));
                }
                None => {
                    documented.insert(key.clone());
                }
            }
        }
    }
    // `schedules` stands for its fields, which "Recurring jobs" documents in its own table.
    assert!(documented.remove("schedules"), "no `schedules` row");
    let mut keys = settings_keys();
    let schedule_fields: BTreeSet<String> = keys
        .iter()
        .filter_map(|k| k.strip_prefix("schedules.").map(str::to_owned))
        .collect();
    keys.retain(|k| !k.starts_with("schedules."));
    assert_eq!(
        documented, keys,
        "README's configuration table (left) and the settings types (right) differ"
    );
    // "Recurring jobs" shows a `[[schedules]]` table with every field.
    let example = README
        .split("## Recurring jobs")
        .nth(1)
        .and_then(|s| s.split("```toml").nth(1))
        .and_then(|s| s.split("```").next())
        .expect("a TOML example in \"Recurring jobs\"");
    for field in schedule_fields {
        assert!(
            example
                .lines()
                .any(|l| l.starts_with(&format!("{field} ="))),
            "README's [[schedules]] example does not show `{field}`"
        );
    }
}

#[test]
fn the_example_configuration_names_every_key() {
    // The blocks of the example: top-level sections by their header, the maps by the comment
    // that introduces them.
    let block = |start: &str, end: &str| -> &str {
        let from = EXAMPLE
            .find(start)
            .unwrap_or_else(|| panic!("{start:?} not in the example"));
        let to = EXAMPLE[from + 1..]
            .find(end)
            .map_or(EXAMPLE.len(), |i| from + 1 + i);
        &EXAMPLE[from..to]
    };
    let mentions = |text: &str, word: &str| {
        text.match_indices(word).any(|(i, _)| {
            let before = text[..i].chars().next_back();
            let after = text[i + word.len()..].chars().next();
            let ident = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
            !ident(before) && !ident(after)
        })
    };
    for key in settings_keys() {
        let (section, field) = key.rsplit_once('.').unwrap_or(("", &key));
        let text = match section {
            "" => block("database_url", "\n["),
            "queues.NAME" => block("# Per-queue", "# Per-kind"),
            "kinds.NAME" => block("# Per-kind", "# Recurring jobs"),
            "schedules" => block("# Recurring jobs", "\n["),
            s => block(&format!("\n[{s}]\n"), "\n["),
        };
        let set = text.lines().any(|l| {
            let l = l.trim_start_matches(['#', ' ']);
            l.starts_with(&format!("{field} =")) || l.starts_with(&format!("{field}="))
        });
        assert!(
            set || (section.contains('.') && mentions(text, field)),
            "config/jobq.example.toml does not show `{key}`"
        );
    }
}

/// README's "Testing your handlers" example is `worker/tests/testing_your_handlers.rs` (which
/// the suite runs) word for word, after that file's first line.
#[test]
fn the_testing_example_is_the_file_the_suite_runs() {
    let file = include_str!("../tests/testing_your_handlers.rs");
    let example = file.split_once('\n').expect("a header line").1;
    let section = README
        .split("## Testing your handlers")
        .nth(1)
        .expect("README has a section \"Testing your handlers\"");
    let block = section
        .split("```rust,no_run\n")
        .nth(1)
        .and_then(|b| b.split("```\n").next())
        .expect("the section has a rust block");
    assert_eq!(block, example, "README's example and the file differ");
}
