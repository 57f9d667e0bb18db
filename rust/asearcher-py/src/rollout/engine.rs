//! `RolloutEngine` in Python: builds the Rust engine from Python arguments (questions, backend,
//! tokenizer, toolbox, agent/rollout/reward configs, reward plugins), starts it on the shared
//! tokio runtime, and exposes the consumer side (batches, drain, the policy version, live
//! statistics) as blocking calls that release the GIL and as asyncio awaitables.

use super::trajectory::PyGroup;
use super::{
    agent_config_from_py, backend_from_py, config_from_py, json_of, py_of_json, tokenizer_from_py,
    toolbox_from_py,
};
use crate::errors::{config_err, rollout_err};
use crate::runtime::{awaitable, runtime, wait_for_future};
use asearcher_agent::agents::{build_agent, AgentConfig};
use asearcher_rollout::questions::{parse_question_line, read_questions, Question};
use asearcher_rollout::reward::{RewardConfig, RewardPipeline};
use asearcher_rollout::scheduler::{
    AgentFactory, EngineParts, Group, QuestionSource, RolloutConfig, RolloutEngine,
};
use asearcher_tokenizer::Tokenizer;
use pyo3::prelude::*;
use std::path::PathBuf;
use std::sync::Arc;

/// The questions of a jsonl path, or of a list of dicts (each like a jsonl line).
fn questions_from_py(obj: &Bound<'_, PyAny>) -> PyResult<Vec<Question>> {
    if let Ok(path) = obj.extract::<PathBuf>() {
        return obj
            .py()
            .detach(|| read_questions(&path))
            .map_err(rollout_err);
    }
    let items: Vec<Bound<'_, PyAny>> = obj.extract().map_err(|_| {
        config_err(
            "questions",
            "must be a path to a jsonl file or a list of dicts with `question` and `answer`/`answers`",
        )
    })?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let line = json_of(item, "questions")?.to_string();
            parse_question_line(&line, "questions", i + 1)
                .map_err(|msg| config_err("questions", format!("item {i}: {msg}")))
        })
        .collect()
}

/// The scorer of a `RewardConfig` (a dict, a typed config or `None`: the defaults) and the
/// plugins; `reward.primary` and `reward.weights` must name recorded scores.
fn scorer_from_py(
    py: Python<'_>,
    reward: Option<&Bound<'_, PyAny>>,
    plugins: &[Bound<'_, PyAny>],
) -> PyResult<Arc<RewardPipeline>> {
    let cfg: RewardConfig = config_from_py(reward, "reward")?;
    build_scorer(py, &cfg, plugins)
}

/// Rule rewards, then each plugin, as `cfg` says (the one pipeline builder of the rollout
/// crate, so files, Trainer, RolloutEngine and evaluate accept the same reward config).
pub fn build_scorer(
    py: Python<'_>,
    cfg: &RewardConfig,
    plugins: &[Bound<'_, PyAny>],
) -> PyResult<Arc<RewardPipeline>> {
    let plugins = plugins
        .iter()
        .map(|obj| super::plugins::plugin_from_py(py, obj))
        .collect::<PyResult<Vec<_>>>()?;
    let pipeline = RewardPipeline::from_config(cfg, plugins, None).map_err(rollout_err)?;
    Ok(Arc::new(pipeline))
}

/// Builds each sample's agent from one shared config (templates compiled once).
fn agent_factory(cfg: AgentConfig, tokenizer: Arc<Tokenizer>) -> AgentFactory {
    Arc::new(move |q: &Question, _sample: u32| {
        build_agent(&cfg, tokenizer.clone(), &q.question).map_err(|e| e.to_string())
    })
}

fn groups_to_py(groups: Option<Vec<Group>>) -> Option<Vec<PyGroup>> {
    groups.map(|gs| gs.into_iter().map(PyGroup::new).collect())
}

/// The asynchronous rollout engine. `shuffle_seed` reshuffles the questions each epoch;
/// `sampling_seed` seeds every generation request from it and the request id, so sampling
/// repeats on a backend that honours seeds (with `config={"ordered": True}` the groups also come
/// out in question order).
#[pyclass(name = "RolloutEngine", module = "asearcher._core", frozen)]
pub struct PyRolloutEngine {
    inner: Arc<RolloutEngine>,
}

#[pymethods]
impl PyRolloutEngine {
    #[new]
    #[pyo3(signature = (questions, backend, tokenizer, *, toolbox = None, agent = None, config = None, reward = None, plugins = Vec::new(), epochs = Some(1), shuffle_seed = None, sampling_seed = None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        questions: &Bound<'_, PyAny>,
        backend: &Bound<'_, PyAny>,
        tokenizer: &Bound<'_, PyAny>,
        toolbox: Option<&Bound<'_, PyAny>>,
        agent: Option<&Bound<'_, PyAny>>,
        config: Option<&Bound<'_, PyAny>>,
        reward: Option<&Bound<'_, PyAny>>,
        plugins: Vec<Bound<'_, PyAny>>,
        epochs: Option<u32>,
        shuffle_seed: Option<u64>,
        sampling_seed: Option<u64>,
    ) -> PyResult<Self> {
        let cfg: RolloutConfig = config_from_py(config, "config")?;
        cfg.validate().map_err(rollout_err)?;
        let agent_cfg = agent_config_from_py(agent)?;
        if epochs == Some(0) {
            return Err(config_err(
                "epochs",
                "must be at least 1, or None (endless)",
            ));
        }
        let questions = questions_from_py(questions)?;
        if questions.is_empty() {
            return Err(config_err("questions", "no questions given"));
        }
        let tokenizer = tokenizer_from_py(tokenizer)?;
        let parts = EngineParts {
            backend: backend_from_py(backend)?,
            toolbox: toolbox_from_py(toolbox)?,
            agents: agent_factory(agent_cfg, tokenizer.clone()),
            tokenizer,
            scorer: scorer_from_py(py, reward, &plugins)?,
            sampling_seed,
        };
        let source = QuestionSource::epochs(questions, epochs, shuffle_seed);
        let _rt = runtime().enter();
        let engine = RolloutEngine::start(cfg, parts, source).map_err(rollout_err)?;
        Ok(Self {
            inner: Arc::new(engine),
        })
    }

    /// Waits for `n_groups` complete groups; at the end of the questions returns what is left,
    /// then None. With the staleness gate, call `set_version` between batches.
    fn next_batch(&self, py: Python<'_>, n_groups: usize) -> PyResult<Option<Vec<PyGroup>>> {
        let engine = self.inner.clone();
        wait_for_future(py, async move { next_groups(&engine, n_groups).await })
    }

    fn anext_batch<'py>(&self, py: Python<'py>, n_groups: usize) -> PyResult<Bound<'py, PyAny>> {
        let engine = self.inner.clone();
        awaitable(py, async move { next_groups(&engine, n_groups).await })
    }

    /// Stops admitting questions, waits for the groups in flight and returns every ready group.
    fn drain(&self, py: Python<'_>) -> PyResult<Vec<PyGroup>> {
        let engine = self.inner.clone();
        wait_for_future(py, async move {
            Ok(groups_to_py(Some(engine.drain().await)).unwrap_or_default())
        })
    }

    fn adrain<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let engine = self.inner.clone();
        awaitable(py, async move {
            Ok(groups_to_py(Some(engine.drain().await)).unwrap_or_default())
        })
    }

    /// Sets the policy version (after each trainer update); opens the staleness gate.
    fn set_version(&self, version: u64) {
        self.inner.set_version(version);
    }

    #[getter]
    fn version(&self) -> u64 {
        self.inner.version()
    }

    /// Questions taken so far (where a resumed run starts).
    #[getter]
    fn position(&self) -> u64 {
        self.inner.position()
    }

    /// Whether every question is done and consumed (or the engine stopped).
    #[getter]
    fn is_done(&self) -> bool {
        self.inner.is_done()
    }

    /// The rollout config in effect, every default filled in.
    #[getter]
    fn config(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        py_of_json(py, self.inner.config())
    }

    /// Live statistics: running, in_flight, finished, failed, turns, tokens_per_s, tool and
    /// generation latency percentiles, queue depths, staleness, stop reasons...
    fn stats(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        py_of_json(py, &self.inner.stats())
    }

    /// Cancels all in-flight work and waits for the engine's tasks to end.
    fn shutdown(&self, py: Python<'_>) -> PyResult<()> {
        let engine = self.inner.clone();
        wait_for_future(py, async move {
            engine.shutdown().await;
            Ok(())
        })
    }

    fn ashutdown<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let engine = self.inner.clone();
        awaitable(py, async move {
            engine.shutdown().await;
            Ok(())
        })
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.shutdown(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        let s = self.inner.stats();
        format!(
            "RolloutEngine(version={}, running={}, finished={}, ready_groups={})",
            s.version, s.running, s.finished, s.ready_groups
        )
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyRolloutEngine>()
}

/// The next groups; a systematic failure that stopped the engine is raised, not a silent end.
async fn next_groups(engine: &RolloutEngine, n_groups: usize) -> PyResult<Option<Vec<PyGroup>>> {
    let batch = engine.next_batch(n_groups).await;
    if batch.is_none() {
        if let Some(failure) = engine.failure() {
            return Err(rollout_err(failure));
        }
    }
    Ok(groups_to_py(batch))
}
