//! Beside the request flow, not in it: the fuzz targets' property checks, shared with the
//! stable corpus replay in `tests/fuzz_corpus.rs`.

pub mod checks;
