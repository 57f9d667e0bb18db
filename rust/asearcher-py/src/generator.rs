//! The embedded generator in Python: `Generator` (loads a model directory, runs the engine thread
//! of `asearcher_torch::generate`) and `GenerationOutput`. Blocking calls release the GIL and
//! answer Ctrl-C; `a`-prefixed methods return asyncio awaitables. Requests of a call whose caller
//! stops waiting (Ctrl-C, a cancelled task) are aborted in the engine.

use crate::errors::{config_err, torch_err};
use crate::runtime::{awaitable, wait_for_future};
use asearcher_torch::generate::{
    spawn, Detokenize, FinishReason, GenerateOutput, GenerateRequest, GeneratorHandle,
    GeneratorOptions, SamplingParams, StopMatch, UpdateOptions, WeightUpdate,
};
use asearcher_torch::model::QwenModel;
use asearcher_train::embedded::TokenizerDetok;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The stop that ended a request: a token id or a stop string.
#[derive(Clone, Debug, PartialEq, IntoPyObject)]
enum Matched {
    Token(u32),
    Text(String),
}

/// The result of one prompt.
#[pyclass(name = "GenerationOutput", module = "asearcher._core", frozen, get_all)]
#[derive(Clone)]
pub struct PyGenerationOutput {
    rid: String,
    output_ids: Vec<u32>,
    output_logprobs: Vec<f32>,
    output_versions: Vec<u64>,
    /// "stop", "length" or "abort".
    finish_reason: &'static str,
    matched_stop: Option<Matched>,
    /// Why the request was aborted (None unless finish_reason is "abort").
    abort_message: Option<String>,
    prompt_tokens: usize,
    queue_seconds: f64,
    total_seconds: f64,
}

impl From<GenerateOutput> for PyGenerationOutput {
    fn from(o: GenerateOutput) -> Self {
        let (finish_reason, matched_stop, abort_message) = match o.finish {
            FinishReason::Stop { matched } => (
                "stop",
                Some(match matched {
                    StopMatch::Token(t) => Matched::Token(t),
                    StopMatch::Text(s) => Matched::Text(s),
                }),
                None,
            ),
            FinishReason::Length => ("length", None, None),
            FinishReason::Abort { message } => ("abort", None, Some(message)),
        };
        PyGenerationOutput {
            rid: o.rid,
            output_ids: o.output_ids,
            output_logprobs: o.output_logprobs,
            output_versions: o.output_versions,
            finish_reason,
            matched_stop,
            abort_message,
            prompt_tokens: o.prompt_tokens,
            queue_seconds: o.queue_seconds,
            total_seconds: o.total_seconds,
        }
    }
}

#[pymethods]
impl PyGenerationOutput {
    fn __len__(&self) -> usize {
        self.output_ids.len()
    }

    fn __repr__(&self) -> String {
        format!(
            "GenerationOutput(rid={:?}, tokens={}, finish_reason={:?}, matched_stop={:?})",
            self.rid,
            self.output_ids.len(),
            self.finish_reason,
            self.matched_stop
        )
    }
}

/// Aborts the requests of a call if its future is dropped before they all answered.
struct AbortOnDrop {
    handle: GeneratorHandle,
    rids: Vec<String>,
    armed: bool,
}

impl AbortOnDrop {
    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if self.armed {
            for rid in &self.rids {
                let _ = self.handle.abort(rid);
            }
        }
    }
}

/// One seed per prompt: an int gives seed + i to prompt i, a list gives its items.
fn seeds_for(seed: Option<&Bound<'_, PyAny>>, n: usize) -> PyResult<Vec<Option<u64>>> {
    let Some(seed) = seed.filter(|s| !s.is_none()) else {
        return Ok(vec![None; n]);
    };
    if let Ok(base) = seed.extract::<u64>() {
        return Ok((0..n as u64).map(|i| Some(base.wrapping_add(i))).collect());
    }
    let list: Vec<u64> = seed
        .extract()
        .map_err(|_| config_err("seed", "must be None, a non-negative int or a list of them"))?;
    if list.len() != n {
        return Err(config_err(
            "seed",
            format!("has {} items for {n} prompts", list.len()),
        ));
    }
    Ok(list.into_iter().map(Some).collect())
}

/// Sampling settings shared by the prompts of one call.
struct CallParams {
    max_new_tokens: i64,
    temperature: f64,
    top_p: f64,
    top_k: i64,
    stop_token_ids: Vec<u32>,
    ignore_eos: bool,
}

impl CallParams {
    fn sampling(&self, seed: Option<u64>) -> PyResult<SamplingParams> {
        if self.max_new_tokens < 1 {
            return Err(config_err(
                "max_new_tokens",
                format!("must be at least 1, got {}", self.max_new_tokens),
            ));
        }
        let params = SamplingParams {
            max_new_tokens: self.max_new_tokens as usize,
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            stop: Vec::new(),
            stop_token_ids: self.stop_token_ids.clone(),
            ignore_eos: self.ignore_eos,
            seed,
        };
        params.validate().map_err(torch_err)?;
        Ok(params)
    }
}

/// A KV-cached, continuous-batching generator running a model directory in this process.
#[pyclass(name = "Generator", module = "asearcher._core", frozen, subclass)]
pub struct PyGenerator {
    handle: GeneratorHandle,
    next_rid: AtomicU64,
    pub(crate) model_dir: PathBuf,
}

/// The detokenizer of `model_dir` when it has a tokenizer.json (else stop strings are refused).
fn detokenizer_of(model_dir: &std::path::Path) -> Option<Arc<dyn Detokenize>> {
    if !model_dir.join("tokenizer.json").is_file() {
        return None;
    }
    match asearcher_tokenizer::Tokenizer::from_dir(model_dir) {
        Ok(tok) => Some(Arc::new(TokenizerDetok::new(Arc::new(tok)))),
        Err(e) => {
            tracing::warn!(dir = %model_dir.display(), error = %e, "no detokenizer: stop strings unavailable");
            None
        }
    }
}

impl PyGenerator {
    /// A handle on the running engine (for the rollout engine's embedded backend).
    pub(crate) fn handle(&self) -> GeneratorHandle {
        self.handle.clone()
    }

    fn requests(
        &self,
        prompts: Vec<Vec<u32>>,
        rids: Option<Vec<String>>,
        params: &CallParams,
        seed: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Vec<GenerateRequest>> {
        let n = prompts.len();
        let seeds = seeds_for(seed, n)?;
        let rids = match rids {
            Some(r) if r.len() != n => {
                return Err(config_err(
                    "rids",
                    format!("has {} items for {n} prompts", r.len()),
                ))
            }
            Some(r) => r,
            None => (0..n)
                .map(|_| format!("gen-{}", self.next_rid.fetch_add(1, Ordering::Relaxed)))
                .collect(),
        };
        prompts
            .into_iter()
            .zip(rids)
            .zip(seeds)
            .map(|((input_ids, rid), seed)| {
                Ok(GenerateRequest {
                    rid,
                    input_ids,
                    params: params.sampling(seed)?,
                })
            })
            .collect()
    }

    /// Queues every request now (in order) and returns the future of all outputs.
    fn submit_all(
        &self,
        requests: Vec<GenerateRequest>,
    ) -> PyResult<impl Future<Output = PyResult<Vec<PyGenerationOutput>>> + Send + 'static> {
        let mut guard = AbortOnDrop {
            handle: self.handle.clone(),
            rids: Vec::with_capacity(requests.len()),
            armed: true,
        };
        let mut pending = Vec::with_capacity(requests.len());
        for request in requests {
            guard.rids.push(request.rid.clone());
            pending.push(self.handle.submit(request).map_err(torch_err)?);
        }
        Ok(async move {
            let mut outputs = Vec::with_capacity(pending.len());
            for fut in pending {
                outputs.push(fut.await.map_err(torch_err)?.into());
            }
            guard.disarm();
            Ok(outputs)
        })
    }
}

#[pymethods]
impl PyGenerator {
    #[new]
    #[pyo3(signature = (model_dir, *, device = "cpu", dtype = "float32", max_running = 32, max_context = None, version = 0))]
    fn new(
        py: Python<'_>,
        model_dir: PathBuf,
        device: &str,
        dtype: &str,
        max_running: usize,
        max_context: Option<usize>,
        version: u64,
    ) -> PyResult<Self> {
        let device = asearcher_torch::parse_device(device).map_err(torch_err)?;
        let kind = asearcher_torch::parse_dtype(dtype).map_err(torch_err)?;
        if max_context == Some(0) {
            return Err(config_err("max_context", "must be at least 2, or None"));
        }
        let options = GeneratorOptions {
            max_running,
            max_context: max_context.unwrap_or(0),
            initial_version: version,
            detokenizer: detokenizer_of(&model_dir),
            ..GeneratorOptions::default()
        };
        let dir = model_dir.clone();
        let handle = py
            .detach(move || QwenModel::load(&dir, device, kind).and_then(|m| spawn(m, options)))
            .map_err(torch_err)?;
        Ok(PyGenerator {
            handle,
            next_rid: AtomicU64::new(0),
            model_dir,
        })
    }

    /// Generates for every prompt (they run batched) and returns the outputs in prompt order.
    #[pyo3(signature = (prompts, *, max_new_tokens = 128, temperature = 1.0, top_p = 1.0, top_k = -1, stop_token_ids = Vec::new(), ignore_eos = false, seed = None, rids = None))]
    #[allow(clippy::too_many_arguments)]
    fn generate(
        &self,
        py: Python<'_>,
        prompts: Vec<Vec<u32>>,
        max_new_tokens: i64,
        temperature: f64,
        top_p: f64,
        top_k: i64,
        stop_token_ids: Vec<u32>,
        ignore_eos: bool,
        seed: Option<Bound<'_, PyAny>>,
        rids: Option<Vec<String>>,
    ) -> PyResult<Vec<PyGenerationOutput>> {
        let params = CallParams {
            max_new_tokens,
            temperature,
            top_p,
            top_k,
            stop_token_ids,
            ignore_eos,
        };
        let requests = self.requests(prompts, rids, &params, seed.as_ref())?;
        let fut = self.submit_all(requests)?;
        wait_for_future(py, fut)
    }

    /// [`generate`] as an asyncio awaitable.
    #[pyo3(signature = (prompts, *, max_new_tokens = 128, temperature = 1.0, top_p = 1.0, top_k = -1, stop_token_ids = Vec::new(), ignore_eos = false, seed = None, rids = None))]
    #[allow(clippy::too_many_arguments)]
    fn agenerate<'py>(
        &self,
        py: Python<'py>,
        prompts: Vec<Vec<u32>>,
        max_new_tokens: i64,
        temperature: f64,
        top_p: f64,
        top_k: i64,
        stop_token_ids: Vec<u32>,
        ignore_eos: bool,
        seed: Option<Bound<'py, PyAny>>,
        rids: Option<Vec<String>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let params = CallParams {
            max_new_tokens,
            temperature,
            top_p,
            top_k,
            stop_token_ids,
            ignore_eos,
        };
        let requests = self.requests(prompts, rids, &params, seed.as_ref())?;
        let fut = self.submit_all(requests)?;
        awaitable(py, fut)
    }

    /// Aborts one request (queued or running); unknown ids are ignored.
    fn abort(&self, rid: &str) -> PyResult<()> {
        self.handle.abort(rid).map_err(torch_err)
    }

    fn abort_all(&self) -> PyResult<()> {
        self.handle.abort_all().map_err(torch_err)
    }

    /// Stops decoding after the current step; requests keep their place until `resume`.
    fn pause(&self, py: Python<'_>) -> PyResult<()> {
        let handle = self.handle.clone();
        wait_for_future(py, async move { handle.pause().await.map_err(torch_err) })
    }

    fn resume(&self) -> PyResult<()> {
        self.handle.resume().map_err(torch_err)
    }

    /// Loads the weights of `model_dir` between two decode steps; returns the new version.
    #[pyo3(signature = (model_dir, version = None, abort_in_flight = false, recompute_cache = false))]
    fn update_weights(
        &self,
        py: Python<'_>,
        model_dir: PathBuf,
        version: Option<u64>,
        abort_in_flight: bool,
        recompute_cache: bool,
    ) -> PyResult<u64> {
        let handle = self.handle.clone();
        let options = UpdateOptions {
            version,
            abort_in_flight,
            recompute_cache,
        };
        wait_for_future(py, async move {
            let update = WeightUpdate::FromDisk(model_dir);
            handle
                .update_weights(update, options)
                .await
                .map_err(torch_err)
        })
    }

    /// The policy version that tokens generated from now on carry.
    #[getter]
    fn version(&self) -> u64 {
        self.handle.version()
    }

    #[getter]
    fn model_dir(&self) -> PathBuf {
        self.model_dir.clone()
    }

    #[getter]
    fn is_alive(&self) -> bool {
        self.handle.is_alive()
    }

    /// Counters: running, waiting, finished, aborted, prompt_tokens, generated_tokens,
    /// decode_steps, version, paused.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.handle.stats();
        let d = PyDict::new(py);
        d.set_item("running", s.running)?;
        d.set_item("waiting", s.waiting)?;
        d.set_item("finished", s.finished)?;
        d.set_item("aborted", s.aborted)?;
        d.set_item("prompt_tokens", s.prompt_tokens)?;
        d.set_item("generated_tokens", s.generated_tokens)?;
        d.set_item("decode_steps", s.decode_steps)?;
        d.set_item("version", s.version)?;
        d.set_item("paused", s.paused)?;
        Ok(d)
    }

    /// Aborts everything, stops the engine and waits until it has freed the model.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        self.handle.shutdown();
        let handle = self.handle.clone();
        wait_for_future(py, async move {
            while handle.is_alive() {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Ok(())
        })
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyGenerator>()?;
    m.add_class::<PyGenerationOutput>()?;
    Ok(())
}
