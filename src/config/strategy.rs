//! The balancing strategies a user can name in `balancing.strategy`: the names the file
//! accepts, and the index per-strategy counters use. `balancing` implements them; the
//! model lives here so config validation does not depend on the balancer.

use std::fmt;
use std::str::FromStr;

/// The strategies a user can name in `balancing.strategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StrategyKind {
    /// `round_robin`: each eligible backend in turn, weights ignored.
    RoundRobin,
    /// `random`: a random backend, in proportion to weight.
    Random,
    /// `least_connections`: fewest in-flight requests per unit of weight; ties rotate.
    LeastConnections,
    /// `weighted_round_robin`: nginx's smooth weighted round robin (interleaved, not bursts).
    WeightedRoundRobin,
    /// `latency`: the cheaper of two random backends by peak-EWMA × (in-flight + 1) / weight.
    Latency,
    /// `consistent_hash`: a ring of virtual nodes keyed by `balancing.hash_key`, so a key
    /// keeps its backend and removing one of N backends moves about 1/N of the keys.
    ConsistentHash,
    /// `predictive`: the backend predicted to finish the request first (docs/MODELS.md).
    Predictive,
}

impl StrategyKind {
    /// How many strategies there are (sizes per-strategy counters).
    pub const COUNT: usize = 7;
    /// Every strategy, in [`StrategyKind::index`] order (the order of the enum).
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

    /// The name `balancing.strategy` accepts for this strategy, also the `strategy` label.
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
