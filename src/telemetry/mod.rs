//! Telemetry, the last step of every request: one access-log line (and, later, metrics)
//! written once from the request's drop guard.

pub mod access_log;
pub mod metrics;
