//! Tests of the producer (`producer.rs`): validation and enqueueing.

use super::*;

fn check(job: NewJob) -> Result<store::JobInsert> {
    job.check(&ProducerOptions::default())
}

#[test]
fn validation_names_the_field() {
    assert!(matches!(
        check(NewJob::raw("k", "{not json")),
        Err(Error::InvalidJson(_))
    ));
    assert!(matches!(
        check(NewJob::raw("", "{}")),
        Err(Error::Invalid { field: "kind", .. })
    ));
    assert!(matches!(
        check(NewJob::raw("k", "{}").queue("a b")),
        Err(Error::Invalid { field: "queue", .. })
    ));
    assert!(matches!(
        check(NewJob::raw("k", "{}").max_attempts(0)),
        Err(Error::Invalid {
            field: "max_attempts",
            ..
        })
    ));
    let big = format!("\"{}\"", "x".repeat(1 << 20));
    assert!(matches!(
        check(NewJob::raw("k", big)),
        Err(Error::PayloadTooLarge { .. })
    ));
    for text in [
        format!("{}{}", "[".repeat(32), "]".repeat(32)),
        r#"{"name": "\ud800"}"#.to_owned(),
    ] {
        match check(NewJob::raw("k", text.clone())) {
            Err(Error::Invalid {
                field: "payload",
                message,
            }) => assert!(message.contains('$'), "{message}"),
            other => panic!("{text}: {other:?}"),
        }
    }
    let deep = (0..40).fold(serde_json::json!(1), |v, _| serde_json::json!([v]));
    assert!(matches!(
        check(NewJob::json("k", deep)),
        Err(Error::Invalid {
            field: "payload",
            ..
        })
    ));
    let ok = check(NewJob::raw("k", " {\"a\": 1} ").priority(-3)).unwrap();
    assert_eq!(ok.queue, "default");
    assert_eq!(ok.priority, -3);
    assert_eq!(ok.max_attempts, 25);
}
