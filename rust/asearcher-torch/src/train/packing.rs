//! Micro-batches for gradient accumulation: packing sequences into token-budgeted groups
//! (first-fit decreasing), turning a group into one packed row (positions restarting per
//! sequence, sequence ids for the packed causal mask) or a right-padded `[B, T]` batch, and
//! accumulating gradients over micro-batches so they equal the full-batch gradient of a
//! token-mean loss.

use crate::{Result, TorchError};
use std::collections::BTreeMap;
use tch::{Device, Kind, Tensor};

/// What [`pack_by_tokens`] does with a sequence longer than the token budget.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Oversize {
    /// The sequence gets a micro-batch of its own.
    #[default]
    OwnBatch,
    /// Packing fails with an error naming the sequence.
    Error,
}

/// Groups sequence indices into micro-batches whose total length is at most `token_budget`,
/// by first-fit decreasing (longest first, ties by index; each into the first group with room).
///
/// Every index appears exactly once; indices inside a group are ascending; groups come in order
/// of creation (the one holding the longest sequence first). Deterministic. Zero lengths and a
/// zero budget are errors.
pub fn pack_by_tokens(
    lengths: &[usize],
    token_budget: usize,
    oversize: Oversize,
) -> Result<Vec<Vec<usize>>> {
    if token_budget == 0 {
        return Err(TorchError::config("token_budget", "must be > 0"));
    }
    if let Some(i) = lengths.iter().position(|&l| l == 0) {
        return Err(TorchError::config(
            format!("lengths[{i}]"),
            "sequence is empty",
        ));
    }
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(lengths[i]), i));
    let mut bins: Vec<(usize, Vec<usize>)> = Vec::new();
    for i in order {
        let len = lengths[i];
        if len > token_budget {
            if oversize == Oversize::Error {
                return Err(TorchError::config(
                    format!("lengths[{i}]"),
                    format!("sequence of {len} tokens exceeds the token budget {token_budget}"),
                ));
            }
            bins.push((len, vec![i]));
            continue;
        }
        match bins.iter_mut().find(|(used, _)| used + len <= token_budget) {
            Some((used, members)) => {
                *used += len;
                members.push(i);
            }
            None => bins.push((len, vec![i])),
        }
    }
    Ok(bins
        .into_iter()
        .map(|(_, mut members)| {
            members.sort_unstable();
            members
        })
        .collect())
}

/// Per-token values of an extra field (log-probs, advantages, versions, ...).
#[derive(Clone, Debug, PartialEq)]
pub enum TokenValues {
    /// Becomes a float32 tensor.
    Float(Vec<f32>),
    /// Becomes an int64 tensor.
    Int(Vec<i64>),
}

impl TokenValues {
    /// Number of tokens.
    pub fn len(&self) -> usize {
        match self {
            TokenValues::Float(v) => v.len(),
            TokenValues::Int(v) => v.len(),
        }
    }

    /// True when there are no tokens.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn same_variant(&self, other: &TokenValues) -> bool {
        matches!(
            (self, other),
            (TokenValues::Float(_), TokenValues::Float(_))
                | (TokenValues::Int(_), TokenValues::Int(_))
        )
    }
}

/// One training sequence: tokens, which of them count in the loss, and extra per-token fields.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TokenSequence {
    /// Token ids.
    pub input_ids: Vec<i64>,
    /// Per token: whether it counts in the loss.
    pub loss_mask: Vec<bool>,
    /// Extra per-token fields by name, each as long as `input_ids`.
    pub fields: BTreeMap<String, TokenValues>,
}

impl TokenSequence {
    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    /// True when there are no tokens.
    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    /// Number of tokens that count in the loss.
    pub fn loss_tokens(&self) -> usize {
        self.loss_mask.iter().filter(|&&m| m).count()
    }
}

/// A group packed into one row of `T` tokens (all tensors `[1, T]`).
#[derive(Debug)]
pub struct PackedRow {
    /// Token ids, int64.
    pub input_ids: Tensor,
    /// Positions restarting at 0 for every sequence, int64.
    pub position_ids: Tensor,
    /// Index of the sequence (within the group) each token belongs to, int64.
    pub seq_ids: Tensor,
    /// Whether each token counts in the loss, bool.
    pub loss_mask: Tensor,
    /// Extra fields (float32 or int64) by name.
    pub fields: BTreeMap<String, Tensor>,
    /// Lengths of the packed sequences, in group order.
    pub seq_lens: Vec<i64>,
}

/// A group as a right-padded batch (all tensors `[B, T]`, `T` the longest sequence).
#[derive(Debug)]
pub struct PaddedBatch {
    /// Token ids, padded with the pad id, int64.
    pub input_ids: Tensor,
    /// Positions 0.. per row (0 on padding), int64.
    pub position_ids: Tensor,
    /// True on real tokens, bool.
    pub attention_mask: Tensor,
    /// Whether each token counts in the loss (false on padding), bool.
    pub loss_mask: Tensor,
    /// Extra fields by name, padded with 0.
    pub fields: BTreeMap<String, Tensor>,
    /// Lengths of the sequences, in group order.
    pub seq_lens: Vec<i64>,
}

/// Packs the sequences `group` (indices into `seqs`) into one row on `device`.
pub fn pack_row(seqs: &[TokenSequence], group: &[usize], device: Device) -> Result<PackedRow> {
    let members = group_members(seqs, group)?;
    let mut ids = Vec::new();
    let (mut positions, mut seq_ids, mut mask) = (Vec::new(), Vec::new(), Vec::new());
    for (k, s) in members.iter().enumerate() {
        ids.extend_from_slice(&s.input_ids);
        positions.extend(0..s.len() as i64);
        seq_ids.extend(std::iter::repeat_n(k as i64, s.len()));
        mask.extend(s.loss_mask.iter().map(|&m| m as u8));
    }
    let row = |t: Tensor| t.to_device(device).unsqueeze(0);
    let mut fields = BTreeMap::new();
    for (name, first) in &members[0].fields {
        let parts = members.iter().map(|s| &s.fields[name]);
        fields.insert(name.clone(), row(concat_field(first, parts)));
    }
    Ok(PackedRow {
        input_ids: row(Tensor::from_slice(&ids)),
        position_ids: row(Tensor::from_slice(&positions)),
        seq_ids: row(Tensor::from_slice(&seq_ids)),
        loss_mask: row(Tensor::from_slice(&mask).to_kind(Kind::Bool)),
        fields,
        seq_lens: members.iter().map(|s| s.len() as i64).collect(),
    })
}

/// Builds a right-padded `[B, T]` batch of the sequences `group` on `device`.
pub fn pad_batch(
    seqs: &[TokenSequence],
    group: &[usize],
    pad_token_id: i64,
    device: Device,
) -> Result<PaddedBatch> {
    let members = group_members(seqs, group)?;
    let width = members.iter().map(|s| s.len()).max().unwrap_or(0);
    let pad = |n: usize| width - n;
    let (mut ids, mut positions, mut attn, mut mask) = (vec![], vec![], vec![], vec![]);
    for s in &members {
        ids.extend(
            s.input_ids
                .iter()
                .copied()
                .chain(std::iter::repeat_n(pad_token_id, pad(s.len()))),
        );
        positions.extend((0..s.len() as i64).chain(std::iter::repeat_n(0, pad(s.len()))));
        attn.extend((0..width).map(|j| (j < s.len()) as u8));
        mask.extend((0..width).map(|j| s.loss_mask.get(j).copied().unwrap_or(false) as u8));
    }
    let b = members.len() as i64;
    let shape = |t: Tensor| t.view([b, width as i64]).to_device(device);
    let mut fields = BTreeMap::new();
    for (name, first) in &members[0].fields {
        let padded = members.iter().map(|s| pad_field(&s.fields[name], width));
        fields.insert(name.clone(), shape(concat_owned(first, padded)));
    }
    Ok(PaddedBatch {
        input_ids: shape(Tensor::from_slice(&ids)),
        position_ids: shape(Tensor::from_slice(&positions)),
        attention_mask: shape(Tensor::from_slice(&attn).to_kind(Kind::Bool)),
        loss_mask: shape(Tensor::from_slice(&mask).to_kind(Kind::Bool)),
        fields,
        seq_lens: members.iter().map(|s| s.len() as i64).collect(),
    })
}

/// The `[T, T]` boolean attention mask of a packed row: token `i` may attend to token `j` when
/// `j <= i` and both belong to the same sequence. `seq_ids` is `[T]` or `[1, T]`.
pub fn packed_causal_mask(seq_ids: &Tensor) -> Result<Tensor> {
    let ids = seq_ids.f_reshape([-1])?;
    let t = ids.size()[0];
    let same = ids.f_unsqueeze(1)?.f_eq_tensor(&ids.f_unsqueeze(0)?)?;
    let causal = Tensor::f_ones([t, t], (Kind::Bool, ids.device()))?.f_tril(0)?;
    Ok(same.f_logical_and(&causal)?)
}

/// The sequences of `group`, checked: indices in range, lengths consistent, same field set.
fn group_members<'a>(seqs: &'a [TokenSequence], group: &[usize]) -> Result<Vec<&'a TokenSequence>> {
    if group.is_empty() {
        return Err(TorchError::config("group", "is empty"));
    }
    let mut members = Vec::with_capacity(group.len());
    for &i in group {
        let s = seqs.get(i).ok_or_else(|| {
            TorchError::config(
                "group",
                format!("index {i} out of range ({} sequences)", seqs.len()),
            )
        })?;
        check_sequence(s, i, members.first().copied())?;
        members.push(s);
    }
    Ok(members)
}

fn check_sequence(s: &TokenSequence, i: usize, first: Option<&TokenSequence>) -> Result<()> {
    let bad = |what: &str, msg: String| TorchError::BadTensor {
        name: format!("sequences[{i}].{what}"),
        msg,
    };
    let n = s.len();
    if n == 0 {
        return Err(bad("input_ids", "is empty".into()));
    }
    if s.loss_mask.len() != n {
        return Err(bad(
            "loss_mask",
            format!("has {} values for {n} tokens", s.loss_mask.len()),
        ));
    }
    for (name, values) in &s.fields {
        if values.len() != n {
            return Err(bad(
                name,
                format!("has {} values for {n} tokens", values.len()),
            ));
        }
        let expected = first.map(|f| f.fields.get(name));
        if let Some(other) = expected {
            match other {
                Some(v) if v.same_variant(values) => {}
                Some(_) => {
                    return Err(bad(
                        name,
                        "mixes float and int values across the group".into(),
                    ))
                }
                None => {
                    return Err(bad(
                        name,
                        "field absent from the group's first sequence".into(),
                    ))
                }
            }
        }
    }
    if let Some(f) = first {
        if let Some(name) = f.fields.keys().find(|k| !s.fields.contains_key(*k)) {
            return Err(bad(
                name,
                "field missing (present in the group's first sequence)".into(),
            ));
        }
    }
    Ok(())
}

fn concat_field<'a>(first: &TokenValues, parts: impl Iterator<Item = &'a TokenValues>) -> Tensor {
    concat_owned(first, parts.cloned())
}

fn concat_owned(first: &TokenValues, parts: impl Iterator<Item = TokenValues>) -> Tensor {
    match first {
        TokenValues::Float(_) => {
            let mut all = Vec::new();
            parts.for_each(|p| all.extend(as_float(&p)));
            Tensor::from_slice(&all)
        }
        TokenValues::Int(_) => {
            let mut all = Vec::new();
            parts.for_each(|p| all.extend(as_int(&p)));
            Tensor::from_slice(&all)
        }
    }
}

fn as_float(v: &TokenValues) -> Vec<f32> {
    match v {
        TokenValues::Float(x) => x.clone(),
        TokenValues::Int(x) => x.iter().map(|&i| i as f32).collect(),
    }
}

fn as_int(v: &TokenValues) -> Vec<i64> {
    match v {
        TokenValues::Int(x) => x.clone(),
        TokenValues::Float(x) => x.iter().map(|&f| f as i64).collect(),
    }
}

fn pad_field(v: &TokenValues, width: usize) -> TokenValues {
    match v {
        TokenValues::Float(x) => TokenValues::Float(
            x.iter()
                .copied()
                .chain(std::iter::repeat_n(0.0, width - x.len()))
                .collect(),
        ),
        TokenValues::Int(x) => TokenValues::Int(
            x.iter()
                .copied()
                .chain(std::iter::repeat_n(0, width - x.len()))
                .collect(),
        ),
    }
}

/// Outcome of [`accumulate_gradients`].
#[derive(Clone, Debug, PartialEq)]
pub struct AccumulationStats {
    /// The full-batch token-mean loss (token-weighted mean of the micro-batch losses).
    pub loss: f64,
    /// Total loss tokens over all micro-batches.
    pub tokens: i64,
    /// Micro-batches that ran (those with zero loss tokens are skipped).
    pub micro_batches: usize,
}

/// Accumulates gradients over micro-batches so the result equals the gradient of one token-mean
/// loss over the whole batch.
///
/// `loss_tokens[i]` is the number of loss tokens in micro-batch `i`; `loss_fn(i)` returns that
/// micro-batch's scalar token-mean loss. Each loss is scaled by `loss_tokens[i] / total` and
/// back-propagated (gradients add up in the parameters' `.grad`, so zero them before).
/// Micro-batches without loss tokens are skipped (their mean would be 0/0).
pub fn accumulate_gradients(
    loss_tokens: &[i64],
    mut loss_fn: impl FnMut(usize) -> Result<Tensor>,
) -> Result<AccumulationStats> {
    if let Some(i) = loss_tokens.iter().position(|&t| t < 0) {
        return Err(TorchError::config(
            format!("loss_tokens[{i}]"),
            "is negative",
        ));
    }
    let total: i64 = loss_tokens.iter().sum();
    if total == 0 {
        return Err(TorchError::config(
            "loss_tokens",
            "no micro-batch has a loss token",
        ));
    }
    let (mut loss, mut ran) = (0.0, 0);
    for (i, &tokens) in loss_tokens.iter().enumerate() {
        if tokens == 0 {
            continue;
        }
        let micro = loss_fn(i)?;
        if micro.numel() != 1 {
            return Err(TorchError::BadTensor {
                name: format!("loss of micro-batch {i}"),
                msg: format!("expected a scalar, got shape {:?}", micro.size()),
            });
        }
        let weight = tokens as f64 / total as f64;
        micro.f_mul_scalar(weight)?.f_sum(Kind::Float)?.backward();
        loss += weight * micro.f_double_value(&[])?;
        ran += 1;
    }
    Ok(AccumulationStats {
        loss,
        tokens: total,
        micro_batches: ran,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn packing_properties_hold_on_random_inputs() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for trial in 0..300 {
            let n = rng.random_range(0..40);
            let budget = rng.random_range(1..200);
            let lengths: Vec<usize> = (0..n).map(|_| rng.random_range(1..250)).collect();
            let groups = pack_by_tokens(&lengths, budget, Oversize::OwnBatch).unwrap();
            assert_eq!(
                groups,
                pack_by_tokens(&lengths, budget, Oversize::OwnBatch).unwrap()
            );
            let mut seen: Vec<usize> = groups.iter().flatten().copied().collect();
            seen.sort_unstable();
            assert_eq!(
                seen,
                (0..n).collect::<Vec<_>>(),
                "trial {trial}: each index once"
            );
            let loads: Vec<usize> = groups
                .iter()
                .map(|g| g.iter().map(|&i| lengths[i]).sum())
                .collect();
            for (g, &load) in groups.iter().zip(&loads) {
                assert!(load <= budget || g.len() == 1, "trial {trial}: budget");
                assert!(g.windows(2).all(|w| w[0] < w[1]));
            }
            // First fit: no later group's load would have fitted next to an earlier one.
            let fitting: Vec<usize> = (0..groups.len()).filter(|&k| loads[k] <= budget).collect();
            for (a, &i) in fitting.iter().enumerate() {
                for &j in &fitting[a + 1..] {
                    assert!(
                        loads[i] + loads[j] > budget,
                        "trial {trial}: groups {i},{j} mergeable"
                    );
                }
            }
            let oversized = lengths.iter().any(|&l| l > budget);
            let strict = pack_by_tokens(&lengths, budget, Oversize::Error);
            assert_eq!(strict.is_err(), oversized);
        }
    }

    #[test]
    fn packing_errors_name_the_input() {
        let err = pack_by_tokens(&[3, 9, 2], 5, Oversize::Error)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("lengths[1]") && err.contains("budget"),
            "{err}"
        );
        let err = pack_by_tokens(&[3, 0], 5, Oversize::OwnBatch)
            .unwrap_err()
            .to_string();
        assert!(err.contains("lengths[1]"), "{err}");
        assert!(pack_by_tokens(&[1], 0, Oversize::OwnBatch)
            .unwrap_err()
            .to_string()
            .contains("token_budget"));
        assert_eq!(
            pack_by_tokens(&[9, 2, 3], 5, Oversize::OwnBatch).unwrap(),
            vec![vec![0], vec![1, 2]]
        );
    }

    fn seq(ids: &[i64], mask: &[bool], adv: f32) -> TokenSequence {
        let mut fields = BTreeMap::new();
        fields.insert("adv".to_string(), TokenValues::Float(vec![adv; ids.len()]));
        fields.insert(
            "version".to_string(),
            TokenValues::Int(ids.iter().map(|i| i * 10).collect()),
        );
        TokenSequence {
            input_ids: ids.to_vec(),
            loss_mask: mask.to_vec(),
            fields,
        }
    }

    fn ints(t: &Tensor) -> Vec<i64> {
        Vec::<i64>::try_from(t.reshape([-1]).to_kind(Kind::Int64)).unwrap()
    }

    #[test]
    fn packed_row_restarts_positions_and_carries_fields() {
        let seqs = [
            seq(&[5, 6, 7], &[false, true, true], 0.5),
            seq(&[8, 9], &[true, false], -1.0),
            seq(&[1, 2, 3, 4], &[true; 4], 2.0),
        ];
        let row = pack_row(&seqs, &[2, 0], Device::Cpu).unwrap();
        assert_eq!(row.input_ids.size(), vec![1, 7]);
        assert_eq!(ints(&row.input_ids), vec![1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(ints(&row.position_ids), vec![0, 1, 2, 3, 0, 1, 2]);
        assert_eq!(ints(&row.seq_ids), vec![0, 0, 0, 0, 1, 1, 1]);
        assert_eq!(ints(&row.loss_mask), vec![1, 1, 1, 1, 0, 1, 1]);
        assert_eq!(row.fields["version"].kind(), Kind::Int64);
        assert_eq!(
            ints(&row.fields["version"]),
            vec![10, 20, 30, 40, 50, 60, 70]
        );
        let adv = Vec::<f32>::try_from(row.fields["adv"].reshape([-1])).unwrap();
        assert_eq!(adv, vec![2.0, 2.0, 2.0, 2.0, 0.5, 0.5, 0.5]);
        assert_eq!(row.seq_lens, vec![4, 3]);
        let mask = packed_causal_mask(&row.seq_ids).unwrap();
        for i in 0..7i64 {
            for j in 0..7i64 {
                let same = (i < 4) == (j < 4);
                let allowed = mask.int64_value(&[i, j]) == 1;
                assert_eq!(allowed, same && j <= i, "({i},{j})");
            }
        }
    }

    #[test]
    fn padded_batch_pads_right() {
        let seqs = [
            seq(&[5, 6, 7], &[false, true, true], 0.5),
            seq(&[8], &[true], -1.0),
        ];
        let b = pad_batch(&seqs, &[0, 1], -7, Device::Cpu).unwrap();
        assert_eq!(b.input_ids.size(), vec![2, 3]);
        assert_eq!(ints(&b.input_ids), vec![5, 6, 7, 8, -7, -7]);
        assert_eq!(ints(&b.position_ids), vec![0, 1, 2, 0, 0, 0]);
        assert_eq!(ints(&b.attention_mask), vec![1, 1, 1, 1, 0, 0]);
        assert_eq!(ints(&b.loss_mask), vec![0, 1, 1, 1, 0, 0]);
        assert_eq!(ints(&b.fields["version"]), vec![50, 60, 70, 80, 0, 0]);
        assert_eq!(b.seq_lens, vec![3, 1]);
    }

    #[test]
    fn inconsistent_sequences_are_named() {
        let mut bad_mask = seq(&[1, 2], &[true], 0.0);
        let err = pack_row(std::slice::from_ref(&bad_mask), &[0], Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("sequences[0].loss_mask"), "{err}");
        bad_mask.loss_mask.push(true);
        let mut other = seq(&[3], &[true], 0.0);
        other.fields.remove("adv");
        let err = pack_row(&[bad_mask, other], &[0, 1], Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("sequences[1].adv"), "{err}");
        let err = pad_batch(&[], &[0], 0, Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("out of range"), "{err}");
    }

    /// Token-mean NLL of a tiny embedding + linear model over the masked tokens of `row`.
    fn row_loss(emb: &Tensor, w: &Tensor, row: &PackedRow) -> Tensor {
        let x = emb.index_select(0, &row.input_ids.reshape([-1]));
        let logp = x.matmul(w).log_softmax(-1, Kind::Float);
        let targets = row.fields["target"].reshape([-1, 1]);
        let nll = -logp.gather(1, &targets, false).reshape([-1]);
        let mask = row.loss_mask.reshape([-1]).to_kind(Kind::Float);
        (nll * &mask).sum(Kind::Float) / mask.sum(Kind::Float)
    }

    #[test]
    fn accumulated_gradients_equal_full_batch_gradients() {
        tch::manual_seed(3);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (vocab, dim, classes) = (11, 6, 5);
        let seqs: Vec<TokenSequence> = (0..9)
            .map(|_| {
                let n = rng.random_range(1..12);
                let mut fields = BTreeMap::new();
                let targets = (0..n).map(|_| rng.random_range(0..classes)).collect();
                fields.insert("target".to_string(), TokenValues::Int(targets));
                TokenSequence {
                    input_ids: (0..n).map(|_| rng.random_range(0..vocab)).collect(),
                    loss_mask: (0..n).map(|_| rng.random_bool(0.7)).collect(),
                    fields,
                }
            })
            .collect();
        let emb = Tensor::randn([vocab, dim], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let w = Tensor::randn([dim, classes], (Kind::Float, Device::Cpu)).set_requires_grad(true);

        let all: Vec<usize> = (0..seqs.len()).collect();
        let full = row_loss(&emb, &w, &pack_row(&seqs, &all, Device::Cpu).unwrap());
        full.backward();
        let (g_emb, g_w) = (emb.grad().copy(), w.grad().copy());
        let mut emb_grad = emb.grad();
        let _ = emb_grad.zero_();
        let mut w_grad = w.grad();
        let _ = w_grad.zero_();

        let lengths: Vec<usize> = seqs.iter().map(TokenSequence::len).collect();
        let groups = pack_by_tokens(&lengths, 16, Oversize::OwnBatch).unwrap();
        assert!(groups.len() > 2);
        let tokens: Vec<i64> = groups
            .iter()
            .map(|g| g.iter().map(|&i| seqs[i].loss_tokens() as i64).sum())
            .collect();
        let stats = accumulate_gradients(&tokens, |i| {
            Ok(row_loss(
                &emb,
                &w,
                &pack_row(&seqs, &groups[i], Device::Cpu)?,
            ))
        })
        .unwrap();
        assert!((stats.loss - full.double_value(&[])).abs() < 1e-6);
        assert_eq!(
            stats.tokens,
            seqs.iter().map(|s| s.loss_tokens() as i64).sum::<i64>()
        );
        let diff = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]);
        assert!(diff(&emb.grad(), &g_emb) < 1e-6);
        assert!(diff(&w.grad(), &g_w) < 1e-6);
        assert!(
            g_w.abs().max().double_value(&[]) > 1e-3,
            "gradients are not trivially zero"
        );
    }

    #[test]
    fn accumulation_rejects_bad_inputs() {
        let scalar = || Ok(Tensor::from(1.0f32).set_requires_grad(true));
        let err = accumulate_gradients(&[0, 0], |_| scalar())
            .unwrap_err()
            .to_string();
        assert!(err.contains("loss_tokens"), "{err}");
        let err = accumulate_gradients(&[2, -1], |_| scalar())
            .unwrap_err()
            .to_string();
        assert!(err.contains("loss_tokens[1]"), "{err}");
        let err = accumulate_gradients(&[3], |_| Ok(Tensor::ones([2], (Kind::Float, Device::Cpu))))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("micro-batch 0") && err.contains("scalar"),
            "{err}"
        );
        let mut called = vec![];
        accumulate_gradients(&[0, 4], |i| {
            called.push(i);
            scalar()
        })
        .unwrap();
        assert_eq!(called, vec![1], "empty micro-batches are skipped");
    }
}
