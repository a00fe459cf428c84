//! Process lifecycle: the control thread, signals, reload, shutdown and the pid file.

pub mod control;
pub mod notify;
pub mod pidfile;
pub mod signals;
pub mod upgrade;
