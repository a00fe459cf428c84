//! Process lifecycle: the control thread, signals, reload and shutdown.

pub mod control;
pub mod notify;
pub mod reload;
pub mod signals;
pub mod upstreams;
