//! Training in Python: `Trainer` (the asynchronous RL loop) and `warm_start` (supervised
//! fine-tuning on demonstrations). The Rust work runs on its own OS thread; Python polls its
//! events (step records as JSON) with the GIL released, so callbacks, progress bars and Ctrl-C
//! run on the caller's thread. A stop request ends the run after the step in progress, which is
//! checkpointed.

use crate::errors::{config_err, train_err, training_err};
use crate::learner::{ErrorSlot, PyLearner};
use crate::rollout::engine::build_scorer;
use crate::rollout::{json_of, py_of_json, toolbox_from_py};
use crate::runtime::runtime;
use asearcher_train::config::TrainConfig;
use asearcher_train::learner::LearnerBackend;
use asearcher_train::trainer::{learner_config, Control, TrainParts, Trainer};
use asearcher_train::warm_start::{warm_start as run_warm_start, WarmStartConfig};
use asearcher_train::TrainError;
use pyo3::prelude::*;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// What the worker thread reports.
enum Event {
    /// A step record and where to say whether the run goes on (the loop waits for it, so a
    /// callback's stop takes effect before the next step).
    Step(String, mpsc::SyncSender<bool>),
    Done(Result<String, TrainError>),
}

enum Phase {
    Ready(Box<Trainer>),
    Running {
        events: Arc<Mutex<Receiver<Event>>>,
        join: Option<JoinHandle<()>>,
    },
    Finished,
}

/// A config given as a path (TOML/YAML/JSON), a dict or a typed `TrainConfig`, with `a.b.c=v`
/// overrides on top.
fn train_config_from_py(obj: &Bound<'_, PyAny>, overrides: &[String]) -> PyResult<TrainConfig> {
    if let Ok(path) = obj.extract::<PathBuf>() {
        return obj
            .py()
            .detach(|| TrainConfig::load(&path, overrides))
            .map_err(train_err);
    }
    TrainConfig::from_value_with(json_of(obj, "config")?, overrides).map_err(train_err)
}

/// The asynchronous RL trainer.
#[pyclass(name = "Trainer", module = "asearcher._core", frozen)]
pub struct PyTrainer {
    phase: Mutex<Phase>,
    /// The answer the loop waits for after the last step record.
    pending_ack: Mutex<Option<mpsc::SyncSender<bool>>>,
    stop: Arc<AtomicBool>,
    config: serde_json::Value,
    resumed_step: u64,
    /// The exception a Python learner raised, re-raised by `poll` in place of the run's error.
    learner_error: ErrorSlot,
}

#[pymethods]
impl PyTrainer {
    #[new]
    #[pyo3(signature = (config, *, overrides = Vec::new(), toolbox = None, plugins = Vec::new(), primary = None, learner = None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        config: &Bound<'_, PyAny>,
        overrides: Vec<String>,
        toolbox: Option<&Bound<'_, PyAny>>,
        plugins: Vec<Bound<'_, PyAny>>,
        primary: Option<String>,
        learner: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        if primary.is_some() {
            return Err(config_err(
                "primary",
                "Trainer(primary=...) was removed; set `reward.primary` in the config \
                 (or pass the override \"reward.primary=NAME\")",
            ));
        }
        let cfg = train_config_from_py(config, &overrides)?;
        let scorer = if plugins.is_empty() {
            None
        } else {
            Some(build_scorer(py, &cfg.reward, &plugins)? as _)
        };
        let parts = TrainParts {
            toolbox: toolbox_from_py(toolbox)?,
            scorer,
        };
        let config = serde_json::to_value(&cfg).map_err(|e| config_err("config", e))?;
        let handle = runtime().handle().clone();
        let learner_error = ErrorSlot::default();
        let external = match learner {
            Some(obj) => {
                if cfg.learner.backend != LearnerBackend::Fsdp {
                    return Err(config_err(
                        "learner.backend",
                        "a learner object was given but the config asks for the embedded \
                         `tch` learner; set learner.backend = \"fsdp\"",
                    ));
                }
                Some(PyLearner::new(
                    obj,
                    learner_config(&cfg),
                    learner_error.clone(),
                )?)
            }
            None => None,
        };
        let built = py.detach(move || match external {
            Some(l) => Trainer::with_learner(cfg, parts, handle, Box::new(l)),
            None => Trainer::new(cfg, parts, handle),
        });
        let trainer = built.map_err(|e| take_learner_error(&learner_error, e))?;
        Ok(Self {
            learner_error,
            stop: trainer.stop_flag(),
            resumed_step: trainer.step(),
            phase: Mutex::new(Phase::Ready(Box::new(trainer))),
            pending_ack: Mutex::new(None),
            config,
        })
    }

    /// The config in effect, every default filled in.
    #[getter]
    fn config(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        py_of_json(py, &self.config)
    }

    /// Steps already taken when this trainer was built (the checkpoint it resumed from).
    #[getter]
    fn resumed_step(&self) -> u64 {
        self.resumed_step
    }

    /// Starts training on a background thread; events come from `poll`.
    fn start(&self) -> PyResult<()> {
        let mut phase = self.phase.lock().expect("trainer lock");
        let Phase::Ready(_) = &*phase else {
            return Err(training_err("the trainer was already started"));
        };
        let Phase::Ready(mut trainer) = std::mem::replace(&mut *phase, Phase::Finished) else {
            unreachable!()
        };
        let (tx, rx) = mpsc::channel();
        let join = std::thread::Builder::new()
            .name("asearcher-trainer".into())
            .spawn(move || {
                let step_tx = tx.clone();
                let result = trainer.fit(&mut |record| {
                    let line = serde_json::to_string(record).unwrap_or_default();
                    let (ack_tx, ack_rx) = mpsc::sync_channel(1);
                    if step_tx.send(Event::Step(line, ack_tx)).is_err() {
                        return Control::Stop;
                    }
                    match ack_rx.recv() {
                        Ok(true) => Control::Continue,
                        _ => Control::Stop,
                    }
                });
                let done = result.map(|s| serde_json::to_string(&s).unwrap_or_default());
                drop(trainer);
                let _ = tx.send(Event::Done(done));
            })
            .map_err(|e| training_err(format!("cannot start the trainer thread: {e}")))?;
        *phase = Phase::Running {
            events: Arc::new(Mutex::new(rx)),
            join: Some(join),
        };
        Ok(())
    }

    /// The next event within `timeout_s`: `("step", json)`, `("idle", None)` or
    /// `("done", summary_json)`; a failed run raises its error. The loop waits after each step
    /// record until the next `poll` (or `stop`), so callbacks can stop it before the next step.
    fn poll(&self, py: Python<'_>, timeout_s: f64) -> PyResult<(String, Option<String>)> {
        self.answer_pending(!self.stop.load(Ordering::Relaxed));
        let mut phase = self.phase.lock().expect("trainer lock");
        let Phase::Running { events, join } = &mut *phase else {
            return Err(training_err(
                "the trainer is not running (call start() once)",
            ));
        };
        let timeout = Duration::from_secs_f64(timeout_s.max(0.0));
        let rx = events.clone();
        let event = py.detach(move || rx.lock().expect("events lock").recv_timeout(timeout));
        match event {
            Ok(Event::Step(line, ack)) => {
                *self.pending_ack.lock().expect("ack lock") = Some(ack);
                Ok(("step".into(), Some(line)))
            }
            Err(RecvTimeoutError::Timeout) => Ok(("idle".into(), None)),
            Ok(Event::Done(result)) => {
                if let Some(j) = join.take() {
                    py.detach(|| j.join()).ok();
                }
                *phase = Phase::Finished;
                result
                    .map(|s| ("done".into(), Some(s)))
                    .map_err(|e| take_learner_error(&self.learner_error, e))
            }
            Err(RecvTimeoutError::Disconnected) => {
                *phase = Phase::Finished;
                Err(training_err(
                    "the trainer thread ended without a result (it panicked; see the log)",
                ))
            }
        }
    }

    /// Asks the run to stop after the step in progress (it is checkpointed).
    fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.answer_pending(false);
    }

    fn __repr__(&self) -> String {
        let out = self
            .config
            .pointer("/run/out_dir")
            .and_then(|v| v.as_str())
            .unwrap_or("?");
        format!(
            "Trainer(out_dir={out:?}, resumed_step={})",
            self.resumed_step
        )
    }
}

/// The Python learner's own exception when it caused `e`, else `e` mapped as usual.
fn take_learner_error(slot: &ErrorSlot, e: TrainError) -> PyErr {
    match slot.lock().expect("learner error slot").take() {
        Some(py_err) if matches!(e, TrainError::Learner(_)) => py_err,
        _ => train_err(e),
    }
}

impl PyTrainer {
    fn answer_pending(&self, go_on: bool) {
        if let Some(ack) = self.pending_ack.lock().expect("ack lock").take() {
            let _ = ack.send(go_on);
        }
    }
}

/// Fine-tunes a model on demonstration trajectories; `callback(step, total, stats_json)` runs
/// on the caller's thread after every optimizer step and may return False to stop early.
/// Returns the summary as JSON.
#[pyfunction]
#[pyo3(signature = (config, callback = None))]
fn warm_start(
    py: Python<'_>,
    config: &Bound<'_, PyAny>,
    callback: Option<Bound<'_, PyAny>>,
) -> PyResult<String> {
    let cfg = WarmStartConfig::from_value(json_of(config, "config")?).map_err(train_err)?;
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel::<(u64, u64, String)>();
    let worker_stop = stop.clone();
    let join = std::thread::Builder::new()
        .name("asearcher-warm-start".into())
        .spawn(move || {
            run_warm_start(&cfg, &mut |step, total, stats| {
                let line = serde_json::to_string(stats).unwrap_or_default();
                let _ = tx.send((step, total, line));
                !worker_stop.load(Ordering::Relaxed)
            })
        })
        .map_err(|e| training_err(format!("cannot start the warm-start thread: {e}")))?;
    let rx = Mutex::new(rx);
    let mut interrupted: Option<PyErr> = None;
    loop {
        match py.detach(|| {
            rx.lock()
                .expect("events lock")
                .recv_timeout(Duration::from_millis(100))
        }) {
            Ok((step, total, line)) => {
                if let (Some(cb), None) = (&callback, &interrupted) {
                    match cb.call1((step, total, line)) {
                        Ok(r) if r.is_instance_of::<pyo3::types::PyBool>() && !r.is_truthy()? => {
                            stop.store(true, Ordering::Relaxed)
                        }
                        Ok(_) => {}
                        Err(e) => {
                            stop.store(true, Ordering::Relaxed);
                            interrupted = Some(e);
                        }
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                if interrupted.is_none() {
                    if let Err(e) = py.check_signals() {
                        stop.store(true, Ordering::Relaxed);
                        interrupted = Some(e);
                    }
                }
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    let result = py
        .detach(|| join.join())
        .map_err(|_| training_err("the warm-start thread panicked"))?;
    if let Some(e) = interrupted {
        return Err(e);
    }
    let summary = result.map_err(train_err)?;
    serde_json::to_string(&summary).map_err(|e| training_err(e.to_string()))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyTrainer>()?;
    m.add_function(wrap_pyfunction!(warm_start, m)?)?;
    Ok(())
}
