//! The per-token PPO loss head on logprob vectors: per-token constants (aggregation weights,
//! behaviour importance weights), the loss value, its derivative with respect to the current
//! logprobs and entropies, and the diagnostics.
//!
//! The loss is `sum_i pg_coef_i * l_i + kl_coef * sum_i agg_i * kl_i - entropy_coef * sum_i agg_i * H_i`
//! where `agg_i` is the aggregation weight of token `i` (zero on masked tokens) and `pg_coef_i =
//! agg_i * w_i` folds in the behaviour importance weight. Every constant is known before the
//! current logprobs, so the derivative is local to each token and chunks can be processed alone.

use super::spec::{Aggregation, CapMode, IsLevel, KlEstimator, LossSpec};
use crate::{Result, TorchError};
use tch::{Kind, Tensor};

/// Per-token inputs of the loss, all of one shape: `[N]` (flat) or `[B, T]` (rows are sequences).
#[derive(Debug, Clone, Copy)]
pub struct TokenInputs<'a> {
    pub advantages: &'a Tensor,
    /// Bool, integer or float; non-zero marks a token that counts.
    pub loss_mask: &'a Tensor,
    /// Logprobs of the behaviour policy (the inference engine).
    pub behav_logp: &'a Tensor,
    /// Logprobs of the proximal policy; `None` gives plain PPO (ratio to the behaviour policy).
    pub prox_logp: Option<&'a Tensor>,
    /// Logprobs of the reference policy, needed when `kl_coef != 0`.
    pub ref_logp: Option<&'a Tensor>,
    /// Sequence index of each token (int, `[N]`) for flat inputs; rows are sequences for `[B, T]`.
    pub seq_ids: Option<&'a Tensor>,
}

/// Names of the values in [`Diagnostics::values`], in order.
pub const DIAGNOSTIC_NAMES: [&str; 8] = [
    "n_valid_tokens",
    "clip_frac",
    "dual_clip_frac",
    "behav_weight_mean",
    "behav_weight_max",
    "behav_weight_capped_frac",
    "approx_kl",
    "entropy_mean",
];

/// Loss diagnostics as one float32 tensor on the inputs' device (no host sync needed).
/// Fractions and means are over valid tokens; `approx_kl` is the k3 estimate of
/// KL(proximal || current); `entropy_mean` is NaN when no entropies were given.
#[derive(Debug)]
pub struct Diagnostics {
    pub values: Tensor,
}

impl Diagnostics {
    /// Copies the values to the host as `(name, value)` pairs.
    pub fn to_vec(&self) -> Result<Vec<(&'static str, f64)>> {
        let v: Vec<f64> = Vec::try_from(self.values.to_kind(Kind::Double))?;
        Ok(DIAGNOSTIC_NAMES.iter().copied().zip(v).collect())
    }
}

/// Per-token constants of the loss, flat `[N]` float32 (masks bool).
#[derive(Debug)]
pub struct TokenTerms {
    pub valid: Tensor,
    pub adv: Tensor,
    pub prox: Tensor,
    pub agg: Tensor,
    pub pg_coef: Tensor,
    pub ref_logp: Option<Tensor>,
    raw_weight: Tensor,
    capped: Tensor,
}

fn bad(name: &str, msg: impl Into<String>) -> TorchError {
    TorchError::BadTensor {
        name: name.into(),
        msg: msg.into(),
    }
}

fn check_float(name: &str, t: &Tensor, shape: &[i64]) -> Result<Tensor> {
    check_float_on(name, t, shape, t.device())
}

fn check_float_on(name: &str, t: &Tensor, shape: &[i64], device: tch::Device) -> Result<Tensor> {
    if t.device() != device {
        return Err(bad(
            name,
            format!("on {:?}, advantages on {device:?}", t.device()),
        ));
    }
    if t.size() != shape {
        return Err(bad(
            name,
            format!("shape {:?} differs from advantages {:?}", t.size(), shape),
        ));
    }
    if !t.is_floating_point() {
        return Err(bad(
            name,
            format!("expected a floating dtype, got {:?}", t.kind()),
        ));
    }
    Ok(t.to_kind(Kind::Float).reshape([-1]))
}

/// Sequence index per flat token and the number of sequences.
fn sequence_index(inputs: &TokenInputs, shape: &[i64]) -> Result<Option<(Tensor, i64)>> {
    let dev = inputs.advantages.device();
    if shape.len() == 2 {
        if inputs.seq_ids.is_some() {
            return Err(bad(
                "seq_ids",
                "only for flat [N] inputs; rows of [B, T] are the sequences",
            ));
        }
        let (b, t) = (shape[0], shape[1]);
        let rows = Tensor::arange(b, (Kind::Int64, dev)).repeat_interleave_self_int(t, 0, None);
        return Ok(Some((rows, b)));
    }
    let Some(ids) = inputs.seq_ids else {
        return Ok(None);
    };
    if ids.device() != dev {
        return Err(bad("seq_ids", "on a different device than advantages"));
    }
    if ids.size() != shape {
        return Err(bad(
            "seq_ids",
            format!("shape {:?} differs from advantages {:?}", ids.size(), shape),
        ));
    }
    if !matches!(
        ids.kind(),
        Kind::Int64 | Kind::Int | Kind::Int16 | Kind::Int8 | Kind::Uint8
    ) {
        return Err(bad(
            "seq_ids",
            format!("expected an integer dtype, got {:?}", ids.kind()),
        ));
    }
    let ids = ids.to_kind(Kind::Int64);
    if ids.numel() == 0 {
        return Ok(Some((ids, 0)));
    }
    let (lo, hi) = (ids.min().int64_value(&[]), ids.max().int64_value(&[]));
    if lo < 0 {
        return Err(bad("seq_ids", format!("negative sequence id {lo}")));
    }
    Ok(Some((ids, hi + 1)))
}

fn per_sequence_sum(values: &Tensor, seq: &Tensor, n_seq: i64) -> Tensor {
    Tensor::zeros([n_seq], (Kind::Float, values.device())).index_add(0, seq, values)
}

impl TokenTerms {
    /// Validates the inputs (errors name the tensor) and computes the per-token constants.
    pub fn prepare(inputs: &TokenInputs, spec: &LossSpec) -> Result<TokenTerms> {
        spec.validate()?;
        let shape = inputs.advantages.size();
        if shape.len() > 2 {
            return Err(bad(
                "advantages",
                format!("expected [N] or [B, T], got shape {shape:?}"),
            ));
        }
        let adv = check_float("advantages", inputs.advantages, &shape)?;
        if inputs.loss_mask.size() != shape {
            return Err(bad(
                "loss_mask",
                format!(
                    "shape {:?} differs from advantages {:?}",
                    inputs.loss_mask.size(),
                    shape
                ),
            ));
        }
        let valid = inputs.loss_mask.reshape([-1]).ne(0);
        let maskf = valid.to_kind(Kind::Float);
        let dev = inputs.advantages.device();
        if inputs.loss_mask.device() != dev {
            return Err(bad("loss_mask", "on a different device than advantages"));
        }
        let behav = check_float_on("behav_logp", inputs.behav_logp, &shape, dev)?;
        let prox = match inputs.prox_logp {
            Some(p) => Some(check_float_on("prox_logp", p, &shape, dev)?),
            None => None,
        };
        let ref_logp = match inputs.ref_logp {
            Some(r) => Some(check_float_on("ref_logp", r, &shape, dev)?),
            None if spec.kl_coef != 0.0 => {
                return Err(bad("ref_logp", "required when kl_coef is non-zero"))
            }
            None => None,
        };
        let needs_seq = spec.aggregation != Aggregation::TokenMean
            || (prox.is_some() && spec.is_level == IsLevel::Sequence);
        let seq = sequence_index(inputs, &shape)?;
        if needs_seq && seq.is_none() {
            return Err(bad(
                "seq_ids",
                "required for flat [N] inputs with sequence-level aggregation or importance weights",
            ));
        }
        let seq_counts = seq
            .as_ref()
            .map(|(ids, n)| (ids, *n, per_sequence_sum(&maskf, ids, *n)));
        let agg = aggregation_weights(&maskf, seq_counts.as_ref(), spec);
        let (raw_weight, eff_weight, capped) =
            behaviour_weights(&behav, prox.as_ref(), &valid, seq_counts.as_ref(), spec);
        let pg_coef = (&agg * eff_weight).where_self(&valid, &agg.zeros_like());
        let prox = prox.unwrap_or(behav);
        Ok(TokenTerms {
            valid,
            adv: adv.where_self(&maskf.ne(0), &maskf.zeros_like()),
            prox,
            agg,
            pg_coef,
            ref_logp,
            raw_weight,
            capped,
        })
    }

    /// Number of tokens.
    pub fn len(&self) -> i64 {
        self.valid.size()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The constants of tokens `start..start + len`.
    pub fn narrow(&self, start: i64, len: i64) -> TokenTerms {
        let n = |t: &Tensor| t.narrow(0, start, len);
        TokenTerms {
            valid: n(&self.valid),
            adv: n(&self.adv),
            prox: n(&self.prox),
            agg: n(&self.agg),
            pg_coef: n(&self.pg_coef),
            ref_logp: self.ref_logp.as_ref().map(n),
            raw_weight: n(&self.raw_weight),
            capped: n(&self.capped),
        }
    }
}

type SeqCounts<'a> = (&'a Tensor, i64, Tensor);

fn aggregation_weights(maskf: &Tensor, seq: Option<&SeqCounts>, spec: &LossSpec) -> Tensor {
    let outer = |default: Tensor| match spec.normalizer {
        Some(n) => default.full_like(n),
        None => default.clamp_min(1.0),
    };
    match (spec.aggregation, seq) {
        (Aggregation::TokenMean, _) | (_, None) => maskf / outer(maskf.sum(Kind::Float)),
        (Aggregation::SeqMeanTokenMean, Some((ids, _, counts))) => {
            let n_seq = outer(counts.gt(0).sum(Kind::Float));
            let per_tok = counts.clamp_min(1.0).index_select(0, ids);
            maskf / (per_tok * n_seq)
        }
        (Aggregation::SeqMeanTokenSum, Some((_, _, counts))) => {
            maskf / outer(counts.gt(0).sum(Kind::Float))
        }
    }
}

/// Raw behaviour weights, effective (capped) weights, and which valid tokens hit the cap.
fn behaviour_weights(
    behav: &Tensor,
    prox: Option<&Tensor>,
    valid: &Tensor,
    seq: Option<&SeqCounts>,
    spec: &LossSpec,
) -> (Tensor, Tensor, Tensor) {
    let Some(prox) = prox else {
        let ones = behav.ones_like();
        return (ones.shallow_clone(), ones, valid.zeros_like());
    };
    let zeros = behav.zeros_like();
    let log_w = (prox - behav).where_self(valid, &zeros);
    let raw = match (spec.is_level, seq) {
        (IsLevel::Sequence, Some((ids, n_seq, counts))) => {
            let mean = per_sequence_sum(&log_w, ids, *n_seq) / counts.clamp_min(1.0);
            mean.exp().index_select(0, ids)
        }
        _ => log_w.exp(),
    };
    let Some(cap) = spec.behav_weight_cap else {
        return (raw.shallow_clone(), raw, valid.zeros_like());
    };
    let capped = raw.gt(cap).logical_and(valid);
    let eff = match spec.cap_mode {
        CapMode::Mask => raw.where_self(&capped.logical_not(), &zeros),
        CapMode::Clamp => raw.clamp_max(cap),
    };
    (raw, eff, capped)
}

/// Per-token values and derivatives of the loss for one chunk (or all tokens).
#[derive(Debug)]
pub struct HeadOutput {
    /// Weighted per-token contributions; their sum is the loss.
    pub value: Tensor,
    pub grad_logp: Tensor,
    /// Derivative with respect to the entropy (constant per token), if the bonus is on.
    pub grad_entropy: Option<Tensor>,
    clipped: Tensor,
    dual_clipped: Tensor,
}

/// `where(a > b, da, where(b > a, db, (da + db) / 2))`: the derivative of `maximum(a, b)` as
/// torch defines it (ties split evenly).
fn max_grad(a: &Tensor, b: &Tensor, da: &Tensor, db: &Tensor) -> Tensor {
    let tie = (da + db) * 0.5;
    da.where_self(&a.gt_tensor(b), &db.where_self(&b.gt_tensor(a), &tie))
}

/// The clipped policy-gradient loss per token and its derivative in `logp`.
fn policy_loss(logp: &Tensor, t: &TokenTerms, spec: &LossSpec) -> (Tensor, Tensor, Tensor, Tensor) {
    let (lo, hi) = (1.0 - spec.eps_clip, 1.0 + spec.eps_high());
    let ratio = (logp - &t.prox).exp();
    let neg_adv = -&t.adv;
    let s1 = &neg_adv * &ratio;
    let s2 = &neg_adv * ratio.clamp(lo, hi);
    let in_range = ratio.ge(lo).logical_and(&ratio.le(hi));
    let ds1 = &s1; // d(-A r)/dlogp = -A r
    let ds2 = s1.where_self(&in_range, &s1.zeros_like());
    let mut loss = s1.maximum(&s2);
    let mut grad = max_grad(&s1, &s2, ds1, &ds2);
    let clipped = s2.gt_tensor(&s1);
    let mut dual = clipped.zeros_like();
    if let Some(c) = spec.dual_clip {
        let bound = &neg_adv * c;
        let zero = grad.zeros_like();
        // d min(loss, bound) = grad where loss < bound, 0 where above, half at ties.
        let capped_grad = max_grad(&bound, &loss, &grad, &zero);
        let neg = t.adv.lt(0.0);
        dual = loss.gt_tensor(&bound).logical_and(&neg);
        grad = capped_grad.where_self(&neg, &grad);
        loss = loss.minimum(&bound).where_self(&neg, &loss);
    }
    (loss, grad, clipped, dual)
}

fn kl_terms(logp: &Tensor, reference: &Tensor, est: KlEstimator) -> (Tensor, Tensor) {
    let d = logp - reference;
    match est {
        KlEstimator::K1 => (d.shallow_clone(), d.ones_like()),
        KlEstimator::K2 => (&d * &d * 0.5, d),
        KlEstimator::K3 => {
            let e = (-&d).exp();
            (&e + &d - 1.0, 1.0 - e)
        }
    }
}

/// Evaluates the loss head on `logp` (float32, same length as `t`) and `entropy` (needed when
/// the entropy bonus is on).
pub fn evaluate_head(
    logp: &Tensor,
    entropy: Option<&Tensor>,
    t: &TokenTerms,
    spec: &LossSpec,
) -> Result<HeadOutput> {
    let zeros = logp.zeros_like();
    let (pg, dpg, clipped, dual_clipped) = policy_loss(logp, t, spec);
    let mut value = &t.pg_coef * pg;
    let mut grad = &t.pg_coef * dpg;
    if spec.kl_coef != 0.0 {
        let reference = t.ref_logp.as_ref().expect("checked in prepare");
        let (kl, dkl) = kl_terms(logp, reference, spec.kl_estimator);
        value += &t.agg * kl * spec.kl_coef;
        grad += &t.agg * dkl * spec.kl_coef;
    }
    let mut grad_entropy = None;
    if spec.entropy_coef != 0.0 {
        let ent =
            entropy.ok_or_else(|| bad("entropy", "required when entropy_coef is non-zero"))?;
        value -= &t.agg * ent * spec.entropy_coef;
        grad_entropy = Some((&t.agg * -spec.entropy_coef).where_self(&t.valid, &zeros));
    }
    Ok(HeadOutput {
        value: value.where_self(&t.valid, &zeros),
        grad_logp: grad.where_self(&t.valid, &zeros),
        grad_entropy,
        clipped,
        dual_clipped,
    })
}

fn masked_mean(values: &Tensor, valid: &Tensor, n: &Tensor) -> Tensor {
    values
        .where_self(valid, &values.zeros_like())
        .sum(Kind::Float)
        / n
}

/// Diagnostics of a head evaluated on all tokens.
pub fn diagnostics(
    head: &HeadOutput,
    logp: &Tensor,
    entropy: Option<&Tensor>,
    t: &TokenTerms,
) -> Diagnostics {
    let dev = logp.device();
    let vf = t.valid.to_kind(Kind::Float);
    let n_valid = vf.sum(Kind::Float);
    let n = n_valid.clamp_min(1.0);
    let frac = |flags: &Tensor| {
        flags
            .logical_and(&t.valid)
            .to_kind(Kind::Float)
            .sum(Kind::Float)
            / &n
    };
    let log_r = logp - &t.prox;
    let k3 = log_r.exp() - 1.0 - &log_r;
    let w_max = if t.is_empty() {
        Tensor::zeros([] as [i64; 0], (Kind::Float, dev))
    } else {
        t.raw_weight
            .where_self(&t.valid, &t.raw_weight.zeros_like())
            .max()
    };
    let ent_mean = match entropy {
        Some(e) => masked_mean(e, &t.valid, &n),
        None => Tensor::full([] as [i64; 0], f64::NAN, (Kind::Float, dev)),
    };
    let values = Tensor::stack(
        &[
            n_valid.shallow_clone(),
            frac(&head.clipped),
            frac(&head.dual_clipped),
            masked_mean(&t.raw_weight, &t.valid, &n),
            w_max,
            frac(&t.capped),
            masked_mean(&k3, &t.valid, &n),
            ent_mean,
        ],
        0,
    );
    Diagnostics { values }
}

/// Result of [`ppo_loss`].
#[derive(Debug)]
pub struct PpoLossOutput {
    /// Scalar float32 loss.
    pub loss: Tensor,
    /// dloss/dlogp, float32, shape of `logp`.
    pub grad_logp: Tensor,
    /// dloss/dentropy when an entropy was given (zeros when the bonus is off).
    pub grad_entropy: Option<Tensor>,
    pub diagnostics: Diagnostics,
}

/// The PPO-family loss on current logprobs `logp` (shape of the token inputs), with its gradient.
/// `entropy` (same shape) feeds the entropy bonus and the `entropy_mean` diagnostic.
pub fn ppo_loss(
    logp: &Tensor,
    entropy: Option<&Tensor>,
    inputs: &TokenInputs,
    spec: &LossSpec,
) -> Result<PpoLossOutput> {
    let _guard = tch::no_grad_guard();
    let terms = TokenTerms::prepare(inputs, spec)?;
    let shape = inputs.advantages.size();
    let dev = inputs.advantages.device();
    let lp = check_float_on("logp", logp, &shape, dev)?;
    let ent = match entropy {
        Some(e) => Some(check_float_on("entropy", e, &shape, dev)?),
        None => None,
    };
    let head = evaluate_head(&lp, ent.as_ref(), &terms, spec)?;
    let diagnostics = diagnostics(&head, &lp, ent.as_ref(), &terms);
    let grad_entropy = ent.as_ref().map(|e| {
        head.grad_entropy
            .as_ref()
            .map_or_else(|| e.zeros_like(), |g| g.shallow_clone())
            .reshape(&shape)
    });
    Ok(PpoLossOutput {
        loss: head.value.sum(Kind::Float),
        grad_logp: head.grad_logp.reshape(&shape),
        grad_entropy,
        diagnostics,
    })
}
