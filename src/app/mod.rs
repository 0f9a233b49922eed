//! The top floor: the command line, the daemon that runs ticks on the schedule, and the
//! one-shot commands an operator types.

pub mod cli;
pub mod commands;
pub mod daemon;
pub mod shutdown;
pub mod telemetry;
