//! What the operator reads and watches: the status of every pair, the route-health alarm, and
//! the Prometheus metrics with the health check.

pub mod alarm;
pub mod metrics;
pub mod status;
