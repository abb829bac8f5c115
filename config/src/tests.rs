//! Tests of loading and validating configuration: files, `JOBQ_` variables, defaults and
//! every refusal.

use super::*;
use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use std::path::Path;
use std::time::Duration;

#[test]
fn defaults_are_documented_values() {
    let s = Settings::default();
    assert_eq!(s.database_url, "mysql://root@127.0.0.1:3306/jobq");
    assert_eq!(s.worker.queues, vec!["default"]);
    assert_eq!(s.worker.concurrency, 10);
    assert_eq!(s.worker.claim_mode, ClaimMode::SkipLocked);
    assert_eq!(s.worker.poll_interval, Duration::from_millis(100));
    assert_eq!(s.worker.lease_ttl, Duration::from_secs(5));
    assert_eq!(s.worker.heartbeat_interval, Duration::from_secs(1));
    assert_eq!(s.worker.shutdown_timeout, Duration::from_secs(25));
    assert_eq!(s.producer.max_payload_bytes, 1 << 20);
    assert_eq!(s.producer.default_max_attempts, 25);
    assert_eq!(s.metrics.listen, None);
    s.validate().unwrap();
}

#[test]
fn web_auth_values_are_checked() {
    let with = |token: Option<&str>, basic: Option<&str>| {
        let mut s = Settings::default();
        s.web.token = token.map(str::to_owned);
        s.web.basic_auth = basic.map(str::to_owned);
        s.validate().map(|_| ()).map_err(|e| e.to_string())
    };
    assert!(with(Some("0123456789abcdef"), Some("ops:pw")).is_ok());
    for (token, basic, key) in [
        (Some("short"), None, "web.token"),
        (Some("0123456789 abcdef"), None, "web.token"),
        (None, Some("nopassword"), "web.basic_auth"),
        (None, Some(":pw"), "web.basic_auth"),
        (None, Some("ops:"), "web.basic_auth"),
    ] {
        let e = with(token, basic).unwrap_err();
        assert!(e.contains(key), "{token:?} {basic:?}: {e}");
    }
}

#[test]
fn example_file_parses_and_equals_defaults() {
    // The example documents every key with its default; keep the two in step.
    let text = include_str!("../jobq.example.toml");
    let s: Settings = Figment::from(Serialized::defaults(Settings::default()))
        .merge(Toml::string(text))
        .extract()
        .unwrap();
    assert_eq!(s, Settings::default());
}

#[test]
fn layers_file_then_env() {
    figment::Jail::expect_with(|jail| {
        jail.create_dir("config")?;
        jail.create_file(
            "config/jobq.toml",
            "database_url = \"mysql://u@h:1/file\"\n[worker]\nconcurrency = 3\n\
                 [queues.mail]\nclaim_mode = \"named-lock\"\n",
        )?;
        let s = load(None).unwrap();
        assert_eq!(s.database_url(), "mysql://u@h:1/file");
        assert_eq!(s.worker().concurrency, 3);
        let q = |n: &str| s.queue(&n.parse().unwrap()).claim_mode;
        assert_eq!(q("mail"), ClaimMode::NamedLock);
        assert_eq!(q("other"), ClaimMode::SkipLocked);

        jail.set_env("JOBQ_DATABASE_URL", "mysql://u@h:1/env");
        jail.set_env("JOBQ_WORKER__CONCURRENCY", "7");
        jail.set_env("JOBQ_WORKER__QUEUES", "a,b");
        jail.set_env("JOBQ_METRICS__LISTEN", "127.0.0.1:9187");
        let s = load(None).unwrap();
        assert_eq!(s.database_url(), "mysql://u@h:1/env");
        assert_eq!(s.worker().concurrency, 7);
        assert_eq!(s.worker().queues, vec!["a", "b"]);
        assert_eq!(s.metrics().listen, Some("127.0.0.1:9187".parse().unwrap()));
        Ok(())
    });
}

#[test]
fn errors_name_the_key() {
    figment::Jail::expect_with(|jail| {
        jail.set_env("JOBQ_WORKER__CONCURRENCY", "many");
        let e = load(None).unwrap_err().to_string();
        assert!(e.contains("worker.concurrency"), "{e}");
        jail.set_env("JOBQ_WORKER__CONCURRENCY", "0");
        let e = load(None).unwrap_err().to_string();
        assert!(e.contains("worker.concurrency"), "{e}");
        jail.set_env("JOBQ_WORKER__CONCURRENCY", "2");
        jail.set_env("JOBQ_WORKER__CLAIM_MODE", "fastest");
        let e = load(None).unwrap_err().to_string();
        assert!(e.contains("claim_mode"), "{e}");
        jail.set_env("JOBQ_WORKER__CLAIM_MODE", "named-lock");
        jail.set_env("JOBQ_WORKER__QUEUES", "ok,bad queue");
        let e = load(None).unwrap_err().to_string();
        assert!(e.contains("worker.queues"), "{e}");
        jail.set_env("JOBQ_WORKER__QUEUES", "ok");
        jail.set_env("JOBQ_WORKER__LEASE_TTL", "1s");
        let e = load(None).unwrap_err().to_string();
        assert!(e.contains("worker.lease_ttl"), "{e}");
        Ok(())
    });
}

/// The backoff is checked as the runtime resolves it, field by field over kind, queue and
/// worker: a kind's cap below the base its queue gives is refused; a kind's large base under a
/// queue's larger cap is fine, whatever `[worker]` says.
#[test]
fn backoff_is_checked_as_the_runtime_resolves_it() {
    figment::Jail::expect_with(|jail| {
        jail.set_env("JOBQ_QUEUES__MAIL__BACKOFF_BASE", "10m");
        jail.set_env("JOBQ_QUEUES__MAIL__BACKOFF_MAX", "1h");
        jail.set_env("JOBQ_KINDS__SEND__BACKOFF_MAX", "5m");
        let e = load(None).unwrap_err().to_string();
        assert!(
            e.contains("kinds.send.backoff_max") && e.contains("queue mail"),
            "{e}"
        );
        jail.set_env("JOBQ_KINDS__SEND__BACKOFF_MAX", "2h");
        load(None).unwrap();
        Ok(())
    });
    figment::Jail::expect_with(|jail| {
        jail.set_env("JOBQ_KINDS__SLOW__BACKOFF_BASE", "2h");
        jail.set_env("JOBQ_QUEUES__BULK__BACKOFF_MAX", "10h");
        // Kind `slow` in the worked queue `default` would cap at the worker's 1h: refused.
        let e = load(None).unwrap_err().to_string();
        assert!(
            e.contains("worker.backoff_max") && e.contains("kind slow in queue default"),
            "{e}"
        );
        Ok(())
    });
}

/// Values that would make the process misbehave rather than fail are refused at load,
/// each naming its key: a misspelt log level (the log would go silent), a zero connect
/// timeout (every connection would fail as if the server were down), a port out of range.
#[test]
fn bad_values_are_refused_naming_the_key() {
    let table: [(&str, &str, &str); 13] = [
        ("JOBQ_LOG__LEVEL", "inof", "log.level"),
        ("JOBQ_LOG__LEVEL", "info,sqlx=lots", "log.level"),
        ("JOBQ_LOG__LEVEL", "=warn", "log.level"),
        (
            "JOBQ_DATABASE__CONNECT_TIMEOUT",
            "0s",
            "database.connect_timeout",
        ),
        ("JOBQ_DATABASE_URL", "mysql://u@h:70000/db", "database_url"),
        ("JOBQ_DATABASE_URL", "mysql://u@h:0/db", "database_url"),
        (
            "JOBQ_DATABASE_URL",
            "mysql://u@h1:3306,h2:x/db",
            "database_url",
        ),
        (
            "JOBQ_QUEUES__FAR__DATABASE_URL",
            "mysql://u@h:99999/db",
            "queues.far.database_url",
        ),
        // A backoff whose cap is below its base, on each level.
        (
            "JOBQ_QUEUES__MAIL__BACKOFF_MAX",
            "1ms",
            "queues.mail.backoff_max",
        ),
        (
            "JOBQ_KINDS__SEND__BACKOFF_MAX",
            "1ms",
            "kinds.send.backoff_max",
        ),
        // A lease the server's DATETIME arithmetic cannot carry (and no lease needs).
        ("JOBQ_WORKER__LEASE_TTL", "1000000years", "worker.lease_ttl"),
        // Slots that overflow once prefetch is added.
        (
            "JOBQ_WORKER__CONCURRENCY",
            "4294967295",
            "worker.concurrency",
        ),
        (
            "JOBQ_QUEUES__MAIL__CONCURRENCY",
            "4294967295",
            "queues.mail.concurrency",
        ),
    ];
    for (var, value, key) in table {
        figment::Jail::expect_with(|jail| {
            jail.set_env(var, value);
            let e = load(None).unwrap_err().to_string();
            assert!(e.contains(key), "{var}={value}: {e}");
            Ok(())
        });
    }
    let fine = [
        ("JOBQ_LOG__LEVEL", "debug"),
        (
            "JOBQ_LOG__LEVEL",
            "info,sqlx=warn,jobq_worker::runtime=TRACE",
        ),
        (
            "JOBQ_DATABASE_URL",
            "mysql://u:p@ss@h:3306/db?ssl-ca=/a@b:1",
        ),
        ("JOBQ_DATABASE_URL", "mysql://u@[::1]:3306/db"),
        ("JOBQ_DATABASE_URL", "mysql://u@h/db"),
    ];
    for (var, value) in fine {
        figment::Jail::expect_with(|jail| {
            jail.set_env(var, value);
            load(None).map_err(|e| format!("{var}={value}: {e}"))?;
            Ok(())
        });
    }
}

#[test]
fn missing_explicit_file_is_an_error() {
    let e = load(Some(Path::new("/nonexistent/jobq.toml"))).unwrap_err();
    assert!(matches!(e, ConfigError::MissingFile(_)));
}

#[test]
fn unknown_key_is_an_error() {
    figment::Jail::expect_with(|jail| {
        jail.create_file("x.toml", "[worker]\nconcurency = 3\n")?;
        let e = load(Some(Path::new("x.toml"))).unwrap_err().to_string();
        assert!(e.contains("concurency"), "{e}");
        Ok(())
    });
}

#[test]
fn kind_overrides_win_over_queue_and_worker() {
    let mut s = Settings::default();
    s.queues.insert(
        "q".into(),
        QueueOverrides {
            job_timeout: Some(Duration::from_secs(9)),
            backoff_base: Some(Duration::from_secs(2)),
            ..Default::default()
        },
    );
    s.kinds.insert(
        "k".into(),
        KindOverrides {
            job_timeout: Some(Duration::ZERO),
            ..Default::default()
        },
    );
    let s = s.validate().unwrap();
    let p = s.run_policy("q", "k");
    assert_eq!(p.job_timeout, None);
    assert_eq!(p.backoff_base, Duration::from_secs(2));
    let p = s.run_policy("q", "other");
    assert_eq!(p.job_timeout, Some(Duration::from_secs(9)));
    let p = s.run_policy("z", "other");
    assert_eq!(p.job_timeout, Some(Duration::from_secs(1800)));
}

#[test]
fn flow_limits_from_file_and_env() {
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "limits.toml",
            r#"
                [queues.api]
                key_limit = 2
                rate_limit = "20/1s"
                [kinds.slow]
                key_limit = 5
                "#,
        )?;
        jail.set_env("JOBQ_QUEUES__API__KEY_RATE_LIMIT", "10/100ms");
        jail.set_env("JOBQ_QUEUES__MAIL__KEY_LIMIT", "3");
        let c = load(Some(Path::new("limits.toml"))).unwrap();
        let api = c.queue(&"api".parse().unwrap());
        assert_eq!(api.key_limit, 2);
        let r = |max, ms| {
            Some(Rate {
                max,
                period: Duration::from_millis(ms),
            })
        };
        assert_eq!(api.rate_limit, r(20, 1000));
        assert_eq!(api.key_rate_limit, r(10, 100));
        assert_eq!(
            api.limits_text(),
            "key_limit=2 rate_limit=20/1s key_rate_limit=10/100ms"
        );
        assert_eq!(c.key_limit("api", "other"), 2);
        assert_eq!(c.key_limit("api", "slow"), 5, "the kind wins");
        assert_eq!(c.key_limit("mail", "other"), 3);
        assert_eq!(c.key_limit("default", "other"), 1, "default 1");
        assert_eq!(
            c.key_limit_ceiling("api"),
            5,
            "the slow kind's 5 over the queue's 2"
        );
        assert_eq!(c.key_limit_ceiling_anywhere(), 5);
        assert_eq!(c.queue(&"default".parse().unwrap()).rate_limit, None);
        Ok(())
    });
    for (bad, says) in [
        ("20", "not a rate"),
        ("x/1s", "not a count"),
        ("0/1s", "at least 1"),
        ("5/soon", "not a period"),
        ("5/1ms", "10ms to 1 day"),
        ("5/2days", "10ms to 1 day"),
    ] {
        let e = bad.parse::<Rate>().unwrap_err();
        assert!(e.contains(says) && e.contains("COUNT/PERIOD"), "{bad}: {e}");
    }
    let mut s = Settings::default();
    s.queues.insert(
        "q".into(),
        QueueOverrides {
            key_limit: Some(0),
            ..Default::default()
        },
    );
    let e = s.validate().unwrap_err().to_string();
    assert!(e.contains("queues.q.key_limit"), "{e}");
}

#[test]
fn prefetch_is_auto_by_default_and_reads_a_count_or_auto_from_file_and_env() {
    assert_eq!(Settings::default().worker.prefetch, Prefetch::Auto);
    figment::Jail::expect_with(|jail| {
        jail.create_dir("config")?;
        jail.create_file(
            "config/jobq.toml",
            "[worker]\nprefetch = 40\n[queues.mail]\nprefetch = \"auto\"\n\
             [queues.slow]\nprefetch = 0\n[queues.metered]\nrate_limit = \"5/1s\"\n",
        )?;
        let s = load(None).unwrap();
        let q = |n: &str| s.queue(&n.parse().unwrap()).prefetch;
        assert_eq!(q("other"), Prefetch::Fixed(40));
        assert_eq!(q("mail"), Prefetch::Auto);
        assert_eq!(q("slow"), Prefetch::Fixed(0));
        jail.set_env("JOBQ_WORKER__PREFETCH", "auto");
        let s = load(None).unwrap();
        let q = |n: &str| s.queue(&n.parse().unwrap()).prefetch;
        assert_eq!(q("other"), Prefetch::Auto);
        // `auto` takes nothing ahead on a rate-limited queue.
        assert_eq!(q("metered"), Prefetch::Fixed(0));
        jail.set_env("JOBQ_WORKER__PREFETCH", "12");
        let s = load(None).unwrap();
        assert_eq!(s.worker().prefetch, Prefetch::Fixed(12));
        for bad in ["-1", "soon"] {
            jail.set_env("JOBQ_WORKER__PREFETCH", bad);
            let e = load(None).unwrap_err().to_string();
            assert!(
                e.contains("worker.prefetch") && e.contains("auto"),
                "{bad}: {e}"
            );
        }
        Ok(())
    });
    // The spellings a command line takes.
    for (text, want) in [
        ("auto", Ok(Prefetch::Auto)),
        ("AUTO", Ok(Prefetch::Auto)),
        ("0", Ok(Prefetch::Fixed(0))),
        ("500", Ok(Prefetch::Fixed(500))),
        ("-3", Err(())),
        ("", Err(())),
    ] {
        assert_eq!(text.parse::<Prefetch>().map_err(|_| ()), want, "{text:?}");
    }
    assert_eq!(Prefetch::Auto.to_string(), "auto");
    assert_eq!(Prefetch::Fixed(7).to_string(), "7");
}

#[test]
fn prefetch_is_bounded_and_refused_with_rate_limits() {
    let mut s = Settings::default();
    s.worker.prefetch = Prefetch::Fixed(10_001);
    let e = s.validate().unwrap_err().to_string();
    assert!(e.contains("worker.prefetch") && e.contains("10000"), "{e}");

    // A rate-limited queue worked here, with the worker-wide prefetch.
    let mut s = Settings::default();
    s.worker.prefetch = Prefetch::Fixed(8);
    s.queues.insert(
        "default".into(),
        QueueOverrides {
            rate_limit: Some("10/1s".parse().unwrap()),
            ..Default::default()
        },
    );
    let e = s.validate().unwrap_err().to_string();
    assert!(
        e.contains("worker.prefetch")
            && e.contains("rate limit")
            && e.contains("queues.default.prefetch = 0"),
        "{e}"
    );
    // Its own prefetch = 0 lifts it; a key rate limit with its own prefetch is refused
    // under that key.
    s.queues.get_mut("default").unwrap().prefetch = Some(Prefetch::Fixed(0));
    let c = s.validate().unwrap();
    assert_eq!(c.worker_queues()[0].prefetch, Prefetch::Fixed(0));
    let q = s.queues.get_mut("default").unwrap();
    q.rate_limit = None;
    q.key_rate_limit = Some("1/1s".parse().unwrap());
    q.prefetch = Some(Prefetch::Fixed(3));
    let e = s.validate().unwrap_err().to_string();
    assert!(e.contains("queues.default.prefetch"), "{e}");
    // Without rate limits it resolves per queue.
    s.queues.get_mut("default").unwrap().key_rate_limit = None;
    let c = s.validate().unwrap();
    assert_eq!(c.worker_queues()[0].prefetch, Prefetch::Fixed(3));
}

#[test]
fn schedules_parse_and_validate() {
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "s.toml",
            r#"
                [[schedules]]
                name = "nightly"
                cron = "0 3 * * *"
                timezone = "Europe/Berlin"
                kind = "report"
                payload = { month = "current", n = 2 }
                overlap = "skip"
                [[schedules]]
                name = "tick"
                cron = "*/5 * * * * *"
                kind = "noop"
                missed = "skip"
                "#,
        )?;
        let c = load(Some(Path::new("s.toml"))).unwrap();
        let s = c.schedules();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].tz, chrono_tz::Europe::Berlin);
        assert_eq!(s[0].payload, r#"{"month":"current","n":2}"#);
        assert_eq!(
            (s[0].overlap, s[0].missed),
            (Overlap::Skip, MissedSlots::Latest)
        );
        assert_eq!(s[1].tz, chrono_tz::UTC);
        assert_eq!(s[1].queue.as_str(), "default");
        assert_eq!(s[1].max_attempts, 25);
        Ok(())
    });
    let bad = |sc: ScheduleSettings, says: &str| {
        let s = Settings {
            schedules: vec![sc],
            ..Default::default()
        };
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains(says), "{e}");
    };
    let base = ScheduleSettings {
        name: "a".into(),
        cron: "* * * * *".into(),
        timezone: "UTC".into(),
        kind: "noop".into(),
        payload: serde_json::json!({}),
        queue: None,
        priority: 0,
        max_attempts: None,
        missed: MissedSlots::Latest,
        overlap: Overlap::Allow,
        unique: false,
    };
    bad(
        ScheduleSettings {
            cron: "61 * * * *".into(),
            ..base.clone()
        },
        "schedules[0].cron",
    );
    bad(
        ScheduleSettings {
            timezone: "Mars/Base".into(),
            ..base.clone()
        },
        "not an IANA time zone",
    );
    bad(
        ScheduleSettings {
            name: "no spaces".into(),
            ..base.clone()
        },
        "schedules[0].name",
    );
    bad(
        ScheduleSettings {
            kind: "bad kind".into(),
            ..base.clone()
        },
        "schedules[0].kind",
    );
    // A payload the producer would refuse at every slot: too deep for the server, too large.
    let mut deep = serde_json::json!(1);
    for _ in 0..40 {
        deep = serde_json::json!([deep]);
    }
    bad(
        ScheduleSettings {
            payload: deep,
            ..base.clone()
        },
        "`schedules[0].payload`: nested deeper than 31",
    );
    bad(
        ScheduleSettings {
            payload: serde_json::json!({"blob": "x".repeat(2 << 20)}),
            ..base.clone()
        },
        "`schedules[0].payload`: 2097163 bytes is over producer.max_payload_bytes",
    );
    let s = Settings {
        schedules: vec![base.clone(), base],
        ..Default::default()
    };
    assert!(s
        .validate()
        .unwrap_err()
        .to_string()
        .contains("used by two schedules"));
}

#[test]
fn foreign_env_vars_are_ignored_but_misspelt_keys_are_not() {
    figment::Jail::expect_with(|jail| {
        jail.set_env("JOBQ_BIN", "/usr/local/bin/jobq");
        jail.set_env("JOBQ_LOCK_TOKEN", "17");
        jail.set_env("JOBQ_JOB_ID", "42");
        let s = load(None).unwrap();
        assert_eq!(s.worker().concurrency, 10);
        assert!(ignored_env_vars().contains(&"JOBQ_BIN".to_owned()));
        jail.set_env("JOBQ_WORKER__CONCURENCY", "3");
        let e = load(None).unwrap_err().to_string();
        assert!(e.contains("concurency"), "{e}");
        Ok(())
    });
}

#[test]
fn validation_resolves_queues_once() {
    let mut s = Settings::default();
    s.worker.queues = vec!["a".into(), "b".into()];
    s.worker.concurrency = 4;
    s.queues.insert(
        "b".into(),
        QueueOverrides {
            concurrency: Some(7),
            ..Default::default()
        },
    );
    let c = s.validate().unwrap();
    let got: Vec<(&str, u32)> = c
        .worker_queues()
        .iter()
        .map(|q| (q.name.as_str(), q.concurrency))
        .collect();
    assert_eq!(got, vec![("a", 4), ("b", 7)]);
    assert_eq!(c.total_concurrency(), 11);
    s.worker.queues = vec!["a".into(), "a".into()];
    let e = s.validate().unwrap_err().to_string();
    assert!(e.contains("worker.queues") && e.contains("twice"), "{e}");
    s.worker.queues = vec!["a".into()];
    s.kinds.insert("bad kind".into(), KindOverrides::default());
    let e = s.validate().unwrap_err().to_string();
    assert!(e.contains("kinds.bad kind"), "{e}");
}

fn on(url: &str) -> QueueOverrides {
    QueueOverrides {
        database_url: Some(url.into()),
        ..Default::default()
    }
}

/// Queues on other servers: each server gets its queues and schedules, the top-level
/// server first; one server's configuration comes back whole.
#[test]
fn a_configuration_splits_by_server() {
    let mut s = Settings {
        database_url: "mysql://u@main:3306/jobq".into(),
        ..Default::default()
    };
    s.worker.queues = vec!["far".into(), "a".into(), "far2".into(), "b".into()];
    s.queues
        .insert("far".into(), on("mysql://u@other:3306/jobq"));
    s.queues
        .insert("far2".into(), on("mysql://u@other:3306/jobq"));
    s.queues
        .insert("idle".into(), on("mysql://u@third:3306/jobq"));
    let c = s.validate().unwrap();
    assert_eq!(c.database_of("far"), "mysql://u@other:3306/jobq");
    assert_eq!(c.database_of("a"), "mysql://u@main:3306/jobq");
    assert_eq!(c.database_of("unknown"), "mysql://u@main:3306/jobq");
    assert_eq!(
        c.servers(),
        [
            "mysql://u@main:3306/jobq",
            "mysql://u@other:3306/jobq",
            "mysql://u@third:3306/jobq"
        ]
    );
    let (parts, skipped) = c.split_by_server();
    assert!(skipped.is_empty());
    let got: Vec<(&str, Vec<&str>)> = parts
        .iter()
        .map(|p| {
            (
                p.database_url(),
                p.worker_queues().iter().map(|q| q.name.as_str()).collect(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("mysql://u@main:3306/jobq", vec!["a", "b"]),
            ("mysql://u@other:3306/jobq", vec!["far", "far2"]),
        ]
    );
    assert_eq!(parts[1].worker().queues, ["far", "far2"]);
    // A second spelling of the other server is that server.
    s.queues.insert(
        "far2".into(),
        on("mariadb://v@other/jobq?ssl-mode=disabled"),
    );
    let c = s.validate().unwrap();
    assert_eq!(c.servers().len(), 3);
    assert!(c.lives_on("far2", "mysql://u@other:3306/jobq"));
    assert!(!c.lives_on("a", "mysql://u@other:3306/jobq"));
    let (parts, _) = c.split_by_server();
    assert_eq!(parts[1].worker().queues, ["far", "far2"]);
    // One server: the configuration itself; a queue URL naming the top-level database
    // (spelled differently) is that server.
    s.queues.clear();
    s.queues
        .insert("a".into(), on("mariadb://v:pw@main/jobq?x=1"));
    let c = s.validate().unwrap();
    assert_eq!(c.database_of("a"), "mysql://u@main:3306/jobq");
    assert_eq!(c.servers(), ["mysql://u@main:3306/jobq"]);
    assert_eq!(c.split_by_server().0, vec![c.clone()]);
    let mut bad = Settings::default();
    bad.queues.insert("x".into(), on("postgres://h/db"));
    let e = bad.validate().unwrap_err().to_string();
    assert!(e.contains("queues.x.database_url"), "{e}");
}

/// A schedule goes with its queue's server; one whose server this process does not work
/// is left to the processes working that server.
#[test]
fn schedules_follow_their_queue_server() {
    let text = r#"
            database_url = "mysql://u@main:3306/jobq"
            [worker]
            queues = ["default", "far"]
            [queues.far]
            database_url = "mysql://u@other:3306/jobq"
            [queues.nowhere]
            database_url = "mysql://u@third:3306/jobq"
            [[schedules]]
            name = "near"
            cron = "* * * * *"
            kind = "noop"
            [[schedules]]
            name = "far"
            cron = "* * * * *"
            kind = "noop"
            queue = "far"
        "#;
    let s: Settings = figment::Figment::from(figment::providers::Toml::string(text))
        .extract()
        .unwrap();
    let (parts, skipped) = s.validate().unwrap().split_by_server();
    assert!(skipped.is_empty());
    let names: Vec<Vec<&str>> = parts
        .iter()
        .map(|p| p.schedules().iter().map(|s| s.name.as_str()).collect())
        .collect();
    assert_eq!(names, [vec!["near"], vec!["far"]]);
    let mut s = s;
    s.schedules[1].queue = Some("nowhere".into());
    let (parts, skipped) = s.validate().unwrap().split_by_server();
    assert_eq!(skipped, ["far"]);
    assert_eq!(parts[1].schedules(), &[]);
    assert!(parts[1].settings().schedules.is_empty());
}

#[test]
fn history_partitions_are_whole_hours_with_a_bounded_retention() {
    let with = |width: u64, keep: Option<u64>| {
        let mut s = Settings::default();
        s.maintenance.history_partition = Some(Duration::from_secs(width));
        s.maintenance.history_retention = keep.map(Duration::from_secs);
        s.validate()
    };
    const H: u64 = 3600;
    // Unset by default (the table as it is), 0s for one table; whole hours up to a month.
    let c = Settings::default().validate().unwrap();
    assert_eq!(c.history_partitioning(), HistoryPartitioning::AsItIs);
    assert_eq!(c.history_partition(), None);
    let c = with(0, None).unwrap();
    assert_eq!(c.history_partitioning(), HistoryPartitioning::OneTable);
    assert_eq!(c.history_partition(), None);
    for ok in [H, 6 * H, 24 * H, 31 * 24 * H] {
        assert_eq!(
            with(ok, None).unwrap().history_partition(),
            Some(Duration::from_secs(ok))
        );
    }
    for bad in [60, H + 1800, 32 * 24 * H] {
        let e = with(bad, None).unwrap_err().to_string();
        assert!(
            e.contains("maintenance.history_partition") && e.contains("whole hours"),
            "{e}"
        );
    }
    // The retention: its own, else the longer job retention (7 days), forever with 0s.
    assert_eq!(
        with(H, None).unwrap().history_retention(),
        Some(Duration::from_secs(7 * 24 * H))
    );
    assert_eq!(
        with(H, Some(2 * H)).unwrap().history_retention(),
        Some(Duration::from_secs(2 * H))
    );
    let mut s = Settings::default();
    s.maintenance.completed_retention = Duration::ZERO;
    assert_eq!(s.validate().unwrap().history_retention(), None);
    // Kept forever: partitions of a day or more (hourly ones would outgrow the server's limit).
    assert_eq!(with(24 * H, Some(0)).unwrap().history_retention(), None);
    let e = with(6 * H, Some(0)).unwrap_err().to_string();
    assert!(
        e.contains("maintenance.history_partition") && e.contains("1day"),
        "{e}"
    );
    // At most 900 partitions kept: 900 hourly ones, not 901.
    with(H, Some(900 * H)).unwrap();
    let e = with(H, Some(900 * H + 1)).unwrap_err().to_string();
    assert!(
        e.contains("maintenance.history_retention") && e.contains("901 partitions"),
        "{e}"
    );
    // From a file and the environment.
    figment::Jail::expect_with(|jail| {
        jail.create_file("jobq.toml", "[maintenance]\nhistory_partition = \"1day\"\n")?;
        jail.set_env("JOBQ_MAINTENANCE__HISTORY_RETENTION", "3days");
        let c = crate::load(Some(Path::new("jobq.toml"))).unwrap();
        assert_eq!(c.history_partition(), Some(Duration::from_secs(24 * H)));
        assert_eq!(c.history_retention(), Some(Duration::from_secs(72 * H)));
        Ok(())
    });
}
