//! The Machnet client library (work in progress).
