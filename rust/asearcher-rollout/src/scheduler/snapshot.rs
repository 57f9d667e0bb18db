//! Snapshot and resume of the rollout engine: everything admitted and not consumed (ready
//! groups, and groups in flight with their finished samples and the complete turns of the
//! unfinished ones), with the source position and the gate's counters, so that a trainer killed
//! after a checkpoint resumes with no question lost or counted twice and its in-flight
//! trajectories continued rather than thrown away.
//!
//! Consistency: the set of groups, the position, the next index and the gate's counters are read
//! under one gate lock; the records of in-flight samples are then copied one sample lock at a
//! time (a record only grows by complete turns, so any copy is a valid point to continue from).

use super::{
    lock, AdmittedGroup, Collector, EngineParts, Gate, Group, QuestionSource, RolloutConfig,
    RolloutEngine, SampleSlot,
};
use crate::questions::Question;
use crate::runner::{lock_live, LiveRun, RecordedObservation};
use crate::{Result, RolloutError};
use asearcher_agent::trajectory::Trajectory;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::Arc;

/// The resumable state of a [`RolloutEngine`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineSnapshot {
    /// Questions taken from the source; a resumed source continues here.
    pub position: u64,
    /// Admission index of the next new group.
    pub next_index: u64,
    /// The gate's policy version at snapshot time.
    pub version: u64,
    /// The gate's accepted trajectories (consumed or ready; the staleness formula needs it).
    pub accepted: u64,
    /// Groups admitted and not consumed (ready or in flight), in admission order.
    pub groups: Vec<PendingGroup>,
}

/// An admitted group not yet consumed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingGroup {
    pub index: u64,
    pub question: Question,
    pub epoch: u32,
    pub admitted_version: u64,
    /// Its samples (dropped ones left out), in sample order.
    pub samples: Vec<PendingSample>,
    /// The group was complete, scored and waiting for the consumer (already counted in
    /// `accepted`): a resumed engine queues it as it is.
    #[serde(default)]
    pub scored: bool,
}

/// One sample of a pending group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingSample {
    /// Finished, or unfinished with its complete turns so far.
    pub trajectory: Trajectory,
    pub finished: bool,
    /// The run it was on (1 for the first).
    pub attempts: u32,
    /// The observation of each turn's tool call (aligned with the turns, `None` where there was
    /// none or it was not recorded: replay then asks the tool again). Empty for finished samples.
    #[serde(default)]
    pub observations: Vec<Option<RecordedObservation>>,
}

impl RolloutEngine {
    /// A consistent snapshot: one gate lock decides which groups are in it (nothing both ready
    /// and in flight, nothing consumed); in-flight records are then copied without it. A turn
    /// being generated is not included (a resumed engine generates it again).
    pub fn snapshot(&self) -> EngineSnapshot {
        let (mut snapshot, in_flight) = {
            let gate = lock(&self.inner.gate);
            let position = lock(&self.inner.source).position();
            let snapshot = EngineSnapshot {
                position,
                next_index: gate.next_index,
                version: gate.version,
                accepted: gate.accepted,
                groups: gate.ready.iter().map(ready_group).collect(),
            };
            let in_flight: Vec<Arc<AdmittedGroup>> = gate.admitted.values().cloned().collect();
            (snapshot, in_flight)
        };
        snapshot
            .groups
            .extend(in_flight.iter().map(|g| in_flight_group(g)));
        snapshot.groups.sort_by_key(|g| g.index);
        snapshot
    }

    /// Starts an engine that first takes back `snapshot.groups`: scored groups are queued for the
    /// consumer as they were; the others are counted in flight (not as new admissions) and run
    /// again, their finished samples kept as they are and their unfinished ones continued from
    /// their recorded turns (the agent rebuilt by the factory and replayed; a replay that
    /// diverges restarts that sample, counted in `replay_restarts`). Then the source continues at
    /// `snapshot.position`, with the next index, version and accepted count restored.
    pub fn resume(
        cfg: RolloutConfig,
        parts: EngineParts,
        source: QuestionSource,
        snapshot: EngineSnapshot,
    ) -> Result<Self> {
        cfg.validate()?;
        check(&cfg, &snapshot)?;
        let stats = Arc::new(Collector::new());
        let mut gate = Gate {
            version: snapshot.version,
            accepted: snapshot.accepted,
            next_index: snapshot.next_index,
            ..Gate::default()
        };
        for group in snapshot.groups {
            if group.scored {
                gate.push_ready(scored_group(group), cfg.ordered);
                continue;
            }
            let unfinished = group.samples.iter().filter(|s| !s.finished).count();
            stats.resumed_samples.fetch_add(unfinished as u64, Relaxed);
            gate.in_flight += group.samples.len();
            let admitted = admitted_again(group);
            gate.admitted.insert(admitted.index, Arc::new(admitted));
        }
        let source = source.resume_at(snapshot.position);
        Self::launch(cfg, parts, source, gate, stats)
    }
}

fn ready_group(g: &Group) -> PendingGroup {
    PendingGroup {
        index: g.index,
        question: g.question.as_ref().clone(),
        epoch: g.epoch,
        admitted_version: g.admitted_version,
        samples: g
            .trajectories
            .iter()
            .zip(&g.attempts)
            .map(|(t, a)| PendingSample {
                trajectory: t.clone(),
                finished: true,
                attempts: *a,
                observations: Vec::new(),
            })
            .collect(),
        scored: true,
    }
}

fn in_flight_group(g: &AdmittedGroup) -> PendingGroup {
    PendingGroup {
        index: g.index,
        question: g.question.as_ref().clone(),
        epoch: g.epoch,
        admitted_version: g.version,
        samples: g
            .samples
            .iter()
            .filter(|s| !s.dropped.load(SeqCst))
            .map(|s| pending_sample(s))
            .collect(),
        scored: false,
    }
}

fn pending_sample(slot: &SampleSlot) -> PendingSample {
    let finished = slot.finished.load(SeqCst);
    let attempts = slot.attempt.load(SeqCst);
    let live = lock_live(&slot.live);
    let mut trajectory = live.trajectory.clone();
    if !finished {
        // The time run so far, so that a resumed run adds its own to it.
        trajectory.elapsed_s = (unix_now() - trajectory.started_at).max(0.0);
    }
    PendingSample {
        trajectory,
        finished,
        attempts,
        observations: if finished {
            Vec::new()
        } else {
            live.observations.clone()
        },
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn scored_group(g: PendingGroup) -> Group {
    let (trajectories, attempts) = g
        .samples
        .into_iter()
        .map(|s| (s.trajectory, s.attempts))
        .unzip();
    Group {
        index: g.index,
        question: Arc::new(g.question),
        epoch: g.epoch,
        admitted_version: g.admitted_version,
        trajectories,
        attempts,
    }
}

fn admitted_again(g: PendingGroup) -> AdmittedGroup {
    let samples = g
        .samples
        .into_iter()
        .map(|s| {
            let mut observations = s.observations;
            observations.resize(s.trajectory.turns.len(), None);
            let live = LiveRun {
                trajectory: s.trajectory,
                observations,
            };
            SampleSlot::new(live, s.finished, s.attempts)
        })
        .collect();
    AdmittedGroup {
        index: g.index,
        question: Arc::new(g.question),
        epoch: g.epoch,
        version: g.admitted_version,
        samples,
    }
}

/// Checks a snapshot against the configuration; the error names the offending entry.
fn check(cfg: &RolloutConfig, snapshot: &EngineSnapshot) -> Result<()> {
    let mut indices = BTreeSet::new();
    for (i, g) in snapshot.groups.iter().enumerate() {
        let at = format!("snapshot.groups[{i}]");
        let bad = |what: String| Err(RolloutError::config(&at, what));
        if g.index >= snapshot.next_index {
            return bad(format!(
                "index {} is not below next_index {}",
                g.index, snapshot.next_index
            ));
        }
        if !indices.insert(g.index) {
            return bad(format!("index {} appears twice", g.index));
        }
        if g.samples.len() > cfg.group_size as usize {
            return bad(format!(
                "{} samples, more than group_size {}",
                g.samples.len(),
                cfg.group_size
            ));
        }
        for (j, s) in g.samples.iter().enumerate() {
            let at = format!("{at}.samples[{j}]");
            let bad = |what: String| Err(RolloutError::config(&at, what));
            if s.trajectory.sample >= cfg.group_size {
                return bad(format!(
                    "sample index {} is not below group_size {}",
                    s.trajectory.sample, cfg.group_size
                ));
            }
            if s.attempts == 0 {
                return bad("attempts must be at least 1".into());
            }
            if g.scored && !s.finished {
                return bad("an unfinished sample in a scored group".into());
            }
            if s.observations.len() > s.trajectory.turns.len() {
                return bad(format!(
                    "{} observations for {} turns",
                    s.observations.len(),
                    s.trajectory.turns.len()
                ));
            }
        }
    }
    let taken = snapshot.groups.len() as u64;
    if snapshot.position < taken {
        return Err(RolloutError::config(
            "snapshot.position",
            format!(
                "{} questions taken but {taken} groups pending",
                snapshot.position
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
