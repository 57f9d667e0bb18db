//! The training loop: the rollout engine generates groups under the staleness gate while the
//! learner trains on the batches it hands over; after each step the policy version goes up,
//! the new weights go to the generator (or the servers), and the gate admits more work.
//! `rollout.max_staleness = 0` is synchronous RL in the same code: the gate admits the next batch
//! only after the previous one was trained on.
//!
//! Outputs under `run.out_dir`: `metrics.jsonl` (one [`StepRecord`] per step), `batches.jsonl`
//! (which groups each step trained on), `trajectories.jsonl`, `checkpoints/step-N` (model,
//! optimizer, step, RNG, the rollout engine's snapshot: data position and every admitted group
//! not yet trained on, trajectories in flight with their turns so far) and `final/`.
//!
//! Resume after a crash or kill -9: the newest complete checkpoint is loaded, the jsonl outputs
//! are cut back to the steps it contains, and the engine resumes its groups, so no step is
//! repeated or skipped and no question is lost or trained on twice.

use crate::config::{InferenceBackend, SearchKind, TrainConfig, WeightSyncMode};
use crate::embedded::{EmbeddedBackend, TokenizerDetok};
use crate::learner::{Learner, LearnerBackend, LearnerConfig, StepStats};
use crate::policy::{save_final, PolicyLearner};
use crate::sync::WeightSync;
use crate::{Result, TrainError};
use asearcher_agent::agents::build_agent;
use asearcher_agent::trajectory::Trajectory;
use asearcher_rollout::client::pool::{PoolConfig, ServerPool};
use asearcher_rollout::client::LlmBackend;
use asearcher_rollout::questions::{read_questions, Question};
use asearcher_rollout::reward::{RewardPipeline, Scorer};
use asearcher_rollout::scheduler::{
    AgentFactory, EngineParts, EngineSnapshot, Group, QuestionSource, RolloutConfig, RolloutEngine,
    RolloutStats,
};
use asearcher_tokenizer::Tokenizer;
use asearcher_tools::{LocalIndex, PageSource, SearchBackend, Toolbox, ToolboxConfig};
use asearcher_torch::generate::{spawn, GeneratorHandle, GeneratorOptions};
use asearcher_torch::model::QwenModel;
use asearcher_torch::train::{Checkpoint, CheckpointManager, TrainRng, TrainerState};
use serde::Serialize;
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Name of the engine snapshot inside a checkpoint.
const SNAPSHOT_FILE: &str = "rollout.json";
/// RNG stream of the trainer's generator (seeds drawn per step).
const RNG_STREAM: u64 = 1;

/// What the trainer is given besides its config (Python objects, custom scorers).
#[derive(Default, Clone)]
pub struct TrainParts {
    /// The agents' tools; `None`: a BM25 toolbox over `tools.index` (or no tools).
    pub toolbox: Option<Toolbox>,
    /// Scores every group; `None`: the rule reward of `reward`.
    pub scorer: Option<Arc<dyn Scorer>>,
}

/// What one step did; a line of `metrics.jsonl`.
#[derive(Debug, Clone, Serialize)]
pub struct StepRecord {
    /// Steps completed (1 for the first).
    pub step: u64,
    /// The policy version after the step.
    pub version: u64,
    /// Highest data epoch in the batch.
    pub epoch: u32,
    /// Seconds since this process started training.
    pub elapsed_s: f64,
    /// Seconds of this step, all phases.
    pub step_s: f64,
    /// Seconds spent waiting for the batch (0 when it was ready: rollouts kept up).
    pub wait_s: f64,
    pub train_s: f64,
    pub sync_s: f64,
    pub groups: usize,
    pub trajectories: usize,
    /// Mean trained reward of the batch.
    pub reward_mean: f64,
    /// Mean F1 and exact match of the batch's answers.
    pub f1_mean: f64,
    pub em_mean: f64,
    pub turns_mean: f64,
    pub tool_calls_mean: f64,
    /// Tokens generated per second over this step (all trajectories, trained or not).
    pub gen_tokens_per_s: f64,
    /// Where the checkpoint of this step was written, if one was.
    pub checkpoint: Option<String>,
    /// Why the weights of this step did not reach the servers (they keep serving the previous
    /// version); `None` when the sync succeeded.
    pub sync_error: Option<String>,
    /// The failures behind this step's batch (per step, not cumulative like `rollout`).
    pub errors: StepErrors,
    pub learner: StepStats,
    pub rollout: RolloutStats,
}

/// Failures among the trajectories of one step's batch.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StepErrors {
    /// Trajectories that ended in an error (kept by `rollout.on_error = "keep"`).
    pub failed: usize,
    /// Trajectories with at least one failed tool call, and the failed calls.
    pub with_tool_errors: usize,
    pub failed_tool_calls: usize,
    /// Trajectories with a reward error, by stage (a plugin's name, `judge`, `primary`, ...).
    pub reward_errors: std::collections::BTreeMap<String, usize>,
}

/// Counts the failures of a batch (each trajectory once per kind, once per reward stage).
pub fn step_errors(batch: &[Group]) -> StepErrors {
    let mut out = StepErrors::default();
    for t in batch.iter().flat_map(|g| &g.trajectories) {
        if asearcher_rollout::runner::is_failure(t) {
            out.failed += 1;
        }
        let failed_calls = t.failed_tool_calls();
        out.failed_tool_calls += failed_calls;
        out.with_tool_errors += usize::from(failed_calls > 0);
        for stage in t.reward_error_stages() {
            *out.reward_errors.entry(stage.to_string()).or_default() += 1;
        }
    }
    out
}

/// Whether the loop goes on after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Continue,
    Stop,
}

/// How a run ended.
#[derive(Debug, Clone, Serialize)]
pub struct FitSummary {
    /// Steps completed in all (a resumed run counts the earlier ones).
    pub steps: u64,
    /// Steps completed by this call.
    pub steps_this_run: u64,
    /// `steps` (run.steps reached), `data` (questions used up) or `stopped`.
    pub ended_by: String,
    /// The step the run resumed from (0: a fresh run).
    pub resumed_from: u64,
    /// The final model (HF layout, with the tokenizer files).
    pub final_dir: PathBuf,
}

/// A training run, ready to [`Trainer::fit`].
pub struct Trainer {
    cfg: TrainConfig,
    rt: tokio::runtime::Handle,
    learner: Box<dyn PolicyLearner>,
    engine: RolloutEngine,
    sync: WeightSync,
    generator: Option<GeneratorHandle>,
    ckpt: CheckpointManager,
    rng: TrainRng,
    step: u64,
    resumed_from: u64,
    stop: Arc<AtomicBool>,
    out: Outputs,
    /// Weight syncs that failed in a row (see `inference.max_failed_syncs`).
    failed_syncs: u32,
}

impl Trainer {
    /// Builds the run (resuming from the newest checkpoint of `run.out_dir` when `run.resume`).
    /// `rt` runs the rollout engine; [`Trainer::fit`] must not be called from one of its threads.
    pub fn new(cfg: TrainConfig, parts: TrainParts, rt: tokio::runtime::Handle) -> Result<Self> {
        cfg.validate()?;
        if cfg.learner.backend != LearnerBackend::Tch {
            return Err(TrainError::config(
                "learner.backend",
                "the `fsdp` learner runs under torchrun: `torchrun --nproc_per_node N -m \
                 asearcher train CONFIG` (see docs/scale.md)",
            ));
        }
        let (device, kind) = cfg.model.device_and_kind()?;
        let model = QwenModel::load(&cfg.model.path, device, kind)?;
        let learner = Learner::new(model, learner_config(&cfg))?;
        Self::with_learner(cfg, parts, rt, Box::new(learner))
    }

    /// [`Trainer::new`] with a learner of the caller's (the FSDP ranks); `learner.backend`
    /// says which one the config asks for, and the caller has checked it.
    pub fn with_learner(
        cfg: TrainConfig,
        parts: TrainParts,
        rt: tokio::runtime::Handle,
        mut learner: Box<dyn PolicyLearner>,
    ) -> Result<Self> {
        cfg.validate()?;
        // Everything that can refuse the run is checked before anything is written.
        let out_dir = cfg.run.out_dir.clone();
        let toolbox = toolbox_of(&cfg, &parts)?;
        if toolbox.is_none() {
            tracing::warn!(
                "no toolbox (`tools.index` unset and no toolbox= given): every search and access \
                 the agent makes fails with \"no search tools are configured\""
            );
        }
        let parts = TrainParts {
            toolbox: toolbox.clone(),
            scorer: parts.scorer,
        };
        let tokenizer = Arc::new(
            Tokenizer::from_dir(cfg.tokenizer_dir())
                .map_err(|e| TrainError::config("model.tokenizer", e.to_string()))?,
        );
        let questions = read_questions(&cfg.data.train)?;
        let fields = crate::fingerprint::train_fingerprint(&cfg, toolbox.as_ref())?;
        let resume = crate::fingerprint::check(&cfg, &fields)?;
        std::fs::create_dir_all(&out_dir).map_err(|e| TrainError::io(&out_dir, e))?;
        let ckpt = CheckpointManager::new(out_dir.join("checkpoints"), cfg.run.keep_last)?;
        let loaded = if cfg.run.resume {
            ckpt.load_latest()?
        } else {
            None
        };
        let mut rng = TrainRng::new(cfg.run.seed, RNG_STREAM);
        let (step, snapshot) = match &loaded {
            Some(ck) => {
                learner.restore(ck)?;
                if let Some(state) = &ck.state.rng {
                    rng = TrainRng::from_state(state)?;
                }
                learner.set_steps(ck.state.step);
                (ck.state.step, Some(read_snapshot(&ck.dir)?))
            }
            None => (0, None),
        };
        let (backend, sync, generator) =
            rt.block_on(start_inference(&cfg, learner.as_mut(), step))?;
        let engine = {
            let _enter = rt.enter();
            start_engine(&cfg, &parts, questions, backend, tokenizer, snapshot, step)?
        };
        let out = Outputs::open(&out_dir, step)?;
        write_json(&out_dir.join("config.json"), &cfg)?;
        crate::fingerprint::record(&cfg, &fields, &resume)?;
        if step > 0 {
            tracing::info!(step, dir = %out_dir.display(), "resumed training");
        }
        Ok(Self {
            cfg,
            rt,
            learner,
            engine,
            sync,
            generator,
            ckpt,
            rng,
            step,
            resumed_from: step,
            stop: Arc::new(AtomicBool::new(false)),
            out,
            failed_syncs: 0,
        })
    }

    /// A flag that stops the run after the step in progress (checkpointed) when set.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Steps completed so far.
    pub fn step(&self) -> u64 {
        self.step
    }

    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// Live statistics of the rollout engine.
    pub fn rollout_stats(&self) -> RolloutStats {
        self.engine.stats()
    }

    /// Trains until `run.steps`, the end of the data, `on_step` returning [`Control::Stop`] or
    /// the stop flag; checkpoints as configured and at the end, then writes `final/`.
    pub fn fit(&mut self, on_step: &mut dyn FnMut(&StepRecord) -> Control) -> Result<FitSummary> {
        let started = Instant::now();
        let mut last_tokens = self.engine.stats().output_tokens;
        let mut saved_at = self.step;
        let ended_by = loop {
            if self.cfg.run.steps.is_some_and(|n| self.step >= n) {
                break "steps";
            }
            let step_started = Instant::now();
            let Some(batch) = self.wait_for_batch()? else {
                break if self.stop.load(Ordering::Relaxed) {
                    "stopped"
                } else {
                    "data"
                };
            };
            let wait_s = step_started.elapsed().as_secs_f64();
            let mut record = self.train_on(batch, wait_s, step_started, started, last_tokens)?;
            last_tokens = record.rollout.output_tokens;
            // The outputs of a step are written before its checkpoint: a crash in between
            // leaves lines that the resumed run cuts back, never a checkpointed step without
            // its lines.
            let due = self.checkpoint_due();
            if due {
                record.checkpoint = Some(
                    self.ckpt
                        .root()
                        .join(step_dir_name(self.step))
                        .display()
                        .to_string(),
                );
            }
            record.step_s = step_started.elapsed().as_secs_f64();
            self.out.write_metrics(&record)?;
            if due {
                let t = Instant::now();
                self.save_checkpoint()?;
                tracing::debug!(
                    step = self.step,
                    seconds = t.elapsed().as_secs_f64(),
                    "checkpoint time"
                );
                saved_at = self.step;
            }
            if on_step(&record) == Control::Stop || self.stop.load(Ordering::Relaxed) {
                break "stopped";
            }
        };
        if ended_by == "data" && self.step == 0 {
            self.rt.block_on(self.engine.shutdown());
            self.learner.shutdown();
            return Err(TrainError::NoSteps(no_step_reason(
                &self.engine.stats(),
                &self.cfg.rollout,
            )));
        }
        if saved_at != self.step {
            self.save_checkpoint()?;
        }
        let final_dir = self.save_final()?;
        self.rt.block_on(self.engine.shutdown());
        self.learner.shutdown();
        Ok(FitSummary {
            steps: self.step,
            steps_this_run: self.step - self.resumed_from,
            ended_by: ended_by.into(),
            resumed_from: self.resumed_from,
            final_dir,
        })
    }

    /// The next batch of `rollout.batch_size` groups; `None` at the end of the data or on stop.
    fn wait_for_batch(&self) -> Result<Option<Vec<Group>>> {
        let want = self.cfg.rollout.batch_size;
        let stop = self.stop.clone();
        let engine = &self.engine;
        let rollout = &self.cfg.rollout;
        let batch = self.rt.block_on(async move {
            let next = engine.next_batch(want);
            tokio::pin!(next);
            let mut filtered = FilterWatch::new(engine.stats().filtered_groups, want);
            loop {
                tokio::select! {
                    batch = &mut next => return batch,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {
                        if stop.load(Ordering::Relaxed) {
                            return None;
                        }
                        filtered.check(&engine.stats(), rollout);
                    }
                }
            }
        });
        match (batch, self.engine.failure()) {
            (None, Some(failure)) => Err(failure.into()),
            (batch, _) => Ok(batch),
        }
    }

    /// One step on `batch`: learn, bump the version, push the weights, record.
    fn train_on(
        &mut self,
        mut batch: Vec<Group>,
        wait_s: f64,
        step_started: Instant,
        run_started: Instant,
        last_tokens: u64,
    ) -> Result<StepRecord> {
        tch::manual_seed(rand::RngCore::next_u64(&mut self.rng) as i64);
        let t = Instant::now();
        let stats = self.learner.ppo_step(&batch, self.step)?;
        let train_s = t.elapsed().as_secs_f64();
        self.step += 1;
        self.learner.set_steps(self.step);
        let t = Instant::now();
        let sync_error = match self
            .rt
            .block_on(self.sync.push(self.learner.as_mut(), self.step))
        {
            Ok(_) => {
                self.failed_syncs = 0;
                None
            }
            Err(e @ TrainError::WeightSync { .. }) if self.generator.is_none() => {
                self.failed_syncs += 1;
                let limit = self.cfg.inference.max_failed_syncs;
                if self.failed_syncs >= limit {
                    return Err(TrainError::WeightSync {
                        target: "the inference servers".into(),
                        message: format!(
                            "{} syncs failed in a row (inference.max_failed_syncs = {limit}); \
                             the servers still serve older weights than step {}. The last \
                             error: {e}",
                            self.failed_syncs, self.step
                        ),
                    });
                }
                tracing::warn!(step = self.step, error = %e, failed_in_a_row = self.failed_syncs, "weight sync failed; the servers keep the previous weights");
                Some(e.to_string())
            }
            Err(e) => return Err(e),
        };
        self.engine.set_version(self.step);
        let sync_s = t.elapsed().as_secs_f64();
        for g in &mut batch {
            for t in &mut g.trajectories {
                t.metadata.insert("train_step".into(), json!(self.step));
            }
        }
        self.out
            .write_batch(self.step, &batch, self.cfg.run.save_trajectories)?;
        let rollout = self.engine.stats();
        let elapsed = step_started.elapsed().as_secs_f64().max(1e-9);
        Ok(StepRecord {
            step: self.step,
            version: self.step,
            epoch: batch.iter().map(|g| g.epoch).max().unwrap_or(0),
            elapsed_s: run_started.elapsed().as_secs_f64(),
            step_s: elapsed,
            wait_s,
            train_s,
            sync_s,
            groups: batch.len(),
            trajectories: batch.iter().map(|g| g.trajectories.len()).sum(),
            reward_mean: mean_of(&batch, |t| t.reward),
            f1_mean: mean_of(&batch, |t| t.rewards.get("f1").copied()),
            em_mean: mean_of(&batch, |t| t.rewards.get("em").copied()),
            turns_mean: mean_of(&batch, |t| Some(t.num_turns() as f64)),
            tool_calls_mean: mean_of(&batch, |t| Some(t.tool_calls() as f64)),
            gen_tokens_per_s: rollout.output_tokens.saturating_sub(last_tokens) as f64 / elapsed,
            checkpoint: None,
            sync_error,
            errors: step_errors(&batch),
            learner: stats,
            rollout,
        })
    }

    fn checkpoint_due(&self) -> bool {
        let every = self.cfg.run.checkpoint_every;
        every > 0 && self.step % every == 0
    }

    /// Writes `checkpoints/step-N` with the engine's snapshot taken now: every group admitted
    /// and not yet trained on, the data position and the gate's counters.
    fn save_checkpoint(&mut self) -> Result<PathBuf> {
        let snapshot = self.engine.snapshot();
        let snapshot_bytes = serde_json::to_vec(&snapshot)
            .map_err(|e| TrainError::Data(format!("rollout snapshot: {e}")))?;
        let model_config = self.learner.model_config_json()?;
        let state = TrainerState {
            step: self.step,
            schedule: Some(self.cfg.learner.schedule.clone()),
            rng: Some(self.rng.state()),
            user: json!({
                "version": self.step,
                "position": snapshot.position,
                "pending_groups": snapshot.groups.len(),
            }),
        };
        let (weights, optimizer) = self.learner.state_tensors();
        let extra = [
            ("config.json".to_string(), model_config),
            (SNAPSHOT_FILE.to_string(), snapshot_bytes),
        ];
        let checkpoint = Checkpoint {
            state: &state,
            model: &weights,
            optimizer: optimizer.as_deref(),
            extra_files: &extra,
            tokenizer_dir: Some(self.cfg.tokenizer_dir()),
        };
        let learner = &mut self.learner;
        let mut failure = None;
        let saved = self.ckpt.save_with(&checkpoint, &mut |dir| {
            learner.write_state(dir).map_err(|e| {
                let msg = e.to_string();
                failure = Some(e);
                asearcher_torch::TorchError::bad_file(dir, msg)
            })
        });
        let dir = match (saved, failure) {
            (Err(_), Some(e)) => return Err(e),
            (saved, _) => saved?,
        };
        tracing::info!(step = self.step, dir = %dir.display(), pending = snapshot.groups.len(), "checkpoint saved");
        Ok(dir)
    }

    /// `final/`: the trained model in HF layout with the tokenizer files.
    fn save_final(&mut self) -> Result<PathBuf> {
        let dir = self.cfg.run.out_dir.join("final");
        save_final(self.learner.as_mut(), &dir, self.cfg.tokenizer_dir())?;
        Ok(dir)
    }
}

impl Drop for Trainer {
    fn drop(&mut self) {
        if let Some(g) = &self.generator {
            g.shutdown();
        }
    }
}

/// The directory name of step `n`'s checkpoint (as the checkpoint manager names it).
fn step_dir_name(n: u64) -> String {
    format!("step-{n:08}")
}

fn read_snapshot(dir: &Path) -> Result<EngineSnapshot> {
    let path = dir.join(SNAPSHOT_FILE);
    let text = std::fs::read(&path).map_err(|e| TrainError::io(&path, e))?;
    serde_json::from_slice(&text).map_err(|e| TrainError::Data(format!("{}: {e}", path.display())))
}

/// The backend, the weight sync and (embedded) the generator, which starts with the learner's
/// weights as version `step`.
async fn start_inference(
    cfg: &TrainConfig,
    learner: &mut dyn PolicyLearner,
    step: u64,
) -> Result<(Arc<dyn LlmBackend>, WeightSync, Option<GeneratorHandle>)> {
    let inf = &cfg.inference;
    match inf.backend {
        InferenceBackend::Embedded => {
            let (device, kind) = cfg.model.device_and_kind()?;
            let model = QwenModel::load(&cfg.model.path, device, kind)?;
            let detok = Tokenizer::from_dir(cfg.tokenizer_dir())
                .map_err(|e| TrainError::config("model.tokenizer", e.to_string()))?;
            let options = GeneratorOptions {
                max_running: cfg.max_running(),
                max_context: inf.max_context,
                detokenizer: Some(Arc::new(TokenizerDetok::new(Arc::new(detok)))),
                initial_version: step,
                ..GeneratorOptions::default()
            };
            let handle = spawn(model, options)?;
            let sync = WeightSync::Embedded {
                generator: handle.clone(),
                interrupt: inf.interrupt,
            };
            if step > 0 {
                sync.push(learner, step).await?;
            }
            let backend = Arc::new(EmbeddedBackend::new(handle.clone()));
            Ok((backend, sync, Some(handle)))
        }
        InferenceBackend::Sglang | InferenceBackend::Vllm => {
            let pool_cfg = PoolConfig {
                request_timeout_secs: inf.timeout_s,
                ..PoolConfig::default()
            };
            let vllm_model = cfg.vllm_model();
            let pool = Arc::new(match &vllm_model {
                Some(model) => ServerPool::openai(&inf.servers, model, None, pool_cfg)?,
                None => ServerPool::sglang(&inf.servers, pool_cfg)?,
            });
            pool.set_version(step);
            let dir = inf
                .weights_dir
                .clone()
                .unwrap_or_else(|| cfg.run.out_dir.join("weights"));
            let timeout = Duration::from_secs_f64(inf.timeout_s);
            let sync = match inf.weight_sync {
                WeightSyncMode::Disk => {
                    WeightSync::servers(&inf.servers, pool.clone(), dir, inf.keep_weights, timeout)?
                }
                WeightSyncMode::Distributed => WeightSync::distributed(
                    &inf.servers,
                    vllm_model.as_deref(),
                    pool.clone(),
                    timeout,
                )?,
            };
            if step > 0 {
                sync.push(learner, step).await?;
            }
            Ok((pool, sync, None))
        }
    }
}

fn toolbox_of(cfg: &TrainConfig, parts: &TrainParts) -> Result<Option<Toolbox>> {
    if let Some(tb) = &parts.toolbox {
        return Ok(Some(tb.clone()));
    }
    let Some(index) = &cfg.tools.index else {
        if cfg.tools.search != SearchKind::Bm25 {
            return Err(TrainError::config(
                "tools.index",
                "required with dense or hybrid search: the BM25 index gives the pages and \
                 holds the dense index in dense/ by default",
            ));
        }
        return Ok(None);
    };
    let local = Arc::new(
        LocalIndex::open(index)
            .map_err(|e| TrainError::config("tools.index", format!("{}: {e}", index.display())))?,
    );
    let tb_cfg = ToolboxConfig {
        top_k: cfg.tools.top_k,
        ..ToolboxConfig::default()
    };
    let search: Arc<dyn SearchBackend> = match cfg.tools.search {
        SearchKind::Bm25 => Arc::new(local.clone()),
        SearchKind::Dense => Arc::new(open_dense(cfg, index)?),
        SearchKind::Hybrid => {
            let parts: Vec<(Arc<dyn SearchBackend>, f32)> = vec![
                (Arc::new(local.clone()), cfg.tools.bm25_weight),
                (Arc::new(open_dense(cfg, index)?), cfg.tools.dense_weight),
            ];
            Arc::new(
                asearcher_dense::HybridSearch::new(parts, 50, 60.0)
                    .map_err(|e| TrainError::config("tools", e.to_string()))?,
            )
        }
    };
    let pages: Arc<dyn PageSource> = Arc::new(local);
    Ok(Some(Toolbox::new(search, Some(pages), None, tb_cfg)))
}

/// The dense index of `tools.dense_index` (default `<index>/dense`) with its encoder.
fn open_dense(cfg: &TrainConfig, index: &Path) -> Result<asearcher_dense::DenseIndex> {
    let dir = cfg
        .tools
        .dense_index
        .clone()
        .unwrap_or_else(|| index.join("dense"));
    let mode = if cfg.tools.hnsw {
        asearcher_dense::SearchMode::Hnsw {
            expansion_search: None,
        }
    } else {
        asearcher_dense::SearchMode::Exact
    };
    let model = cfg.tools.dense_model.as_deref();
    asearcher_dense::DenseIndex::open_built(&dir, model, tch::Device::Cpu, tch::Kind::Float, mode)
        .map_err(|e| match e {
            // The encoder could not be loaded: the model directory is at fault.
            asearcher_dense::DenseError::Torch(e) => {
                let shown =
                    model.map_or_else(|| "the build's encoder".into(), |m| m.display().to_string());
                TrainError::config("tools.dense_model", format!("{shown}: {e}"))
            }
            e => TrainError::config("tools.dense_index", format!("{}: {e}", dir.display())),
        })
}

fn agent_factory(cfg: &TrainConfig, tokenizer: Arc<Tokenizer>) -> AgentFactory {
    let agent = cfg.agent.clone();
    Arc::new(move |q: &Question, _sample: u32| {
        build_agent(&agent, tokenizer.clone(), &q.question).map_err(|e| e.to_string())
    })
}

fn start_engine(
    cfg: &TrainConfig,
    parts: &TrainParts,
    questions: Vec<Question>,
    backend: Arc<dyn LlmBackend>,
    tokenizer: Arc<Tokenizer>,
    snapshot: Option<EngineSnapshot>,
    step: u64,
) -> Result<RolloutEngine> {
    let shuffle = cfg.data.shuffle.then_some(cfg.run.seed);
    let source = QuestionSource::epochs(questions, Some(cfg.data.epochs), shuffle);
    let scorer: Arc<dyn Scorer> = match &parts.scorer {
        Some(s) => s.clone(),
        None => Arc::new(RewardPipeline::from_config(&cfg.reward, Vec::new(), None)?),
    };
    let engine_parts = EngineParts {
        backend,
        toolbox: toolbox_of(cfg, parts)?,
        tokenizer: tokenizer.clone(),
        agents: agent_factory(cfg, tokenizer),
        scorer,
        sampling_seed: cfg.sampling_seed(),
    };
    let rollout = engine_config(cfg);
    let engine = match snapshot {
        Some(s) => RolloutEngine::resume(rollout, engine_parts, source, s)?,
        None => RolloutEngine::start(rollout, engine_parts, source)?,
    };
    engine.set_version(step);
    Ok(engine)
}

/// The learner's settings: zero-variance filtering follows the engine's (one knob).
pub fn learner_config(cfg: &TrainConfig) -> LearnerConfig {
    LearnerConfig {
        filter_zero_variance: engine_config(cfg).filter_zero_variance == Some(true),
        ..cfg.learner.clone()
    }
}

/// The engine's config: zero-variance groups are filtered in the engine (by default whenever
/// groups have two or more samples), so they free their admission slots instead of stalling
/// the staleness gate.
fn engine_config(cfg: &TrainConfig) -> RolloutConfig {
    let mut rollout = cfg.rollout.clone();
    rollout.ordered |= cfg.run.deterministic;
    rollout.filter_zero_variance = Some(
        cfg.rollout
            .filter_zero_variance
            .unwrap_or(cfg.rollout.group_size >= 2),
    );
    rollout
}

fn mean_of(batch: &[Group], f: impl Fn(&Trajectory) -> Option<f64>) -> f64 {
    let values: Vec<f64> = batch
        .iter()
        .flat_map(|g| g.trajectories.iter())
        .filter_map(f)
        .collect();
    if values.is_empty() {
        0.0
    } else {
        values.iter().sum::<f64>() / values.len() as f64
    }
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| TrainError::Data(format!("{}: {e}", path.display())))?;
    std::fs::write(path, text).map_err(|e| TrainError::io(path, e))
}

pub(crate) fn copy_tokenizer_files(from: &Path, to: &Path) -> Result<()> {
    for name in asearcher_torch::train::checkpoint::TOKENIZER_FILES {
        let src = from.join(name);
        if src.is_file() {
            let dst = to.join(name);
            std::fs::copy(&src, &dst).map_err(|e| TrainError::io(&dst, e))?;
        }
    }
    Ok(())
}

/// The run's jsonl outputs. On resume each is cut back to the steps of the checkpoint (lines of
/// later steps, written before a crash, are dropped; so is a torn last line).
struct Outputs {
    metrics: std::fs::File,
    batches: std::fs::File,
    trajectories: std::fs::File,
}

impl Outputs {
    fn open(dir: &Path, step: u64) -> Result<Self> {
        let open = |name: &str, step_of: fn(&Value) -> Option<u64>| -> Result<std::fs::File> {
            let path = dir.join(name);
            truncate_to_step(&path, step, step_of)?;
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| TrainError::io(&path, e))
        };
        Ok(Self {
            metrics: open("metrics.jsonl", |v| v.get("step")?.as_u64())?,
            batches: open("batches.jsonl", |v| v.get("step")?.as_u64())?,
            trajectories: open("trajectories.jsonl", |v| {
                v.get("metadata")?.get("train_step")?.as_u64()
            })?,
        })
    }

    fn write_metrics(&mut self, record: &StepRecord) -> Result<()> {
        append_line(&mut self.metrics, record)
    }

    fn write_batch(&mut self, step: u64, batch: &[Group], with_trajectories: bool) -> Result<()> {
        let groups: Vec<Value> = batch
            .iter()
            .map(|g| {
                json!({
                    "index": g.index,
                    "question_id": g.question.id,
                    "epoch": g.epoch,
                    "admitted_version": g.admitted_version,
                    "samples": g.trajectories.iter().map(|t| t.sample).collect::<Vec<_>>(),
                    "rewards": g.rewards(),
                })
            })
            .collect();
        if with_trajectories {
            for t in batch.iter().flat_map(|g| g.trajectories.iter()) {
                append_line(&mut self.trajectories, t)?;
            }
        }
        append_line(&mut self.batches, &json!({"step": step, "groups": groups}))
    }
}

fn append_line(file: &mut std::fs::File, value: &impl Serialize) -> Result<()> {
    let mut line = serde_json::to_vec(value).map_err(|e| TrainError::Data(e.to_string()))?;
    line.push(b'\n');
    file.write_all(&line)
        .map_err(|e| TrainError::io(PathBuf::from("<run output>"), e))
}

/// Keeps the lines of `path` whose step is at most `step` (rewritten atomically).
fn truncate_to_step(path: &Path, step: u64, step_of: fn(&Value) -> Option<u64>) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let mut kept = String::with_capacity(text.len());
    let mut dropped = 0usize;
    for line in text.lines() {
        let keep = serde_json::from_str::<Value>(line)
            .ok()
            .and_then(|v| step_of(&v))
            .is_some_and(|s| s <= step);
        if keep {
            kept.push_str(line);
            kept.push('\n');
        } else {
            dropped += 1;
        }
    }
    if dropped == 0 {
        return Ok(());
    }
    tracing::info!(file = %path.display(), dropped, step, "dropped output lines of steps after the checkpoint");
    let tmp = path.with_extension("jsonl.tmp");
    std::fs::write(&tmp, kept).map_err(|e| TrainError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e))
}

/// Warns (once per wait, then at every further `2 * batch_size` groups) when the engine keeps
/// filtering groups while a batch is awaited: the trainer is not stuck, it has nothing to learn.
struct FilterWatch {
    at_start: u64,
    next_warning: u64,
    batch: u64,
}

impl FilterWatch {
    fn new(filtered: u64, batch: usize) -> Self {
        let batch = batch.max(1) as u64;
        Self {
            at_start: filtered,
            next_warning: 2 * batch,
            batch,
        }
    }

    fn check(
        &mut self,
        stats: &RolloutStats,
        rollout: &asearcher_rollout::scheduler::RolloutConfig,
    ) {
        let since = stats.filtered_groups.saturating_sub(self.at_start);
        if since >= self.next_warning {
            self.next_warning += 2 * self.batch;
            tracing::warn!("{}", filter_message(since, stats, rollout));
        }
    }
}

fn filter_message(
    filtered: u64,
    stats: &RolloutStats,
    rollout: &asearcher_rollout::scheduler::RolloutConfig,
) -> String {
    let unsolved = stats.filtered_unsolved.min(stats.filtered_groups);
    let solved = stats.filtered_groups - unsolved;
    let advice = if unsolved >= solved {
        "Start from a stronger model (`model.path` / warm start), use easier data, raise \
         `rollout.group_size`"
    } else {
        "Most were solved by every sample: use harder data, raise `rollout.group_size` or \
         the sampling temperature"
    };
    format!(
        "{filtered} groups filtered while waiting for a batch of {}: each group of {} had \
         zero reward variance, so it carries no GRPO signal (`rollout.filter_zero_variance`); \
         since the start {unsolved} of the filtered groups scored 0 on every sample (never \
         answered right) and {solved} scored the same positive reward on every sample. \
         {} trajectories finished, {} failed, {} dropped. {advice}, or set \
         `rollout.filter_zero_variance = false` to train on them anyway",
        rollout.batch_size, rollout.group_size, stats.finished, stats.failed, stats.dropped
    )
}

/// Why the data ran out before the first step, from the engine's counters.
fn no_step_reason(
    stats: &RolloutStats,
    rollout: &asearcher_rollout::scheduler::RolloutConfig,
) -> String {
    if stats.filtered_groups > 0 {
        return format!(
            "the data ran out; {}",
            filter_message(stats.filtered_groups, stats, rollout)
        );
    }
    if stats.dropped_groups > 0 || stats.dropped > 0 {
        return format!(
            "the data ran out; {} groups were dropped because their trajectories failed \
             ({} trajectories failed after `rollout.max_attempts` runs each); see the WARNING \
             lines for the errors",
            stats.dropped_groups, stats.dropped
        );
    }
    format!(
        "the data ran out after {} questions, fewer than one batch of `rollout.batch_size` = {} \
         groups",
        stats.position, rollout.batch_size
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_only_checkpointed_steps_and_drops_torn_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        std::fs::write(
            &path,
            "{\"step\":1}\n{\"step\":2}\n{\"step\":3}\n{\"step\":4,\"x\":",
        )
        .unwrap();
        truncate_to_step(&path, 2, |v| v.get("step")?.as_u64()).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "{\"step\":1}\n{\"step\":2}\n");
        truncate_to_step(&path, 0, |v| v.get("step")?.as_u64()).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
    }
}
