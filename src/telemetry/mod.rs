//! Telemetry, the last step of every request: one access-log line and the request
//! metrics, written once from the request's drop guard (`request`).

pub(crate) mod access_log;
pub(crate) mod metrics;
pub(crate) mod request;
