use super::*;
use clap::Parser;

#[derive(Parser)]
struct Wrapper {
    #[command(flatten)]
    send: SendArgs,
}

fn args(flags: &[&str]) -> SendArgs {
    let mut argv = vec!["send"];
    argv.extend_from_slice(flags);
    Wrapper::try_parse_from(argv).expect("test flags parse").send
}

fn batcher(args: &SendArgs, batch_count_max: usize) -> Batcher {
    Batcher {
        input: Input {
            source: Source::Arguments(args.bodies.clone().into_iter()),
            position: 0,
            peeked: None,
        },
        carry: None,
        format: args.body_format,
        shared_fields: shared_fields(args),
        batch_count_max,
        batch_bytes_max: BATCH_BYTES_DEFAULT as usize,
    }
}

#[test]
fn messages_carry_the_shared_fields() {
    let args = args(&["q", "a\"b", "-H", "tenant=acme", "--priority", "-3", "--delay-ms", "5"]);
    let mut batcher = batcher(&args, 10);
    let batch = batcher.next_batch().expect("encodes").expect("one batch");
    let value: serde_json::Value = serde_json::from_str(&batch.body).expect("valid JSON");
    assert_eq!(
        value,
        serde_json::json!({"messages": [{"body": "a\"b", "headers": {"tenant": "acme"},
            "priority": -3, "delay_ms": 5}]})
    );
    assert!(batcher.next_batch().expect("reads").is_none());
}

#[test]
fn batches_split_at_the_count_and_positions_follow_the_input() {
    let args = args(&["q", "1", "2", "3", "--body-format", "json"]);
    let mut batcher = batcher(&args, 2);
    let first = batcher.next_batch().expect("encodes").expect("first batch");
    assert_eq!(first.positions, vec![1, 2]);
    assert_eq!(first.body, r#"{"messages":[{"body":1},{"body":2}]}"#);
    assert!(batcher.has_more().expect("reads"));
    let second = batcher.next_batch().expect("encodes").expect("second batch");
    assert_eq!(second.positions, vec![3]);
    assert!(!batcher.has_more().expect("reads"));
}

#[test]
fn bad_bodies_name_their_position() {
    let args = args(&["q", "{}", "{oops", "--body-format", "json"]);
    let error = batcher(&args, 10).next_batch().err().expect("refused");
    assert!(error.to_string().contains("argument 2 is not one JSON value"), "{error}");
    let args = args_base64();
    let error = batcher(&args, 10).next_batch().err().expect("refused");
    assert!(error.to_string().contains("argument 1 is not standard base64"), "{error}");
}

fn args_base64() -> SendArgs {
    args(&["q", "***", "--body-format", "base64"])
}

#[test]
fn a_batch_may_reach_the_byte_budget_exactly_but_not_pass_it() {
    let args = args(&["q", "first", "second"]);
    // Both messages in one request: `{"messages":[` + two messages + `,` + `]}`.
    let whole = batcher(&args, 10).next_batch().expect("encodes").expect("one batch").body;
    assert_eq!(whole, r#"{"messages":[{"body":"first"},{"body":"second"}]}"#);

    let mut exact = batcher(&args, 10);
    exact.batch_bytes_max = whole.len();
    let batch = exact.next_batch().expect("encodes").expect("one batch");
    assert_eq!(batch.positions, vec![1, 2], "a batch exactly at the budget is one request");
    assert_eq!(batch.body.len(), whole.len());

    let mut over = batcher(&args, 10);
    over.batch_bytes_max = whole.len() - 1;
    let first = over.next_batch().expect("encodes").expect("first batch");
    assert_eq!(first.positions, vec![1], "one byte over the budget splits the batch");
    assert!(first.body.len() <= over.batch_bytes_max, "{}", first.body);
    let second = over.next_batch().expect("encodes").expect("second batch");
    assert_eq!(second.positions, vec![2]);
}

#[test]
fn a_carriage_return_is_removed_also_from_the_last_line_without_a_newline() {
    let args = args(&["q"]);
    let mut batcher = batcher(&args, 10);
    batcher.input.source = Source::Lines(Box::new(&b"a\r\n\r\nb\r"[..]));
    let batch = batcher.next_batch().expect("encodes").expect("one batch");
    assert_eq!(batch.body, r#"{"messages":[{"body":"a"},{"body":"b"}]}"#);
    assert_eq!(batch.positions, vec![1, 3], "the line of only `\r` is empty and skipped");
}

#[test]
fn idempotency_keys_too_long_for_their_derived_form_are_refused() {
    let key = "k".repeat(IDEMPOTENCY_KEY_BYTES_MAX - 2);
    assert!(check_key_length(&key, None).is_ok(), "KEY itself fits");
    assert!(check_key_length(&key, Some(9)).is_ok(), "KEY-9 is exactly the limit");
    let error = check_key_length(&key, Some(10)).expect_err("KEY-10 is one byte over");
    assert!(error.to_string().contains("KEY-10 would be longer than 255 bytes"), "{error}");
    assert!(error.to_string().contains("at most 252 bytes"), "{error}");
    let error = check_key_length(&"k".repeat(256), None).expect_err("too long by itself");
    assert!(error.to_string().contains("nothing was sent"), "{error}");
    // From stdin the batch count has no known end.
    assert_eq!(last_batch_number(&args(&["q"])), u64::MAX);
    assert_eq!(
        last_batch_number(&args(&["q", "a", "b", "--first-batch", "4", "--idempotency-key", "k"])),
        5
    );
}

#[test]
fn headers_need_a_name_and_an_equals_sign() {
    assert_eq!(parse_header("a=b=c"), Ok(("a".into(), "b=c".into())));
    assert!(parse_header("novalue").is_err());
    assert!(parse_header("=x").is_err());
}
