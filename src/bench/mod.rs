//! `outboxd bench`: a load generator that drives a running (or spawned) server over HTTP.
