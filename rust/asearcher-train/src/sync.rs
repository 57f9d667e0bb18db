//! Pushing the learner's new weights to where generation runs, tagged with the new policy
//! version:
//! - embedded: an in-process swap between two decode steps of the generator; in-flight
//!   generations are aborted and re-sent with their tokens so far (their KV cache recomputed
//!   under the new weights), or, without `interrupt`, continue with the cache they have;
//! - servers: the weights are written in HF layout (safetensors) to `weights_dir/v<version>`, then
//!   every server is paused (in-flight requests end as `abort` and the pool re-sends them),
//!   loads them with `/update_weights_from_disk`, and continues. Old versions are deleted;
//! - servers by broadcast: every server is paused, the learner broadcasts its weights through
//!   the servers' weight-update API (`/update_weights_from_distributed`), every server continues.
//!
//! A server that fails an update keeps serving its old weights; its version in the pool is then
//! not raised (its tokens keep the old tag, while servers that loaded the update are tagged
//! with the new version) and the error is returned for the step to record.

use crate::policy::PolicyLearner;
use crate::{Result, TrainError};
use asearcher_rollout::client::openai::OpenAiCompletionsServer;
use asearcher_rollout::client::pool::ServerPool;
use asearcher_rollout::client::sglang::SglangServer;
use asearcher_rollout::client::ServerProtocol;
use asearcher_rollout::RolloutError;
use asearcher_torch::generate::{GeneratorHandle, UpdateOptions, WeightUpdate};
use asearcher_torch::model::QwenModel;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where the weights go.
pub enum WeightSync {
    Embedded {
        generator: GeneratorHandle,
        interrupt: bool,
    },
    Servers {
        servers: Vec<SglangServer>,
        pool: Arc<ServerPool>,
        dir: PathBuf,
        keep: usize,
    },
    Distributed {
        servers: Vec<PausableServer>,
        pool: Arc<ServerPool>,
    },
}

/// A server whose generation is paused around a broadcast weight update, in its own protocol.
pub enum PausableServer {
    /// `/pause_generation` and `/continue_generation`.
    Sglang(SglangServer),
    /// `/pause?mode=abort` and `/resume`.
    Vllm(OpenAiCompletionsServer),
}

impl PausableServer {
    async fn pause(&self) -> std::result::Result<(), RolloutError> {
        match self {
            PausableServer::Sglang(s) => s.pause_generation().await,
            PausableServer::Vllm(s) => s.pause_generation().await,
        }
    }

    async fn resume(&self) -> std::result::Result<(), RolloutError> {
        match self {
            PausableServer::Sglang(s) => s.continue_generation().await,
            PausableServer::Vllm(s) => s.resume_generation().await,
        }
    }
}

impl WeightSync {
    /// Servers reached at `urls`, weights written under `dir`.
    pub fn servers(
        urls: &[String],
        pool: Arc<ServerPool>,
        dir: PathBuf,
        keep: usize,
        timeout: Duration,
    ) -> Result<Self> {
        let servers = urls
            .iter()
            .map(|u| SglangServer::new(u, timeout))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        std::fs::create_dir_all(&dir).map_err(|e| TrainError::io(&dir, e))?;
        Ok(WeightSync::Servers {
            servers,
            pool,
            dir,
            keep,
        })
    }

    /// Servers reached at `urls` that receive weights by broadcast from the learner; `vllm`:
    /// vLLM servers serving `model` (else SGLang's protocol).
    pub fn distributed(
        urls: &[String],
        vllm: Option<&str>,
        pool: Arc<ServerPool>,
        timeout: Duration,
    ) -> Result<Self> {
        let servers =
            urls.iter()
                .map(|u| match vllm {
                    Some(model) => OpenAiCompletionsServer::new(u, model, None, timeout)
                        .map(PausableServer::Vllm),
                    None => SglangServer::new(u, timeout).map(PausableServer::Sglang),
                })
                .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(WeightSync::Distributed { servers, pool })
    }

    /// Sends the learner's weights as policy `version`; returns the seconds it took.
    pub async fn push(&self, learner: &mut dyn PolicyLearner, version: u64) -> Result<f64> {
        let started = Instant::now();
        match self {
            WeightSync::Embedded {
                generator,
                interrupt,
            } => {
                let model = learner
                    .local_model()
                    .ok_or_else(|| TrainError::WeightSync {
                        target: "the embedded generator".into(),
                        message: "the learner's model is not in this process; use inference \
                              servers (inference.backend = \"sglang\")"
                            .into(),
                    })?;
                push_embedded(generator, model, version, *interrupt).await?
            }
            WeightSync::Servers {
                servers,
                pool,
                dir,
                keep,
            } => {
                let path = write_version(learner, dir, version)?;
                let pushed = push_to_servers(servers, pool, &path, version).await;
                prune_versions(dir, *keep);
                pushed?;
                pool.set_version(version);
            }
            WeightSync::Distributed { servers, pool } => {
                broadcast_to_servers(servers, learner, version).await?;
                pool.set_version(version);
            }
        }
        Ok(started.elapsed().as_secs_f64())
    }
}

async fn push_embedded(
    generator: &GeneratorHandle,
    model: &QwenModel,
    version: u64,
    interrupt: bool,
) -> Result<()> {
    let tensors = model
        .named_parameters()
        .into_iter()
        .map(|(n, t)| (n, t.detach()))
        .collect();
    let options = UpdateOptions {
        version: Some(version),
        abort_in_flight: interrupt,
        recompute_cache: false,
    };
    generator
        .update_weights(WeightUpdate::Tensors(tensors), options)
        .await
        .map_err(|e| TrainError::WeightSync {
            target: "the embedded generator".into(),
            message: e.to_string(),
        })?;
    Ok(())
}

/// Writes `v<version>` atomically (a temporary directory renamed into place).
fn write_version(learner: &mut dyn PolicyLearner, dir: &Path, version: u64) -> Result<PathBuf> {
    let path = dir.join(format!("v{version:08}"));
    let tmp = dir.join(format!(".tmp-v{version:08}"));
    let _ = std::fs::remove_dir_all(&tmp);
    learner.export_hf(&tmp)?;
    let _ = std::fs::remove_dir_all(&path);
    std::fs::rename(&tmp, &path).map_err(|e| TrainError::io(&path, e))?;
    Ok(path)
}

/// Loads `path` into every server; each server that loaded it is tagged `version` in the pool
/// at once, so a server that failed keeps its old tag while the others move on.
async fn push_to_servers(
    servers: &[SglangServer],
    pool: &ServerPool,
    path: &Path,
    version: u64,
) -> Result<()> {
    let path_str = path.to_string_lossy().to_string();
    let updates = servers.iter().map(|s| {
        let path_str = path_str.clone();
        async move {
            s.pause_generation().await?;
            let loaded = s.update_weights_from_disk(&path_str, Some(version)).await;
            if loaded.is_ok() {
                pool.set_server_version(s.address(), version);
            }
            // Continue even after a failed load: the server keeps serving its old weights.
            let resumed = s.continue_generation().await;
            loaded.and(resumed)
        }
    });
    let results = futures::future::join_all(updates).await;
    let failures: Vec<String> = results
        .into_iter()
        .filter_map(|r| r.err().map(|e| e.to_string()))
        .collect();
    if failures.is_empty() {
        Ok(())
    } else {
        Err(TrainError::WeightSync {
            target: format!("{} server(s)", failures.len()),
            message: failures.join("; "),
        })
    }
}

/// Pauses every server, has the learner broadcast its weights, and continues every server
/// (also after a failure: they keep serving their old weights).
async fn broadcast_to_servers(
    servers: &[PausableServer],
    learner: &mut dyn PolicyLearner,
    version: u64,
) -> Result<()> {
    let paused = futures::future::join_all(servers.iter().map(|s| s.pause())).await;
    let pushed = match paused.into_iter().find_map(|r| r.err()) {
        Some(e) => Err(TrainError::WeightSync {
            target: "a server".into(),
            message: format!("pause_generation: {e}"),
        }),
        None => learner.push_weights(version),
    };
    let resumed = futures::future::join_all(servers.iter().map(|s| s.resume())).await;
    pushed?;
    match resumed.into_iter().find_map(|r| r.err()) {
        Some(e) => Err(TrainError::WeightSync {
            target: "a server".into(),
            message: format!("continue_generation: {e}"),
        }),
        None => Ok(()),
    }
}

/// Deletes all but the newest `keep` version directories.
fn prune_versions(dir: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut versions: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('v'))
        })
        .collect();
    versions.sort();
    let excess = versions.len().saturating_sub(keep);
    for old in &versions[..excess] {
        if let Err(e) = std::fs::remove_dir_all(old) {
            tracing::warn!(dir = %old.display(), error = %e, "could not delete old weights");
        }
    }
}
