//! The Qwen2 / Qwen3 decoder on plain tch tensors: loading from a HF checkpoint, the full-sequence
//! forward pass (causal, padded or packed attention), the LM head, parameter access for training
//! and weight updates, and saving back to HF layout. Numerics follow transformers: RMSNorm in
//! float32, RoPE cos/sin computed in float32 and cast to the model dtype.

use super::config::{ModelType, QwenConfig};
use super::weights::{self, DEFAULT_MAX_SHARD_BYTES};
use crate::{Result, TorchError};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Which query/key pairs may attend, for [`QwenModel::forward_hidden`] (always causal within a row).
pub enum AttentionMask {
    /// Every token of a row attends to every earlier token of the row.
    Causal,
    /// `[B, T]` bool, true = real token: keys at padding are masked out (padding queries attend
    /// only to themselves, so their outputs are finite and meaningless).
    Padded(Tensor),
    /// `[B, T]` int64 sequence ids: a token attends to earlier tokens with the same id (several
    /// sequences packed in one row; positions restart per sequence).
    Packed(Tensor),
}

/// The parameters of one decoder layer (biases and q/k norms only where the config has them).
pub(super) struct Layer {
    q_w: Tensor,
    q_b: Option<Tensor>,
    k_w: Tensor,
    k_b: Option<Tensor>,
    v_w: Tensor,
    v_b: Option<Tensor>,
    o_w: Tensor,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    gate: Tensor,
    up: Tensor,
    down: Tensor,
    in_norm: Tensor,
    post_norm: Tensor,
}

/// Names (after `model.layers.{i}.`) and fields of a layer, in HF order.
macro_rules! layer_fields {
    ($l:expr, $as:ident, $($r:tt)+) => {
        [
            ("self_attn.q_proj.weight", Some($($r)+ $l.q_w)),
            ("self_attn.q_proj.bias", $l.q_b.$as()),
            ("self_attn.k_proj.weight", Some($($r)+ $l.k_w)),
            ("self_attn.k_proj.bias", $l.k_b.$as()),
            ("self_attn.v_proj.weight", Some($($r)+ $l.v_w)),
            ("self_attn.v_proj.bias", $l.v_b.$as()),
            ("self_attn.o_proj.weight", Some($($r)+ $l.o_w)),
            ("self_attn.q_norm.weight", $l.q_norm.$as()),
            ("self_attn.k_norm.weight", $l.k_norm.$as()),
            ("mlp.gate_proj.weight", Some($($r)+ $l.gate)),
            ("mlp.up_proj.weight", Some($($r)+ $l.up)),
            ("mlp.down_proj.weight", Some($($r)+ $l.down)),
            ("input_layernorm.weight", Some($($r)+ $l.in_norm)),
            ("post_attention_layernorm.weight", Some($($r)+ $l.post_norm)),
        ]
    };
}

/// Attention over a layer's `q [B, heads, T, hd]`, `k`/`v` `[B, kv_heads, T, hd]` (after RoPE);
/// returns `[B, heads, T, hd]`. The full forward uses a mask; the cached paths read and write
/// the KV cache here.
pub(super) type Attend<'a> = dyn FnMut(usize, &Tensor, &Tensor, &Tensor) -> Result<Tensor> + 'a;

/// A Qwen-family causal LM held as plain tensors on one device in one dtype.
pub struct QwenModel {
    config: QwenConfig,
    device: Device,
    kind: Kind,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    /// `None` when the LM head is tied to the embedding.
    lm_head: Option<Tensor>,
    /// float32 `[head_dim / 2]` on the model device.
    inv_freq: Tensor,
    /// RoPE attention factor multiplied into cos/sin (YaRN; 1 otherwise).
    rope_scale: f64,
    source_dir: Option<PathBuf>,
}

fn check_kind(kind: Kind) -> Result<()> {
    match kind {
        Kind::Float | Kind::BFloat16 | Kind::Half => Ok(()),
        other => Err(TorchError::config(
            "dtype",
            format!("model dtype must be float32, bfloat16 or float16, got {other:?}"),
        )),
    }
}

/// RMSNorm as transformers computes it: variance in float32, scale in the input dtype.
fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Tensor {
    let kind = x.kind();
    let xf = x.to_kind(Kind::Float);
    let var = xf.square().mean_dim(-1, true, Kind::Float);
    weight * (xf * (var + eps).rsqrt()).to_kind(kind)
}

fn rotate_half(x: &Tensor) -> Tensor {
    let half = x.size()[x.dim() - 1] / 2;
    let (x1, x2) = (x.narrow(-1, 0, half), x.narrow(-1, half, half));
    Tensor::cat(&[-x2, x1], -1)
}

fn bad_tensor(name: &str, msg: String) -> TorchError {
    TorchError::BadTensor {
        name: name.into(),
        msg,
    }
}

impl QwenModel {
    /// Loads a HF checkpoint directory (config.json + safetensors, sharded or not) onto `device`
    /// in `kind` (float32, bfloat16 or float16).
    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<QwenModel> {
        check_kind(kind)?;
        let config = QwenConfig::from_dir(dir)?;
        let files = weights::read_weight_files(dir)?;
        let tensors = weights::check_weights(&config, dir, files)?;
        let mut model = QwenModel::from_tensors(config, tensors, device, kind)?;
        model.source_dir = Some(dir.to_path_buf());
        tracing::info!(
            dir = %dir.display(),
            model_type = model.config.model_type.as_str(),
            layers = model.config.num_hidden_layers,
            ?device,
            ?kind,
            "loaded Qwen model"
        );
        Ok(model)
    }

    /// Builds a model from checked tensors (see [`weights::check_weights`]) keyed by HF name.
    pub fn from_tensors(
        config: QwenConfig,
        mut tensors: HashMap<String, Tensor>,
        device: Device,
        kind: Kind,
    ) -> Result<QwenModel> {
        check_kind(kind)?;
        let mut take = |name: &str| -> Result<Tensor> {
            let t = tensors
                .remove(name)
                .ok_or_else(|| bad_tensor(name, "missing from the model's tensors".into()))?;
            Ok(t.f_to_device_(device, kind, false, true)?.detach())
        };
        let mut layers = Vec::with_capacity(config.num_hidden_layers as usize);
        for i in 0..config.num_hidden_layers {
            let p = format!("model.layers.{i}.");
            let bias = config.attention_bias;
            let qwen3 = config.model_type == ModelType::Qwen3;
            let mut opt =
                |on: bool, name: &str| on.then(|| take(&format!("{p}{name}"))).transpose();
            layers.push(Layer {
                q_b: opt(bias, "self_attn.q_proj.bias")?,
                k_b: opt(bias, "self_attn.k_proj.bias")?,
                v_b: opt(bias, "self_attn.v_proj.bias")?,
                q_norm: opt(qwen3, "self_attn.q_norm.weight")?,
                k_norm: opt(qwen3, "self_attn.k_norm.weight")?,
                q_w: take(&format!("{p}self_attn.q_proj.weight"))?,
                k_w: take(&format!("{p}self_attn.k_proj.weight"))?,
                v_w: take(&format!("{p}self_attn.v_proj.weight"))?,
                o_w: take(&format!("{p}self_attn.o_proj.weight"))?,
                gate: take(&format!("{p}mlp.gate_proj.weight"))?,
                up: take(&format!("{p}mlp.up_proj.weight"))?,
                down: take(&format!("{p}mlp.down_proj.weight"))?,
                in_norm: take(&format!("{p}input_layernorm.weight"))?,
                post_norm: take(&format!("{p}post_attention_layernorm.weight"))?,
            });
        }
        let embed = take("model.embed_tokens.weight")?;
        let norm = take("model.norm.weight")?;
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            Some(take("lm_head.weight")?)
        };
        let (inv, rope_scale) = config.rope.inv_freq(config.head_dim);
        let inv: Vec<f32> = inv.iter().map(|&x| x as f32).collect();
        let inv_freq = Tensor::from_slice(&inv).to_device(device);
        Ok(QwenModel {
            config,
            device,
            kind,
            embed,
            layers,
            norm,
            lm_head,
            inv_freq,
            rope_scale,
            source_dir: None,
        })
    }

    pub fn config(&self) -> &QwenConfig {
        &self.config
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// EOS ids of config.json and generation_config.json.
    pub fn eos_token_ids(&self) -> Vec<u32> {
        self.config.eos_token_ids.clone()
    }

    /// The directory the model was loaded from (tokenizer files are copied from there on save).
    pub fn source_dir(&self) -> Option<&Path> {
        self.source_dir.as_deref()
    }

    /// Every parameter with its HF name, in HF order (tied models list only the embedding).
    fn params(&self) -> Vec<(String, &Tensor)> {
        let mut out = vec![("model.embed_tokens.weight".to_string(), &self.embed)];
        for (i, l) in self.layers.iter().enumerate() {
            for (name, t) in layer_fields!(l, as_ref, &) {
                if let Some(t) = t {
                    out.push((format!("model.layers.{i}.{name}"), t));
                }
            }
        }
        out.push(("model.norm.weight".to_string(), &self.norm));
        if let Some(h) = &self.lm_head {
            out.push(("lm_head.weight".to_string(), h));
        }
        out
    }

    fn params_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        let mut out = vec![("model.embed_tokens.weight".to_string(), &mut self.embed)];
        for (i, l) in self.layers.iter_mut().enumerate() {
            for (name, t) in layer_fields!(l, as_mut, &mut) {
                if let Some(t) = t {
                    out.push((format!("model.layers.{i}.{name}"), t));
                }
            }
        }
        out.push(("model.norm.weight".to_string(), &mut self.norm));
        if let Some(h) = &mut self.lm_head {
            out.push(("lm_head.weight".to_string(), h));
        }
        out
    }

    /// Parameters under HF names as shallow clones sharing storage (and autograd identity) with
    /// the model: an optimizer updating them in place updates the model.
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        self.params()
            .into_iter()
            .map(|(n, t)| (n, t.shallow_clone()))
            .collect()
    }

    /// Number of scalar parameters (the tied LM head counted once).
    pub fn num_parameters(&self) -> i64 {
        self.params().iter().map(|(_, t)| t.numel() as i64).sum()
    }

    pub fn set_requires_grad(&mut self, on: bool) {
        for (_, t) in self.params_mut() {
            *t = t.set_requires_grad(on);
        }
    }

    /// Copies `named` (HF names, any dtype/device) into the parameters in place, under no_grad.
    /// Every parameter must be given exactly once; unknown names and wrong shapes are errors
    /// naming the tensor, and nothing is copied unless all checks pass.
    pub fn set_weights(&mut self, named: &[(String, Tensor)]) -> Result<()> {
        let mut given: HashMap<&str, &Tensor> = HashMap::with_capacity(named.len());
        for (name, t) in named {
            if given.insert(name.as_str(), t).is_some() {
                return Err(bad_tensor(name, "given more than once".into()));
            }
        }
        let (device, kind) = (self.device, self.kind);
        let mut params = self.params_mut();
        for (name, p) in &params {
            let t = given
                .get(name.as_str())
                .ok_or_else(|| bad_tensor(name, "missing from the new weights".into()))?;
            if t.size() != p.size() {
                return Err(bad_tensor(
                    name,
                    format!("has shape {:?}, expected {:?}", t.size(), p.size()),
                ));
            }
        }
        if given.len() != params.len() {
            let known: Vec<&str> = params.iter().map(|(n, _)| n.as_str()).collect();
            let extra = given
                .keys()
                .find(|n| !known.contains(n))
                .copied()
                .unwrap_or("?");
            return Err(bad_tensor(extra, "is not a parameter of this model".into()));
        }
        tch::no_grad(|| -> Result<()> {
            for (name, p) in params.iter_mut() {
                let t = given[name.as_str()].f_to_device_(device, kind, false, false)?;
                p.f_copy_(&t)?;
            }
            Ok(())
        })
    }

    /// Writes this model as a HF checkpoint at `dir` (see [`weights::save_hf`]): the source
    /// config.json (dtype field updated), the weights in the model's dtype, and the tokenizer
    /// files of the source directory.
    pub fn save_hf(&self, dir: &Path) -> Result<()> {
        self.save_hf_sharded(dir, DEFAULT_MAX_SHARD_BYTES)
    }

    /// [`QwenModel::save_hf`] with shards of at most `max_shard_bytes`.
    pub fn save_hf_sharded(&self, dir: &Path, max_shard_bytes: u64) -> Result<()> {
        let tensors: Vec<(String, Tensor)> = tch::no_grad(|| {
            self.named_parameters()
                .into_iter()
                .map(|(n, t)| (n, t.detach()))
                .collect()
        });
        weights::save_hf(
            dir,
            &self.config.raw,
            &tensors,
            self.source_dir.as_deref(),
            max_shard_bytes,
        )
    }

    /// The `[vocab, hidden]` output projection (the embedding when tied).
    pub fn lm_head_weight(&self) -> Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed).shallow_clone()
    }

    /// Float32 logits `[.., vocab]` of final hidden states `[.., hidden]` (matmul in model dtype).
    pub fn logits(&self, hidden: &Tensor) -> Tensor {
        hidden
            .linear::<&Tensor>(self.lm_head.as_ref().unwrap_or(&self.embed), None)
            .to_kind(Kind::Float)
    }

    /// Final-normed hidden states `[B, T, hidden]` of `input_ids` `[B, T]` (int64) at `positions`
    /// `[B, T]` (int64) under `mask`. Runs with autograd when parameters require grad.
    pub fn forward_hidden(
        &self,
        input_ids: &Tensor,
        positions: &Tensor,
        mask: &AttentionMask,
    ) -> Result<Tensor> {
        let (b, t) = self.check_ids(input_ids, positions)?;
        if input_ids.numel() > 0 {
            let vocab = self.config.vocab_size;
            let (lo, hi) = (
                input_ids.min().int64_value(&[]),
                input_ids.max().int64_value(&[]),
            );
            if lo < 0 || hi >= vocab {
                return Err(bad_tensor(
                    "input_ids",
                    format!("token ids must be in [0, {vocab}), got values in [{lo}, {hi}]"),
                ));
            }
        }
        let attn_mask = match mask {
            AttentionMask::Causal => None,
            AttentionMask::Padded(m) => Some(self.padded_mask(m, b, t)?),
            AttentionMask::Packed(ids) => Some(self.packed_mask(ids, b, t)?),
        };
        let mut attend = |_: usize, q: &Tensor, k: &Tensor, v: &Tensor| -> Result<Tensor> {
            Ok(Tensor::f_scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask.as_ref(),
                0.0,
                attn_mask.is_none(),
                None,
                true,
            )?)
        };
        self.run_layers(input_ids, positions, &mut attend)
    }

    fn check_ids(&self, input_ids: &Tensor, positions: &Tensor) -> Result<(i64, i64)> {
        for (name, t) in [("input_ids", input_ids), ("positions", positions)] {
            if t.kind() != Kind::Int64 || t.dim() != 2 {
                return Err(bad_tensor(
                    name,
                    format!(
                        "expected a 2-D int64 tensor [batch, seq], got {:?} {:?}",
                        t.kind(),
                        t.size()
                    ),
                ));
            }
        }
        if positions.size() != input_ids.size() {
            return Err(bad_tensor(
                "positions",
                format!(
                    "shape {:?} differs from input_ids {:?}",
                    positions.size(),
                    input_ids.size()
                ),
            ));
        }
        let size = input_ids.size();
        Ok((size[0], size[1]))
    }

    fn check_mask_shape(name: &str, m: &Tensor, kind: Kind, b: i64, t: i64) -> Result<()> {
        if m.kind() != kind || m.size() != [b, t] {
            return Err(bad_tensor(
                name,
                format!(
                    "expected {kind:?} [{b}, {t}] like input_ids, got {:?} {:?}",
                    m.kind(),
                    m.size()
                ),
            ));
        }
        Ok(())
    }

    fn causal(&self, t: i64) -> Tensor {
        Tensor::ones([t, t], (Kind::Bool, self.device)).tril(0)
    }

    fn padded_mask(&self, m: &Tensor, b: i64, t: i64) -> Result<Tensor> {
        Self::check_mask_shape("attention_mask", m, Kind::Bool, b, t)?;
        let keys = m.to_device(self.device).view([b, 1, 1, t]);
        let eye = Tensor::eye(t, (Kind::Bool, self.device));
        Ok(self.causal(t).logical_and(&keys).logical_or(&eye))
    }

    fn packed_mask(&self, ids: &Tensor, b: i64, t: i64) -> Result<Tensor> {
        Self::check_mask_shape("sequence_ids", ids, Kind::Int64, b, t)?;
        let ids = ids.to_device(self.device);
        let same = ids.view([b, 1, t, 1]).eq_tensor(&ids.view([b, 1, 1, t]));
        Ok(self.causal(t).logical_and(&same))
    }

    /// cos and sin `[B, 1, T, head_dim]` in the model dtype for positions `[B, T]`.
    fn rope(&self, positions: &Tensor) -> (Tensor, Tensor) {
        let pos = positions.to_device(self.device).to_kind(Kind::Float);
        let freqs = pos.unsqueeze(-1) * self.inv_freq.view([1, 1, -1]);
        let emb = Tensor::cat(&[&freqs, &freqs], -1).unsqueeze(1);
        let cos = (emb.cos() * self.rope_scale).to_kind(self.kind);
        let sin = (emb.sin() * self.rope_scale).to_kind(self.kind);
        (cos, sin)
    }

    /// Embeds `input_ids` `[B, T]`, runs every layer (attention through `attend`) and applies the
    /// final norm.
    pub(super) fn run_layers(
        &self,
        input_ids: &Tensor,
        positions: &Tensor,
        attend: &mut Attend<'_>,
    ) -> Result<Tensor> {
        let ids = input_ids.to_device(self.device);
        let (cos, sin) = self.rope(positions);
        let mut x = Tensor::f_embedding(&self.embed, &ids, -1, false, false)?;
        for (i, layer) in self.layers.iter().enumerate() {
            x = self.layer_forward(i, layer, &x, &cos, &sin, attend)?;
        }
        Ok(rms_norm(&x, &self.norm, self.config.rms_norm_eps))
    }

    fn layer_forward(
        &self,
        index: usize,
        l: &Layer,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        attend: &mut Attend<'_>,
    ) -> Result<Tensor> {
        let c = &self.config;
        let size = x.size();
        let (b, t) = (size[0], size[1]);
        let h = rms_norm(x, &l.in_norm, c.rms_norm_eps);
        let project = |w: &Tensor, bias: &Option<Tensor>, norm: &Option<Tensor>, heads: i64| {
            let y = h.linear(w, bias.as_ref()).view([b, t, heads, c.head_dim]);
            let y = match norm {
                Some(n) => rms_norm(&y, n, c.rms_norm_eps),
                None => y,
            };
            y.transpose(1, 2)
        };
        let rotate = |y: Tensor| &y * cos + rotate_half(&y) * sin;
        let q = rotate(project(&l.q_w, &l.q_b, &l.q_norm, c.num_attention_heads));
        let k = rotate(project(&l.k_w, &l.k_b, &l.k_norm, c.num_key_value_heads));
        let v = project(&l.v_w, &l.v_b, &None, c.num_key_value_heads);
        let a = attend(index, &q, &k, &v)?;
        let a = a
            .transpose(1, 2)
            .reshape([b, t, c.num_attention_heads * c.head_dim])
            .linear::<&Tensor>(&l.o_w, None);
        let x = x + a;
        let h = rms_norm(&x, &l.post_norm, c.rms_norm_eps);
        let gated = h.linear::<&Tensor>(&l.gate, None).silu() * h.linear::<&Tensor>(&l.up, None);
        Ok(x + gated.linear::<&Tensor>(&l.down, None))
    }
}
