//! The first storage format, read-only: enough to convert a data directory of it.

/// The folder a conversion moves the first format's files into (`DATA_DIR/format-1/`).
pub const KEPT_DIR: &str = "format-1";
