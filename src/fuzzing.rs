//! Fuzz target bodies, shared by the cargo-fuzz targets in `fuzz/` and by the corpus replay test.
