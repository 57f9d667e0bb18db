//! `Trajectory` and `Group` in Python: read-only views of finished trajectories (turns, tool
//! calls, answers, rewards, errors), packing into training sequences, jsonl load/save and an
//! HTML rendering for notebooks.

use super::py_of_json;
use crate::errors::{bad_line_err, config_err, jsonl_err};
use asearcher_agent::trajectory::{append_jsonl, read_jsonl, TornLine, Trajectory};
use asearcher_rollout::scheduler::Group;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use std::path::PathBuf;
use std::sync::Arc;

/// One finished agent run (read-only).
#[pyclass(name = "Trajectory", module = "asearcher._core", frozen)]
pub struct PyTrajectory {
    inner: Arc<Trajectory>,
}

impl PyTrajectory {
    pub fn new(t: Trajectory) -> Self {
        Self { inner: Arc::new(t) }
    }

    pub fn shared(&self) -> Arc<Trajectory> {
        self.inner.clone()
    }
}

/// The name serde gives a unit enum value (`"answered"`, `"max_turns"`, ...).
fn enum_name(value: &impl serde::Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => "?".into(),
    }
}

#[pymethods]
impl PyTrajectory {
    /// Parses one jsonl line (as `to_json` writes it).
    #[staticmethod]
    fn from_json(line: &str) -> PyResult<Self> {
        Trajectory::from_json_line(line)
            .map(Self::new)
            .map_err(|e| bad_line_err(format!("not a trajectory: {e}")))
    }

    #[getter]
    fn id(&self) -> &str {
        &self.inner.id
    }
    #[getter]
    fn question_id(&self) -> &str {
        &self.inner.question_id
    }
    #[getter]
    fn sample(&self) -> u32 {
        self.inner.sample
    }
    #[getter]
    fn question(&self) -> &str {
        &self.inner.question
    }
    #[getter]
    fn answers(&self) -> Vec<String> {
        self.inner.answers.clone()
    }
    #[getter]
    fn agent(&self) -> &str {
        &self.inner.agent
    }
    /// The final answer, if the agent gave one.
    #[getter]
    fn answer(&self) -> Option<String> {
        self.inner.answer.clone()
    }
    /// The training reward (the primary score); None until scored or when scoring failed.
    #[getter]
    fn reward(&self) -> Option<f64> {
        self.inner.reward
    }
    /// Every score: f1, em, cem, format, judge, plugin names...
    #[getter]
    fn rewards(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        py_of_json(py, &self.inner.rewards)
    }
    #[getter]
    fn stop_reason(&self) -> String {
        enum_name(&self.inner.stop_reason)
    }
    /// Failures recorded on the trajectory: dicts of kind, message, traceback, turn.
    #[getter]
    fn errors(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        py_of_json(py, &self.inner.errors)
    }
    /// Every generation: role, prompt delta, output ids/logprobs/versions/text, action, issues,
    /// tool call, server, resends, latency.
    #[getter]
    fn turns(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        py_of_json(py, &self.inner.turns)
    }
    #[getter]
    fn metadata(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        py_of_json(py, &self.inner.metadata)
    }
    #[getter]
    fn num_turns(&self) -> usize {
        self.inner.num_turns()
    }
    #[getter]
    fn tool_calls(&self) -> usize {
        self.inner.tool_calls()
    }
    #[getter]
    fn output_tokens(&self) -> usize {
        self.inner.output_tokens()
    }
    #[getter]
    fn elapsed_s(&self) -> f64 {
        self.inner.elapsed_s
    }
    #[getter]
    fn started_at(&self) -> f64 {
        self.inner.started_at
    }

    /// The whole prompt of turn `turn` (the stored delta expanded).
    fn prompt_ids(&self, turn: usize) -> PyResult<Vec<u32>> {
        self.inner.full_prompt_ids(turn).ok_or_else(|| {
            config_err(
                "turn",
                format!("{turn} is out of range ({} turns)", self.inner.turns.len()),
            )
        })
    }

    fn to_dict(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        py_of_json(py, self.inner.as_ref())
    }

    /// One jsonl line (no newline).
    fn to_json(&self) -> PyResult<String> {
        self.inner.to_json_line().map_err(jsonl_err)
    }

    /// Training sequences: dicts of input_ids, loss_mask (1 on generated tokens), logprobs and
    /// versions (None on prompt and tool tokens); a new sequence where a prompt does not extend
    /// the previous one.
    fn sequences<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let seqs = self
            .inner
            .to_sequences()
            .map_err(|e| config_err("trajectory", format!("{}: {e}", self.inner.id)))?;
        let out = PyList::empty(py);
        for s in seqs {
            let d = PyDict::new(py);
            d.set_item("input_ids", s.input_ids)?;
            d.set_item("loss_mask", s.loss_mask)?;
            d.set_item("logprobs", s.logprobs)?;
            d.set_item("versions", s.versions)?;
            out.append(d)?;
        }
        Ok(out)
    }

    fn _repr_html_(&self) -> String {
        self.inner.to_html()
    }

    fn __repr__(&self) -> String {
        let t = &self.inner;
        format!(
            "Trajectory(id={:?}, turns={}, stop_reason={}, answer={}, reward={})",
            t.id,
            t.num_turns(),
            enum_name(&t.stop_reason),
            py_opt(t.answer.as_ref().map(|a| format!("{a:?}"))),
            py_opt(t.reward.map(|r| r.to_string()))
        )
    }
}

/// The trajectories of one question, scored together.
#[pyclass(name = "Group", module = "asearcher._core", frozen)]
pub struct PyGroup {
    /// The group without its trajectories (they are in `trajectories`).
    group: Group,
    trajectories: Vec<Arc<Trajectory>>,
}

impl PyGroup {
    pub fn new(mut group: Group) -> Self {
        let trajectories = std::mem::take(&mut group.trajectories)
            .into_iter()
            .map(Arc::new)
            .collect();
        Self {
            group,
            trajectories,
        }
    }
}

#[pymethods]
impl PyGroup {
    /// Admission order (0, 1, ...).
    #[getter]
    fn index(&self) -> u64 {
        self.group.index
    }
    #[getter]
    fn epoch(&self) -> u32 {
        self.group.epoch
    }
    /// The policy version when the group was admitted.
    #[getter]
    fn admitted_version(&self) -> u64 {
        self.group.admitted_version
    }
    /// The question record: id, question, answers, metadata.
    #[getter]
    fn question(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        py_of_json(py, self.group.question.as_ref())
    }
    #[getter]
    fn trajectories(&self) -> Vec<PyTrajectory> {
        self.trajectories
            .iter()
            .map(|t| PyTrajectory { inner: t.clone() })
            .collect()
    }
    #[getter]
    fn rewards(&self) -> Vec<Option<f64>> {
        self.trajectories.iter().map(|t| t.reward).collect()
    }
    /// Runs each trajectory took (1 unless retried).
    #[getter]
    fn attempts(&self) -> Vec<u32> {
        self.group.attempts.clone()
    }
    fn __len__(&self) -> usize {
        self.trajectories.len()
    }
    /// The question, then every trajectory as `Trajectory._repr_html_` renders it.
    fn _repr_html_(&self) -> String {
        let mut out = format!(
            "<div><b>group {} (question {})</b>: {}</div>",
            self.group.index,
            escape_html(&self.group.question.id),
            escape_html(&self.group.question.question)
        );
        for t in &self.trajectories {
            out.push_str(&t.to_html());
        }
        out
    }
    fn __repr__(&self) -> String {
        format!(
            "Group(index={}, question_id={:?}, trajectories={})",
            self.group.index,
            self.group.question.id,
            self.trajectories.len()
        )
    }
}

fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Reads a trajectory jsonl file (a torn last line, as a killed writer leaves, is skipped).
#[pyfunction]
fn load_trajectories(py: Python<'_>, path: PathBuf) -> PyResult<Vec<PyTrajectory>> {
    let trajs = py
        .detach(|| read_jsonl(&path, TornLine::Skip))
        .map_err(jsonl_err)?;
    Ok(trajs.into_iter().map(PyTrajectory::new).collect())
}

/// Writes trajectories to a jsonl file, appended (default) or replacing the file.
#[pyfunction]
#[pyo3(signature = (path, trajectories, append = true))]
fn save_trajectories(
    py: Python<'_>,
    path: PathBuf,
    trajectories: Vec<Bound<'_, PyTrajectory>>,
    append: bool,
) -> PyResult<()> {
    let trajs: Vec<Trajectory> = trajectories
        .iter()
        .map(|t| t.get().inner.as_ref().clone())
        .collect();
    py.detach(|| {
        if !append && path.exists() {
            std::fs::remove_file(&path).map_err(|source| {
                asearcher_agent::trajectory::JsonlError::Io {
                    path: path.clone(),
                    source,
                }
            })?;
        }
        append_jsonl(&path, &trajs)
    })
    .map_err(jsonl_err)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyTrajectory>()?;
    m.add_class::<PyGroup>()?;
    m.add_function(wrap_pyfunction!(load_trajectories, m)?)?;
    m.add_function(wrap_pyfunction!(save_trajectories, m)?)?;
    Ok(())
}

/// An optional value as Python shows it: the value, or `None` (not Rust's `Some(...)`).
pub(crate) fn py_opt(value: Option<String>) -> String {
    value.unwrap_or_else(|| "None".into())
}
