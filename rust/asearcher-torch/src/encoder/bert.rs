//! The BERT encoder (HF `BertModel`, post-LN) on plain tch tensors, with its WordPiece
//! tokenizer: texts in, pooled (and normalised) vectors out, as sentence-transformers computes
//! them. Texts are encoded in batches sorted by length so padding stays small.

use super::spec::{BertConfig, EncoderOptions, EncoderSpec, Pooling};
use crate::model::read_hf_weights;
use crate::{Result, TorchError};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};
use tokenizers::{PaddingParams, PaddingStrategy, TruncationParams, TruncationStrategy};

struct Layer {
    q: (Tensor, Tensor),
    k: (Tensor, Tensor),
    v: (Tensor, Tensor),
    o: (Tensor, Tensor),
    attn_ln: (Tensor, Tensor),
    up: (Tensor, Tensor),
    down: (Tensor, Tensor),
    out_ln: (Tensor, Tensor),
}

/// Which prefix a text gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextKind {
    Query,
    Passage,
    /// No prefix.
    Raw,
}

/// A loaded BERT-family encoder (E5, MiniLM, BGE).
pub struct BertEncoder {
    config: BertConfig,
    spec: EncoderSpec,
    tokenizer: tokenizers::Tokenizer,
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    emb_ln: (Tensor, Tensor),
    layers: Vec<Layer>,
    device: Device,
    kind: Kind,
    dir: PathBuf,
}

impl std::fmt::Debug for BertEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BertEncoder")
            .field("dir", &self.dir)
            .field("dim", &self.config.hidden_size)
            .field("spec", &self.spec)
            .finish()
    }
}

/// The tensors of a checkpoint by name, without the `bert.` prefix some exports carry.
fn weights_by_name(dir: &Path, device: Device, kind: Kind) -> Result<HashMap<String, Tensor>> {
    Ok(read_hf_weights(dir)?
        .into_iter()
        .map(|(n, t)| {
            let name = n.strip_prefix("bert.").unwrap_or(&n).to_string();
            let t = if t.is_floating_point() {
                t.to_device(device).to_kind(kind)
            } else {
                t
            };
            (name, t)
        })
        .collect())
}

fn take(w: &mut HashMap<String, Tensor>, dir: &Path, name: &str, shape: &[i64]) -> Result<Tensor> {
    let t = w.remove(name).ok_or_else(|| {
        TorchError::bad_file(
            dir,
            format!("tensor `{name}` is missing: not a BERT checkpoint"),
        )
    })?;
    if t.size() != shape {
        return Err(TorchError::bad_file(
            dir,
            format!(
                "tensor `{name}` has shape {:?}, config.json says {shape:?}",
                t.size()
            ),
        ));
    }
    Ok(t)
}

fn linear(
    w: &mut HashMap<String, Tensor>,
    dir: &Path,
    name: &str,
    out: i64,
    inp: i64,
) -> Result<(Tensor, Tensor)> {
    Ok((
        take(w, dir, &format!("{name}.weight"), &[out, inp])?,
        take(w, dir, &format!("{name}.bias"), &[out])?,
    ))
}

fn norm(
    w: &mut HashMap<String, Tensor>,
    dir: &Path,
    name: &str,
    h: i64,
) -> Result<(Tensor, Tensor)> {
    Ok((
        take(w, dir, &format!("{name}.weight"), &[h])?,
        take(w, dir, &format!("{name}.bias"), &[h])?,
    ))
}

fn load_tokenizer(dir: &Path, spec: &EncoderSpec) -> Result<tokenizers::Tokenizer> {
    let path = dir.join("tokenizer.json");
    let mut tok = tokenizers::Tokenizer::from_file(&path)
        .map_err(|e| TorchError::bad_file(&path, format!("cannot load the tokenizer: {e}")))?;
    // As sentence-transformers calls it: truncate to the spec's limit, pad to the longest
    // text of a batch (whatever the file has baked in).
    let pad_id = tok.token_to_id("[PAD]").unwrap_or(0);
    tok.with_truncation(Some(TruncationParams {
        max_length: spec.max_length,
        strategy: TruncationStrategy::LongestFirst,
        ..TruncationParams::default()
    }))
    .map_err(|e| TorchError::bad_file(&path, format!("truncation: {e}")))?;
    let pad_token = tok.id_to_token(pad_id).unwrap_or_else(|| "[PAD]".into());
    tok.with_padding(Some(PaddingParams {
        strategy: PaddingStrategy::BatchLongest,
        pad_id,
        pad_token,
        ..PaddingParams::default()
    }));
    Ok(tok)
}

impl BertEncoder {
    /// Loads `dir` (config.json, model.safetensors, tokenizer.json and the optional
    /// sentence-transformers files) on `device` in `kind`.
    pub fn load(dir: &Path, device: Device, kind: Kind, options: &EncoderOptions) -> Result<Self> {
        let config = BertConfig::from_dir(dir)?;
        let spec = EncoderSpec::resolve(dir, &config, options)?;
        let tokenizer = load_tokenizer(dir, &spec)?;
        let mut w = weights_by_name(dir, device, kind)?;
        let (h, i) = (config.hidden_size, config.intermediate_size);
        let e = "embeddings";
        let word = take(
            &mut w,
            dir,
            &format!("{e}.word_embeddings.weight"),
            &[config.vocab_size, h],
        )?;
        let position = take(
            &mut w,
            dir,
            &format!("{e}.position_embeddings.weight"),
            &[config.max_position_embeddings, h],
        )?;
        let token_type = take(
            &mut w,
            dir,
            &format!("{e}.token_type_embeddings.weight"),
            &[config.type_vocab_size, h],
        )?;
        let emb_ln = norm(&mut w, dir, &format!("{e}.LayerNorm"), h)?;
        let layers = (0..config.num_hidden_layers)
            .map(|n| {
                let p = format!("encoder.layer.{n}");
                Ok(Layer {
                    q: linear(&mut w, dir, &format!("{p}.attention.self.query"), h, h)?,
                    k: linear(&mut w, dir, &format!("{p}.attention.self.key"), h, h)?,
                    v: linear(&mut w, dir, &format!("{p}.attention.self.value"), h, h)?,
                    o: linear(&mut w, dir, &format!("{p}.attention.output.dense"), h, h)?,
                    attn_ln: norm(&mut w, dir, &format!("{p}.attention.output.LayerNorm"), h)?,
                    up: linear(&mut w, dir, &format!("{p}.intermediate.dense"), i, h)?,
                    down: linear(&mut w, dir, &format!("{p}.output.dense"), h, i)?,
                    out_ln: norm(&mut w, dir, &format!("{p}.output.LayerNorm"), h)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(BertEncoder {
            config,
            spec,
            tokenizer,
            word,
            position,
            token_type,
            emb_ln,
            layers,
            device,
            kind,
            dir: dir.to_path_buf(),
        })
    }

    pub fn spec(&self) -> &EncoderSpec {
        &self.spec
    }

    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// The vector size.
    pub fn dim(&self) -> i64 {
        self.config.hidden_size
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// The dtype of the weights.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The text as encoded: with the prefix of its kind.
    pub fn prefixed(&self, text: &str, kind: TextKind) -> String {
        match kind {
            TextKind::Query => format!("{}{text}", self.spec.query_prefix),
            TextKind::Passage => format!("{}{text}", self.spec.passage_prefix),
            TextKind::Raw => text.to_string(),
        }
    }

    /// Token ids of each text (prefixed, truncated, with special tokens; no padding).
    pub fn tokenize(&self, texts: &[String], kind: TextKind) -> Result<Vec<Vec<u32>>> {
        let inputs: Vec<String> = texts.iter().map(|t| self.prefixed(t, kind)).collect();
        let encodings = self
            .tokenizer
            .encode_batch(inputs, true)
            .map_err(|e| TorchError::config("texts", format!("cannot tokenize: {e}")))?;
        Ok(encodings
            .iter()
            .map(|e| {
                let n = e.get_attention_mask().iter().filter(|&&m| m == 1).count();
                e.get_ids()[..n].to_vec()
            })
            .collect())
    }

    /// Vectors of `texts` (`[N, dim]`, float32 on the CPU), `batch_size` texts per forward
    /// pass, in batches of similar length; `progress(done)` after each batch.
    pub fn encode(
        &self,
        texts: &[String],
        kind: TextKind,
        batch_size: usize,
        progress: &mut dyn FnMut(usize) -> Result<()>,
    ) -> Result<Tensor> {
        let ids = self.tokenize(texts, kind)?;
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(ids[i].len()));
        let mut out = Tensor::zeros([ids.len() as i64, self.dim()], (Kind::Float, Device::Cpu));
        let _guard = tch::no_grad_guard();
        let mut done = 0;
        for chunk in order.chunks(batch_size.max(1)) {
            let batch: Vec<&[u32]> = chunk.iter().map(|&i| ids[i].as_slice()).collect();
            let vectors = self
                .embed(&batch)?
                .to_device(Device::Cpu)
                .to_kind(Kind::Float);
            let rows = Tensor::from_slice(&chunk.iter().map(|&i| i as i64).collect::<Vec<_>>());
            let _ = out.f_index_copy_(0, &rows, &vectors)?;
            done += chunk.len();
            progress(done)?;
        }
        Ok(out)
    }

    /// Pooled vectors of one batch of token-id lists.
    fn embed(&self, batch: &[&[u32]]) -> Result<Tensor> {
        let b = batch.len() as i64;
        let t = batch.iter().map(|x| x.len()).max().unwrap_or(0) as i64;
        let mut ids = vec![0i64; (b * t) as usize];
        let mut mask = vec![0i64; (b * t) as usize];
        for (r, row) in batch.iter().enumerate() {
            for (c, &id) in row.iter().enumerate() {
                ids[r * t as usize + c] = i64::from(id);
                mask[r * t as usize + c] = 1;
            }
        }
        let ids = Tensor::from_slice(&ids).view([b, t]).to_device(self.device);
        let mask = Tensor::from_slice(&mask)
            .view([b, t])
            .to_device(self.device);
        let hidden = self.forward(&ids, &mask)?;
        let pooled = match self.spec.pooling {
            Pooling::Cls => hidden.select(1, 0),
            Pooling::Mean => {
                let m = mask.unsqueeze(-1).to_kind(hidden.kind());
                let sum = (&hidden * &m).sum_dim_intlist(1, false, hidden.kind());
                let count = m.sum_dim_intlist(1, false, hidden.kind()).clamp_min(1e-9);
                sum / count
            }
        };
        Ok(if self.spec.normalize {
            let n = pooled
                .to_kind(Kind::Float)
                .norm_scalaropt_dim(2, [1], true)
                .clamp_min(1e-12);
            pooled.to_kind(Kind::Float) / n
        } else {
            pooled
        })
    }

    /// Token states `[B, T, H]` of `ids` (`[B, T]` int64) with `mask` (`[B, T]`, 1 = token).
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        let (b, t) = (ids.size()[0], ids.size()[1]);
        if t > c.max_position_embeddings {
            return Err(TorchError::config(
                "texts",
                format!(
                    "{t} tokens exceed max_position_embeddings {}",
                    c.max_position_embeddings
                ),
            ));
        }
        let positions = Tensor::arange(t, (Kind::Int64, self.device));
        let mut h = Tensor::f_embedding(&self.word, ids, -1, false, false)?
            + self.position.index_select(0, &positions).unsqueeze(0)
            + self.token_type.get(0);
        h = layer_norm(&h, &self.emb_ln, c.layer_norm_eps);
        let keep = mask.to_kind(Kind::Bool).view([b, 1, 1, t]);
        let (heads, dh) = (c.num_attention_heads, c.hidden_size / c.num_attention_heads);
        for l in &self.layers {
            let split = |w: &(Tensor, Tensor)| {
                h.linear(&w.0, Some(&w.1))
                    .view([b, t, heads, dh])
                    .transpose(1, 2)
            };
            let ctx = Tensor::f_scaled_dot_product_attention(
                &split(&l.q),
                &split(&l.k),
                &split(&l.v),
                Some(&keep),
                0.0,
                false,
                None,
                false,
            )?
            .transpose(1, 2)
            .reshape([b, t, c.hidden_size]);
            let a = layer_norm(
                &(&h + ctx.linear(&l.o.0, Some(&l.o.1))),
                &l.attn_ln,
                c.layer_norm_eps,
            );
            let up = a.linear(&l.up.0, Some(&l.up.1)).gelu(c.gelu);
            h = layer_norm(
                &(&a + up.linear(&l.down.0, Some(&l.down.1))),
                &l.out_ln,
                c.layer_norm_eps,
            );
        }
        Ok(h)
    }
}

fn layer_norm(x: &Tensor, w: &(Tensor, Tensor), eps: f64) -> Tensor {
    let h = *x.size().last().expect("a hidden dimension");
    x.layer_norm([h], Some(&w.0), Some(&w.1), eps, false)
}
