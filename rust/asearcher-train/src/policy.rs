//! What the training loop needs from a learner ([`PolicyLearner`]): a PPO step on scored groups,
//! the weights for the generator or the servers, and its share of a checkpoint. Two learners
//! implement it: the embedded tch [`Learner`] (in this process, one device) and, through the
//! Python binding, the FSDP2 ranks under torchrun (`learner.backend = "fsdp"`), which get the
//! buffer stage's [`crate::learner::plan::PpoPlan`] and write their own sharded state.

use crate::learner::{Learner, StepStats};
use crate::trainer::copy_tokenizer_files;
use crate::Result;
use asearcher_rollout::scheduler::Group;
use asearcher_torch::model::QwenModel;
use asearcher_torch::train::LoadedCheckpoint;
use std::path::Path;
use tch::Tensor;

/// Named tensors of a checkpoint: the model, and the optimizer state if any.
pub type StateTensors = (Vec<(String, Tensor)>, Option<Vec<(String, Tensor)>>);

/// A learner the training loop can drive.
pub trait PolicyLearner: Send {
    /// One optimizer step (or `ppo.minibatches` of them) on `groups` with the policy at
    /// `version`.
    fn ppo_step(&mut self, groups: &[Group], version: u64) -> Result<StepStats>;

    /// Sets the count of optimizer updates taken (it drives the learning-rate schedule).
    fn set_steps(&mut self, n: u64);

    /// The model in this process, when there is one (the embedded generator swaps its
    /// weights in directly); `None` for a learner that lives in other processes.
    fn local_model(&self) -> Option<&QwenModel>;

    /// Writes the current weights in Hugging Face layout (config.json + safetensors) to `dir`.
    fn export_hf(&mut self, dir: &Path) -> Result<()>;

    /// Broadcasts the current weights to the inference servers as policy `version` through
    /// their weight-update API (`inference.weight_sync = "distributed"`); the servers are
    /// paused around it by the caller.
    fn push_weights(&mut self, _version: u64) -> Result<()> {
        Err(crate::TrainError::WeightSync {
            target: "the inference servers".into(),
            message: "this learner cannot broadcast weights; use inference.weight_sync = \"disk\""
                .into(),
        })
    }

    /// The `config.json` of the model being trained (kept with each checkpoint).
    fn model_config_json(&self) -> Result<Vec<u8>>;

    /// Model and optimizer tensors the checkpoint files hold (empty for a learner whose state
    /// is written by [`PolicyLearner::write_state`]).
    fn state_tensors(&self) -> StateTensors;

    /// Writes state files of its own into the checkpoint directory being written, before it is
    /// renamed into place (the FSDP ranks write sharded model and optimizer state there).
    fn write_state(&mut self, _dir: &Path) -> Result<()> {
        Ok(())
    }

    /// Restores the model and optimizer state of a checkpoint.
    fn restore(&mut self, checkpoint: &LoadedCheckpoint) -> Result<()>;

    /// Called once when the run ends (normally or not); a learner in other processes tells
    /// them to exit.
    fn shutdown(&mut self) {}
}

impl PolicyLearner for Learner {
    fn ppo_step(&mut self, groups: &[Group], version: u64) -> Result<StepStats> {
        Learner::ppo_step(self, groups, version)
    }

    fn set_steps(&mut self, n: u64) {
        Learner::set_steps(self, n)
    }

    fn local_model(&self) -> Option<&QwenModel> {
        Some(self.model())
    }

    fn export_hf(&mut self, dir: &Path) -> Result<()> {
        Ok(self.model().save_hf(dir)?)
    }

    fn model_config_json(&self) -> Result<Vec<u8>> {
        Ok(self.model().config().raw.to_string().into_bytes())
    }

    fn state_tensors(&self) -> StateTensors {
        (self.weights(), Some(self.optimizer_state()))
    }

    fn restore(&mut self, checkpoint: &LoadedCheckpoint) -> Result<()> {
        checkpoint.copy_model_into(&self.weights())?;
        if let Some(opt) = &checkpoint.optimizer {
            self.load_optimizer_state(opt)?;
        }
        Ok(())
    }
}

/// Writes the final model: HF layout from the learner plus the tokenizer files.
pub(crate) fn save_final(
    learner: &mut dyn PolicyLearner,
    dir: &Path,
    tokenizer: &Path,
) -> Result<()> {
    learner.export_hf(dir)?;
    copy_tokenizer_files(tokenizer, dir)
}
