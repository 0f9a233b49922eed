//! A tick and its queue: claim the tick ([`runs`]), stream the source ([`source`], [`sums`]),
//! judge and enqueue ([`tick`], [`store`]), send under a lease ([`sender`], paced by [`pace`]),
//! and keep the record bounded ([`retention`]).

pub mod context;
pub mod pace;
pub mod retention;
pub mod runs;
pub mod sender;
pub mod source;
pub mod store;
pub mod sums;
pub mod tick;
