//! Table tests of how attempts end (`attempt.rs`).

use super::*;

#[test]
fn a_cancel_request_overrides_every_outcome_short_of_finishing() {
    let b = Backoff {
        base: Duration::from_secs(1),
        max: Duration::from_secs(60),
    };
    let outcomes = [
        Outcome::Success,
        Outcome::Error {
            message: "boom".into(),
            retry_after: None,
        },
        Outcome::Discard("bad".into()),
        Outcome::Snooze(Duration::from_secs(5)),
        Outcome::Released,
        Outcome::NotStarted(Unstarted::Stopped),
        Outcome::NotStarted(Unstarted::Waited(Duration::from_millis(100))),
    ];
    for o in outcomes {
        let d = decide(&o, 1, 3, b, 1.0);
        match overridden_by_cancel(&d, "cli:ops@host") {
            None => assert!(d.to.is_final(), "{o:?}: only a finishing decision stands"),
            Some(c) => {
                assert!(!d.to.is_final(), "{o:?}");
                assert_eq!((c.to, c.event), (JobState::Cancelled, Event::Cancelled));
                assert!(c.error.unwrap().contains("cancelled by cli:ops@host"));
            }
        }
    }
}

#[test]
fn a_late_cancel_wins_over_all_but_the_handlers_own_cancel() {
    let by_operator = || Outcome::Cancel("cancelled by ops while running".into());
    let own = Outcome::Cancel("handler said so".into());
    assert_eq!(
        with_late_cancel(Outcome::Success, true, by_operator),
        by_operator()
    );
    assert_eq!(
        with_late_cancel(Outcome::Released, true, by_operator),
        by_operator()
    );
    assert_eq!(with_late_cancel(own.clone(), true, by_operator), own);
    assert_eq!(
        with_late_cancel(Outcome::Success, false, by_operator),
        Outcome::Success
    );
}
use JobState::*;

const B: Backoff = Backoff {
    base: Duration::from_secs(1),
    max: Duration::from_secs(60),
};

#[test]
fn backoff_doubles_and_caps() {
    let table = [
        (1, 1.0),
        (2, 2.0),
        (3, 4.0),
        (6, 32.0),
        (7, 60.0),
        (40, 60.0),
        (u32::MAX, 60.0),
    ];
    for (attempt, secs) in table {
        assert_eq!(
            backoff(attempt, B, 1.0),
            Duration::from_secs_f64(secs),
            "attempt {attempt}"
        );
    }
    assert_eq!(backoff(2, B, 0.75), Duration::from_secs_f64(1.5));
    assert_eq!(
        backoff(7, B, 1.25),
        Duration::from_secs(60),
        "jitter never exceeds the cap"
    );
}

#[test]
fn decisions() {
    let err = |m: &str| Outcome::Error {
        message: m.into(),
        retry_after: None,
    };
    // (outcome, attempt, max) → (state, event, delay, refund)
    type Row = (Outcome, u32, u32, JobState, Event, Option<Duration>, bool);
    let table: Vec<Row> = vec![
        (
            Outcome::Success,
            1,
            3,
            Completed,
            Event::Completed,
            None,
            false,
        ),
        (
            err("x"),
            1,
            3,
            Retryable,
            Event::Failed,
            Some(Duration::from_secs(1)),
            false,
        ),
        (
            err("x"),
            2,
            3,
            Retryable,
            Event::Failed,
            Some(Duration::from_secs(2)),
            false,
        ),
        (err("x"), 3, 3, Discarded, Event::Discarded, None, false),
        (
            Outcome::Error {
                message: "x".into(),
                retry_after: Some(Duration::from_secs(9)),
            },
            1,
            3,
            Retryable,
            Event::Failed,
            Some(Duration::from_secs(9)),
            false,
        ),
        (
            Outcome::Panic("p".into()),
            1,
            2,
            Retryable,
            Event::Failed,
            Some(Duration::from_secs(1)),
            false,
        ),
        (
            Outcome::Timeout(Duration::from_secs(5)),
            2,
            2,
            Discarded,
            Event::Discarded,
            None,
            false,
        ),
        (
            Outcome::Undecodable("bad".into()),
            1,
            25,
            Discarded,
            Event::Discarded,
            None,
            false,
        ),
        (
            Outcome::Discard("no".into()),
            1,
            25,
            Discarded,
            Event::Discarded,
            None,
            false,
        ),
        (
            Outcome::Snooze(Duration::from_secs(30)),
            25,
            25,
            Scheduled,
            Event::Snoozed,
            Some(Duration::from_secs(30)),
            true,
        ),
        (
            Outcome::Cancel("c".into()),
            1,
            25,
            Cancelled,
            Event::Cancelled,
            None,
            false,
        ),
        (
            Outcome::Released,
            25,
            25,
            Available,
            Event::Released,
            None,
            true,
        ),
        (
            Outcome::NotStarted(Unstarted::Stopped),
            25,
            25,
            Available,
            Event::Released,
            None,
            true,
        ),
        (
            Outcome::NotStarted(Unstarted::Waited(Duration::from_millis(100))),
            25,
            25,
            Available,
            Event::Released,
            None,
            true,
        ),
    ];
    for (outcome, attempt, max, to, event, delay, refund) in table {
        let d = decide(&outcome, attempt, max, B, 1.0);
        assert_eq!(
            (d.to, d.event, d.delay, d.refund_attempt),
            (to, event, delay, refund),
            "{outcome:?}"
        );
        assert!(is_valid(Some(Running), d.to), "{outcome:?}");
        assert_eq!(
            d.error.is_some(),
            !matches!(outcome, Outcome::Success | Outcome::Snooze(_))
        );
    }
    let last = decide(&err("boom"), 3, 3, B, 1.0);
    assert!(last.error.unwrap().starts_with("boom"));
}

#[test]
fn errors_are_cut_to_fit_and_delays_clamped() {
    let long = "é".repeat(40_000); // 80,000 bytes, two per character
    let d = decide(&Outcome::Discard(long), 1, 1, B, 1.0);
    let e = d.error.unwrap();
    assert!(e.len() <= MAX_ERROR_BYTES, "{}", e.len());
    assert!(
        e.ends_with("[cut: 80000 bytes in all]"),
        "{}",
        &e[e.len() - 40..]
    );
    assert!(e.starts_with("éé"));
    let short = "x".repeat(MAX_ERROR_BYTES);
    assert_eq!(fit_error(short.clone()), short);
    let d = decide(&Outcome::Snooze(Duration::MAX), 1, 1, B, 1.0);
    assert_eq!(d.delay, Some(MAX_DELAY));
    let err = Outcome::Error {
        message: "x".into(),
        retry_after: Some(Duration::MAX),
    };
    assert_eq!(decide(&err, 1, 2, B, 1.0).delay, Some(MAX_DELAY));
}

#[test]
fn rescue_and_put_back() {
    // (attempt, max) → state
    let table = [
        (1, 3, Available),
        (2, 3, Available),
        (3, 3, Discarded),
        (9, 3, Discarded),
    ];
    for (attempt, max, to) in table {
        let d = rescue(attempt, max, Some("w1"), None);
        assert_eq!(
            (d.to, d.event, d.refund_attempt),
            (to, Event::Rescued, false)
        );
        assert!(d.error.unwrap().contains("worker w1"));
        assert!(is_valid(Some(Running), d.to));
    }
    assert!(rescue(1, 2, None, None).error.unwrap().contains("worker ?"));
    let d = cancel_requested("cli:ann", Some("boom"));
    assert_eq!((d.to, d.event), (Cancelled, Event::Cancelled));
    assert!(is_valid(Some(Running), d.to));
    assert!(d
        .error
        .unwrap()
        .contains("cancelled by cli:ann while running (the attempt ended with: boom)"));
    // A job an operator was cancelling when its worker died is not run again.
    let d = rescue(1, 5, Some("w1"), Some("cli:ann"));
    assert_eq!((d.to, d.event), (Cancelled, Event::Rescued));
    assert!(d.error.unwrap().ends_with("cancelled by cli:ann"));
    let d = put_back("deadlock");
    assert_eq!(
        (d.to, d.event, d.refund_attempt),
        (Available, Event::Released, true)
    );
    assert!(d.error.unwrap().ends_with("deadlock"));
    let d = unstarted("connection reset");
    assert_eq!(
        (d.to, d.event, d.refund_attempt, d.delay),
        (Available, Event::Released, true, None)
    );
    assert!(d.error.unwrap().contains("connection reset"));
}

#[test]
fn outcome_labels() {
    let table = [
        (Event::Completed, Some("completed")),
        (Event::Failed, Some("retried")),
        (Event::Discarded, Some("discarded")),
        (Event::Snoozed, Some("snoozed")),
        (Event::Cancelled, Some("cancelled")),
        (Event::Released, Some("released")),
        (Event::Enqueued, None),
        (Event::Promoted, None),
        (Event::Claimed, None),
        (Event::Rescued, None),
        (Event::Replaced, None),
        (Event::Throttled, None),
        (Event::Requeued, None),
    ];
    assert_eq!(table.len(), Event::ALL.len());
    for (event, label) in table {
        assert_eq!(event.finished_outcome(), label, "{event}");
        assert_eq!(event.as_str().parse::<Event>().unwrap(), event);
    }
    assert!("nope".parse::<Event>().is_err());
}

#[test]
fn graph() {
    assert!(is_valid(None, Available));
    assert!(is_valid(None, Scheduled));
    assert!(!is_valid(None, Running));
    assert!(is_valid(Some(Available), Running));
    assert!(!is_valid(Some(Available), Completed));
    assert!(
        is_valid(Some(Available), Scheduled),
        "replaced with a later run-at"
    );
    assert!(
        is_valid(Some(Scheduled), Scheduled),
        "replaced, still in the future"
    );
    assert!(!is_valid(Some(Retryable), Scheduled));
    assert!(is_valid(Some(Available), Waiting), "throttled");
    assert!(is_valid(Some(Waiting), Available), "promoted");
    assert!(
        !is_valid(Some(Waiting), Running),
        "never claimed from waiting"
    );
    assert!(!is_valid(None, Waiting));
    assert!(!is_valid(Some(Running), Waiting));
    assert!(is_valid(Some(Retryable), Available));
    // Dependencies: a child starts blocked (or cancelled), leaves blocked by a parent's ending.
    assert!(is_valid(None, Blocked) && is_valid(None, Cancelled));
    assert!(is_valid(Some(Blocked), Available) && is_valid(Some(Blocked), Scheduled));
    assert!(is_valid(Some(Blocked), Cancelled));
    assert!(
        !is_valid(Some(Blocked), Running),
        "never claimed from blocked"
    );
    for to in JobState::ALL {
        assert!(!is_valid(Some(Completed), to));
    }
    for fin in [Discarded, Cancelled] {
        for to in JobState::ALL {
            assert_eq!(
                is_valid(Some(fin), to),
                to == Available || to == Blocked,
                "only a retry revives (a workflow's retry may block it on its parents)"
            );
        }
    }
}
