//! When to try again and when to stop.

pub mod backoff;
pub mod breaker;
