//! The wall clock, read only by the I/O shell (server, storage thread, handlers).

/// Milliseconds since the Unix epoch. Deadlines are wall-clock times that survive restarts.
pub fn now_ms() -> u64 {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0);
    #[cfg(feature = "testing")]
    let now_ms = now_ms.saturating_add_signed(test_offset_ms());
    now_ms
}

/// In test builds, `OUTBOXD_TEST_CLOCK_OFFSET_MS` (signed) moves the clock: the conversion test
/// starts a server on a data directory made long ago as if shortly after, so that its leases,
/// deadlines and idempotency keys are as current as when it was made.
#[cfg(feature = "testing")]
fn test_offset_ms() -> i64 {
    static OFFSET_MS: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *OFFSET_MS.get_or_init(|| {
        std::env::var("OUTBOXD_TEST_CLOCK_OFFSET_MS")
            .ok()
            .and_then(|text| text.parse().ok())
            .unwrap_or(0)
    })
}
