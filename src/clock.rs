//! The wall clock, read only by the I/O shell (server, storage thread, handlers).

/// Milliseconds since the Unix epoch. Deadlines are wall-clock times so that they survive restarts.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}
