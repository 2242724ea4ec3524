//! Crash points for the crash tests (test builds): a named point where the process aborts once the
//! failpoint of that name is armed (`PUT /debug/failpoints/{name}`, or `fail::cfg` in unit
//! tests), as a SIGKILL would stop it there. Without the `testing` feature a crash point is
//! nothing.

/// Aborts the process if the failpoint `name` is configured.
#[cfg(feature = "testing")]
pub fn crash(name: &str) {
    fail::fail_point!(name, |_| {
        eprintln!("crash injected at {name}");
        std::process::abort()
    });
}

/// Does nothing: crash points exist only in test builds.
#[cfg(not(feature = "testing"))]
#[inline(always)]
pub fn crash(_name: &str) {}
