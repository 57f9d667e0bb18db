//! The KV cache of the generator and the cached forward passes on it:
//! [`QwenModel::prefill_batch`] (several sequences, many tokens each, one padded pass),
//! [`QwenModel::prefill`] (one sequence) and [`QwenModel::decode`] (one token for each of slots
//! `0..n`).
//!
//! Layout per layer: K and V of shape `[slots, kv_heads, capacity, head_dim]` in the model's
//! dtype and device. Decode writes each new K/V entry in place (`index_put_` at slot i,
//! position `positions[i]`) and attends over a `narrow` view of slots `0..n` and positions
//! `0..=max(positions)`, masked per slot, so no step copies the cache.

use super::qwen::QwenModel;
use crate::{Result, TorchError};
use tch::{Device, Kind, Tensor};

/// Per-layer keys and values for `slots` sequences of up to `capacity` positions each.
pub struct KvCache {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    slots: i64,
    capacity: i64,
    kv_heads: i64,
    head_dim: i64,
    device: Device,
    kind: Kind,
}

fn request_err(name: &str, msg: String) -> TorchError {
    TorchError::config(name, msg)
}

impl KvCache {
    /// An empty (zeroed) cache shaped for `model`.
    pub fn new(model: &QwenModel, slots: i64, capacity: i64) -> Result<KvCache> {
        if slots <= 0 {
            return Err(request_err(
                "slots",
                format!("must be positive, got {slots}"),
            ));
        }
        if capacity <= 0 {
            return Err(request_err(
                "capacity",
                format!("must be positive, got {capacity}"),
            ));
        }
        let c = model.config();
        let mut cache = KvCache {
            k: Vec::new(),
            v: Vec::new(),
            slots,
            capacity,
            kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
            device: model.device(),
            kind: model.kind(),
        };
        for _ in 0..c.num_hidden_layers {
            cache.k.push(cache.zeros(capacity)?);
            cache.v.push(cache.zeros(capacity)?);
        }
        Ok(cache)
    }

    fn zeros(&self, capacity: i64) -> Result<Tensor> {
        let shape = [self.slots, self.kv_heads, capacity, self.head_dim];
        Ok(Tensor::f_zeros(shape, (self.kind, self.device))?)
    }

    pub fn slots(&self) -> i64 {
        self.slots
    }

    pub fn capacity(&self) -> i64 {
        self.capacity
    }

    /// Bytes held by the cache (K and V of every layer).
    pub fn bytes(&self) -> i64 {
        let per = self.slots * self.kv_heads * self.capacity * self.head_dim;
        2 * self.k.len() as i64 * per * self.kind.elt_size_in_bytes() as i64
    }

    /// Grows every slot to at least `capacity` positions, keeping the cached entries.
    pub fn ensure_capacity(&mut self, capacity: i64) -> Result<()> {
        if capacity <= self.capacity {
            return Ok(());
        }
        let old = self.capacity;
        for t in self.k.iter_mut().chain(self.v.iter_mut()) {
            let shape = [t.size()[0], t.size()[1], capacity, t.size()[3]];
            let grown = Tensor::f_zeros(shape, (t.kind(), t.device()))?;
            grown.narrow(2, 0, old).f_copy_(t)?;
            *t = grown;
        }
        self.capacity = capacity;
        Ok(())
    }

    /// Copies positions `[0, len)` of slot `from` into slot `to` (e.g. to compact live sequences
    /// into slots `0..n`, or to share a prompt's entries).
    pub fn copy_slot(&mut self, from: i64, to: i64, len: i64) -> Result<()> {
        self.check_slot("from", from)?;
        self.check_slot("to", to)?;
        self.check_len(0, len)?;
        if from == to || len == 0 {
            return Ok(());
        }
        for t in self.k.iter().chain(self.v.iter()) {
            let src = t.narrow(0, from, 1).narrow(2, 0, len);
            t.narrow(0, to, 1).narrow(2, 0, len).f_copy_(&src)?;
        }
        Ok(())
    }

    fn check_slot(&self, name: &str, slot: i64) -> Result<()> {
        if slot < 0 || slot >= self.slots {
            return Err(request_err(
                name,
                format!("slot {slot} out of range [0, {})", self.slots),
            ));
        }
        Ok(())
    }

    /// Positions `[start, start + len)` must fit in the cache.
    fn check_len(&self, start: i64, len: i64) -> Result<()> {
        if start < 0 || len < 0 || start + len > self.capacity {
            return Err(request_err(
                "positions",
                format!(
                    "positions [{start}, {}) do not fit the cache capacity {}",
                    start + len,
                    self.capacity
                ),
            ));
        }
        Ok(())
    }

    fn check_model(&self, model: &QwenModel) -> Result<()> {
        let c = model.config();
        let same = self.k.len() as i64 == c.num_hidden_layers
            && self.kv_heads == c.num_key_value_heads
            && self.head_dim == c.head_dim
            && self.device == model.device()
            && self.kind == model.kind();
        if !same {
            return Err(request_err(
                "cache",
                "was made for a model of another shape, dtype or device".into(),
            ));
        }
        Ok(())
    }
}

fn ids_tensor(model: &QwenModel, name: &str, tokens: &[u32], shape: [i64; 2]) -> Result<Tensor> {
    let vocab = model.config().vocab_size;
    if let Some(bad) = tokens.iter().find(|&&t| i64::from(t) >= vocab) {
        return Err(TorchError::BadTensor {
            name: name.into(),
            msg: format!("token id {bad} is out of the vocabulary [0, {vocab})"),
        });
    }
    let ids: Vec<i64> = tokens.iter().map(|&t| i64::from(t)).collect();
    Ok(Tensor::from_slice(&ids)
        .view(shape)
        .to_device(model.device()))
}

/// Checks a batched prefill request against `cache`: one slot and start per prompt, distinct
/// slots in range, non-empty prompts whose positions fit the capacity.
fn check_batch(cache: &KvCache, slots: &[i64], prompts: &[&[u32]], starts: &[i64]) -> Result<()> {
    let n = prompts.len();
    if n == 0 || slots.len() != n || starts.len() != n {
        return Err(request_err(
            "prompts",
            format!(
                "need at least one prompt and one slot and start per prompt, got {n} prompts, {} slots and {} starts",
                slots.len(),
                starts.len()
            ),
        ));
    }
    for (i, ((&slot, prompt), &start)) in slots.iter().zip(prompts).zip(starts).enumerate() {
        cache.check_slot("slots", slot)?;
        if slots[..i].contains(&slot) {
            return Err(request_err(
                "slots",
                format!("slot {slot} appears more than once"),
            ));
        }
        if prompt.is_empty() {
            return Err(request_err(
                "prompts",
                format!("prompt {i} is empty; prefill needs at least one token"),
            ));
        }
        cache.check_len(start, prompt.len() as i64)?;
    }
    Ok(())
}

/// Int64 `[n]` tensor of `values` on `device`.
fn int_tensor(values: &[i64], device: Device) -> Tensor {
    Tensor::from_slice(values).to_device(device)
}

/// The padded layout of a batched prefill: prompt i fills row i, columns `0..lens[i]`.
struct Batch {
    ids: Tensor,
    /// `[n, T]` int64: `starts[i] + column` (padding continues the count; it is never cached).
    positions: Tensor,
    lens: Vec<i64>,
    width: i64,
}

impl Batch {
    fn new(model: &QwenModel, prompts: &[&[u32]], starts: &[i64]) -> Result<Batch> {
        let n = prompts.len() as i64;
        let lens: Vec<i64> = prompts.iter().map(|p| p.len() as i64).collect();
        let width = lens.iter().copied().max().unwrap_or(1);
        let mut flat = Vec::with_capacity((n * width) as usize);
        for p in prompts {
            flat.extend_from_slice(p);
            flat.resize(flat.len() + width as usize - p.len(), 0);
        }
        let ids = ids_tensor(model, "prompts", &flat, [n, width])?;
        let dev = model.device();
        let columns = Tensor::arange(width, (Kind::Int64, dev)).view([1, width]);
        let positions = int_tensor(starts, dev).view([n, 1]) + columns;
        Ok(Batch {
            ids,
            positions,
            lens,
            width,
        })
    }

    /// `[n, 1, T, keys]` bool: query (i, j) sees key position p when p <= its position and p is
    /// cached or real in row i (p < starts[i] + lens[i]).
    fn mask(&self, starts: &[i64], keys: i64) -> Tensor {
        let n = self.lens.len() as i64;
        let dev = self.positions.device();
        let ends: Vec<i64> = starts.iter().zip(&self.lens).map(|(s, l)| s + l).collect();
        let key_pos = Tensor::arange(keys, (Kind::Int64, dev)).view([1, 1, keys]);
        let causal = key_pos.le_tensor(&self.positions.view([n, self.width, 1]));
        let real = key_pos.lt_tensor(&int_tensor(&ends, dev).view([n, 1, 1]));
        causal.logical_and(&real).view([n, 1, self.width, keys])
    }
}

impl QwenModel {
    /// Runs `tokens` of one sequence at positions `start..start+len` into cache slot `slot`
    /// (positions before `start` are already cached there) and returns the float32 logits of the
    /// last token, shape `[vocab]`.
    pub fn prefill(
        &self,
        cache: &mut KvCache,
        slot: i64,
        tokens: &[u32],
        start: i64,
    ) -> Result<Tensor> {
        let logits = self.prefill_batch(cache, &[slot], &[tokens], &[start])?;
        Ok(logits.view([-1]))
    }

    /// Runs several prompts in one forward pass: prompt i at positions
    /// `starts[i]..starts[i] + len_i` into cache slot `slots[i]` (positions before `starts[i]`
    /// already cached there). The batch is right-padded to the longest prompt; padding is never
    /// written to the cache nor attended to. Returns the float32 logits of each prompt's last
    /// token, `[n, vocab]` (the LM head runs on those positions only).
    pub fn prefill_batch(
        &self,
        cache: &mut KvCache,
        slots: &[i64],
        prompts: &[&[u32]],
        starts: &[i64],
    ) -> Result<Tensor> {
        cache.check_model(self)?;
        check_batch(cache, slots, prompts, starts)?;
        tch::no_grad(|| {
            let batch = Batch::new(self, prompts, starts)?;
            let n = prompts.len() as i64;
            let dev = self.device();
            let fresh = starts.iter().all(|&s| s == 0);
            let padded = batch.lens.iter().any(|&l| l != batch.width);
            // Keys span the longest cached-plus-new row; a fresh batch attends to its own K/V.
            let keys = if fresh {
                batch.width
            } else {
                starts
                    .iter()
                    .zip(&batch.lens)
                    .map(|(s, l)| s + l)
                    .max()
                    .unwrap_or(1)
            };
            let mask = (padded || !fresh).then(|| batch.mask(starts, keys));
            let slot_idx = int_tensor(slots, dev);
            let mut attend = |layer: usize, q: &Tensor, k: &Tensor, v: &Tensor| -> Result<Tensor> {
                let (kc, vc) = (&cache.k[layer], &cache.v[layer]);
                for (i, (&slot, &start)) in slots.iter().zip(starts).enumerate() {
                    let len = batch.lens[i];
                    let row = i as i64;
                    kc.narrow(0, slot, 1)
                        .narrow(2, start, len)
                        .f_copy_(&k.narrow(0, row, 1).narrow(2, 0, len))?;
                    vc.narrow(0, slot, 1)
                        .narrow(2, start, len)
                        .f_copy_(&v.narrow(0, row, 1).narrow(2, 0, len))?;
                }
                let (keys_t, values_t) = if fresh {
                    (k.shallow_clone(), v.shallow_clone())
                } else {
                    (
                        kc.index_select(0, &slot_idx).narrow(2, 0, keys),
                        vc.index_select(0, &slot_idx).narrow(2, 0, keys),
                    )
                };
                Ok(Tensor::f_scaled_dot_product_attention(
                    q,
                    &keys_t,
                    &values_t,
                    mask.as_ref(),
                    0.0,
                    mask.is_none(),
                    None,
                    true,
                )?)
            };
            let hidden = self.run_layers(&batch.ids, &batch.positions, &mut attend)?;
            let last: Vec<i64> = batch.lens.iter().map(|l| l - 1).collect();
            let rows = Tensor::arange(n, (Kind::Int64, dev));
            let at_last = hidden.f_index(&[Some(rows), Some(int_tensor(&last, dev))])?;
            Ok(self.logits(&at_last))
        })
    }

    /// One new token for each of slots `0..n` (`n = tokens.len()`): slot i's token sits at
    /// `positions[i]` (earlier positions already cached in slot i). Returns float32 logits
    /// `[n, vocab]`.
    pub fn decode(&self, cache: &mut KvCache, tokens: &[u32], positions: &[i64]) -> Result<Tensor> {
        cache.check_model(self)?;
        let n = tokens.len() as i64;
        if n == 0 || positions.len() != tokens.len() {
            return Err(request_err(
                "positions",
                format!(
                    "need one position per token and at least one token, got {} tokens and {} positions",
                    tokens.len(),
                    positions.len()
                ),
            ));
        }
        if n > cache.slots {
            return Err(request_err(
                "tokens",
                format!("{n} tokens for a cache of {} slots", cache.slots),
            ));
        }
        for &p in positions {
            cache.check_len(p, 1)?;
        }
        let span = positions.iter().max().copied().unwrap_or(0) + 1;
        tch::no_grad(|| {
            let dev = self.device();
            let ids = ids_tensor(self, "tokens", tokens, [n, 1])?;
            let pos = Tensor::from_slice(positions).to_device(dev);
            let slot_idx = Tensor::arange(n, (Kind::Int64, dev));
            let keys_pos = Tensor::arange(span, (Kind::Int64, dev)).view([1, span]);
            let mask = keys_pos.le_tensor(&pos.view([n, 1])).view([n, 1, 1, span]);
            let mut attend = |layer: usize, q: &Tensor, k: &Tensor, v: &Tensor| -> Result<Tensor> {
                let index = [Some(&slot_idx), None, Some(&pos)];
                let (kc, vc) = (&mut cache.k[layer], &mut cache.v[layer]);
                let _ = kc.f_index_put_(&index, &k.squeeze_dim(2), false)?;
                let _ = vc.f_index_put_(&index, &v.squeeze_dim(2), false)?;
                let keys = kc.narrow(0, 0, n).narrow(2, 0, span);
                let values = vc.narrow(0, 0, n).narrow(2, 0, span);
                Ok(Tensor::f_scaled_dot_product_attention(
                    q,
                    &keys,
                    &values,
                    Some(&mask),
                    0.0,
                    false,
                    None,
                    true,
                )?)
            };
            let hidden = self.run_layers(&ids, &pos.view([n, 1]), &mut attend)?;
            Ok(self.logits(&hidden.view([n, -1])))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::qwen::AttentionMask;
    use crate::model::testutil::{max_diff, tiny_config, write_tiny};

    fn model(qwen3: bool) -> (tempfile::TempDir, QwenModel) {
        let dir = tempfile::tempdir().unwrap();
        write_tiny(dir.path(), &tiny_config(qwen3, false), 1);
        let m = QwenModel::load(dir.path(), Device::Cpu, Kind::Float).unwrap();
        (dir, m)
    }

    /// Logits of every position of one sequence by the full forward pass: `[T, vocab]`.
    fn full_logits(m: &QwenModel, tokens: &[u32]) -> Tensor {
        let ids: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
        let t = ids.len() as i64;
        let ids = Tensor::from_slice(&ids).view([1, t]);
        let pos = Tensor::arange(t, (Kind::Int64, Device::Cpu)).view([1, t]);
        let h = m
            .forward_hidden(&ids, &pos, &AttentionMask::Causal)
            .unwrap();
        m.logits(&h).view([t, -1])
    }

    fn seqs() -> Vec<Vec<u32>> {
        vec![
            vec![1, 5, 9, 30, 2, 7, 7, 8, 3],
            vec![4, 6, 11, 36, 0, 12],
            vec![3, 3, 10, 20, 21, 22, 23, 24, 25, 26, 27],
        ]
    }

    /// Prefills `prompt` tokens of each sequence into slot i, then decodes the rest one step at a
    /// time for all slots still running; checks every logit row against the full forward.
    fn check_incremental(m: &QwenModel, cache: &mut KvCache, prompt: usize) {
        let seqs = seqs();
        let full: Vec<Tensor> = seqs.iter().map(|s| full_logits(m, s)).collect();
        for (i, s) in seqs.iter().enumerate() {
            // Prefill in two chunks to exercise a non-zero start.
            let half = prompt / 2;
            let _ = m.prefill(cache, i as i64, &s[..half], 0).unwrap();
            let last = m
                .prefill(cache, i as i64, &s[half..prompt], half as i64)
                .unwrap();
            let d = max_diff(&last, &full[i].get(prompt as i64 - 1));
            assert!(d < 1e-4, "prefill slot {i}: {d}");
        }
        let longest = seqs.iter().map(Vec::len).max().unwrap();
        for p in prompt..longest {
            // Slots whose sequence is over keep decoding a dummy token at their last position.
            let tokens: Vec<u32> = seqs.iter().map(|s| *s.get(p).unwrap_or(&0)).collect();
            let positions: Vec<i64> = seqs.iter().map(|s| p.min(s.len() - 1) as i64).collect();
            let live: Vec<bool> = seqs.iter().map(|s| p < s.len()).collect();
            let logits = m.decode(cache, &tokens, &positions).unwrap();
            assert_eq!(logits.size(), vec![3, 37]);
            for i in (0..seqs.len()).filter(|&i| live[i]) {
                let d = max_diff(&logits.get(i as i64), &full[i].get(p as i64));
                assert!(d < 1e-4, "decode slot {i} pos {p}: {d}");
            }
        }
    }

    #[test]
    fn prefill_and_decode_match_the_full_forward() {
        for qwen3 in [false, true] {
            let (_d, m) = model(qwen3);
            let mut cache = KvCache::new(&m, 3, 16).unwrap();
            check_incremental(&m, &mut cache, 4);
        }
    }

    #[test]
    fn grown_and_copied_slots_give_the_same_logits() {
        let (_d, m) = model(false);
        let seq = &seqs()[2];
        let full = full_logits(&m, seq);
        let mut cache = KvCache::new(&m, 3, 6).unwrap();
        let _ = m.prefill(&mut cache, 2, &seq[..5], 0).unwrap();
        cache.ensure_capacity(12).unwrap();
        assert_eq!(cache.capacity(), 12);
        cache.copy_slot(2, 0, 5).unwrap();
        for (p, &token) in seq.iter().enumerate().skip(5) {
            let logits = m.decode(&mut cache, &[token], &[p as i64]).unwrap();
            let d = max_diff(&logits.get(0), &full.get(p as i64));
            assert!(d < 1e-4, "pos {p}: {d}");
        }
    }

    /// Prefills `seqs[i][..cut[i]]` into slot `slots[i]` one sequence at a time; returns the
    /// cache so that the rest can be prefilled from `cut[i]`.
    fn cached_prefixes(m: &QwenModel, slots: &[i64], cut: &[usize]) -> KvCache {
        let mut cache = KvCache::new(m, 4, 16).unwrap();
        for ((s, &slot), &c) in seqs().iter().zip(slots).zip(cut) {
            if c > 0 {
                let _ = m.prefill(&mut cache, slot, &s[..c], 0).unwrap();
            }
        }
        cache
    }

    /// One decode step per slot with token 7 at each sequence's next position.
    fn decode_after(m: &QwenModel, cache: &mut KvCache, slots: &[i64]) -> Tensor {
        let seqs = seqs();
        let positions: Vec<i64> = (0..4)
            .map(|slot| match slots.iter().position(|&s| s == slot) {
                Some(i) => seqs[i].len() as i64,
                None => 0,
            })
            .collect();
        m.decode(cache, &[7; 4], &positions).unwrap()
    }

    #[test]
    fn batched_prefill_matches_separate_prefills() {
        let slots = [2, 0, 3];
        for qwen3 in [false, true] {
            let (_d, m) = model(qwen3);
            for cut in [[0, 0, 0], [3, 0, 5]] {
                let seqs = seqs();
                let mut one = cached_prefixes(&m, &slots, &cut);
                let mut many = cached_prefixes(&m, &slots, &cut);
                let rest: Vec<&[u32]> = seqs.iter().zip(&cut).map(|(s, &c)| &s[c..]).collect();
                let starts: Vec<i64> = cut.iter().map(|&c| c as i64).collect();
                let batched = m.prefill_batch(&mut many, &slots, &rest, &starts).unwrap();
                assert_eq!(batched.size(), vec![3, 37]);
                for i in 0..3 {
                    let alone = m.prefill(&mut one, slots[i], rest[i], starts[i]).unwrap();
                    let d = max_diff(&batched.get(i as i64), &alone);
                    assert!(d < 1e-4, "qwen3 {qwen3} cut {cut:?} row {i}: {d}");
                    let full = full_logits(&m, &seqs[i]).get(seqs[i].len() as i64 - 1);
                    let d = max_diff(&batched.get(i as i64), &full);
                    assert!(d < 1e-4, "qwen3 {qwen3} cut {cut:?} row {i} vs full: {d}");
                }
                let (a, b) = (
                    decode_after(&m, &mut one, &slots),
                    decode_after(&m, &mut many, &slots),
                );
                for slot in slots {
                    let d = max_diff(&a.get(slot), &b.get(slot));
                    assert!(d < 1e-4, "decode after, slot {slot}: {d}");
                }
            }
        }
    }

    #[test]
    fn bad_batched_prefills_are_errors() {
        let (_d, m) = model(false);
        let mut cache = KvCache::new(&m, 2, 4).unwrap();
        let p: [&[u32]; 2] = [&[1, 2], &[3]];
        let err = |r: Result<Tensor>| r.unwrap_err().to_string();
        let e = err(m.prefill_batch(&mut cache, &[0], &p, &[0, 0]));
        assert!(e.contains("2 prompts, 1 slots"), "{e}");
        let e = err(m.prefill_batch(&mut cache, &[1, 1], &p, &[0, 0]));
        assert!(e.contains("slot 1 appears more than once"), "{e}");
        let e = err(m.prefill_batch(&mut cache, &[0, 5], &p, &[0, 0]));
        assert!(e.contains("slot 5"), "{e}");
        let e = err(m.prefill_batch(&mut cache, &[0, 1], &p, &[0, 4]));
        assert!(e.contains("capacity 4"), "{e}");
        let e = err(m.prefill_batch(&mut cache, &[0, 1], &[&[1], &[]], &[0, 0]));
        assert!(e.contains("prompt 1 is empty"), "{e}");
        let e = err(m.prefill_batch(&mut cache, &[0, 1], &[&[1], &[99]], &[0, 0]));
        assert!(e.contains("99"), "{e}");
        assert!(m.prefill_batch(&mut cache, &[], &[], &[]).is_err());
    }

    #[test]
    fn out_of_range_requests_are_errors() {
        let (_d, m) = model(false);
        let mut cache = KvCache::new(&m, 2, 4).unwrap();
        let err = m.prefill(&mut cache, 2, &[1], 0).unwrap_err().to_string();
        assert!(err.contains("slot 2"), "{err}");
        let err = m
            .prefill(&mut cache, 0, &[1, 2, 3], 2)
            .unwrap_err()
            .to_string();
        assert!(err.contains("capacity 4"), "{err}");
        let err = m
            .decode(&mut cache, &[1, 1, 1], &[0, 0, 0])
            .unwrap_err()
            .to_string();
        assert!(err.contains("2 slots"), "{err}");
        let err = m.decode(&mut cache, &[99], &[0]).unwrap_err().to_string();
        assert!(err.contains("99"), "{err}");
        assert!(cache.copy_slot(0, 5, 1).is_err());
        assert!(KvCache::new(&m, 0, 4).is_err());
    }
}
