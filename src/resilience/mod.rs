//! Resilience: keeping traffic off backends that are failing.

pub mod breaker;
