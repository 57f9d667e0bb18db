//! Tests of the kernels against straightforward tch autograd references.

use super::*;
use tch::{nn, nn::Module, Device, Kind, Tensor};

fn randn(shape: &[i64]) -> Tensor {
    Tensor::randn(shape, (Kind::Float, Device::Cpu))
}

fn close(a: &Tensor, b: &Tensor, tol: f64) {
    let diff = (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[]);
    assert!(diff < tol, "max abs diff {diff}");
}

struct Batch {
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    adv: Tensor,
    mask: Tensor,
    behav: Tensor,
    prox: Tensor,
}

fn batch(n: i64, h: i64, v: i64) -> Batch {
    tch::manual_seed(7);
    Batch {
        hidden: randn(&[n, h]),
        weight: randn(&[v, h]) * 0.5,
        targets: Tensor::randint(v, [n], (Kind::Int64, Device::Cpu)),
        adv: randn(&[n]),
        mask: Tensor::rand([n], (Kind::Float, Device::Cpu)).gt(0.3),
        behav: -Tensor::rand([n], (Kind::Float, Device::Cpu)) * 3.0 - 0.5,
        prox: -Tensor::rand([n], (Kind::Float, Device::Cpu)) * 3.0 - 0.5,
    }
}

impl Batch {
    fn inputs(&self) -> TokenInputs<'_> {
        TokenInputs {
            advantages: &self.adv,
            loss_mask: &self.mask,
            behav_logp: &self.behav,
            prox_logp: Some(&self.prox),
            ref_logp: None,
            seq_ids: None,
        }
    }
}

/// Full-logits reference: decoupled PPO, token-mean, mask cap, entropy bonus.
fn reference_loss(b: &Batch, hidden: &Tensor, weight: &Tensor, t: f64, spec: &LossSpec) -> Tensor {
    let logits = hidden.matmul(&weight.tr()) / t;
    let lsm = logits.log_softmax(1, Kind::Float);
    let logp = lsm.gather(1, &b.targets.unsqueeze(1), false).squeeze_dim(1);
    let ent = -(lsm.exp() * &lsm).sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
    let ratio = (&logp - &b.prox).exp();
    let s1 = -&b.adv * &ratio;
    let s2 = -&b.adv * ratio.clamp(1.0 - spec.eps_clip, 1.0 + spec.eps_high());
    let l = s1.maximum(&s2);
    let w = (&b.prox - &b.behav).exp();
    let cap = spec.behav_weight_cap.unwrap();
    let valid = b.mask.logical_and(&w.le(cap)).to_kind(Kind::Float);
    let maskf = b.mask.to_kind(Kind::Float);
    let n = maskf.sum(Kind::Float);
    (l * w * valid - ent * spec.entropy_coef * maskf).sum(Kind::Float) / n
}

#[test]
fn token_logprobs_match_log_softmax() {
    let b = batch(13, 8, 37);
    for (t, chunk) in [(1.0, 4), (0.7, 5), (1.3, 100)] {
        let head = LmHead {
            hidden: &b.hidden,
            weight: &b.weight,
            targets: &b.targets,
            temperature: t,
        };
        let (lp, ent) = token_logprobs(&head, Some(chunk), true).unwrap();
        let lsm = (b.hidden.matmul(&b.weight.tr()) / t).log_softmax(1, Kind::Float);
        close(
            &lp,
            &lsm.gather(1, &b.targets.unsqueeze(1), false).squeeze_dim(1),
            1e-5,
        );
        let want = -(lsm.exp() * &lsm).sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
        close(&ent.unwrap(), &want, 1e-5);
    }
}

#[test]
fn fused_loss_and_grads_match_autograd() {
    let b = batch(11, 6, 29);
    let spec = LossSpec {
        entropy_coef: 0.01,
        behav_weight_cap: Some(2.0),
        ..LossSpec::default()
    };
    let head = LmHead {
        hidden: &b.hidden,
        weight: &b.weight,
        targets: &b.targets,
        temperature: 0.9,
    };
    let out = fused_linear_loss(&head, &b.inputs(), &spec, Some(4)).unwrap();
    let h = b.hidden.detach().set_requires_grad(true);
    let w = b.weight.detach().set_requires_grad(true);
    let want = reference_loss(&b, &h, &w, 0.9, &spec);
    want.backward();
    close(&out.loss, &want, 1e-5);
    close(&out.grad_hidden, &h.grad(), 1e-5);
    close(&out.grad_weight, &w.grad(), 1e-5);
    let diag = out.diagnostics.to_vec().unwrap();
    let n_valid = b
        .mask
        .to_kind(Kind::Float)
        .sum(Kind::Float)
        .double_value(&[]);
    assert_eq!(diag[0], ("n_valid_tokens", n_valid));
}

#[test]
fn ppo_loss_gradient_matches_autograd() {
    let b = batch(20, 2, 3);
    let spec = LossSpec {
        dual_clip: Some(3.0),
        eps_clip_high: Some(0.28),
        ..LossSpec::default()
    };
    let logp = (&b.prox + randn(&[20]) * 0.3).set_requires_grad(true);
    let out = ppo_loss(&logp.detach(), None, &b.inputs(), &spec).unwrap();
    let ratio = (&logp - &b.prox).exp();
    let s1 = -&b.adv * &ratio;
    let l = s1.maximum(&(-&b.adv * ratio.clamp(0.8, 1.28)));
    let l = l.minimum(&(-&b.adv * 3.0)).where_self(&b.adv.lt(0.0), &l);
    let w = (&b.prox - &b.behav).exp();
    let valid = b.mask.logical_and(&w.le(5.0)).to_kind(Kind::Float);
    let want = (l * w * valid).sum(Kind::Float) / b.mask.to_kind(Kind::Float).sum(Kind::Float);
    want.backward();
    close(&out.loss, &want, 1e-6);
    close(&out.grad_logp, &logp.grad(), 1e-6);
}

#[test]
fn autograd_bridge_trains_a_small_model() {
    let vs = nn::VarStore::new(Device::Cpu);
    let root = vs.root();
    let body = nn::linear(&root / "body", 5, 6, Default::default());
    let lm = root.var(
        "lm_head",
        &[17, 6],
        nn::Init::Randn {
            mean: 0.0,
            stdev: 0.5,
        },
    );
    let b = batch(9, 6, 17);
    let x = randn(&[9, 5]);
    let spec = LossSpec::default();
    let run = |fused: bool| {
        vs.variables().values().for_each(|v| {
            v.grad()
                .defined()
                .then(|| v.grad().zero_())
                .map(drop)
                .unwrap_or(())
        });
        let hidden = body.forward(&x).tanh();
        let loss = if fused {
            fused_linear_loss_autograd(&hidden, &lm, &b.targets, 1.0, &b.inputs(), &spec, Some(4))
                .unwrap()
                .0
        } else {
            reference_loss(&b, &hidden, &lm, 1.0, &spec)
        };
        loss.backward();
        let grads: Vec<Tensor> = [&body.ws, &lm].iter().map(|v| v.grad().copy()).collect();
        (loss.detach(), grads)
    };
    let (l_ref, g_ref) = run(false);
    let (l_fused, g_fused) = run(true);
    close(&l_fused, &l_ref, 1e-5);
    for (a, b) in g_fused.iter().zip(&g_ref) {
        assert!(b.abs().sum(Kind::Float).double_value(&[]) > 0.0);
        close(a, b, 1e-5);
    }
}

#[test]
fn empty_and_fully_masked_batches_give_zero_loss() {
    for (n, masked) in [(0, false), (6, true)] {
        let mut b = batch(n, 4, 9);
        if masked {
            b.mask = b.mask.zeros_like();
        }
        let head = LmHead {
            hidden: &b.hidden,
            weight: &b.weight,
            targets: &b.targets,
            temperature: 1.0,
        };
        let out = fused_linear_loss(&head, &b.inputs(), &LossSpec::default(), Some(4)).unwrap();
        assert_eq!(out.loss.double_value(&[]), 0.0);
        assert_eq!(
            out.grad_weight.abs().sum(Kind::Float).double_value(&[]),
            0.0
        );
        assert_eq!(out.grad_hidden.size(), [n, 4]);
        let diag = out.diagnostics.to_vec().unwrap();
        assert!(diag.iter().take(7).all(|(_, v)| v.is_finite()), "{diag:?}");
    }
}

#[test]
fn bad_inputs_are_named() {
    let b = batch(5, 4, 9);
    let short = Tensor::randint(9, [4], (Kind::Int64, Device::Cpu));
    let head = LmHead {
        hidden: &b.hidden,
        weight: &b.weight,
        targets: &short,
        temperature: 1.0,
    };
    let err = token_logprobs(&head, None, false).unwrap_err().to_string();
    assert!(err.contains("targets"), "{err}");
    let w = randn(&[9, 3]);
    let head = LmHead {
        hidden: &b.hidden,
        weight: &w,
        targets: &b.targets,
        temperature: 1.0,
    };
    let err = token_logprobs(&head, None, false).unwrap_err().to_string();
    assert!(err.contains("weight"), "{err}");
    let adv = randn(&[4]);
    let inputs = TokenInputs {
        advantages: &adv,
        ..b.inputs()
    };
    let err = ppo_loss(&b.prox, None, &inputs, &LossSpec::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("loss_mask"), "{err}");
}

#[test]
fn default_chunk_fits_the_budget() {
    let c = chunk_tokens_for_budget(151_936, Kind::Float, DEFAULT_CHUNK_BUDGET_BYTES);
    assert!(
        c * 151_936 * 8 <= DEFAULT_CHUNK_BUDGET_BYTES && c >= 8,
        "{c}"
    );
    assert!(chunk_tokens_for_budget(151_936, Kind::BFloat16, DEFAULT_CHUNK_BUDGET_BYTES) < c);
}
