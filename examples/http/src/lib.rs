//! An HTTP/1.1 server (hyper) that runs unchanged over kernel TCP and over Machnet flows
//! (`machnet::stream`), an open-loop load generator measured the wrk2 way, and the plot of
//! latency against offered load (the paper's Fig. 7).
//!
//! * [`server`]: `GET /` answers a body of a configured size, `POST /echo` echoes the request
//!   body; keep-alive and pipelining on. [`server::serve`] takes any accepted byte stream.
//! * [`load`]: requests are due at fixed intended times; a due request is sent even while
//!   earlier ones are outstanding (pipelining), and latency is measured from the intended send
//!   time, so queueing is not hidden by coordinated omission.
//! * [`plot`]: p50 and p99 against offered load for both transports, as PNG (or SVG).

pub mod load;
pub mod plot;
pub mod server;
pub mod transport;
