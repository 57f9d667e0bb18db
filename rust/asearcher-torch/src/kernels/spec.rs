//! Settings of the PPO-family loss ([`LossSpec`]) and their validation.

use crate::{Result, TorchError};

/// Where the behaviour importance weight `w = exp(prox - behav)` is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IsLevel {
    /// One weight per token.
    Token,
    /// One weight per sequence: the geometric mean of the token ratios over its valid tokens.
    Sequence,
}

/// What happens to weights above the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapMode {
    /// Tokens (or whole sequences) whose weight exceeds the cap contribute nothing.
    Mask,
    /// The weight is clamped to the cap.
    Clamp,
}

/// How per-token losses are reduced to one scalar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregation {
    /// Sum over valid tokens divided by the number of valid tokens (or the given normaliser).
    TokenMean,
    /// Mean over each sequence's valid tokens, then mean over non-empty sequences.
    SeqMeanTokenMean,
    /// Sum over each sequence's valid tokens, then mean over non-empty sequences.
    SeqMeanTokenSum,
}

/// KL estimator between the current policy and a reference, with `d = logp - ref_logp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KlEstimator {
    /// `d`.
    K1,
    /// `d^2 / 2`.
    K2,
    /// `exp(-d) + d - 1`.
    K3,
}

/// The PPO-family loss: decoupled PPO when proximal logprobs are given, plain PPO otherwise.
#[derive(Debug, Clone, PartialEq)]
pub struct LossSpec {
    /// Lower clip: the ratio is clipped to `[1 - eps_clip, 1 + eps_clip_high]`.
    pub eps_clip: f64,
    /// Upper clip (clip-higher); `None` means `eps_clip`.
    pub eps_clip_high: Option<f64>,
    /// Dual clip constant `c > 1`: for negative advantages the loss is at most `-c * A`.
    pub dual_clip: Option<f64>,
    /// Cap of the behaviour importance weight; `None` leaves it uncapped.
    pub behav_weight_cap: Option<f64>,
    pub cap_mode: CapMode,
    pub is_level: IsLevel,
    pub aggregation: Aggregation,
    /// Denominator of the outer mean for the whole batch (valid tokens for token-mean, non-empty
    /// sequences for the seq-mean aggregations), so micro-batches sum to the full-batch loss.
    pub normalizer: Option<f64>,
    /// Coefficient of the KL penalty to the reference logprobs (needs them when non-zero).
    pub kl_coef: f64,
    pub kl_estimator: KlEstimator,
    /// Coefficient of the entropy bonus (subtracted from the loss).
    pub entropy_coef: f64,
}

impl Default for LossSpec {
    fn default() -> Self {
        LossSpec {
            eps_clip: 0.2,
            eps_clip_high: None,
            dual_clip: None,
            behav_weight_cap: Some(5.0),
            cap_mode: CapMode::Mask,
            is_level: IsLevel::Token,
            aggregation: Aggregation::TokenMean,
            normalizer: None,
            kl_coef: 0.0,
            kl_estimator: KlEstimator::K1,
            entropy_coef: 0.0,
        }
    }
}

fn finite_positive(name: &str, v: f64) -> Result<()> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(TorchError::config(
            name,
            format!("must be a finite positive number, got {v}"),
        ))
    }
}

impl LossSpec {
    /// The upper clip bound's epsilon.
    pub fn eps_high(&self) -> f64 {
        self.eps_clip_high.unwrap_or(self.eps_clip)
    }

    /// Checks every setting; the error names the first bad one.
    pub fn validate(&self) -> Result<()> {
        finite_positive("eps_clip", self.eps_clip)?;
        if self.eps_clip >= 1.0 {
            return Err(TorchError::config(
                "eps_clip",
                format!("must be below 1, got {}", self.eps_clip),
            ));
        }
        if let Some(h) = self.eps_clip_high {
            finite_positive("eps_clip_high", h)?;
        }
        if let Some(c) = self.dual_clip {
            if !(c.is_finite() && c > 1.0) {
                return Err(TorchError::config(
                    "dual_clip",
                    format!("must be a finite number above 1, got {c}"),
                ));
            }
        }
        if let Some(cap) = self.behav_weight_cap {
            finite_positive("behav_weight_cap", cap)?;
        }
        if let Some(n) = self.normalizer {
            finite_positive("normalizer", n)?;
        }
        for (name, v) in [
            ("kl_coef", self.kl_coef),
            ("entropy_coef", self.entropy_coef),
        ] {
            if !v.is_finite() {
                return Err(TorchError::config(name, format!("must be finite, got {v}")));
            }
        }
        Ok(())
    }
}

impl std::str::FromStr for IsLevel {
    type Err = TorchError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "token" => Ok(IsLevel::Token),
            "sequence" => Ok(IsLevel::Sequence),
            _ => Err(TorchError::config(
                "is_level",
                format!("expected `token` or `sequence`, got {s:?}"),
            )),
        }
    }
}

impl std::str::FromStr for CapMode {
    type Err = TorchError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "mask" => Ok(CapMode::Mask),
            "clamp" => Ok(CapMode::Clamp),
            _ => Err(TorchError::config(
                "behav_weight_mode",
                format!("expected `mask` or `clamp`, got {s:?}"),
            )),
        }
    }
}

impl std::str::FromStr for Aggregation {
    type Err = TorchError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "token-mean" => Ok(Aggregation::TokenMean),
            "seq-mean-token-mean" => Ok(Aggregation::SeqMeanTokenMean),
            "seq-mean-token-sum" => Ok(Aggregation::SeqMeanTokenSum),
            _ => Err(TorchError::config(
                "aggregation",
                format!(
                    "expected `token-mean`, `seq-mean-token-mean` or `seq-mean-token-sum`, got {s:?}"
                ),
            )),
        }
    }
}

impl std::str::FromStr for KlEstimator {
    type Err = TorchError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "k1" => Ok(KlEstimator::K1),
            "k2" => Ok(KlEstimator::K2),
            "k3" => Ok(KlEstimator::K3),
            _ => Err(TorchError::config(
                "kl_estimator",
                format!("expected `k1`, `k2` or `k3`, got {s:?}"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_symmetric() {
        let s = LossSpec::default();
        s.validate().unwrap();
        assert_eq!(s.eps_high(), s.eps_clip);
    }

    #[test]
    fn bad_settings_are_named() {
        let s = LossSpec {
            dual_clip: Some(0.5),
            ..LossSpec::default()
        };
        assert!(s.validate().unwrap_err().to_string().contains("dual_clip"));
        let s = LossSpec {
            eps_clip: 1.5,
            ..LossSpec::default()
        };
        assert!(s.validate().unwrap_err().to_string().contains("eps_clip"));
        let err = "seq".parse::<Aggregation>().unwrap_err().to_string();
        assert!(err.contains("aggregation"), "{err}");
    }
}
