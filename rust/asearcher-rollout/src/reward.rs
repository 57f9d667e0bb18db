//! Rewards of finished trajectories.
//! TODO (issue 4): rule rewards, the LLM judge and the batching of plugins.

use asearcher_agent::trajectory::Trajectory;
use async_trait::async_trait;

/// Why a plugin could not score one trajectory.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginFailure {
    pub message: String,
    /// The Python traceback, when the plugin is Python code that raised.
    pub traceback: Option<String>,
}

/// A user's reward function (a Python plugin through `asearcher-py`, or Rust). Called with
/// batches of finished trajectories, off the tokio workers by the implementation's choice.
#[async_trait]
pub trait RewardPlugin: Send + Sync {
    /// The key the score is recorded under in `Trajectory::rewards`.
    fn name(&self) -> &str;
    /// One result per trajectory, in order.
    async fn score_batch(&self, batch: &[Trajectory]) -> Vec<Result<f64, PluginFailure>>;
}

/// Scores finished trajectories in place: fills `rewards` and `reward`, and records failures
/// (with tracebacks) in `errors` instead of returning them. What the scheduler calls.
#[async_trait]
pub trait Scorer: Send + Sync {
    async fn score(&self, batch: &mut [Trajectory]);
}
