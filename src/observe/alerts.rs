//! Alert rules, SLOs and the scaling recommendation (filled in below).

use super::live::Published;
use crate::state::Shared;
use crate::supervisor::SlotStatus;
use serde_json::Value;
use std::time::Instant;

#[derive(Default)]
pub struct Alerts {}

impl Alerts {
    pub fn evaluate(&self, _shared: &Shared, _p: &Published, _slots: &[SlotStatus], _now: Instant) {}
    pub fn active(&self) -> Vec<Value> {
        Vec::new()
    }
    pub fn slo_status(&self) -> Vec<Value> {
        Vec::new()
    }
    pub fn scaling(&self) -> Value {
        Value::Null
    }
}
