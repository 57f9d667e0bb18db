//! The Qwen2 / Qwen2.5 / Qwen3 model configuration, read from a HF `config.json` (and the EOS ids of
//! `generation_config.json`), with the rotary-embedding parameters resolved from either the classic
//! layout (`rope_theta` + `rope_scaling`) or the transformers-5 layout (`rope_parameters`).

use crate::{Result, TorchError};
use serde::Deserialize;
use serde_json::Value;
use std::path::Path;

/// Which decoder family a checkpoint belongs to; they differ in biases and q/k norms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelType {
    /// Qwen2 / Qwen2.5: biases on q, k and v projections, no q/k norms.
    Qwen2,
    /// Qwen3: RMSNorm over each head of q and k, biases only when `attention_bias`.
    Qwen3,
}

impl ModelType {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelType::Qwen2 => "qwen2",
            ModelType::Qwen3 => "qwen3",
        }
    }
}

/// How rotary frequencies are scaled for long contexts (HF `rope_type`).
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    Default,
    /// Positions divided by `factor` (inverse frequencies divided by it).
    Linear { factor: f64 },
    /// YaRN (Qwen2.5 long context): blend of interpolated and extrapolated frequencies plus an
    /// attention factor applied to cos/sin.
    Yarn {
        factor: f64,
        original_max_position_embeddings: f64,
        beta_fast: f64,
        beta_slow: f64,
        attention_factor: Option<f64>,
        mscale: Option<f64>,
        mscale_all_dim: Option<f64>,
        truncate: bool,
    },
}

/// Rotary embedding settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeConfig {
    pub theta: f64,
    pub scaling: RopeScaling,
}

/// The fields of a Qwen config.json this crate uses. `raw` keeps the file as read so a saved
/// checkpoint carries every field (transformers can load it back).
#[derive(Debug, Clone)]
pub struct QwenConfig {
    pub model_type: ModelType,
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_key_value_heads: i64,
    pub head_dim: i64,
    pub rms_norm_eps: f64,
    pub tie_word_embeddings: bool,
    pub max_position_embeddings: i64,
    /// Whether q/k/v projections carry biases (always for qwen2).
    pub attention_bias: bool,
    /// EOS ids from config.json and generation_config.json (union, in order of appearance).
    pub eos_token_ids: Vec<u32>,
    /// `torch_dtype` / `dtype` as written, e.g. `bfloat16`.
    pub torch_dtype: Option<String>,
    pub rope: RopeConfig,
    pub raw: Value,
}

/// Serde view of config.json; optional fields get HF's defaults in [`QwenConfig::from_json`].
#[derive(Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    vocab_size: i64,
    hidden_size: i64,
    intermediate_size: i64,
    num_hidden_layers: i64,
    num_attention_heads: i64,
    num_key_value_heads: Option<i64>,
    head_dim: Option<i64>,
    rms_norm_eps: Option<f64>,
    tie_word_embeddings: Option<bool>,
    max_position_embeddings: Option<i64>,
    attention_bias: Option<bool>,
    eos_token_id: Option<Value>,
    torch_dtype: Option<String>,
    dtype: Option<String>,
    rope_theta: Option<f64>,
    rope_scaling: Option<Value>,
    rope_parameters: Option<Value>,
    original_max_position_embeddings: Option<f64>,
    hidden_act: Option<String>,
    use_sliding_window: Option<bool>,
}

impl QwenConfig {
    /// Reads `dir/config.json` and, when present, the EOS ids of `dir/generation_config.json`.
    pub fn from_dir(dir: &Path) -> Result<QwenConfig> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| TorchError::io(&path, e))?;
        let mut config = QwenConfig::from_json(&text, &path)?;
        let gen_path = dir.join("generation_config.json");
        if gen_path.is_file() {
            let text =
                std::fs::read_to_string(&gen_path).map_err(|e| TorchError::io(&gen_path, e))?;
            let value: Value = serde_json::from_str(&text)
                .map_err(|e| TorchError::bad_file(&gen_path, format!("invalid JSON: {e}")))?;
            for id in eos_ids(value.get("eos_token_id"), &gen_path)? {
                if !config.eos_token_ids.contains(&id) {
                    config.eos_token_ids.push(id);
                }
            }
        }
        Ok(config)
    }

    /// Parses config.json text; `path` only names the file in errors.
    pub fn from_json(text: &str, path: &Path) -> Result<QwenConfig> {
        let bad = |msg: String| TorchError::bad_file(path, msg);
        let raw: Value =
            serde_json::from_str(text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        let c: RawConfig = serde_json::from_value(raw.clone())
            .map_err(|e| bad(format!("not a Qwen config: {e}")))?;
        let model_type = match c.model_type.as_deref() {
            Some("qwen2") => ModelType::Qwen2,
            Some("qwen3") => ModelType::Qwen3,
            Some(other) => {
                return Err(bad(format!(
                    "unsupported model_type `{other}` (supported: qwen2, qwen3)"
                )))
            }
            None => return Err(bad("missing `model_type` (supported: qwen2, qwen3)".into())),
        };
        if let Some(act) = c.hidden_act.as_deref().filter(|a| *a != "silu") {
            return Err(bad(format!("unsupported hidden_act `{act}` (only silu)")));
        }
        if c.use_sliding_window == Some(true) {
            return Err(bad("use_sliding_window=true is not supported".into()));
        }
        let heads = c.num_attention_heads;
        let kv_heads = c.num_key_value_heads.unwrap_or(heads);
        let head_dim = match model_type {
            ModelType::Qwen3 => c.head_dim.unwrap_or(c.hidden_size / heads.max(1)),
            ModelType::Qwen2 => c.hidden_size / heads.max(1),
        };
        let max_pos = c.max_position_embeddings.unwrap_or(32768);
        let rope = parse_rope(&c, max_pos as f64, path)?;
        let config = QwenConfig {
            model_type,
            vocab_size: c.vocab_size,
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            num_hidden_layers: c.num_hidden_layers,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            rms_norm_eps: c.rms_norm_eps.unwrap_or(1e-6),
            tie_word_embeddings: c.tie_word_embeddings.unwrap_or(false),
            max_position_embeddings: max_pos,
            attention_bias: model_type == ModelType::Qwen2 || c.attention_bias.unwrap_or(false),
            eos_token_ids: eos_ids(c.eos_token_id.as_ref(), path)?,
            torch_dtype: c.torch_dtype.or(c.dtype),
            rope,
            raw,
        };
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
        ];
        for (name, v) in positive {
            if v <= 0 {
                return Err(TorchError::bad_file(
                    path,
                    format!("`{name}` must be positive, got {v}"),
                ));
            }
        }
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return Err(TorchError::bad_file(
                path,
                format!(
                    "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                    self.num_attention_heads, self.num_key_value_heads
                ),
            ));
        }
        if self.head_dim % 2 != 0 {
            return Err(TorchError::bad_file(
                path,
                format!("head_dim {} must be even for RoPE", self.head_dim),
            ));
        }
        Ok(())
    }
}

/// `eos_token_id` as an int or a list of ints (absent or null: none).
fn eos_ids(value: Option<&Value>, path: &Path) -> Result<Vec<u32>> {
    let bad = || TorchError::bad_file(path, "`eos_token_id` must be an integer or a list of them");
    let as_id = |v: &Value| {
        v.as_u64()
            .and_then(|x| u32::try_from(x).ok())
            .ok_or_else(bad)
    };
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items.iter().map(as_id).collect(),
        Some(v) => Ok(vec![as_id(v)?]),
    }
}

/// Resolves RoPE settings: `rope_parameters` (transformers 5) wins over `rope_scaling` +
/// `rope_theta` (classic layout).
fn parse_rope(c: &RawConfig, max_pos: f64, path: &Path) -> Result<RopeConfig> {
    let params = match (&c.rope_parameters, &c.rope_scaling) {
        (Some(p @ Value::Object(_)), _) => Some(p),
        (_, Some(s @ Value::Object(_))) => Some(s),
        _ => None,
    };
    let num = |key: &str| params.and_then(|p| p.get(key)).and_then(Value::as_f64);
    let theta = num("rope_theta").or(c.rope_theta).unwrap_or(10000.0);
    let rope_type = params
        .and_then(|p| p.get("rope_type").or_else(|| p.get("type")))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let factor = |name: &str| -> Result<f64> {
        match num("factor") {
            Some(f) if f >= 1.0 => Ok(f),
            Some(f) => Err(TorchError::bad_file(
                path,
                format!("{name} rope scaling `factor` must be >= 1, got {f}"),
            )),
            None => Err(TorchError::bad_file(
                path,
                format!("{name} rope scaling needs a `factor`"),
            )),
        }
    };
    let scaling = match rope_type {
        "default" => RopeScaling::Default,
        "linear" => RopeScaling::Linear {
            factor: factor("linear")?,
        },
        "yarn" => {
            let original = c
                .original_max_position_embeddings
                .or_else(|| num("original_max_position_embeddings"))
                .unwrap_or(max_pos);
            let factor = match num("factor") {
                Some(_) => factor("yarn")?,
                None => max_pos / original,
            };
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings: original,
                beta_fast: num("beta_fast").filter(|b| *b != 0.0).unwrap_or(32.0),
                beta_slow: num("beta_slow").filter(|b| *b != 0.0).unwrap_or(1.0),
                attention_factor: num("attention_factor"),
                mscale: num("mscale"),
                mscale_all_dim: num("mscale_all_dim"),
                truncate: params
                    .and_then(|p| p.get("truncate"))
                    .and_then(Value::as_bool)
                    .unwrap_or(true),
            }
        }
        other => {
            return Err(TorchError::bad_file(
                path,
                format!("unsupported rope type `{other}` (supported: default, linear, yarn)"),
            ))
        }
    };
    Ok(RopeConfig { theta, scaling })
}

impl RopeConfig {
    /// Inverse frequencies (`head_dim / 2` values) and the factor applied to cos/sin, following
    /// transformers' `modeling_rope_utils`.
    pub fn inv_freq(&self, head_dim: i64) -> (Vec<f64>, f64) {
        let dim = head_dim as f64;
        let base = self.theta;
        let pos_freqs: Vec<f64> = (0..head_dim / 2)
            .map(|i| base.powf((2 * i) as f64 / dim))
            .collect();
        match &self.scaling {
            RopeScaling::Default => (pos_freqs.iter().map(|p| 1.0 / p).collect(), 1.0),
            RopeScaling::Linear { factor } => {
                (pos_freqs.iter().map(|p| 1.0 / (p * factor)).collect(), 1.0)
            }
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                beta_fast,
                beta_slow,
                attention_factor,
                mscale,
                mscale_all_dim,
                truncate,
            } => {
                let get_mscale = |scale: f64, m: f64| {
                    if scale <= 1.0 {
                        1.0
                    } else {
                        0.1 * m * scale.ln() + 1.0
                    }
                };
                let attn = attention_factor.unwrap_or(match (mscale, mscale_all_dim) {
                    (Some(m), Some(a)) if *m != 0.0 && *a != 0.0 => {
                        get_mscale(*factor, *m) / get_mscale(*factor, *a)
                    }
                    _ => get_mscale(*factor, 1.0),
                });
                let correction_dim = |rot: f64| {
                    dim * (original_max_position_embeddings / (rot * 2.0 * std::f64::consts::PI))
                        .ln()
                        / (2.0 * base.ln())
                };
                let (mut low, mut high) = (correction_dim(*beta_fast), correction_dim(*beta_slow));
                if *truncate {
                    low = low.floor();
                    high = high.ceil();
                }
                let low = low.max(0.0);
                let mut high = high.min(dim - 1.0);
                if low == high {
                    high += 0.001;
                }
                let inv = pos_freqs
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        // HF computes the ramp in float32; the blend weight is exact enough here.
                        let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                        let extrapolation = 1.0 - ramp;
                        let (inter, extra) = (1.0 / (factor * p), 1.0 / p);
                        inter * (1.0 - extrapolation) + extra * extrapolation
                    })
                    .collect();
                (inv, attn)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Value {
        serde_json::json!({
            "model_type": "qwen2", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
            "rms_norm_eps": 1e-6, "eos_token_id": [3, 4], "rope_theta": 1000.0
        })
    }

    fn parse(v: &Value) -> Result<QwenConfig> {
        QwenConfig::from_json(&v.to_string(), Path::new("x/config.json"))
    }

    #[test]
    fn reads_classic_layout_and_defaults() {
        let c = parse(&base()).unwrap();
        assert_eq!(c.model_type, ModelType::Qwen2);
        assert_eq!(c.head_dim, 4);
        assert!(c.attention_bias);
        assert_eq!(c.eos_token_ids, vec![3, 4]);
        assert_eq!(c.rope.theta, 1000.0);
        assert_eq!(c.rope.scaling, RopeScaling::Default);
    }

    #[test]
    fn rope_parameters_win_and_yarn_has_attention_factor() {
        let mut v = base();
        v["rope_parameters"] = serde_json::json!({
            "rope_type": "yarn", "rope_theta": 5e5, "factor": 4.0,
            "original_max_position_embeddings": 64
        });
        let c = parse(&v).unwrap();
        assert_eq!(c.rope.theta, 5e5);
        let (inv, attn) = c.rope.inv_freq(4);
        assert!((attn - (0.1 * 4f64.ln() + 1.0)).abs() < 1e-12);
        assert_eq!(inv.len(), 2);
    }

    #[test]
    fn rejects_unknown_model_and_rope_types() {
        let mut v = base();
        v["model_type"] = "llama".into();
        let err = parse(&v).unwrap_err().to_string();
        assert!(
            err.contains("llama") && err.contains("config.json"),
            "{err}"
        );
        let mut v = base();
        v["rope_scaling"] = serde_json::json!({"type": "dynamic", "factor": 2.0});
        let err = parse(&v).unwrap_err().to_string();
        assert!(err.contains("dynamic"), "{err}");
    }

    #[test]
    fn linear_divides_inverse_frequencies() {
        let mut v = base();
        v["rope_scaling"] = serde_json::json!({"type": "linear", "factor": 2.0});
        let c = parse(&v).unwrap();
        let (inv, attn) = c.rope.inv_freq(4);
        assert_eq!(attn, 1.0);
        assert!((inv[0] - 0.5).abs() < 1e-12);
        assert!((inv[1] - 0.5 / 1000f64.powf(0.5)).abs() < 1e-12);
    }
}
