//! The balancing strategies a user can name in `balancing.strategy`: the names the file
//! accepts, and the index per-strategy counters use. `balancing` implements them; the
//! model lives here so config validation does not depend on the balancer.

use std::fmt;
use std::str::FromStr;

/// The strategies a user can name in `balancing.strategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StrategyKind {
    RoundRobin,
    Random,
    LeastConnections,
    WeightedRoundRobin,
    Latency,
    ConsistentHash,
    Predictive,
}

impl StrategyKind {
    /// How many strategies there are (sizes per-strategy counters).
    pub const COUNT: usize = 7;
    pub const ALL: [StrategyKind; Self::COUNT] = [
        StrategyKind::RoundRobin,
        StrategyKind::Random,
        StrategyKind::LeastConnections,
        StrategyKind::WeightedRoundRobin,
        StrategyKind::Latency,
        StrategyKind::ConsistentHash,
        StrategyKind::Predictive,
    ];

    /// Position in [`StrategyKind::ALL`], for per-strategy counters.
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StrategyKind::RoundRobin => "round_robin",
            StrategyKind::Random => "random",
            StrategyKind::LeastConnections => "least_connections",
            StrategyKind::WeightedRoundRobin => "weighted_round_robin",
            StrategyKind::Latency => "latency",
            StrategyKind::ConsistentHash => "consistent_hash",
            StrategyKind::Predictive => "predictive",
        }
    }
}

impl fmt::Display for StrategyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A strategy name drover does not know; the message lists the accepted ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown strategy `{0}`; accepted: {names}", names = StrategyKind::ALL.map(StrategyKind::as_str).join(", "))]
pub struct UnknownStrategy(pub String);

impl FromStr for StrategyKind {
    type Err = UnknownStrategy;
    fn from_str(s: &str) -> Result<Self, UnknownStrategy> {
        StrategyKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownStrategy(s.to_string()))
    }
}
