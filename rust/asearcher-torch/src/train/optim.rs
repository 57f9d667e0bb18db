//! The AdamW optimizer (decoupled weight decay, bias correction) over named parameters, global
//! gradient-norm clipping, and optimizer state as named tensors for checkpoints.
//!
//! Moments are kept in fp32 whatever the parameter dtype; the update is computed in fp32 and copied
//! back. With [`AdamWConfig::master_weights`] (the default) a low-precision parameter (bf16, f16)
//! also gets an fp32 master copy that accumulates the updates, so steps smaller than the
//! parameter's rounding grain are not lost.

use crate::{Result, TorchError};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use tch::{Kind, Tensor};

/// Hyper-parameters of [`AdamW`] (the learning rate is given per step).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AdamWConfig {
    /// Decay rate of the first moment, in [0, 1). Default 0.9.
    pub beta1: f64,
    /// Decay rate of the second moment, in [0, 1). Default 0.999.
    pub beta2: f64,
    /// Added to the denominator, > 0. Default 1e-8.
    pub eps: f64,
    /// Decoupled weight decay (`p *= 1 - lr * weight_decay`), >= 0. Default 0.01.
    pub weight_decay: f64,
    /// Keep an fp32 master copy of parameters that are not fp32. Default true.
    pub master_weights: bool,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            master_weights: true,
        }
    }
}

impl AdamWConfig {
    /// Checks every field; the error names the first invalid one.
    pub fn validate(&self) -> Result<()> {
        for (name, beta) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&beta) {
                return Err(TorchError::config(
                    name,
                    format!("must lie in [0, 1), got {beta}"),
                ));
            }
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(TorchError::config(
                "eps",
                format!("must be finite and > 0, got {}", self.eps),
            ));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(TorchError::config(
                "weight_decay",
                format!("must be finite and >= 0, got {}", self.weight_decay),
            ));
        }
        Ok(())
    }
}

/// The usual weight-decay exclusion: biases and normalisation weights (names ending in `.bias` or
/// containing `norm`, e.g. `model.layers.0.input_layernorm.weight`, `...self_attn.q_norm.weight`).
pub fn no_decay_for_norms_and_biases(name: &str) -> bool {
    name.ends_with(".bias") || name.contains("norm")
}

/// One parameter and its optimizer state.
struct Slot {
    name: String,
    param: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    master: Option<Tensor>,
    step: i64,
    decay: bool,
}

/// AdamW over named parameters that share storage with a model (e.g. `named_parameters()`).
pub struct AdamW {
    config: AdamWConfig,
    slots: Vec<Slot>,
}

impl AdamW {
    /// An optimizer over `params` (floating point, `requires_grad`, unique names). Parameters for
    /// which `no_decay(name)` is true get no weight decay.
    pub fn new(
        params: &[(String, Tensor)],
        config: AdamWConfig,
        no_decay: impl Fn(&str) -> bool,
    ) -> Result<Self> {
        config.validate()?;
        let mut seen = HashSet::new();
        let mut slots = Vec::with_capacity(params.len());
        for (name, param) in params {
            check_param(name, param, &mut seen)?;
            let zeros = || param.f_zeros_like()?.f_to_kind(Kind::Float);
            let master = if config.master_weights && param.kind() != Kind::Float {
                Some(param.f_detach()?.f_to_kind(Kind::Float)?.f_contiguous()?)
            } else {
                None
            };
            slots.push(Slot {
                name: name.clone(),
                param: param.shallow_clone(),
                exp_avg: zeros()?,
                exp_avg_sq: zeros()?,
                master,
                step: 0,
                decay: !no_decay(name),
            });
        }
        Ok(AdamW { config, slots })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// Whether parameter `name` is weight-decayed (`None` if unknown).
    pub fn decays(&self, name: &str) -> Option<bool> {
        self.slots.iter().find(|s| s.name == name).map(|s| s.decay)
    }

    /// The largest per-parameter step count (parameters without gradients do not advance).
    pub fn steps_taken(&self) -> i64 {
        self.slots.iter().map(|s| s.step).max().unwrap_or(0)
    }

    /// One AdamW update with learning rate `lr` of every parameter that has a gradient.
    pub fn step(&mut self, lr: f64) -> Result<()> {
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(TorchError::config(
                "lr",
                format!("must be finite and >= 0, got {lr}"),
            ));
        }
        let config = &self.config;
        tch::no_grad(|| {
            self.slots
                .iter_mut()
                .try_for_each(|slot| slot.update(lr, config))
        })
    }

    /// Zeroes every parameter's gradient (gradients that were never created stay absent).
    pub fn zero_grad(&mut self) {
        for slot in &mut self.slots {
            slot.param.zero_grad();
        }
    }

    /// Re-reads the fp32 master copies from the parameters; call after replacing the weights
    /// outside the optimizer (e.g. loading a checkpoint into the model after building it).
    pub fn sync_master_from_params(&mut self) -> Result<()> {
        tch::no_grad(|| {
            for slot in &mut self.slots {
                if let Some(master) = &mut slot.master {
                    master.f_copy_(&slot.param)?;
                }
            }
            Ok(())
        })
    }

    /// The state as named tensors (shared, not copied): `exp_avg.<param>`, `exp_avg_sq.<param>`,
    /// `step.<param>` (int64, shape [1]) and, with master weights, `master.<param>`.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(self.slots.len() * 4);
        for s in &self.slots {
            out.push((format!("exp_avg.{}", s.name), s.exp_avg.shallow_clone()));
            out.push((
                format!("exp_avg_sq.{}", s.name),
                s.exp_avg_sq.shallow_clone(),
            ));
            out.push((format!("step.{}", s.name), Tensor::from_slice(&[s.step])));
            if let Some(master) = &s.master {
                out.push((format!("master.{}", s.name), master.shallow_clone()));
            }
        }
        out
    }

    /// Restores a state produced by [`AdamW::state_tensors`] (any device; copied in). Every
    /// expected tensor must be present with the right shape and no unknown tensor may appear;
    /// errors name the tensor.
    pub fn load_state_tensors(&mut self, state: &[(String, Tensor)]) -> Result<()> {
        let mut by_name: HashMap<&str, &Tensor> = HashMap::new();
        for (name, t) in state {
            by_name.insert(name.as_str(), t);
        }
        let expected = self.state_tensors();
        for (name, _) in state {
            if !expected.iter().any(|(n, _)| n == name) {
                return Err(bad(
                    name,
                    "unexpected optimizer state tensor (unknown parameter?)",
                ));
            }
        }
        tch::no_grad(|| {
            for (name, mut dst) in expected {
                let src = by_name
                    .get(name.as_str())
                    .ok_or_else(|| bad(&name, "missing from the optimizer state"))?;
                if src.size() != dst.size() {
                    let msg = format!("shape {:?}, expected {:?}", src.size(), dst.size());
                    return Err(bad(&name, msg));
                }
                dst.f_copy_(src)?;
            }
            Ok(())
        })?;
        for slot in &mut self.slots {
            let step = by_name[format!("step.{}", slot.name).as_str()];
            slot.step = step.f_int64_value(&[0])?;
        }
        Ok(())
    }
}

impl Slot {
    /// The AdamW update of libtorch's `torch::optim::AdamW`, in fp32.
    fn update(&mut self, lr: f64, c: &AdamWConfig) -> Result<()> {
        let grad = self.param.grad();
        if !grad.defined() {
            return Ok(());
        }
        self.step += 1;
        let g = grad.f_to_kind(Kind::Float)?;
        let in_place = self.master.is_none() && self.param.kind() == Kind::Float;
        let mut p = match &self.master {
            Some(master) => master.shallow_clone(),
            None if in_place => self.param.shallow_clone(),
            None => self.param.f_to_kind(Kind::Float)?,
        };
        if self.decay && c.weight_decay != 0.0 {
            let _ = p.f_mul_scalar_(1.0 - lr * c.weight_decay)?;
        }
        let _ = self.exp_avg.f_mul_scalar_(c.beta1)?;
        let _ = self.exp_avg.f_add_(&g.f_mul_scalar(1.0 - c.beta1)?)?;
        let _ = self.exp_avg_sq.f_mul_scalar_(c.beta2)?;
        let _ = self
            .exp_avg_sq
            .f_add_(&g.f_mul(&g)?.f_mul_scalar(1.0 - c.beta2)?)?;
        let bias1 = 1.0 - c.beta1.powi(self.step as i32);
        let bias2 = 1.0 - c.beta2.powi(self.step as i32);
        let denom = self
            .exp_avg_sq
            .f_sqrt()?
            .f_div_scalar(bias2.sqrt())?
            .f_add_scalar(c.eps)?;
        let update = self.exp_avg.f_div(&denom)?.f_mul_scalar(lr / bias1)?;
        let _ = p.f_sub_(&update)?;
        if !in_place {
            self.param.f_copy_(&p)?;
        }
        Ok(())
    }
}

/// Scales all gradients of `params` so that their global L2 norm is at most `max_norm`, and returns
/// the norm before clipping (computed in fp32 per tensor, summed in f64).
///
/// A non-finite norm (NaN or inf in some gradient) is returned as is, with a warning, and the
/// gradients are left untouched: the caller decides (typically by skipping the step).
/// Parameters without a gradient are ignored; with none at all the norm is 0.
pub fn clip_grad_norm(params: &[(String, Tensor)], max_norm: f64) -> Result<f64> {
    if !(max_norm.is_finite() && max_norm > 0.0) {
        return Err(TorchError::config(
            "max_norm",
            format!("must be finite and > 0, got {max_norm}"),
        ));
    }
    tch::no_grad(|| {
        let grads: Vec<Tensor> = params
            .iter()
            .map(|(_, p)| p.grad())
            .filter(Tensor::defined)
            .collect();
        let total = global_norm(&grads)?;
        if !total.is_finite() {
            tracing::warn!(
                total,
                "gradient norm is not finite; gradients left unclipped"
            );
            return Ok(total);
        }
        let coef = max_norm / (total + 1e-6);
        if coef < 1.0 {
            for mut g in grads {
                let _ = g.f_mul_scalar_(coef)?;
            }
        }
        Ok(total)
    })
}

/// The L2 norm of all `tensors` together.
fn global_norm(tensors: &[Tensor]) -> Result<f64> {
    let mut sum_sq = 0.0f64;
    for t in tensors {
        let norm = t
            .f_reshape([-1])?
            .f_linalg_norm(2.0, None::<&[i64]>, false, Kind::Float)?
            .f_double_value(&[])?;
        sum_sq += norm * norm;
    }
    Ok(sum_sq.sqrt())
}

fn check_param(name: &str, param: &Tensor, seen: &mut HashSet<String>) -> Result<()> {
    if !seen.insert(name.to_string()) {
        return Err(bad(name, "parameter listed twice"));
    }
    if !param.is_floating_point() {
        return Err(bad(
            name,
            format!("not floating point ({:?})", param.kind()),
        ));
    }
    if !param.requires_grad() {
        return Err(bad(name, "does not require grad"));
    }
    Ok(())
}

fn bad(name: &str, msg: impl Into<String>) -> TorchError {
    TorchError::BadTensor {
        name: name.to_string(),
        msg: msg.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::OptimizerConfig;
    use tch::Device;

    fn leaf(t: &Tensor) -> Tensor {
        t.detach().copy().set_requires_grad(true)
    }

    /// Gives every parameter the gradient `g` by back-propagating `sum(p * g)`.
    fn set_grads(params: &[Tensor], grads: &[Tensor]) {
        let loss = params
            .iter()
            .zip(grads)
            .map(|(p, g)| (p * g.to_kind(p.kind())).sum(Kind::Float))
            .fold(Tensor::zeros([], (Kind::Float, Device::Cpu)), |a, b| a + b);
        loss.backward();
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
            .abs()
            .max()
            .double_value(&[])
    }

    #[test]
    fn matches_libtorch_adamw_with_weight_decay_exclusion() {
        tch::manual_seed(0);
        let w0 = Tensor::randn([4, 3], (Kind::Float, Device::Cpu));
        let b0 = Tensor::randn([3], (Kind::Float, Device::Cpu));
        let (wd, betas, eps) = (0.1, (0.8, 0.95), 1e-6);

        let vs = tch::nn::VarStore::new(Device::Cpu);
        let rw = vs.root().var_copy("weight", &w0);
        let rb = vs.root().set_group(1).var_copy("bias", &b0);
        let mut reference = tch::nn::AdamW {
            beta1: betas.0,
            beta2: betas.1,
            wd,
            eps,
            amsgrad: false,
        }
        .build(&vs, 1e-2)
        .unwrap();
        reference.set_weight_decay_group(1, 0.0);

        let params = vec![
            ("layer.weight".to_string(), leaf(&w0)),
            ("layer.norm.bias".to_string(), leaf(&b0)),
        ];
        let config = AdamWConfig {
            beta1: betas.0,
            beta2: betas.1,
            eps,
            weight_decay: wd,
            master_weights: true,
        };
        let mut ours = AdamW::new(&params, config, no_decay_for_norms_and_biases).unwrap();
        assert_eq!(ours.decays("layer.weight"), Some(true));
        assert_eq!(ours.decays("layer.norm.bias"), Some(false));

        let mine: Vec<Tensor> = params.iter().map(|(_, p)| p.shallow_clone()).collect();
        for step in 0..6 {
            let lr = 1e-2 * (1.0 + step as f64) / 3.0;
            let grads = [
                Tensor::randn([4, 3], (Kind::Float, Device::Cpu)),
                Tensor::randn([3], (Kind::Float, Device::Cpu)),
            ];
            reference.zero_grad();
            set_grads(&[rw.shallow_clone(), rb.shallow_clone()], &grads);
            reference.set_lr(lr);
            reference.step();

            ours.zero_grad();
            set_grads(&mine, &grads);
            ours.step(lr).unwrap();
            assert!(max_diff(&mine[0], &rw) < 1e-6, "weight at step {step}");
            assert!(max_diff(&mine[1], &rb) < 1e-6, "bias at step {step}");
        }
        assert!(max_diff(&mine[0], &w0) > 1e-3, "parameters moved");
        assert_eq!(ours.steps_taken(), 6);
    }

    #[test]
    fn bf16_master_weights_keep_small_updates() {
        let ones = Tensor::ones([8], (Kind::Float, Device::Cpu));
        let run = |kind: Kind, master: bool| {
            let p = leaf(&ones.to_kind(kind));
            let params = vec![("w".to_string(), p.shallow_clone())];
            let config = AdamWConfig {
                weight_decay: 0.0,
                master_weights: master,
                ..Default::default()
            };
            let mut opt = AdamW::new(&params, config, |_| false).unwrap();
            for _ in 0..100 {
                opt.zero_grad();
                set_grads(&[p.shallow_clone()], &[ones.shallow_clone()]);
                opt.step(1e-4).unwrap();
            }
            let master = opt
                .state_tensors()
                .into_iter()
                .find(|(n, _)| n == "master.w")
                .map(|(_, t)| t);
            (p, master)
        };
        let (fp32, _) = run(Kind::Float, true);
        let (bf16, master) = run(Kind::BFloat16, true);
        let master = master.expect("bf16 parameter has a master copy");
        assert!(
            max_diff(&master, &fp32) < 1e-6,
            "master follows the fp32 run"
        );
        assert!(max_diff(&bf16, &fp32.to_kind(Kind::BFloat16)) == 0.0);
        assert!(max_diff(&bf16, &ones) > 5e-3, "bf16 parameter moved");
        let (no_master, none) = run(Kind::BFloat16, false);
        assert!(none.is_none());
        assert_eq!(
            max_diff(&no_master, &ones),
            0.0,
            "updates below bf16 grain are lost"
        );
    }

    #[test]
    fn state_round_trip_continues_identically() {
        tch::manual_seed(1);
        let init = Tensor::randn([5, 2], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
        let grads: Vec<Tensor> = (0..5)
            .map(|_| Tensor::randn([5, 2], (Kind::Float, Device::Cpu)))
            .collect();
        let make = |p: &Tensor| {
            let params = vec![("w".to_string(), p.shallow_clone())];
            AdamW::new(&params, AdamWConfig::default(), |_| false).unwrap()
        };
        let (a, b) = (leaf(&init), leaf(&init));
        let mut opt_a = make(&a);
        let mut opt_b = make(&b);
        for g in &grads[..3] {
            for (opt, p) in [(&mut opt_a, &a), (&mut opt_b, &b)] {
                opt.zero_grad();
                set_grads(&[p.shallow_clone()], &[g.shallow_clone()]);
                opt.step(1e-3).unwrap();
            }
        }
        // Resume: a fresh parameter + optimizer restored from the saved state.
        let saved: Vec<(String, Tensor)> = opt_b
            .state_tensors()
            .into_iter()
            .map(|(n, t)| (n, t.copy()))
            .collect();
        let c = leaf(&b);
        let mut opt_c = make(&c);
        opt_c.load_state_tensors(&saved).unwrap();
        assert_eq!(opt_c.steps_taken(), 3);
        for g in &grads[3..] {
            for (opt, p) in [(&mut opt_a, &a), (&mut opt_c, &c)] {
                opt.zero_grad();
                set_grads(&[p.shallow_clone()], &[g.shallow_clone()]);
                opt.step(1e-3).unwrap();
            }
        }
        assert_eq!(max_diff(&a, &c), 0.0);
    }

    #[test]
    fn load_state_rejects_missing_unknown_and_misshaped() {
        let p = leaf(&Tensor::zeros([3], (Kind::Float, Device::Cpu)));
        let params = vec![("w".to_string(), p)];
        let mut opt = AdamW::new(&params, AdamWConfig::default(), |_| false).unwrap();
        let full = opt.state_tensors();
        let missing: Vec<_> = full
            .iter()
            .filter(|(n, _)| n != "exp_avg_sq.w")
            .map(|(n, t)| (n.clone(), t.copy()))
            .collect();
        let err = opt.load_state_tensors(&missing).unwrap_err().to_string();
        assert!(
            err.contains("exp_avg_sq.w") && err.contains("missing"),
            "{err}"
        );
        let mut unknown: Vec<_> = full.iter().map(|(n, t)| (n.clone(), t.copy())).collect();
        unknown.push((
            "exp_avg.v".into(),
            Tensor::zeros([3], (Kind::Float, Device::Cpu)),
        ));
        let err = opt.load_state_tensors(&unknown).unwrap_err().to_string();
        assert!(err.contains("exp_avg.v"), "{err}");
        let mut shaped: Vec<_> = full.iter().map(|(n, t)| (n.clone(), t.copy())).collect();
        shaped[0].1 = Tensor::zeros([4], (Kind::Float, Device::Cpu));
        let err = opt.load_state_tensors(&shaped).unwrap_err().to_string();
        assert!(err.contains("exp_avg.w") && err.contains("shape"), "{err}");
    }

    #[test]
    fn clip_grad_norm_matches_direct_computation() {
        tch::manual_seed(2);
        let shapes: [&[i64]; 3] = [&[4, 5], &[7], &[2, 3, 2]];
        let params: Vec<(String, Tensor)> = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let p = leaf(&Tensor::zeros(*s, (Kind::Float, Device::Cpu)));
                (format!("p{i}"), p)
            })
            .collect();
        let grads: Vec<Tensor> = shapes
            .iter()
            .map(|s| Tensor::randn(*s, (Kind::Float, Device::Cpu)))
            .collect();
        let tensors: Vec<Tensor> = params.iter().map(|(_, p)| p.shallow_clone()).collect();
        set_grads(&tensors, &grads);
        let expected = grads
            .iter()
            .map(|g| {
                g.to_kind(Kind::Double)
                    .square()
                    .sum(Kind::Double)
                    .double_value(&[])
            })
            .sum::<f64>()
            .sqrt();
        // Above the norm: nothing changes.
        let norm = clip_grad_norm(&params, expected * 2.0).unwrap();
        assert!((norm - expected).abs() < 1e-5 * expected);
        assert!(max_diff(&tensors[0].grad(), &grads[0]) == 0.0);
        // Below: the grads are scaled to the max norm.
        let norm = clip_grad_norm(&params, 1.0).unwrap();
        assert!((norm - expected).abs() < 1e-5 * expected);
        let after = clip_grad_norm(&params, 1e9).unwrap();
        assert!((after - 1.0).abs() < 1e-5, "clipped norm {after}");
        let scale = 1.0 / (expected + 1e-6);
        assert!(max_diff(&tensors[1].grad(), &(&grads[1] * scale)) < 1e-6);
        assert!(clip_grad_norm(&params, 0.0)
            .unwrap_err()
            .to_string()
            .contains("max_norm"));
    }

    #[test]
    fn clip_grad_norm_reports_non_finite_without_touching_grads() {
        let p = leaf(&Tensor::zeros([3], (Kind::Float, Device::Cpu)));
        let g = Tensor::from_slice(&[1.0f32, f32::INFINITY, 2.0]);
        set_grads(&[p.shallow_clone()], &[g.shallow_clone()]);
        let params = vec![("p".to_string(), p.shallow_clone())];
        assert!(clip_grad_norm(&params, 1.0).unwrap().is_infinite());
        assert_eq!(p.grad().double_value(&[0]), 1.0);
        assert_eq!(p.grad().double_value(&[2]), 2.0);
    }

    #[test]
    fn bad_params_and_config_are_named() {
        let frozen = Tensor::zeros([2], (Kind::Float, Device::Cpu));
        let err = AdamW::new(&[("frozen".into(), frozen)], AdamWConfig::default(), |_| {
            false
        })
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("frozen") && err.contains("grad"), "{err}");
        let p = leaf(&Tensor::zeros([2], (Kind::Float, Device::Cpu)));
        let twice = [("a".to_string(), p.shallow_clone()), ("a".to_string(), p)];
        let err = AdamW::new(&twice, AdamWConfig::default(), |_| false)
            .err()
            .unwrap();
        assert!(err.to_string().contains("twice"));
        let config = AdamWConfig {
            beta2: 1.0,
            ..Default::default()
        };
        assert!(config.validate().unwrap_err().to_string().contains("beta2"));
    }
}
