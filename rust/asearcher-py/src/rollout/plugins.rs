//! Python reward plugins: a Python callable (sync or async, per item or batched) as a
//! [`RewardPlugin`] of the rollout engine.
//!
//! Each plugin gets one OS thread of its own that makes every call into Python; the tokio side
//! sends it batches through a channel and awaits a oneshot reply, never holding the GIL. Async
//! functions run on an asyncio event loop owned by that thread (created on first use). A Python
//! exception fails the trajectories it concerns, with the formatted traceback kept, and the run
//! goes on. `KeyboardInterrupt` / `SystemExit` raised by a plugin are recorded the same way and
//! also stop the plugin: it is not called again, and later trajectories fail with a message
//! saying why. The thread ends when the plugin is dropped.

use crate::errors::config_err;
use crate::runtime::{runtime, wait_for_future};
use asearcher_agent::trajectory::Trajectory;
use asearcher_rollout::reward::{
    BatchingConfig, BatchingPlugin, PluginFailure, PluginScorer, RewardPlugin, Scorer,
};
use async_trait::async_trait;
use pyo3::exceptions::{PyKeyboardInterrupt, PyRuntimeError, PySystemExit, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyList, PyString, PyTuple};
use serde::Deserialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// The attribute `asearcher.reward_plugin` sets on the function it decorates.
const SPEC_ATTR: &str = "__asearcher_reward__";
/// The Python side of the plugins: small helpers in `asearcher._plugins`.
const HELPERS: &str = "asearcher._plugins";

type Scores = Vec<Result<f64, PluginFailure>>;

/// What the decorator recorded (`__asearcher_reward__`); a plain callable gets the defaults.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct PluginSpec {
    name: Option<String>,
    batched: bool,
    max_batch: usize,
    max_wait_ms: u64,
}

impl Default for PluginSpec {
    fn default() -> Self {
        let batching = BatchingConfig::default();
        Self {
            name: None,
            batched: false,
            max_batch: batching.max_batch,
            max_wait_ms: batching.max_wait_ms,
        }
    }
}

/// A Python callable as a reward plugin, already wrapped in a [`BatchingPlugin`] so that
/// trajectories of concurrent groups reach it in batches. Errors: `TypeError` when `obj` is not
/// callable, `ConfigError` when its `__asearcher_reward__` attribute is malformed.
pub fn plugin_from_py(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<Arc<dyn RewardPlugin>> {
    let spec = read_spec(py, obj)?;
    let name = match spec.name {
        Some(name) => name,
        None => callable_name(obj)?,
    };
    let batching = BatchingConfig {
        max_batch: spec.max_batch,
        max_wait_ms: spec.max_wait_ms,
    };
    let plugin = PythonPlugin::spawn(py, name, spec.batched, obj.clone().unbind())?;
    Ok(Arc::new(BatchingPlugin::new(Arc::new(plugin), batching)))
}

fn read_spec(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<PluginSpec> {
    if !obj.is_callable() {
        return Err(PyTypeError::new_err(format!(
            "reward plugin {} ({}) is not callable; pass a function, decorated with \
             asearcher.reward_plugin or plain",
            short_repr(obj),
            type_name(obj)
        )));
    }
    let Some(spec) = obj.getattr_opt(SPEC_ATTR)? else {
        return Ok(PluginSpec::default());
    };
    let text: String = py
        .import("json")?
        .call_method1("dumps", (spec,))?
        .extract()?;
    serde_json::from_str(&text).map_err(|e| {
        config_err(
            SPEC_ATTR,
            format!("reward plugin {}: bad {text}: {e}", short_repr(obj)),
        )
    })
}

/// `__name__`, or the class name of a callable object without one.
fn callable_name(obj: &Bound<'_, PyAny>) -> PyResult<String> {
    match obj.getattr_opt("__name__")? {
        Some(name) => name.extract(),
        None => Ok(type_name(obj)),
    }
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map_or_else(|_| "?".into(), |n| n.to_string())
}

/// `repr(obj)`, cut to 200 characters.
fn short_repr(obj: &Bound<'_, PyAny>) -> String {
    let text = obj
        .repr()
        .map_or_else(|_| "<unrepresentable>".into(), |r| r.to_string());
    if text.chars().count() > 200 {
        format!("{}...", text.chars().take(200).collect::<String>())
    } else {
        text
    }
}

/// A batch for the plugin thread and where its scores go.
struct Request {
    batch: Vec<Trajectory>,
    reply: oneshot::Sender<Scores>,
}

/// The tokio-side handle of a plugin: sends batches to its thread.
struct PythonPlugin {
    name: String,
    requests: mpsc::Sender<Request>,
}

impl PythonPlugin {
    fn spawn(py: Python<'_>, name: String, batched: bool, func: Py<PyAny>) -> PyResult<Self> {
        let helpers = py.import(HELPERS)?.unbind();
        let caller = PyCaller {
            name: name.clone(),
            batched,
            func,
            helpers,
            event_loop: None,
            stopped: None,
        };
        let (requests, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("reward:{name}"))
            .spawn(move || caller.serve(rx))
            .map_err(|e| {
                PyRuntimeError::new_err(format!(
                    "reward plugin `{name}`: cannot start its thread: {e}"
                ))
            })?;
        Ok(Self { name, requests })
    }
}

#[async_trait]
impl RewardPlugin for PythonPlugin {
    fn name(&self) -> &str {
        &self.name
    }

    async fn score_batch(&self, batch: &[Trajectory]) -> Scores {
        let (reply, scores) = oneshot::channel();
        let request = Request {
            batch: batch.to_vec(),
            reply,
        };
        if self.requests.send(request).is_err() {
            return all_failed(batch.len(), &self.thread_gone());
        }
        scores
            .await
            .unwrap_or_else(|_| all_failed(batch.len(), &self.thread_gone()))
    }
}

impl PythonPlugin {
    fn thread_gone(&self) -> PluginFailure {
        failure(format!(
            "reward plugin `{}`: its thread has stopped",
            self.name
        ))
    }
}

fn failure(message: String) -> PluginFailure {
    PluginFailure {
        message,
        traceback: None,
    }
}

fn all_failed(n: usize, why: &PluginFailure) -> Scores {
    vec![Err(why.clone()); n]
}

/// The plugin thread's state: everything that touches Python.
struct PyCaller {
    name: String,
    batched: bool,
    func: Py<PyAny>,
    helpers: Py<PyModule>,
    event_loop: Option<Py<PyAny>>,
    /// Set when the plugin raised `KeyboardInterrupt` / `SystemExit`: it is not called again.
    stopped: Option<PluginFailure>,
}

impl PyCaller {
    /// Serves batches until the plugin is dropped (its channel closes), then closes the loop.
    fn serve(self, requests: mpsc::Receiver<Request>) {
        let mut caller = self;
        while let Ok(request) = requests.recv() {
            let scores = Python::attach(|py| caller.score(py, &request.batch));
            let _ = request.reply.send(scores);
        }
        // SAFETY: Py_IsInitialized may be called at any time, with or without the GIL.
        if unsafe { pyo3::ffi::Py_IsInitialized() } != 0 {
            Python::attach(move |py| caller.close(py));
        }
    }

    fn close(self, py: Python<'_>) {
        if let Some(event_loop) = &self.event_loop {
            if let Err(e) = event_loop.call_method0(py, "close") {
                tracing::warn!(plugin = %self.name, error = %e, "closing the plugin's event loop failed");
            }
        }
        drop(self);
    }

    fn score(&mut self, py: Python<'_>, batch: &[Trajectory]) -> Scores {
        if let Some(why) = &self.stopped {
            return all_failed(batch.len(), why);
        }
        if self.batched {
            self.call_batched(py, batch)
        } else {
            self.call_per_item(py, batch)
        }
    }

    /// `fn(trajectory, answers)` for each trajectory; the awaitables it returns run together.
    fn call_per_item(&mut self, py: Python<'_>, batch: &[Trajectory]) -> Scores {
        let mut scores: Vec<Option<Result<f64, PluginFailure>>> = vec![None; batch.len()];
        let mut pending = Vec::new();
        for (i, t) in batch.iter().enumerate() {
            if let Some(why) = &self.stopped {
                scores[i] = Some(Err(why.clone()));
                continue;
            }
            match self.call_one(py, t) {
                Ok(value) if self.is_awaitable(py, &value) => pending.push((i, value)),
                Ok(value) => scores[i] = Some(self.to_score(&value)),
                Err(e) => scores[i] = Some(Err(self.exception(py, e))),
            }
        }
        if !pending.is_empty() {
            let (slots, awaitables): (Vec<_>, Vec<_>) = pending.into_iter().unzip();
            for (slot, result) in slots.into_iter().zip(self.await_all(py, awaitables)) {
                scores[slot] = Some(result);
            }
        }
        scores
            .into_iter()
            .map(|s| s.unwrap_or_else(|| Err(failure("not scored".into()))))
            .collect()
    }

    fn call_one<'py>(&self, py: Python<'py>, t: &Trajectory) -> PyResult<Bound<'py, PyAny>> {
        let view = self.trajectory_to_py(py, t)?;
        let answers = PyList::new(py, &t.answers)?;
        self.func.bind(py).call1((view, answers))
    }

    /// Runs awaitables together on the thread's event loop; one result each, in order.
    fn await_all<'py>(&mut self, py: Python<'py>, awaitables: Vec<Bound<'py, PyAny>>) -> Scores {
        let n = awaitables.len();
        let results = self
            .helpers
            .bind(py)
            .call_method1("_gather_results", (awaitables,))
            .and_then(|gathered| self.run_until_complete(py, gathered));
        let items = match results.and_then(|r| r.try_iter()?.collect::<PyResult<Vec<_>>>()) {
            Ok(items) => items,
            Err(e) => return all_failed(n, &self.exception(py, e)),
        };
        items
            .into_iter()
            .map(
                |item| match item.cast_into::<pyo3::exceptions::PyBaseException>() {
                    Ok(exc) => Err(self.exception(py, PyErr::from_value(exc.into_any()))),
                    Err(e) => self.to_score(&e.into_inner()),
                },
            )
            .collect()
    }

    /// `fn(trajectories, answers_lists)` once for the batch; a list of scores back.
    fn call_batched(&mut self, py: Python<'_>, batch: &[Trajectory]) -> Scores {
        let n = batch.len();
        let returned = self.call_all(py, batch).and_then(|value| {
            if self.is_awaitable(py, &value) {
                self.run_until_complete(py, value)
            } else {
                Ok(value)
            }
        });
        let value = match returned {
            Ok(value) => value,
            Err(e) => return all_failed(n, &self.exception(py, e)),
        };
        let items = match self.score_list(&value, n) {
            Ok(items) => items,
            Err(why) => return all_failed(n, &why),
        };
        items.iter().map(|item| self.to_score(item)).collect()
    }

    fn call_all<'py>(&self, py: Python<'py>, batch: &[Trajectory]) -> PyResult<Bound<'py, PyAny>> {
        let views = batch
            .iter()
            .map(|t| self.trajectory_to_py(py, t))
            .collect::<PyResult<Vec<_>>>()?;
        let answers = batch
            .iter()
            .map(|t| PyList::new(py, &t.answers))
            .collect::<PyResult<Vec<_>>>()?;
        self.func.bind(py).call1((views, answers))
    }

    /// The items of what a batched plugin returned, when it is a sequence of `n` of them.
    fn score_list<'py>(
        &self,
        value: &Bound<'py, PyAny>,
        n: usize,
    ) -> Result<Vec<Bound<'py, PyAny>>, PluginFailure> {
        let not_a_list = || {
            failure(format!(
                "reward plugin `{}` returned {} ({}), not a list of {n} scores",
                self.name,
                short_repr(value),
                type_name(value)
            ))
        };
        if value.is_instance_of::<PyString>() {
            return Err(not_a_list());
        }
        let items = value
            .try_iter()
            .and_then(|it| it.collect::<PyResult<Vec<_>>>())
            .map_err(|_| not_a_list())?;
        if items.len() != n {
            return Err(failure(format!(
                "reward plugin `{}` returned {} scores for {n} trajectories: {}",
                self.name,
                items.len(),
                short_repr(value)
            )));
        }
        Ok(items)
    }

    /// A returned value as a score: a finite real number.
    fn to_score(&self, value: &Bound<'_, PyAny>) -> Result<f64, PluginFailure> {
        match value.extract::<f64>() {
            Ok(x) if x.is_finite() => Ok(x),
            Ok(_) => Err(failure(format!(
                "reward plugin `{}` returned {}, not a finite number",
                self.name,
                short_repr(value)
            ))),
            Err(_) => Err(failure(format!(
                "reward plugin `{}` returned {} ({}), not a number",
                self.name,
                short_repr(value),
                type_name(value)
            ))),
        }
    }

    /// An exception as a failure: `"<Type>: <msg>"` and the formatted traceback. A
    /// `KeyboardInterrupt` / `SystemExit` also stops the plugin.
    fn exception(&mut self, py: Python<'_>, err: PyErr) -> PluginFailure {
        let formatted = self
            .helpers
            .bind(py)
            .call_method1("_format_exception", (err.value(py), err.traceback(py)))
            .and_then(|f| f.extract::<(String, String)>());
        let failure = match formatted {
            Ok((message, traceback)) => PluginFailure {
                message,
                traceback: Some(traceback),
            },
            Err(_) => failure(err.to_string()),
        };
        if err.is_instance_of::<PyKeyboardInterrupt>(py) || err.is_instance_of::<PySystemExit>(py) {
            tracing::warn!(plugin = %self.name, error = %failure.message, "reward plugin stopped: it will not be called again");
            self.stopped = Some(PluginFailure {
                message: format!(
                    "reward plugin `{}` stopped after it raised {}",
                    self.name, failure.message
                ),
                traceback: failure.traceback.clone(),
            });
        }
        failure
    }

    fn is_awaitable(&self, py: Python<'_>, value: &Bound<'_, PyAny>) -> bool {
        self.helpers
            .bind(py)
            .call_method1("_is_awaitable", (value,))
            .and_then(|a| a.extract())
            .unwrap_or(false)
    }

    fn run_until_complete<'py>(
        &mut self,
        py: Python<'py>,
        awaitable: Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let event_loop = match &self.event_loop {
            Some(event_loop) => event_loop.bind(py).clone(),
            None => {
                let event_loop = py.import("asyncio")?.call_method0("new_event_loop")?;
                self.event_loop = Some(event_loop.clone().unbind());
                event_loop
            }
        };
        event_loop.call_method1("run_until_complete", (awaitable,))
    }

    /// The one place a trajectory becomes a Python object for a plugin: an `asearcher.Trajectory`.
    fn trajectory_to_py<'py>(
        &self,
        py: Python<'py>,
        t: &Trajectory,
    ) -> PyResult<Bound<'py, PyAny>> {
        Ok(Bound::new(py, super::trajectory::PyTrajectory::new(t.clone()))?.into_any())
    }
}

/// What the runtime probe of [`_test_score_with_plugins`] saw while scoring ran.
#[derive(Debug, Default)]
struct ProbeStats {
    ticks: u64,
    max_gap_ms: f64,
}

/// Ticks on the shared runtime every `every` and takes the GIL at each tick, until `done`; the
/// largest gap between ticks shows whether the runtime's workers or the GIL were held.
async fn probe_runtime(every: Duration, done: Arc<AtomicBool>) -> ProbeStats {
    let mut stats = ProbeStats::default();
    let mut last = Instant::now();
    while !done.load(Ordering::Acquire) {
        tokio::time::sleep(every).await;
        Python::attach(|_| ());
        let now = Instant::now();
        stats.max_gap_ms = stats
            .max_gap_ms
            .max(now.duration_since(last).as_secs_f64() * 1e3);
        stats.ticks += 1;
        last = now;
    }
    stats
}

/// Scores each trajectory through every plugin, each trajectory in its own task on the shared
/// runtime (as the scheduler does with groups); returns the trajectories.
async fn score_concurrently(
    plugins: Vec<Arc<dyn RewardPlugin>>,
    trajectories: Vec<Trajectory>,
) -> PyResult<Vec<Trajectory>> {
    let tasks: Vec<_> = trajectories
        .into_iter()
        .map(|mut t| {
            let plugins = plugins.clone();
            tokio::spawn(async move {
                for plugin in plugins {
                    PluginScorer::new(plugin)
                        .score(std::slice::from_mut(&mut t))
                        .await;
                }
                t
            })
        })
        .collect();
    let mut scored = Vec::with_capacity(tasks.len());
    for task in tasks {
        scored.push(task.await.map_err(crate::errors::join_err)?);
    }
    Ok(scored)
}

/// Test hook: scores `trajectories` (JSON records) with `plugins` on the shared runtime, the path
/// the engine takes. Returns the scored trajectories as dicts; with `probe_ms`, also a dict
/// `{"ticks", "max_gap_ms", "workers"}` from a probe ticking on the runtime meanwhile.
#[pyfunction]
#[pyo3(signature = (plugins, trajectories, probe_ms = None))]
pub fn _test_score_with_plugins(
    py: Python<'_>,
    plugins: Vec<Bound<'_, PyAny>>,
    trajectories: Vec<String>,
    probe_ms: Option<u64>,
) -> PyResult<Py<PyAny>> {
    let trajectories = trajectories
        .iter()
        .enumerate()
        .map(|(i, json)| {
            serde_json::from_str::<Trajectory>(json).map_err(|e| {
                config_err(
                    &format!("trajectories[{i}]"),
                    format!("not a trajectory: {e}"),
                )
            })
        })
        .collect::<PyResult<Vec<_>>>()?;
    let plugins = plugins
        .iter()
        .map(|p| plugin_from_py(py, p))
        .collect::<PyResult<Vec<_>>>()?;
    let (scored, probe) = wait_for_future(py, async move {
        let done = Arc::new(AtomicBool::new(false));
        let probe = probe_ms
            .map(|ms| runtime().spawn(probe_runtime(Duration::from_millis(ms), done.clone())));
        let scored = score_concurrently(plugins, trajectories).await;
        done.store(true, Ordering::Release);
        let probe = match probe {
            Some(task) => Some(task.await.map_err(crate::errors::join_err)?),
            None => None,
        };
        Ok((scored?, probe))
    })?;
    let loads = py.import("json")?.getattr("loads")?;
    let records = scored
        .iter()
        .map(|t| {
            let json = serde_json::to_string(t)
                .map_err(|e| PyRuntimeError::new_err(format!("trajectory `{}`: {e}", t.id)))?;
            loads.call1((json,))
        })
        .collect::<PyResult<Vec<_>>>()?;
    let records = PyList::new(py, records)?.into_any();
    let Some(probe) = probe else {
        return Ok(records.unbind());
    };
    let stats = pyo3::types::PyDict::new(py);
    stats.set_item("ticks", probe.ticks)?;
    stats.set_item("max_gap_ms", probe.max_gap_ms)?;
    stats.set_item("workers", runtime().metrics().num_workers())?;
    Ok(PyTuple::new(py, [records, stats.into_any()])?
        .into_any()
        .unbind())
}
