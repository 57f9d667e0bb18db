//! Replay: brings a freshly built agent to the state of a recorded run, so that a run cut short
//! (a snapshot, a restart) continues from its recorded turns instead of starting over. Each
//! recorded generation is fed back to the agent; each recorded tool call is answered with its
//! recorded observation (or, when none was recorded, by asking the tool again). Every prompt the
//! agent builds is checked against the recorded one: the first difference is a [`Divergence`].

use super::{call_tool, lock_live, observe, LiveRun, RunContext};
use asearcher_agent::agent::{Agent, AgentStep, Generation, ToolObservation};
use asearcher_agent::trajectory::TurnRecord;
use std::sync::{Arc, Mutex};

/// Where a replay left the agent: the last turn's full prompt and output (what the next prompt
/// may extend), and how many turns were replayed.
#[derive(Debug, Clone, Default)]
pub struct Replayed {
    pub(super) previous: Option<(Arc<Vec<u32>>, Vec<u32>)>,
    pub turns: usize,
}

/// The rebuilt agent did not retrace the recorded run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("replay diverged at turn {turn}: {what}")]
pub struct Divergence {
    pub turn: usize,
    pub what: String,
}

/// Replays the turns recorded in `live` into `agent` (fresh from its factory). On success the
/// agent is where the recorded run was after its last complete turn (and that turn's tool call,
/// when one was recorded); `live` is left as it is.
pub async fn replay(
    ctx: &RunContext,
    agent: &mut dyn Agent,
    live: &Mutex<LiveRun>,
) -> Result<Replayed, Divergence> {
    let turns = lock_live(live).trajectory.turns.len();
    let mut previous: Option<(Arc<Vec<u32>>, Vec<u32>)> = None;
    for i in 0..turns {
        let (turn, observation) = {
            let l = lock_live(live);
            (
                l.trajectory.turns[i].clone(),
                l.observations.get(i).cloned().flatten(),
            )
        };
        let diverged = |what: String| Divergence { turn: i, what };
        let expected = full_prompt(previous.as_ref(), &turn).map_err(diverged)?;
        let call = match agent.next_step() {
            AgentStep::Generate(call) => call,
            other => {
                return Err(diverged(format!(
                    "the agent asked for {other:?}, not a generation"
                )))
            }
        };
        if *call.prompt_ids != expected {
            return Err(diverged(prompt_difference(&call.prompt_ids, &expected)));
        }
        let reading = agent.on_generation(&call, &recorded_generation(&turn));
        if reading.action != turn.action {
            return Err(diverged(format!(
                "the agent read the output as {:?}, recorded {:?}",
                reading.action, turn.action
            )));
        }
        if let Some(record) = &turn.tool {
            let call = match agent.next_step() {
                AgentStep::Tool(call)
                    if call.kind.name() == record.tool && call.argument == record.input =>
                {
                    call
                }
                other => {
                    return Err(diverged(format!(
                        "the agent asked for {other:?}, recorded {} `{}`",
                        record.tool, record.input
                    )))
                }
            };
            let observation = match observation {
                Some(o) => ToolObservation::from(o),
                None => ask_tool(ctx, &call).await,
            };
            agent.on_tool(&call, &observation);
        }
        previous = Some((call.prompt_ids, turn.output_ids));
    }
    Ok(Replayed { previous, turns })
}

/// The full prompt of a recorded turn: the shared prefix of the previous prompt + output, then
/// the recorded new tokens.
fn full_prompt(
    previous: Option<&(Arc<Vec<u32>>, Vec<u32>)>,
    turn: &TurnRecord,
) -> Result<Vec<u32>, String> {
    let prev_len = previous.map_or(0, |(p, o)| p.len() + o.len());
    if turn.prompt_prefix_len > prev_len {
        return Err(format!(
            "the record shares {} prompt tokens with a previous context of {prev_len}",
            turn.prompt_prefix_len
        ));
    }
    let mut full: Vec<u32> = previous
        .map(|(p, o)| {
            p.iter()
                .chain(o.iter())
                .copied()
                .take(turn.prompt_prefix_len)
                .collect()
        })
        .unwrap_or_default();
    full.extend_from_slice(&turn.prompt_ids);
    Ok(full)
}

fn prompt_difference(got: &[u32], recorded: &[u32]) -> String {
    let at = got.iter().zip(recorded).take_while(|(a, b)| a == b).count();
    format!(
        "the agent's prompt ({} tokens) differs from the recorded one ({} tokens) from token {at}",
        got.len(),
        recorded.len()
    )
}

fn recorded_generation(turn: &TurnRecord) -> Generation {
    Generation {
        output_ids: turn.output_ids.clone(),
        logprobs: turn.output_logprobs.clone(),
        versions: turn.output_versions.clone(),
        finish: turn.finish,
        text: turn.output_text.clone(),
    }
}

/// Asks the tool again (a record without its observation); a failure is shown as an error
/// observation, as the runner's `observe` policy does.
async fn ask_tool(ctx: &RunContext, call: &asearcher_agent::agent::ToolCall) -> ToolObservation {
    match call_tool(ctx.toolbox.clone(), call).await {
        Ok(out) => observe(call, out, 0.0).0,
        Err(message) => ToolObservation {
            error: Some(message),
            ..ToolObservation::default()
        },
    }
}

#[cfg(test)]
mod tests;
