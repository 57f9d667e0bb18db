//! A learner written in Python (the FSDP2 ranks of `asearcher.distributed`) driven by the Rust
//! training loop. The loop keeps its jobs (rollout engine, buffer stage, checkpoints of
//! everything but the model and optimizer, weight-sync HTTP calls); each step the buffer stage's
//! plan ([`plan_ppo_step`]: per rank, per minibatch, packed micro-batches) crosses to Python as
//! little-endian byte buffers (`torch.frombuffer` reads them without parsing) and the Python
//! object trains on it.
//!
//! The Python object provides `world_size`, `ppo_step(plan, version) -> dict`, `set_steps(n)`,
//! `export_hf(dir)`, `push_weights(version)`, `model_config_json() -> str`, `save_state(dir)`, `load_state(dir)` and
//! `shutdown()`. Its methods run on the trainer's thread with the GIL held; the exception it
//! raises is kept and re-raised unchanged by `Trainer.poll`.

use crate::rollout::PyTrajectory;
use asearcher_rollout::questions::Question;
use asearcher_rollout::scheduler::Group;
use asearcher_torch::model::QwenModel;
use asearcher_torch::train::{no_decay_for_norms_and_biases, LoadedCheckpoint, LrSchedule};
use asearcher_train::learner::plan::{plan_ppo_step, PackedMicroBatch, PpoPlan};
use asearcher_train::learner::{LearnerConfig, StepStats};
use asearcher_train::policy::{PolicyLearner, StateTensors};
use asearcher_train::{Result, TrainError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// The first Python exception a learner method raised (re-raised by `Trainer.poll`).
pub type ErrorSlot = Arc<Mutex<Option<PyErr>>>;

pub struct PyLearner {
    obj: Py<PyAny>,
    cfg: LearnerConfig,
    world: usize,
    error: ErrorSlot,
}

impl PyLearner {
    /// Wraps `obj`; `cfg` is the learner config in effect (the plan is built with it).
    pub fn new(obj: &Bound<'_, PyAny>, cfg: LearnerConfig, error: ErrorSlot) -> PyResult<Self> {
        let world: usize = obj.getattr("world_size")?.extract()?;
        if world == 0 {
            return Err(crate::errors::config_err(
                "learner.world_size",
                "must be at least 1",
            ));
        }
        Ok(Self {
            obj: obj.clone().unbind(),
            cfg,
            world,
            error,
        })
    }

    /// Calls `method(args)` on the Python learner; a Python error is kept for `poll` and
    /// returned as a [`TrainError::Learner`] naming the method.
    fn call<T>(
        &self,
        method: &str,
        args: impl FnOnce(Python<'_>) -> PyResult<Vec<Py<PyAny>>>,
        convert: impl FnOnce(&Bound<'_, PyAny>) -> PyResult<T>,
    ) -> Result<T> {
        Python::attach(|py| {
            let result = args(py).and_then(|a| {
                let tuple = pyo3::types::PyTuple::new(py, a)?;
                let out = self.obj.bind(py).call_method1(method, tuple)?;
                convert(&out)
            });
            result.map_err(|e| {
                let msg = format!("{method}: {e}");
                let mut slot = self.error.lock().expect("learner error slot");
                if slot.is_none() {
                    *slot = Some(e);
                }
                TrainError::Learner(msg)
            })
        })
    }
}

fn path_arg(py: Python<'_>, dir: &Path) -> PyResult<Vec<Py<PyAny>>> {
    Ok(vec![dir
        .to_string_lossy()
        .into_pyobject(py)?
        .into_any()
        .unbind()])
}

impl PolicyLearner for PyLearner {
    fn ppo_step(&mut self, groups: &[Group], version: u64) -> Result<StepStats> {
        let plan = plan_ppo_step(groups, version, &self.cfg, self.world)?;
        if plan.is_empty() {
            return Ok(plan.stats);
        }
        let learned = self.call(
            "ppo_step",
            |py| {
                Ok(vec![
                    plan_to_py(py, &plan)?,
                    version.into_pyobject(py)?.into_any().unbind(),
                ])
            },
            |out| crate::rollout::json_of(out, "ppo_step result"),
        )?;
        merge_stats(&plan.stats, learned)
    }

    fn set_steps(&mut self, n: u64) {
        let _ = self.call(
            "set_steps",
            |py| Ok(vec![n.into_pyobject(py)?.into_any().unbind()]),
            |_| Ok(()),
        );
    }

    fn local_model(&self) -> Option<&QwenModel> {
        None
    }

    fn export_hf(&mut self, dir: &Path) -> Result<()> {
        self.call("export_hf", |py| path_arg(py, dir), |_| Ok(()))
    }

    fn push_weights(&mut self, version: u64) -> Result<()> {
        self.call(
            "push_weights",
            |py| Ok(vec![version.into_pyobject(py)?.into_any().unbind()]),
            |_| Ok(()),
        )
    }

    fn model_config_json(&self) -> Result<Vec<u8>> {
        self.call(
            "model_config_json",
            |_| Ok(Vec::new()),
            |out| Ok(out.extract::<String>()?.into_bytes()),
        )
    }

    fn state_tensors(&self) -> StateTensors {
        (Vec::new(), None)
    }

    fn write_state(&mut self, dir: &Path) -> Result<()> {
        self.call("save_state", |py| path_arg(py, dir), |_| Ok(()))
    }

    fn restore(&mut self, checkpoint: &LoadedCheckpoint) -> Result<()> {
        self.call("load_state", |py| path_arg(py, &checkpoint.dir), |_| Ok(()))
    }

    fn shutdown(&mut self) {
        let _ = self.call("shutdown", |_| Ok(Vec::new()), |_| Ok(()));
    }
}

/// The buffer stage's counters with the learner's loss, norms and diagnostics laid over them.
fn merge_stats(batch: &StepStats, learned: serde_json::Value) -> Result<StepStats> {
    let mut merged = serde_json::to_value(batch).map_err(|e| TrainError::Learner(e.to_string()))?;
    let (Some(into), serde_json::Value::Object(from)) = (merged.as_object_mut(), learned) else {
        return Err(TrainError::Learner(
            "ppo_step must return a dict of statistics".into(),
        ));
    };
    for (k, v) in from {
        if !into.contains_key(&k) {
            return Err(TrainError::Learner(format!(
                "ppo_step returned an unknown statistic `{k}`"
            )));
        }
        into.insert(k, v);
    }
    serde_json::from_value(merged).map_err(|e| TrainError::Learner(format!("ppo_step result: {e}")))
}

/// The plan as `{"minibatch_loss_tokens": [...], "ranks": [[[micro, ...], ...], ...]}`.
fn plan_to_py(py: Python<'_>, plan: &PpoPlan) -> PyResult<Py<PyAny>> {
    let out = PyDict::new(py);
    out.set_item("minibatch_loss_tokens", &plan.minibatch_loss_tokens)?;
    let ranks = PyList::empty(py);
    for rank in &plan.ranks {
        let minibatches = PyList::empty(py);
        for micro in rank {
            let list = PyList::empty(py);
            for m in micro {
                list.append(micro_to_py(py, m)?)?;
            }
            minibatches.append(list)?;
        }
        ranks.append(minibatches)?;
    }
    out.set_item("ranks", ranks)?;
    Ok(out.into_any().unbind())
}

fn micro_to_py<'py>(py: Python<'py>, m: &PackedMicroBatch) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    let ints = |v: &[i64]| {
        PyBytes::new(
            py,
            &v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>(),
        )
    };
    let floats = |v: &[f32]| {
        PyBytes::new(
            py,
            &v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>(),
        )
    };
    d.set_item("input_ids", ints(&m.input_ids))?;
    d.set_item("position_ids", ints(&m.position_ids))?;
    d.set_item("targets", ints(&m.targets))?;
    d.set_item("loss_mask", PyBytes::new(py, &m.loss_mask))?;
    d.set_item("behav", floats(&m.behav))?;
    d.set_item("advantages", floats(&m.advantages))?;
    d.set_item("seq_lens", &m.seq_lens)?;
    d.set_item("loss_tokens", m.loss_tokens)?;
    Ok(d)
}

/// `plan_ppo_step(groups, version, learner_config, world_size)`: the buffer stage's plan for
/// `world_size` data-parallel ranks, as given to a Python learner's `ppo_step`, and the batch
/// counters as JSON (for tests and for learners driven by hand).
#[pyfunction]
#[pyo3(name = "plan_ppo_step", signature = (groups, version, learner_config, world_size))]
fn py_plan_ppo_step(
    py: Python<'_>,
    groups: Vec<Vec<PyRef<'_, PyTrajectory>>>,
    version: u64,
    learner_config: &Bound<'_, PyAny>,
    world_size: usize,
) -> PyResult<(Py<PyAny>, String)> {
    let cfg: LearnerConfig = crate::rollout::config_from_py(Some(learner_config), "learner")?;
    cfg.validate().map_err(crate::errors::train_err)?;
    let groups = groups_of(groups)?;
    let plan = py
        .detach(|| plan_ppo_step(&groups, version, &cfg, world_size))
        .map_err(crate::errors::train_err)?;
    let stats =
        serde_json::to_string(&plan.stats).map_err(|e| crate::errors::serialise_err("stats", e))?;
    Ok((plan_to_py(py, &plan)?, stats))
}

/// Groups from lists of trajectories (group `i` of the list gets admission index `i`).
fn groups_of(groups: Vec<Vec<PyRef<'_, PyTrajectory>>>) -> PyResult<Vec<Group>> {
    Ok(groups
        .into_iter()
        .enumerate()
        .map(|(i, trajs)| {
            let trajectories: Vec<_> = trajs.iter().map(|t| t.shared().as_ref().clone()).collect();
            let question = trajectories
                .first()
                .map_or_else(String::new, |t| t.question.clone());
            Group {
                index: i as u64,
                question: Arc::new(Question::new(format!("g{i}"), question, vec![])),
                epoch: 0,
                admitted_version: 0,
                attempts: vec![1; trajectories.len()],
                trajectories,
            }
        })
        .collect())
}

/// `tch_ppo_step(model_dir, groups, version, learner_config, out_dir, steps=1)`: `steps` PPO
/// steps of the embedded tch learner on the same groups, from the model in `model_dir` (CPU,
/// float32); writes the trained model to `out_dir` (HF layout) and returns the last step's
/// statistics as JSON. The reference the FSDP learner is checked and benchmarked against.
#[pyfunction]
#[pyo3(signature = (model_dir, groups, version, learner_config, out_dir, steps = 1))]
fn tch_ppo_step(
    py: Python<'_>,
    model_dir: std::path::PathBuf,
    groups: Vec<Vec<PyRef<'_, PyTrajectory>>>,
    version: u64,
    learner_config: &Bound<'_, PyAny>,
    out_dir: std::path::PathBuf,
    steps: usize,
) -> PyResult<String> {
    let cfg: LearnerConfig = crate::rollout::config_from_py(Some(learner_config), "learner")?;
    let groups = groups_of(groups)?;
    let stats = py
        .detach(|| -> Result<StepStats> {
            let model = QwenModel::load(&model_dir, tch::Device::Cpu, tch::Kind::Float)?;
            let mut learner = asearcher_train::learner::Learner::new(model, cfg)?;
            let mut stats = StepStats::default();
            for _ in 0..steps {
                stats = learner.ppo_step(&groups, version)?;
            }
            learner.model().save_hf(&out_dir)?;
            Ok(stats)
        })
        .map_err(crate::errors::train_err)?;
    serde_json::to_string(&stats).map_err(|e| crate::errors::serialise_err("stats", e))
}

/// `lr_at(schedule, step)`: the learning rate of `learner.schedule` after `step` optimizer
/// updates (the one schedule both learners follow).
#[pyfunction]
fn lr_at(schedule: &Bound<'_, PyAny>, step: u64) -> PyResult<f64> {
    let schedule: LrSchedule =
        serde_json::from_value(crate::rollout::json_of(schedule, "learner.schedule")?)
            .map_err(|e| crate::errors::config_err("learner.schedule", e))?;
    schedule
        .validate()
        .map_err(|e| crate::errors::config_err("learner.schedule", e))?;
    Ok(schedule.lr_at(step))
}

/// `weight_decays(name)`: whether AdamW decays the parameter `name` (not biases and
/// normalisation weights; the one rule both learners follow).
#[pyfunction]
fn weight_decays(name: &str) -> bool {
    !no_decay_for_norms_and_biases(name)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(py_plan_ppo_step, m)?)?;
    m.add_function(wrap_pyfunction!(lr_at, m)?)?;
    m.add_function(wrap_pyfunction!(tch_ppo_step, m)?)?;
    m.add_function(wrap_pyfunction!(weight_decays, m)?)?;
    Ok(())
}
