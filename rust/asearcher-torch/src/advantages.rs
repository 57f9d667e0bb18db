//! Group-relative advantages (GRPO): each reward minus its group's mean, optionally over its std.

use crate::{Result, TensorView, TorchError};
use tch::{Kind, Tensor};

/// Computes group-centred advantages of `rewards` (1-D, length a multiple of `group_size`).
/// With `normalize_std`, each group is also divided by its (unbiased) std plus `eps`.
/// The result has the dtype and device of the input.
pub fn group_advantages(
    rewards: &Tensor,
    group_size: i64,
    normalize_std: bool,
    eps: f64,
) -> Result<Tensor> {
    let bad = |msg: String| TorchError::BadTensor {
        name: "rewards".into(),
        msg,
    };
    if rewards.dim() != 1 {
        return Err(bad(format!(
            "expected a 1-D tensor, got shape {:?}",
            rewards.size()
        )));
    }
    if group_size <= 0 {
        return Err(bad(format!(
            "group_size must be positive, got {group_size}"
        )));
    }
    let n = rewards.size()[0];
    if n % group_size != 0 {
        return Err(bad(format!(
            "length {n} is not a multiple of group_size {group_size}"
        )));
    }
    let kind = rewards.kind();
    let grouped = rewards
        .to_kind(Kind::Float)
        .view([n / group_size, group_size]);
    let mean = grouped.f_mean_dim(Some(&[1i64][..]), true, Kind::Float)?;
    let mut adv = &grouped - &mean;
    if normalize_std {
        let std = if group_size > 1 {
            grouped.f_std_correction(Some(&[1i64][..]), 1, true)?
        } else {
            Tensor::zeros_like(&mean)
        };
        adv /= std + eps;
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
    // SAFETY: forwarded from this function's contract.
    let (r, mut o) = unsafe { (rewards.as_tensor()?, out.as_tensor()?) };
    if o.size() != r.size() {
        return Err(TorchError::BadTensor {
            name: out.name.clone(),
            msg: format!("shape {:?} differs from rewards {:?}", o.size(), r.size()),
        });
    }
    let adv = group_advantages(&r, group_size, normalize_std, eps)?;
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
}
