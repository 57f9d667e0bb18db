//! Advantages without a critic (gamma = lambda = 1): group-relative (GRPO) sequence advantages
//! after reward shaping (scale, bias, clip), with empty sequences left out of their group, then
//! broadcast to tokens over the loss mask, optionally normalised over all valid tokens.

use crate::{Result, TensorView, TorchError};
use tch::{Kind, Tensor};

fn bad(name: &str, msg: String) -> TorchError {
    TorchError::BadTensor {
        name: name.into(),
        msg,
    }
}

/// How rewards become sequence advantages.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupAdvantageSpec {
    /// Consecutive runs of this many rewards form a group.
    pub group_size: i64,
    /// Divide each group by its (unbiased) std plus `eps`.
    pub normalize_std: bool,
    pub eps: f64,
    /// Rewards become `clip((r + reward_bias) * reward_scale, -reward_clip, reward_clip)`.
    pub reward_scale: f64,
    pub reward_bias: f64,
    pub reward_clip: Option<f64>,
}

impl GroupAdvantageSpec {
    pub fn new(group_size: i64) -> Self {
        GroupAdvantageSpec {
            group_size,
            normalize_std: false,
            eps: 1e-6,
            reward_scale: 1.0,
            reward_bias: 0.0,
            reward_clip: None,
        }
    }
}

/// Computes group-centred advantages of `rewards` (1-D, length a multiple of `group_size`).
/// With `normalize_std`, each group is also divided by its (unbiased) std plus `eps`.
/// The result has the dtype and device of the input.
pub fn group_advantages(
    rewards: &Tensor,
    group_size: i64,
    normalize_std: bool,
    eps: f64,
) -> Result<Tensor> {
    let spec = GroupAdvantageSpec {
        normalize_std,
        eps,
        ..GroupAdvantageSpec::new(group_size)
    };
    shaped_group_advantages(rewards, None, &spec)
}

/// Group advantages after reward shaping. `valid` (bool-like, shape of `rewards`) marks the
/// sequences that count: invalid ones (zero-length, or every token masked) are left out of their
/// group's mean and std and get advantage 0; a group with no valid member is all zeros, and a
/// group with one valid member gets 0 (never NaN).
pub fn shaped_group_advantages(
    rewards: &Tensor,
    valid: Option<&Tensor>,
    spec: &GroupAdvantageSpec,
) -> Result<Tensor> {
    let group_size = spec.group_size;
    if rewards.dim() != 1 {
        return Err(bad(
            "rewards",
            format!("expected a 1-D tensor, got shape {:?}", rewards.size()),
        ));
    }
    if group_size <= 0 {
        return Err(TorchError::config(
            "group_size",
            format!("must be positive, got {group_size}"),
        ));
    }
    if let Some(c) = spec.reward_clip {
        if !(c.is_finite() && c > 0.0) {
            return Err(TorchError::config(
                "reward_clip",
                format!("must be a finite positive number, got {c}"),
            ));
        }
    }
    if !(spec.reward_scale.is_finite() && spec.reward_bias.is_finite() && spec.eps >= 0.0) {
        return Err(TorchError::config(
            "reward_scale",
            "reward_scale and reward_bias must be finite, eps non-negative",
        ));
    }
    let n = rewards.size()[0];
    if n % group_size != 0 {
        return Err(bad(
            "rewards",
            format!("length {n} is not a multiple of group_size {group_size}"),
        ));
    }
    let kind = if rewards.is_floating_point() {
        rewards.kind()
    } else {
        Kind::Float
    };
    let mut r = (rewards.to_kind(Kind::Double) + spec.reward_bias) * spec.reward_scale;
    if let Some(c) = spec.reward_clip {
        r = r.clamp(-c, c);
    }
    let ok = match valid {
        Some(v) if v.size() != rewards.size() => {
            return Err(bad(
                "valid",
                format!(
                    "shape {:?} differs from rewards {:?}",
                    v.size(),
                    rewards.size()
                ),
            ))
        }
        Some(v) => v.ne(0).to_device(rewards.device()),
        None => r.ones_like().ne(0),
    };
    let shape = [n / group_size, group_size];
    let okf = ok.to_kind(Kind::Double).view(shape);
    let grouped = r.view(shape) * &okf;
    let count = okf.sum_dim_intlist([1i64].as_slice(), true, Kind::Double);
    let mean =
        grouped.sum_dim_intlist([1i64].as_slice(), true, Kind::Double) / count.clamp_min(1.0);
    let mut adv = (&grouped - &mean) * &okf;
    if spec.normalize_std {
        let var = adv
            .square()
            .sum_dim_intlist([1i64].as_slice(), true, Kind::Double)
            / (&count - 1.0).clamp_min(1.0);
        adv /= var.sqrt() + spec.eps;
    }
    Ok(adv.reshape([n]).to_kind(kind))
}

/// [`group_advantages`] over borrowed views: reads `rewards`, writes the result into `out`.
///
/// # Safety
/// Both views must describe live memory for the duration of the call (see [`TensorView::as_tensor`]).
pub unsafe fn group_advantages_into(
    rewards: &TensorView,
    out: &TensorView,
    group_size: i64,
    normalize_std: bool,
    eps: f64,
) -> Result<()> {
    let spec = GroupAdvantageSpec {
        normalize_std,
        eps,
        ..GroupAdvantageSpec::new(group_size)
    };
    // SAFETY: forwarded from this function's contract.
    unsafe { shaped_group_advantages_into(rewards, None, out, &spec) }
}

/// [`shaped_group_advantages`] over borrowed views, written into `out`.
///
/// # Safety
/// Every view must describe live memory for the duration of the call (see [`TensorView::as_tensor`]).
pub unsafe fn shaped_group_advantages_into(
    rewards: &TensorView,
    valid: Option<&TensorView>,
    out: &TensorView,
    spec: &GroupAdvantageSpec,
) -> Result<()> {
    // SAFETY: forwarded from this function's contract.
    let (r, mut o) = unsafe { (rewards.as_tensor()?, out.as_tensor()?) };
    // SAFETY: as above.
    let v = unsafe { valid.map(|v| v.as_tensor()).transpose()? };
    if o.size() != r.size() {
        return Err(bad(
            &out.name,
            format!("shape {:?} differs from rewards {:?}", o.size(), r.size()),
        ));
    }
    let adv = shaped_group_advantages(&r, v.as_ref(), spec)?;
    o.f_copy_(&adv)?;
    Ok(())
}

/// Per-token advantages with gamma = lambda = 1: every valid token of a sequence gets the
/// sequence's advantage, masked tokens 0. `loss_mask` is `[B, T]` (rows are the sequences of
/// `seq_adv [B]`) or flat `[N]` with `seq_ids [N]` indexing `seq_adv`. With `normalize`, the
/// result is centred and divided by its unbiased std (+ `eps`) over all valid tokens.
/// Returns float32 of `loss_mask`'s shape.
pub fn token_advantages(
    seq_adv: &Tensor,
    loss_mask: &Tensor,
    seq_ids: Option<&Tensor>,
    normalize: bool,
    eps: f64,
) -> Result<Tensor> {
    if seq_adv.dim() != 1 {
        return Err(bad(
            "seq_adv",
            format!("expected a 1-D tensor, got shape {:?}", seq_adv.size()),
        ));
    }
    let b = seq_adv.size()[0];
    let per_token = match (loss_mask.dim(), seq_ids) {
        (2, None) => {
            if loss_mask.size()[0] != b {
                return Err(bad(
                    "loss_mask",
                    format!(
                        "has {} rows, seq_adv has {b} sequences",
                        loss_mask.size()[0]
                    ),
                ));
            }
            seq_adv
                .to_kind(Kind::Float)
                .unsqueeze(1)
                .expand_as(loss_mask)
        }
        (1, Some(ids)) => {
            if ids.size() != loss_mask.size() || ids.is_floating_point() {
                return Err(bad(
                    "seq_ids",
                    format!("expected integer ids of shape {:?}", loss_mask.size()),
                ));
            }
            let ids = ids.to_kind(Kind::Int64);
            if ids.numel() > 0 {
                let (lo, hi) = (ids.min().int64_value(&[]), ids.max().int64_value(&[]));
                if lo < 0 || hi >= b {
                    return Err(bad(
                        "seq_ids",
                        format!("ids must lie in 0..{b}, got {lo}..={hi}"),
                    ));
                }
            }
            seq_adv.to_kind(Kind::Float).index_select(0, &ids)
        }
        _ => {
            return Err(bad(
                "loss_mask",
                format!(
                    "expected [B, T], or [N] with seq_ids, got shape {:?}",
                    loss_mask.size()
                ),
            ))
        }
    };
    let valid = loss_mask.ne(0);
    let zeros = per_token.zeros_like();
    let adv = per_token.where_self(&valid, &zeros);
    if !normalize {
        return Ok(adv);
    }
    let n = valid.sum(Kind::Float);
    let mean = adv.sum(Kind::Float) / n.clamp_min(1.0);
    let centred = (&adv - &mean).where_self(&valid, &zeros);
    let std = (centred.square().sum(Kind::Float) / (&n - 1.0).clamp_min(1.0)).sqrt();
    Ok(centred / (std + eps))
}

/// [`token_advantages`] over borrowed views, written into `out` (shape of `loss_mask`).
///
/// # Safety
/// Every view must describe live memory for the duration of the call (see [`TensorView::as_tensor`]).
pub unsafe fn token_advantages_into(
    seq_adv: &TensorView,
    loss_mask: &TensorView,
    seq_ids: Option<&TensorView>,
    out: &TensorView,
    normalize: bool,
    eps: f64,
) -> Result<()> {
    // SAFETY: forwarded from this function's contract.
    let (a, m, mut o) = unsafe {
        (
            seq_adv.as_tensor()?,
            loss_mask.as_tensor()?,
            out.as_tensor()?,
        )
    };
    // SAFETY: as above.
    let ids = unsafe { seq_ids.map(|v| v.as_tensor()).transpose()? };
    if o.size() != m.size() {
        return Err(bad(
            &out.name,
            format!("shape {:?} differs from loss_mask {:?}", o.size(), m.size()),
        ));
    }
    let adv = token_advantages(&a, &m, ids.as_ref(), normalize, eps)?;
    o.f_copy_(&adv)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn centres_each_group() {
        let r = Tensor::from_slice(&[1.0f32, 0.0, 0.5, 0.5, 2.0, 4.0]);
        let a = group_advantages(&r, 2, false, 1e-6).unwrap();
        let got: Vec<f32> = Vec::try_from(&a).unwrap();
        assert_eq!(got, vec![0.5, -0.5, 0.0, 0.0, -1.0, 1.0]);
    }

    #[test]
    fn std_normalisation_gives_unit_spread() {
        let r = Tensor::from_slice(&[1.0f64, 2.0, 3.0, 10.0, 20.0, 30.0]);
        let a = group_advantages(&r, 3, true, 0.0).unwrap();
        let got: Vec<f64> = Vec::try_from(&a).unwrap();
        for (g, w) in got.iter().zip([-1.0, 0.0, 1.0, -1.0, 0.0, 1.0]) {
            assert!((g - w).abs() < 1e-9, "{got:?}");
        }
    }

    #[test]
    fn rejects_ragged_groups() {
        let r = Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
        let err = group_advantages(&r, 2, false, 1e-6)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a multiple"), "{err}");
    }

    #[test]
    fn writes_through_borrowed_views() {
        let r = Tensor::from_slice(&[3.0f32, 1.0]);
        let o = Tensor::zeros([2], (Kind::Float, tch::Device::Cpu));
        let view = |t: &Tensor, name: &str| TensorView {
            name: name.into(),
            data_ptr: t.data_ptr() as usize,
            shape: t.size(),
            strides: t.stride(),
            dtype: "float32".into(),
            device: crate::DeviceSpec::Cpu,
        };
        unsafe { group_advantages_into(&view(&r, "rewards"), &view(&o, "out"), 2, false, 1e-6) }
            .unwrap();
        let got: Vec<f32> = Vec::try_from(&o).unwrap();
        assert_eq!(got, vec![1.0, -1.0]);
    }

    #[test]
    fn shaping_and_empty_sequences() {
        let r = Tensor::from_slice(&[1.0f32, 3.0, 100.0, 2.0, 7.0, 9.0]);
        let valid = Tensor::from_slice(&[true, true, false, false, false, true]);
        let spec = GroupAdvantageSpec {
            reward_bias: 1.0,
            reward_scale: 0.5,
            reward_clip: Some(1.5),
            ..GroupAdvantageSpec::new(3)
        };
        let a = shaped_group_advantages(&r, Some(&valid), &spec).unwrap();
        let got: Vec<f32> = Vec::try_from(&a).unwrap();
        // shaped: [1.0, 1.5, 1.5 (invalid)], [.., .., 1.5]; group 2 has one valid member.
        assert_eq!(got, vec![-0.25, 0.25, 0.0, 0.0, 0.0, 0.0]);
        let spec = GroupAdvantageSpec {
            normalize_std: true,
            ..spec
        };
        let a = shaped_group_advantages(&r, Some(&valid.zeros_like()), &spec).unwrap();
        assert_eq!(a.abs().sum(Kind::Float).double_value(&[]), 0.0);
    }

    #[test]
    fn token_advantages_broadcast_and_normalise() {
        let adv = Tensor::from_slice(&[2.0f32, -1.0]);
        let mask = Tensor::from_slice(&[1i64, 1, 0, 0, 1, 1]).view([2, 3]);
        let t = token_advantages(&adv, &mask, None, false, 0.0).unwrap();
        let got: Vec<f32> = Vec::try_from(t.reshape([-1])).unwrap();
        assert_eq!(got, vec![2.0, 2.0, 0.0, 0.0, -1.0, -1.0]);
        let t = token_advantages(&adv, &mask, None, true, 0.0).unwrap();
        let got: Vec<f32> = Vec::try_from(t.reshape([-1])).unwrap();
        // valid values [2, 2, -1, -1]: mean 0.5, unbiased std sqrt(3)
        let s = 3f32.sqrt();
        for (g, w) in got
            .iter()
            .zip([1.5 / s, 1.5 / s, 0.0, 0.0, -1.5 / s, -1.5 / s])
        {
            assert!((g - w).abs() < 1e-6, "{got:?}");
        }
        let flat = token_advantages(
            &adv,
            &Tensor::from_slice(&[1i64, 0, 1]),
            Some(&Tensor::from_slice(&[1i64, 0, 0])),
            false,
            0.0,
        )
        .unwrap();
        assert_eq!(Vec::<f32>::try_from(&flat).unwrap(), vec![-1.0, 0.0, 2.0]);
    }
}
