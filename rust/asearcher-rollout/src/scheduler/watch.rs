//! The systematic-failure watch: until the first success, counts failed trajectory attempts and
//! failed tool calls that fail the same way. When `limit` in a row share one error, it is not
//! bad luck but a systematic error (a template the tokenizer lacks, a dead server, a tool that
//! is not configured): the engine stops and raises it, naming the config key to check, instead
//! of retrying and dropping every sample. Once anything succeeds the watch stands down and
//! per-item faults keep the retry/drop/keep policy.

use crate::RolloutError;
use std::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// One stream of outcomes (trajectories or tool calls).
#[derive(Default)]
struct Streak {
    succeeded: bool,
    signature: Option<String>,
    count: u32,
}

impl Streak {
    /// Counts a failure; `true` when `limit` in a row share its signature.
    fn failed(&mut self, kind: &str, message: &str, limit: u32) -> bool {
        if self.succeeded {
            return false;
        }
        let signature = format!("{kind}\u{0}{}", signature(message));
        if self.signature.as_deref() == Some(signature.as_str()) {
            self.count += 1;
        } else {
            *self = Streak {
                signature: Some(signature),
                count: 1,
                ..Streak::default()
            };
        }
        self.count >= limit
    }
}

/// A message with its numbers blanked, so "after 1.2 s" and "after 1.3 s" are one error.
fn signature(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut in_number = false;
    for c in message.chars() {
        if c.is_ascii_digit() {
            if !in_number {
                out.push('#');
            }
            in_number = true;
        } else {
            in_number = false;
            out.push(c);
        }
    }
    out
}

#[derive(Default)]
struct State {
    trajectories: Streak,
    tools: Streak,
    tripped: Option<(String, u32, String, String)>,
}

/// Shared by the engine's tasks; see the module docs.
pub struct FailureWatch {
    limit: Option<u32>,
    state: Mutex<State>,
    /// Cancelled when the watch trips (the engine's token: every sample stops).
    cancel: CancellationToken,
}

impl FailureWatch {
    /// `None`: never trips.
    pub fn new(limit: Option<u32>, cancel: CancellationToken) -> Self {
        Self {
            limit,
            state: Mutex::default(),
            cancel,
        }
    }

    pub fn is_tripped(&self) -> bool {
        self.state().tripped.is_some()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A trajectory attempt succeeded: the watch of trajectories stands down.
    pub fn trajectory_ok(&self) {
        self.state().trajectories.succeeded = true;
    }

    /// A trajectory attempt failed with its first error (timeouts are not counted: slow is not
    /// broken). `true` when this trips the watch.
    pub fn trajectory_failed(&self, kind: &str, message: &str) -> bool {
        let Some(limit) = self.limit else {
            return false;
        };
        if kind == "timeout" {
            return false;
        }
        let mut state = self.state();
        let trips = state.trajectories.failed(kind, message, limit);
        trips && self.trip(&mut state, "trajectories", kind, message)
    }

    /// A tool call succeeded or failed. `true` when this trips the watch.
    pub fn tool_call(&self, tool: &str, error: Option<&str>) -> bool {
        let Some(limit) = self.limit else {
            return false;
        };
        let mut state = self.state();
        match error {
            None => {
                state.tools.succeeded = true;
                false
            }
            Some(message) => {
                let trips = state.tools.failed(tool, message, limit);
                trips && self.trip(&mut state, "tool calls", tool, message)
            }
        }
    }

    fn trip(&self, state: &mut State, what: &str, kind: &str, message: &str) -> bool {
        if state.tripped.is_some() {
            return false;
        }
        self.cancel.cancel();
        let count = match what {
            "trajectories" => state.trajectories.count,
            _ => state.tools.count,
        };
        state.tripped = Some((what.into(), count, kind.into(), message.into()));
        true
    }

    /// The systematic failure, once tripped.
    pub fn failure(&self) -> Option<RolloutError> {
        let state = self.state();
        let (what, count, kind, message) = state.tripped.clone()?;
        Some(RolloutError::Systematic {
            hint: hint(&what, &kind, &message),
            what,
            count,
            kind,
            message,
        })
    }
}

/// What to check for a failure of this kind.
fn hint(what: &str, kind: &str, message: &str) -> String {
    let check = if what == "tool calls" {
        if message.contains("no search tools") || message.contains("no page source") {
            "no toolbox is configured: pass `toolbox=` (Python) or set `tools.*` in the config"
        } else {
            "the tool's backend: `tools.*` (the index path, the retrieval server's URL, the web \
             search key)"
        }
    } else {
        match kind {
            "agent" => {
                "the agent config (`agent.kind`, `agent.prompts`) and the tokenizer (does it have \
                 a chat template?)"
            }
            "inference" => {
                "the inference backend: `inference.servers` (are the servers up and serving this \
                 model?) or the embedded generator"
            }
            "tool" => "the tools (`tools.*`), or set `rollout.tool_errors = \"observe\"`",
            _ => "the config key named in the error",
        }
    };
    format!(
        "Check {check}. Set `rollout.fail_fast_after = null` to keep going on such errors \
         (each sample is then retried and dropped as `rollout.on_error` says)."
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_error_in_a_row_trips_once_and_a_success_stands_down() {
        let w = FailureWatch::new(Some(3), CancellationToken::new());
        assert!(!w.trajectory_failed("agent", "no chat template (after 1 s)"));
        assert!(!w.trajectory_failed("agent", "no chat template (after 2 s)"));
        assert!(w.trajectory_failed("agent", "no chat template (after 3 s)"));
        assert!(!w.trajectory_failed("agent", "no chat template"));
        let msg = w.failure().unwrap().to_string();
        assert!(
            msg.contains("first 3 trajectories") && msg.contains("chat template"),
            "{msg}"
        );

        let w = FailureWatch::new(Some(2), CancellationToken::new());
        w.trajectory_ok();
        assert!(!w.trajectory_failed("inference", "down"));
        assert!(!w.trajectory_failed("inference", "down"));
        assert!(w.failure().is_none());
    }

    #[test]
    fn different_errors_and_timeouts_do_not_trip() {
        let w = FailureWatch::new(Some(2), CancellationToken::new());
        assert!(!w.trajectory_failed("agent", "a"));
        assert!(!w.trajectory_failed("inference", "a"));
        assert!(!w.trajectory_failed("timeout", "slow"));
        assert!(!w.trajectory_failed("timeout", "slow"));
        assert!(w.trajectory_failed("inference", "a"));
    }

    #[test]
    fn tool_calls_trip_on_their_own_streak_and_name_the_toolbox() {
        let w = FailureWatch::new(Some(2), CancellationToken::new());
        assert!(!w.tool_call("search", Some("no search tools are configured")));
        assert!(w.tool_call("search", Some("no search tools are configured")));
        let msg = w.failure().unwrap().to_string();
        assert!(
            msg.contains("tool calls") && msg.contains("toolbox="),
            "{msg}"
        );
        let w = FailureWatch::new(None, CancellationToken::new());
        assert!(!w.tool_call("search", Some("x")));
        assert!(!w.tool_call("search", Some("x")));
    }
}
