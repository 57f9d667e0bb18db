//! Learning-rate schedules: constant, linear warm-up then constant, warm-up + cosine decay and
//! warm-up + linear decay, as a serde-(de)serialisable, validated config with [`LrSchedule::lr_at`].
//!
//! Steps count optimizer updates from 0. During warm-up (`step < warmup_steps`) the rate is
//! `lr * (step + 1) / warmup_steps`, so the first update already moves and step `warmup_steps - 1`
//! reaches the peak. Decays run from `warmup_steps` to `total_steps`, ending at
//! `lr * min_lr_ratio`, and stay there beyond.

use crate::{Result, TorchError};
use serde::{Deserialize, Serialize};
use std::f64::consts::PI;

/// The shape of a schedule.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// `lr` at every step (no warm-up allowed).
    #[default]
    Constant,
    /// Linear warm-up to `lr`, then constant.
    WarmupConstant,
    /// Linear warm-up, then half-cosine from `lr` to `lr * min_lr_ratio` at `total_steps`.
    WarmupCosine,
    /// Linear warm-up, then a straight line from `lr` to `lr * min_lr_ratio` at `total_steps`.
    WarmupLinear,
}

/// A learning-rate schedule. Deserialise with [`LrSchedule::from_json`] (or serde then
/// [`LrSchedule::validate`]); absent fields take the defaults of [`LrSchedule::default`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct LrSchedule {
    /// The schedule's shape. Default `constant`.
    pub kind: ScheduleKind,
    /// Peak learning rate. Default `1e-6`.
    pub lr: f64,
    /// Number of warm-up steps (>= 0). Default 0.
    pub warmup_steps: i64,
    /// Step at which a decay ends (> `warmup_steps` for decays; ignored otherwise). Default 0.
    pub total_steps: i64,
    /// Final rate as a fraction of `lr`, in [0, 1]. Default 0.
    pub min_lr_ratio: f64,
}

impl Default for LrSchedule {
    fn default() -> Self {
        LrSchedule {
            kind: ScheduleKind::Constant,
            lr: 1e-6,
            warmup_steps: 0,
            total_steps: 0,
            min_lr_ratio: 0.0,
        }
    }
}

impl LrSchedule {
    /// Parses a JSON object and validates it; errors name the offending field.
    pub fn from_json(json: &str) -> Result<Self> {
        let schedule: LrSchedule = serde_json::from_str(json)
            .map_err(|e| TorchError::config("lr_schedule", e.to_string()))?;
        schedule.validate()?;
        Ok(schedule)
    }

    /// Checks every field; the error names the first invalid one.
    pub fn validate(&self) -> Result<()> {
        if !self.lr.is_finite() || self.lr < 0.0 {
            return Err(TorchError::config(
                "lr",
                format!("must be a finite number >= 0, got {}", self.lr),
            ));
        }
        if self.warmup_steps < 0 {
            return Err(TorchError::config(
                "warmup_steps",
                format!("must be >= 0, got {}", self.warmup_steps),
            ));
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return Err(TorchError::config(
                "min_lr_ratio",
                format!("must lie in [0, 1], got {}", self.min_lr_ratio),
            ));
        }
        match self.kind {
            ScheduleKind::Constant if self.warmup_steps != 0 => Err(TorchError::config(
                "warmup_steps",
                "must be 0 for kind `constant` (use `warmup_constant`)",
            )),
            ScheduleKind::WarmupCosine | ScheduleKind::WarmupLinear
                if self.total_steps <= self.warmup_steps =>
            {
                Err(TorchError::config(
                    "total_steps",
                    format!(
                        "must exceed warmup_steps ({}) for a decaying schedule, got {}",
                        self.warmup_steps, self.total_steps
                    ),
                ))
            }
            _ => Ok(()),
        }
    }

    /// The learning rate for optimizer step `step` (0-based). Assumes a validated schedule.
    pub fn lr_at(&self, step: u64) -> f64 {
        let step = step as f64;
        let warmup = self.warmup_steps.max(0) as f64;
        if step < warmup {
            return self.lr * (step + 1.0) / warmup;
        }
        let decay_len = (self.total_steps as f64 - warmup).max(1.0);
        let progress = ((step - warmup) / decay_len).min(1.0);
        let floor = self.min_lr_ratio;
        let factor = match self.kind {
            ScheduleKind::Constant | ScheduleKind::WarmupConstant => 1.0,
            ScheduleKind::WarmupCosine => {
                floor + (1.0 - floor) * 0.5 * (1.0 + (PI * progress).cos())
            }
            ScheduleKind::WarmupLinear => floor + (1.0 - floor) * (1.0 - progress),
        };
        self.lr * factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(kind: ScheduleKind, warmup: i64, total: i64, min: f64) -> LrSchedule {
        LrSchedule {
            kind,
            lr: 3e-4,
            warmup_steps: warmup,
            total_steps: total,
            min_lr_ratio: min,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-15 + 1e-12 * b.abs()
    }

    #[test]
    fn constant_is_flat() {
        let s = sched(ScheduleKind::Constant, 0, 0, 0.0);
        s.validate().unwrap();
        for step in [0, 1, 10, 1_000_000] {
            assert_eq!(s.lr_at(step), 3e-4);
        }
    }

    #[test]
    fn warmup_ramps_linearly_then_holds() {
        let s = sched(ScheduleKind::WarmupConstant, 10, 0, 0.0);
        s.validate().unwrap();
        assert!(close(s.lr_at(0), 3e-4 / 10.0));
        assert!(close(s.lr_at(4), 3e-4 * 5.0 / 10.0));
        assert!(close(s.lr_at(9), 3e-4));
        assert!(close(s.lr_at(10), 3e-4));
        assert!(close(s.lr_at(500), 3e-4));
    }

    #[test]
    fn cosine_matches_closed_form_at_boundaries() {
        let (w, t, m) = (5, 25, 0.1);
        let s = sched(ScheduleKind::WarmupCosine, w, t, m);
        s.validate().unwrap();
        let formula = |step: u64| {
            let p = ((step as f64 - w as f64) / (t - w) as f64).clamp(0.0, 1.0);
            3e-4 * (m + (1.0 - m) * 0.5 * (1.0 + (PI * p).cos()))
        };
        assert!(close(s.lr_at(0), 3e-4 / 5.0));
        assert!(close(s.lr_at(4), 3e-4), "end of warm-up reaches the peak");
        assert!(close(s.lr_at(5), 3e-4), "decay starts at the peak");
        for step in 5..40 {
            assert!(close(s.lr_at(step), formula(step)), "step {step}");
        }
        assert!(close(s.lr_at(15), 3e-4 * (m + (1.0 - m) * 0.5)), "half way");
        assert!(close(s.lr_at(25), 3e-4 * m), "end of decay");
        assert!(close(s.lr_at(1000), 3e-4 * m), "beyond");
    }

    #[test]
    fn linear_decay_matches_closed_form_at_boundaries() {
        let s = sched(ScheduleKind::WarmupLinear, 0, 10, 0.0);
        s.validate().unwrap();
        assert!(close(s.lr_at(0), 3e-4));
        assert!(close(s.lr_at(3), 3e-4 * 0.7));
        assert!(close(s.lr_at(10), 0.0));
        assert!(close(s.lr_at(11), 0.0));
        let s = sched(ScheduleKind::WarmupLinear, 2, 6, 0.5);
        assert!(close(s.lr_at(1), 3e-4));
        assert!(close(s.lr_at(4), 3e-4 * (0.5 + 0.5 * 0.5)));
        assert!(close(s.lr_at(6), 3e-4 * 0.5));
    }

    #[test]
    fn json_round_trip_and_defaults() {
        let s =
            LrSchedule::from_json(r#"{"kind":"warmup_cosine","warmup_steps":3,"total_steps":9}"#)
                .unwrap();
        assert_eq!(s.lr, LrSchedule::default().lr);
        assert_eq!(s.min_lr_ratio, 0.0);
        let back = LrSchedule::from_json(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        assert_eq!(LrSchedule::from_json("{}").unwrap(), LrSchedule::default());
    }

    #[test]
    fn invalid_configs_name_the_field() {
        let cases = [
            (
                r#"{"kind":"warmup_constant","warmup_steps":-1}"#,
                "warmup_steps",
            ),
            (
                r#"{"kind":"warmup_cosine","total_steps":10,"min_lr_ratio":1.5}"#,
                "min_lr_ratio",
            ),
            (
                r#"{"kind":"warmup_cosine","min_lr_ratio":-0.1,"total_steps":3}"#,
                "min_lr_ratio",
            ),
            (r#"{"kind":"warmup_cosine"}"#, "total_steps"),
            (
                r#"{"kind":"warmup_linear","warmup_steps":5,"total_steps":5}"#,
                "total_steps",
            ),
            (r#"{"kind":"constant","warmup_steps":5}"#, "warmup_steps"),
            (r#"{"lr":-1.0}"#, "`lr`"),
            (r#"{"lr_max":1.0}"#, "lr_max"),
            (r#"{"kind":"step"}"#, "step"),
        ];
        for (json, field) in cases {
            let err = LrSchedule::from_json(json).unwrap_err().to_string();
            assert!(err.contains(field), "{json}: {err}");
        }
    }
}
