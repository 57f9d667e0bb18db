//! The scheduler's configuration, its checks, and the staleness gate of asynchronous RL.

use crate::runner::ToolErrorPolicy;
use crate::{Result, RolloutError};
use serde::{Deserialize, Serialize};

/// What happens to a trajectory that failed (stop reason `Error`: an inference error after the
/// backend's own retries, a tool error under `tool_errors = "fail"`, an agent that could not be
/// built or panicked).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Run the sample again from scratch, up to `max_attempts` runs in all; a sample that fails
    /// every attempt is dropped.
    #[default]
    Retry,
    /// Drop the sample; its group goes on with the others (a group left empty is dropped).
    Drop,
    /// Keep the failed trajectory in its group (it is scored like any other).
    Keep,
}

/// Configuration of a [`super::RolloutEngine`]. Every field has a default (listed on the field).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutConfig {
    /// Samples per question, `n` (GRPO group). Default 16.
    pub group_size: u32,
    /// Most trajectories in the pipeline at once (running, waiting for their group, or being
    /// scored). Default 128.
    pub max_concurrent: usize,
    /// Groups per consumer batch, `B`. Default 128 (ASearcher: 128 questions per step).
    pub batch_size: usize,
    /// Staleness bound `eta` (max_head_offpolicyness). `None`: no staleness gate (evaluation).
    /// Default 4; 0 is synchronous RL.
    pub max_staleness: Option<u64>,
    /// Drop groups whose rewards are all equal (they carry no signal) in the engine, so they free
    /// their admission slots and batches stay full (ASearcher's dynamic filtering). `null`
    /// (default): on in training when `group_size >= 2`, off for a bare `RolloutEngine`;
    /// evaluation never filters. `true` needs `group_size >= 2`.
    pub filter_zero_variance: Option<bool>,
    /// What a failed trajectory does. Default `retry`.
    pub on_error: OnError,
    /// Runs of one sample in all, first one included (used by `on_error = "retry"`). Default 3.
    pub max_attempts: u32,
    /// Wall-clock limit of one trajectory in seconds; `None`: none. Default none.
    pub trajectory_timeout_s: Option<f64>,
    /// What a failed tool call does. Default `observe`.
    pub tool_errors: ToolErrorPolicy,
    /// Stop and raise when this many trajectory attempts (or tool calls) in a row, before the
    /// first success, fail with the same error: a systematic error (a missing chat template, a
    /// dead server, no toolbox) rather than bad luck. `null`: never (each sample is retried and
    /// dropped as `on_error` says). Default 8.
    pub fail_fast_after: Option<u32>,
    /// Hand groups to the consumer in admission order instead of completion order: a ready
    /// group waits until every group admitted before it is ready or dropped. Batches then do not
    /// depend on timing (with `max_staleness = 0` and seeded sampling a training run repeats
    /// exactly: `run.deterministic`), at the price of waiting for the slowest group. Default
    /// false.
    pub ordered: bool,
}

impl asearcher_config::Document for RolloutConfig {
    const MOVED: &'static [(&'static str, &'static str)] = &[(
        "seed",
        "`run.seed` in a training config (one seed for the run), or \
         `RolloutEngine(shuffle_seed=...)`",
    )];
}

impl Default for RolloutConfig {
    fn default() -> Self {
        Self {
            group_size: 16,
            max_concurrent: 128,
            batch_size: 128,
            max_staleness: Some(4),
            filter_zero_variance: None,
            on_error: OnError::Retry,
            max_attempts: 3,
            trajectory_timeout_s: None,
            tool_errors: ToolErrorPolicy::Observe,
            fail_fast_after: Some(8),
            ordered: false,
        }
    }
}

impl RolloutConfig {
    /// Checks the values; the error names the field.
    pub fn validate(&self) -> Result<()> {
        if self.group_size == 0 {
            return Err(RolloutError::config("group_size", "must be at least 1"));
        }
        if self.max_concurrent < self.group_size as usize {
            return Err(RolloutError::config(
                "max_concurrent",
                format!(
                    "{} is smaller than group_size {}: groups are admitted whole, so none would ever start",
                    self.max_concurrent, self.group_size
                ),
            ));
        }
        if self.batch_size == 0 {
            return Err(RolloutError::config("batch_size", "must be at least 1"));
        }
        if self.fail_fast_after == Some(0) {
            return Err(RolloutError::config(
                "fail_fast_after",
                "must be at least 1 (or null to never stop early)",
            ));
        }
        if self.max_attempts == 0 {
            return Err(RolloutError::config("max_attempts", "must be at least 1"));
        }
        if let Some(t) = self.trajectory_timeout_s {
            if !(t.is_finite() && t > 0.0) {
                return Err(RolloutError::config(
                    "trajectory_timeout_s",
                    format!("must be a positive number of seconds, got {t}"),
                ));
            }
        }
        if self.filter_zero_variance == Some(true) && self.group_size < 2 {
            return Err(RolloutError::config(
                "filter_zero_variance",
                "needs group_size >= 2 (a group of one always has zero variance)",
            ));
        }
        Ok(())
    }

    /// Trajectories per consumer batch, `B * n`.
    pub fn batch_trajectories(&self) -> u64 {
        self.batch_size as u64 * u64::from(self.group_size)
    }
}

/// The admission capacity: the asynchronous-RL staleness gate of AReaL/ASearcher, counted in
/// trajectories:
/// `min(max_concurrent - in_flight, (eta + version + 1) * batch_trajectories - (accepted + in_flight))`,
/// without the second term when `eta` is `None`. `in_flight`: admitted and not yet accepted or
/// rejected; `accepted`: handed to the consumer or waiting in the ready queue.
pub fn admission_capacity(
    max_concurrent: usize,
    in_flight: usize,
    accepted: u64,
    version: u64,
    eta: Option<u64>,
    batch_trajectories: u64,
) -> u64 {
    let concurrency = (max_concurrent as u64).saturating_sub(in_flight as u64);
    let Some(eta) = eta else {
        return concurrency;
    };
    let allowed = eta
        .saturating_add(version)
        .saturating_add(1)
        .saturating_mul(batch_trajectories);
    let staleness = allowed.saturating_sub(accepted.saturating_add(in_flight as u64));
    concurrency.min(staleness)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_formula_on_a_table_of_cases() {
        // (max_concurrent, in_flight, accepted, version, eta, B*n) -> capacity
        type Case = (usize, usize, u64, u64, Option<u64>, u64, u64);
        let cases: [Case; 10] = [
            (128, 0, 0, 0, Some(0), 32, 32),   // synchronous: one batch
            (128, 32, 0, 0, Some(0), 32, 0),   // that batch is in flight
            (128, 0, 32, 0, Some(0), 32, 0),   // consumed, version not bumped yet
            (128, 0, 32, 1, Some(0), 32, 32),  // bumped: the next batch
            (128, 10, 0, 0, Some(4), 32, 118), // concurrency binds: 118 < 160 - 10
            (16, 10, 0, 0, Some(4), 32, 6),
            (1000, 100, 200, 2, Some(4), 64, 148), // 7*64=448 - 300
            (1000, 100, 500, 2, Some(4), 64, 0),   // over the bound saturates at 0
            (50, 60, 0, 0, None, 64, 0),           // over max_concurrent saturates at 0
            (50, 20, 1_000_000, 0, None, 64, 30),  // no gate: only concurrency
        ];
        for (mc, inf, acc, v, eta, bn, want) in cases {
            assert_eq!(
                admission_capacity(mc, inf, acc, v, eta, bn),
                want,
                "max_concurrent={mc} in_flight={inf} accepted={acc} version={v} eta={eta:?} B*n={bn}"
            );
        }
        assert_eq!(
            admission_capacity(10, 0, 0, u64::MAX, Some(u64::MAX), u64::MAX),
            10
        );
    }

    #[test]
    fn bad_values_name_their_field() {
        let bad = [
            (
                RolloutConfig {
                    group_size: 0,
                    ..Default::default()
                },
                "group_size",
            ),
            (
                RolloutConfig {
                    max_concurrent: 8,
                    group_size: 16,
                    ..Default::default()
                },
                "max_concurrent",
            ),
            (
                RolloutConfig {
                    batch_size: 0,
                    ..Default::default()
                },
                "batch_size",
            ),
            (
                RolloutConfig {
                    max_attempts: 0,
                    ..Default::default()
                },
                "max_attempts",
            ),
            (
                RolloutConfig {
                    trajectory_timeout_s: Some(-1.0),
                    ..Default::default()
                },
                "trajectory_timeout_s",
            ),
            (
                RolloutConfig {
                    filter_zero_variance: Some(true),
                    group_size: 1,
                    ..Default::default()
                },
                "filter_zero_variance",
            ),
        ];
        for (cfg, field) in bad {
            let err = cfg.validate().unwrap_err().to_string();
            assert!(err.contains(&format!("`{field}`")), "{err}");
        }
        RolloutConfig::default().validate().unwrap();
    }

    #[test]
    fn config_json_has_defaults_and_rejects_unknown_fields() {
        let cfg: RolloutConfig =
            serde_json::from_str(r#"{"group_size": 4, "max_staleness": null, "on_error": "keep"}"#)
                .unwrap();
        assert_eq!(cfg.group_size, 4);
        assert_eq!(cfg.max_staleness, None);
        assert_eq!(cfg.on_error, OnError::Keep);
        assert_eq!(cfg.max_concurrent, 128);
        let err = serde_json::from_str::<RolloutConfig>(r#"{"group_sise": 4}"#).unwrap_err();
        assert!(err.to_string().contains("group_sise"), "{err}");
    }
}
