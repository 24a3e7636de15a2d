//! Telemetry, the last step of every request: the request's log guard. It is created when
//! a request arrives, travels with the response body, and on drop writes the access-log
//! line and records the request metrics, exactly once, whether the request succeeded,
//! failed or was cancelled (client gone).

use crate::telemetry::access_log::{AccessLogger, Entry};
use crate::telemetry::metrics::RouteHandles;
use crate::util::{Activity, Clock};
use std::sync::Arc;
use tokio::time::Instant;

/// The drop guard of one request.
#[derive(Debug)]
pub(crate) struct RequestLog {
    pub entry: Entry,
    start: Instant,
    logger: Option<Arc<AccessLogger>>,
    /// The client connection's in-flight count, which this request holds up until it ends.
    activity: Arc<Activity>,
    /// Request metrics of the route (or the listener's no-route bucket).
    pub metrics: Option<Arc<RouteHandles>>,
}

impl RequestLog {
    /// Starts the guard of a request on the connection whose activity is `activity`.
    pub(crate) fn new(
        entry: Entry,
        activity: Arc<Activity>,
        logger: Option<Arc<AccessLogger>>,
    ) -> Self {
        activity.begin();
        RequestLog {
            entry,
            start: Instant::now(),
            logger,
            activity,
            metrics: None,
        }
    }
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        self.activity.end(Clock::process().now_ms());
        let seconds = self.start.elapsed().as_secs_f64();
        if let Some(m) = &self.metrics {
            m.record(
                self.entry.status,
                seconds,
                self.entry.upstream_ms.map(|ms| ms / 1000.0),
            );
        }
        if let Some(logger) = &self.logger {
            let is_error = self.entry.status >= 500 || self.entry.error.is_some();
            if logger.sampled(is_error) {
                self.entry.duration_ms = seconds * 1000.0;
                logger.log(&self.entry);
            }
        }
    }
}
