//! The KV cache of the generator and the cached forward passes on it: [`QwenModel::prefill`]
//! (one sequence, many tokens) and [`QwenModel::decode`] (one token for each of slots `0..n`).
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
        cache.check_model(self)?;
        cache.check_slot("slot", slot)?;
        if tokens.is_empty() {
            return Err(request_err(
                "tokens",
                "prefill needs at least one token".into(),
            ));
        }
        let len = tokens.len() as i64;
        cache.check_len(start, len)?;
        tch::no_grad(|| {
            let ids = ids_tensor(self, "tokens", tokens, [1, len])?;
            let dev = self.device();
            let positions =
                Tensor::arange_start(start, start + len, (Kind::Int64, dev)).view([1, len]);
            // Query i (position start + i) sees keys 0..=start + i.
            let mask = (start > 0).then(|| {
                let keys = Tensor::arange(start + len, (Kind::Int64, dev)).view([1, -1]);
                keys.le_tensor(&positions.view([len, 1]))
            });
            let mut attend = |layer: usize, q: &Tensor, k: &Tensor, v: &Tensor| -> Result<Tensor> {
                let (kc, vc) = (&cache.k[layer], &cache.v[layer]);
                kc.narrow(0, slot, 1).narrow(2, start, len).f_copy_(k)?;
                vc.narrow(0, slot, 1).narrow(2, start, len).f_copy_(v)?;
                let keys = kc.narrow(0, slot, 1).narrow(2, 0, start + len);
                let values = vc.narrow(0, slot, 1).narrow(2, 0, start + len);
                Ok(Tensor::f_scaled_dot_product_attention(
                    q,
                    &keys,
                    &values,
                    mask.as_ref(),
                    0.0,
                    mask.is_none(),
                    None,
                    true,
                )?)
            };
            let hidden = self.run_layers(&ids, &positions, &mut attend)?;
            Ok(self.logits(&hidden.select(1, len - 1)).view([-1]))
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
