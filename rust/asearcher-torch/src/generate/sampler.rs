//! Token selection for one decode step of the whole batch: temperature, top-k and top-p on the
//! logits' device, with one uniform number per request drawn on the CPU from that request's own
//! seeded RNG (so a request's samples do not depend on what else is in the batch). Only the chosen
//! ids and their logprobs travel back to the CPU, in one transfer.

use crate::generate::api::SamplingParams;
use crate::{Result, TorchError};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha12Rng;
use tch::{Device, Kind, Tensor};

/// The sampling state of one request: its parameters and its random stream.
pub struct RequestSampler {
    rng: ChaCha12Rng,
    temperature: f64,
    top_p: f64,
    top_k: i64,
}

/// What the batched sampler needs to know about one row: how to cut, and the uniform draw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleRow {
    /// 0 means greedy.
    pub temperature: f64,
    pub top_p: f64,
    /// <= 0 means no cut.
    pub top_k: i64,
    /// Uniform in [0, 1); unused when greedy.
    pub u: f64,
}

impl SampleRow {
    fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    fn is_truncated(&self) -> bool {
        self.top_k > 0 || self.top_p < 1.0
    }
}

impl RequestSampler {
    /// Seeds from `params.seed`, or from the OS when there is none.
    pub fn new(params: &SamplingParams) -> Self {
        let seed = params.seed.unwrap_or_else(|| rand::rng().random());
        RequestSampler {
            rng: ChaCha12Rng::seed_from_u64(seed),
            temperature: params.temperature,
            top_p: params.top_p,
            top_k: params.top_k,
        }
    }

    /// The row for the next token; draws from the RNG only when sampling (greedy rows leave the
    /// stream untouched).
    pub fn next_row(&mut self) -> SampleRow {
        let u = if self.temperature == 0.0 {
            0.0
        } else {
            self.rng.random::<f64>()
        };
        SampleRow {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            u,
        }
    }
}

/// Chosen token ids and their logprobs (under the temperature-scaled full distribution; raw
/// log-softmax for greedy rows), one per row.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    pub tokens: Vec<u32>,
    pub logprobs: Vec<f32>,
}

/// Picks one token per row of `logits` ([rows, vocab], any float kind, any device).
pub fn sample(logits: &Tensor, rows: &[SampleRow]) -> Result<Sampled> {
    let (n, vocab) = logits_shape(logits, rows.len())?;
    let device = logits.device();
    let logits = logits.to_kind(Kind::Float);
    let temps: Vec<f32> = rows
        .iter()
        .map(|r| {
            if r.is_greedy() {
                1.0
            } else {
                r.temperature as f32
            }
        })
        .collect();
    let temps = Tensor::from_slice(&temps).to_device(device).unsqueeze(1);
    let logp = (&logits / temps).f_log_softmax(-1, Kind::Float)?;
    let mut chosen = Tensor::f_zeros([n], (Kind::Int64, device))?;

    let pick = |pred: &dyn Fn(&SampleRow) -> bool| -> Vec<i64> {
        (0..n).filter(|&i| pred(&rows[i as usize])).collect()
    };
    let greedy = pick(&|r| r.is_greedy());
    let plain = pick(&|r| !r.is_greedy() && !r.is_truncated());
    let truncated = pick(&|r| !r.is_greedy() && r.is_truncated());

    if !greedy.is_empty() {
        let idx = index_tensor(&greedy, device);
        let tok = logits.f_index_select(0, &idx)?.f_argmax(-1, false)?;
        let _ = chosen.f_index_copy_(0, &idx, &tok)?;
    }
    if !plain.is_empty() {
        let idx = index_tensor(&plain, device);
        let tok = sample_full(&logp.f_index_select(0, &idx)?, &select(rows, &plain), vocab)?;
        let _ = chosen.f_index_copy_(0, &idx, &tok)?;
    }
    if !truncated.is_empty() {
        let idx = index_tensor(&truncated, device);
        let sub = select(rows, &truncated);
        let tok = sample_truncated(&logp.f_index_select(0, &idx)?, &sub, vocab)?;
        let _ = chosen.f_index_copy_(0, &idx, &tok)?;
    }
    let lp = logp
        .f_gather(1, &chosen.unsqueeze(1), false)?
        .squeeze_dim(1);
    to_host(&chosen, &lp, n as usize)
}

fn logits_shape(logits: &Tensor, rows: usize) -> Result<(i64, i64)> {
    let size = logits.size();
    match size.as_slice() {
        [n, v] if *n == rows as i64 && *v > 0 => Ok((*n, *v)),
        _ => Err(TorchError::BadTensor {
            name: "logits".into(),
            msg: format!("expected shape [{rows}, vocab], got {size:?}"),
        }),
    }
}

fn index_tensor(idx: &[i64], device: Device) -> Tensor {
    Tensor::from_slice(idx).to_device(device)
}

fn select(rows: &[SampleRow], idx: &[i64]) -> Vec<SampleRow> {
    idx.iter().map(|&i| rows[i as usize]).collect()
}

/// Column of uniforms of `rows` on `device`, as [rows, 1].
fn uniforms(rows: &[SampleRow], device: Device) -> Tensor {
    let u: Vec<f64> = rows.iter().map(|r| r.u).collect();
    Tensor::from_slice(&u)
        .to_device(device)
        .to_kind(Kind::Float)
        .unsqueeze(1)
}

/// Inverse CDF over the unnormalised weights `w` [rows, k]: the first index whose cumulative
/// weight exceeds u * total, never past `last` ([rows, 1], the last index with weight).
fn inverse_cdf(w: &Tensor, rows: &[SampleRow], last: &Tensor) -> Result<Tensor> {
    let cdf = w.f_cumsum(-1, Kind::Float)?;
    let total = cdf.narrow(1, cdf.size()[1] - 1, 1);
    let x = uniforms(rows, w.device()) * total;
    let idx = x.f_searchsorted(&cdf, false, true, "right", None::<Tensor>)?;
    Ok(idx.f_minimum(last)?)
}

/// Samples from the whole temperature-scaled distribution (no cut).
fn sample_full(logp: &Tensor, rows: &[SampleRow], vocab: i64) -> Result<Tensor> {
    let probs = logp.exp();
    let last = Tensor::full(
        [rows.len() as i64, 1],
        vocab - 1,
        (Kind::Int64, logp.device()),
    );
    Ok(inverse_cdf(&probs, rows, &last)?.squeeze_dim(1))
}

/// Samples after the top-k cut and then the top-p cut (on the renormalised top-k probabilities),
/// over probabilities sorted in descending order.
fn sample_truncated(logp: &Tensor, rows: &[SampleRow], vocab: i64) -> Result<Tensor> {
    let device = logp.device();
    let width = if rows.iter().any(|r| r.top_k <= 0) {
        vocab
    } else {
        rows.iter()
            .map(|r| r.top_k)
            .max()
            .unwrap_or(vocab)
            .min(vocab)
    };
    let (vals, ids) = logp.f_topk(width, -1, true, true)?;
    let probs = (&vals - vals.narrow(1, 0, 1)).exp();
    let ks: Vec<i64> = rows
        .iter()
        .map(|r| {
            if r.top_k > 0 {
                r.top_k.min(width)
            } else {
                width
            }
        })
        .collect();
    let rank = Tensor::arange(width, (Kind::Int64, device)).unsqueeze(0);
    let keep_k = rank.lt_tensor(&Tensor::from_slice(&ks).to_device(device).unsqueeze(1));
    let probs_k = probs * keep_k.to_kind(Kind::Float);
    let norm = &probs_k / probs_k.sum_dim_intlist(-1, true, Kind::Float);
    let before = norm.f_cumsum(-1, Kind::Float)? - &norm;
    let ps: Vec<f32> = rows.iter().map(|r| r.top_p as f32).collect();
    let keep_p = before.lt_tensor(&Tensor::from_slice(&ps).to_device(device).unsqueeze(1));
    let keep = keep_k.logical_and(&keep_p);
    let weights = probs_k * keep.to_kind(Kind::Float);
    let last = keep.sum_dim_intlist(-1, true, Kind::Int64) - 1;
    let pos = inverse_cdf(&weights, rows, &last)?;
    Ok(ids.f_gather(1, &pos, false)?.squeeze_dim(1))
}

/// One device-to-host copy of both results.
fn to_host(tokens: &Tensor, logprobs: &Tensor, n: usize) -> Result<Sampled> {
    let both = Tensor::f_cat(
        &[tokens.to_kind(Kind::Double), logprobs.to_kind(Kind::Double)],
        0,
    )?
    .to_device(Device::Cpu);
    let both = Vec::<f64>::try_from(&both)?;
    Ok(Sampled {
        tokens: both[..n].iter().map(|&t| t as u32).collect(),
        logprobs: both[n..].iter().map(|&l| l as f32).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f64, top_p: f64, top_k: i64, seed: u64) -> SamplingParams {
        SamplingParams {
            temperature,
            top_p,
            top_k,
            seed: Some(seed),
            ..SamplingParams::default()
        }
    }

    fn random_logits(rows: i64, vocab: i64, seed: i64) -> Tensor {
        tch::manual_seed(seed);
        Tensor::randn([rows, vocab], (Kind::Float, Device::Cpu)) * 3.0
    }

    fn rows_of(samplers: &mut [RequestSampler]) -> Vec<SampleRow> {
        samplers.iter_mut().map(|s| s.next_row()).collect()
    }

    fn argmax(logits: &Tensor) -> Vec<u32> {
        Vec::<i64>::try_from(&logits.argmax(-1, false))
            .unwrap()
            .into_iter()
            .map(|t| t as u32)
            .collect()
    }

    #[test]
    fn greedy_takes_argmax_with_raw_logprob() {
        let logits = random_logits(5, 50, 1);
        let mut s: Vec<_> = (0..5)
            .map(|i| RequestSampler::new(&params(0.0, 1.0, -1, i)))
            .collect();
        let out = sample(&logits, &rows_of(&mut s)).unwrap();
        assert_eq!(out.tokens, argmax(&logits));
        let logp = logits.log_softmax(-1, Kind::Float);
        for (i, (&t, &lp)) in out.tokens.iter().zip(&out.logprobs).enumerate() {
            let want = logp.double_value(&[i as i64, t as i64]) as f32;
            assert!((lp - want).abs() < 1e-6, "row {i}: {lp} vs {want}");
        }
    }

    #[test]
    fn top_k_one_and_tiny_top_p_are_greedy() {
        let logits = random_logits(6, 40, 2);
        let mut s: Vec<_> = (0..6)
            .map(|i| {
                let (p, k) = if i % 2 == 0 { (1.0, 1) } else { (1e-6, -1) };
                RequestSampler::new(&params(0.8, p, k, i))
            })
            .collect();
        for _ in 0..20 {
            let out = sample(&logits, &rows_of(&mut s)).unwrap();
            assert_eq!(out.tokens, argmax(&logits));
        }
    }

    #[test]
    fn logprob_is_under_the_scaled_full_distribution() {
        let logits = random_logits(3, 30, 3);
        let mut s: Vec<_> = (0..3)
            .map(|i| RequestSampler::new(&params(0.5, 0.7, 5, i)))
            .collect();
        let out = sample(&logits, &rows_of(&mut s)).unwrap();
        let logp = (&logits / 0.5).log_softmax(-1, Kind::Float);
        for (i, (&t, &lp)) in out.tokens.iter().zip(&out.logprobs).enumerate() {
            let want = logp.double_value(&[i as i64, t as i64]) as f32;
            assert!((lp - want).abs() < 1e-5, "row {i}: {lp} vs {want}");
        }
    }

    /// Expected probabilities for one row: softmax(logits / T), then the top-k cut and the top-p
    /// cut as HF's warpers define them, renormalised.
    fn reference_probs(logits: &[f32], t: f64, top_p: f64, top_k: i64) -> Vec<f64> {
        let m = logits.iter().cloned().fold(f32::MIN, f32::max) as f64;
        let mut p: Vec<f64> = logits.iter().map(|&l| ((l as f64 - m) / t).exp()).collect();
        let mut order: Vec<usize> = (0..p.len()).collect();
        order.sort_by(|&a, &b| p[b].partial_cmp(&p[a]).unwrap());
        if top_k > 0 {
            for &i in &order[top_k as usize..] {
                p[i] = 0.0;
            }
        }
        let total: f64 = p.iter().sum();
        let mut cum = 0.0;
        for &i in &order {
            let before = cum;
            cum += p[i] / total;
            if before >= top_p {
                p[i] = 0.0;
            }
        }
        let total: f64 = p.iter().sum();
        p.iter().map(|x| x / total).collect()
    }

    fn check_frequencies(t: f64, top_p: f64, top_k: i64) {
        let vocab = 8;
        let base: Vec<f32> = vec![1.0, 0.5, -0.3, 2.0, 0.0, -1.0, 1.5, 0.2];
        let rows = 500;
        let logits = Tensor::from_slice(&base).unsqueeze(0).repeat([rows, 1]);
        let mut s: Vec<_> = (0..rows as u64)
            .map(|i| RequestSampler::new(&params(t, top_p, top_k, 1000 + i)))
            .collect();
        let mut counts = vec![0usize; vocab];
        let draws = 40;
        for _ in 0..draws {
            for tok in sample(&logits, &rows_of(&mut s)).unwrap().tokens {
                counts[tok as usize] += 1;
            }
        }
        let total = (rows as usize * draws) as f64;
        let want = reference_probs(&base, t, top_p, top_k);
        for (i, (&c, &w)) in counts.iter().zip(&want).enumerate() {
            let f = c as f64 / total;
            assert!(
                (f - w).abs() < 0.012,
                "T={t} p={top_p} k={top_k} token {i}: freq {f:.4} vs {w:.4}"
            );
            if w == 0.0 {
                assert_eq!(c, 0, "token {i} is cut but was drawn");
            }
        }
    }

    #[test]
    fn frequencies_match_the_scaled_softmax() {
        check_frequencies(1.0, 1.0, -1);
        check_frequencies(0.7, 1.0, -1);
    }

    #[test]
    fn frequencies_match_after_top_k_and_top_p_cuts() {
        check_frequencies(1.0, 1.0, 3);
        check_frequencies(0.9, 0.8, -1);
        check_frequencies(1.3, 0.9, 5);
    }

    #[test]
    fn same_seed_same_tokens_whatever_the_batch() {
        let logits = random_logits(4, 64, 4);
        let run = |rows: &[usize], seed_of: &dyn Fn(usize) -> u64| -> Vec<Vec<u32>> {
            let sub = logits.index_select(
                0,
                &Tensor::from_slice(&rows.iter().map(|&r| r as i64).collect::<Vec<_>>()),
            );
            let mut s: Vec<_> = rows
                .iter()
                .map(|&r| RequestSampler::new(&params(1.0, 0.95, 20, seed_of(r))))
                .collect();
            (0..10)
                .map(|_| sample(&sub, &rows_of(&mut s)).unwrap().tokens)
                .collect()
        };
        let seeds = |r: usize| 7 + r as u64;
        let alone = run(&[2], &seeds);
        let batched = run(&[0, 1, 2, 3], &seeds);
        let mine: Vec<u32> = batched.iter().map(|step| step[2]).collect();
        assert_eq!(alone.iter().map(|s| s[0]).collect::<Vec<_>>(), mine);
        let other = run(&[2], &|r| 99 + r as u64);
        assert_ne!(alone, other, "different seeds should give different draws");
    }

    #[test]
    fn rejects_mismatched_rows() {
        let logits = random_logits(2, 10, 5);
        let err = sample(
            &logits,
            &[SampleRow {
                temperature: 0.0,
                top_p: 1.0,
                top_k: -1,
                u: 0.0,
            }],
        )
        .unwrap_err();
        assert!(err.to_string().contains("logits"), "{err}");
    }
}
