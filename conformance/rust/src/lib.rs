//! The Rust runner of the cross-language conformance cases lives in `tests/conformance.rs`
//! (`cargo test -p machnet-conformance`); see `conformance/README.md`.
