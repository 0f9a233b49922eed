//! When to try again and when to stop: the backoff, a database step retried until it succeeds,
//! the circuit breaker on the provider, a submission's deadline and what an attempt's answer
//! means for its row. Pure functions but for the jitter's randomness and the logging of a
//! retried step: time comes in as an argument, from the caller's clock.

pub mod backoff;
pub mod breaker;
pub mod classify;
pub mod deadline;
pub mod step;
