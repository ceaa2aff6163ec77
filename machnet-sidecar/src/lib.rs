//! The machnet sidecar (work in progress).
