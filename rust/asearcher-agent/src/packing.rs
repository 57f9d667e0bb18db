//! Packing a multi-turn trajectory into training sequences (token-in/token-out).
//!
//! Each turn sends a prompt (token ids) and receives generated tokens. When a turn's prompt starts
//! with everything the current sequence holds (the usual case: the agent appends the tool output
//! and continues), only the new prompt tokens are appended, with loss mask 0, then the generated
//! tokens, with loss mask 1. When it does not (the agent rewrote its context: a rolling history,
//! a dropped page), the sequence ends and a new one starts from that prompt. What the trainer sees
//! is therefore exactly what the server saw and generated, with no re-tokenisation.

/// The token-level record of one turn, as the inference server saw it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TurnTokens {
    pub prompt_ids: Vec<u32>,
    pub output_ids: Vec<u32>,
    /// Behaviour logprob of each output token.
    pub output_logprobs: Vec<f32>,
    /// Policy version that generated each output token.
    pub output_versions: Vec<u64>,
}

/// One training sequence: tokens with a loss mask, and for generated tokens (mask 1) their
/// behaviour logprob and policy version (0.0 and `None` elsewhere).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrainingSequence {
    pub input_ids: Vec<u32>,
    pub loss_mask: Vec<u8>,
    pub logprobs: Vec<f32>,
    pub versions: Vec<Option<u64>>,
}

impl TrainingSequence {
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    /// Number of tokens the loss is computed on.
    pub fn generated_tokens(&self) -> usize {
        self.loss_mask.iter().filter(|m| **m == 1).count()
    }

    fn push_context(&mut self, ids: &[u32]) {
        self.input_ids.extend_from_slice(ids);
        self.loss_mask.extend(std::iter::repeat_n(0, ids.len()));
        self.logprobs.extend(std::iter::repeat_n(0.0, ids.len()));
        self.versions.extend(std::iter::repeat_n(None, ids.len()));
    }

    fn push_generated(&mut self, turn: &TurnTokens) {
        self.input_ids.extend_from_slice(&turn.output_ids);
        self.loss_mask
            .extend(std::iter::repeat_n(1, turn.output_ids.len()));
        self.logprobs.extend_from_slice(&turn.output_logprobs);
        self.versions
            .extend(turn.output_versions.iter().map(|v| Some(*v)));
    }
}

/// A turn whose per-token fields disagree in length.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("turn {turn}: {field} has {got} entries for {expected} output tokens")]
pub struct MisalignedTurn {
    pub turn: usize,
    pub field: &'static str,
    pub got: usize,
    pub expected: usize,
}

fn check_turn(index: usize, turn: &TurnTokens) -> Result<(), MisalignedTurn> {
    let expected = turn.output_ids.len();
    for (field, got) in [
        ("output_logprobs", turn.output_logprobs.len()),
        ("output_versions", turn.output_versions.len()),
    ] {
        if got != expected {
            return Err(MisalignedTurn {
                turn: index,
                field,
                got,
                expected,
            });
        }
    }
    Ok(())
}

/// Packs turns into append-only training sequences (see the module comment).
pub fn pack_turns(turns: &[TurnTokens]) -> Result<Vec<TrainingSequence>, MisalignedTurn> {
    let mut done = Vec::new();
    let mut current = TrainingSequence::default();
    for (i, turn) in turns.iter().enumerate() {
        check_turn(i, turn)?;
        if !turn.prompt_ids.starts_with(&current.input_ids) {
            done.push(std::mem::take(&mut current));
        }
        let new_context = &turn.prompt_ids[current.len()..];
        current.push_context(new_context);
        current.push_generated(turn);
    }
    if !current.is_empty() {
        done.push(current);
    }
    done.retain(|s| !s.is_empty());
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(prompt: &[u32], output: &[u32], version: u64) -> TurnTokens {
        TurnTokens {
            prompt_ids: prompt.to_vec(),
            output_ids: output.to_vec(),
            output_logprobs: output.iter().map(|t| -(*t as f32) / 100.0).collect(),
            output_versions: vec![version; output.len()],
        }
    }

    #[test]
    fn extending_prompts_append_to_one_sequence() {
        let turns = [
            turn(&[1, 2, 3], &[10, 11], 0),
            // prompt = previous tokens + tool output (20, 21)
            turn(&[1, 2, 3, 10, 11, 20, 21], &[12], 1),
        ];
        let seqs = pack_turns(&turns).unwrap();
        assert_eq!(seqs.len(), 1);
        let s = &seqs[0];
        assert_eq!(s.input_ids, vec![1, 2, 3, 10, 11, 20, 21, 12]);
        assert_eq!(s.loss_mask, vec![0, 0, 0, 1, 1, 0, 0, 1]);
        assert_eq!(
            s.versions,
            vec![None, None, None, Some(0), Some(0), None, None, Some(1)]
        );
        assert_eq!(s.logprobs[3], -0.10);
        assert_eq!(s.logprobs[5], 0.0);
        assert_eq!(s.generated_tokens(), 3);
    }

    #[test]
    fn a_rewritten_prompt_starts_a_new_sequence() {
        let turns = [
            turn(&[1, 2, 3], &[10], 0),
            turn(&[1, 2, 9], &[11, 12], 0), // context rewritten: does not extend [1,2,3,10]
            turn(&[1, 2, 9, 11, 12, 30], &[13], 1),
        ];
        let seqs = pack_turns(&turns).unwrap();
        assert_eq!(seqs.len(), 2);
        assert_eq!(seqs[0].input_ids, vec![1, 2, 3, 10]);
        assert_eq!(seqs[1].input_ids, vec![1, 2, 9, 11, 12, 30, 13]);
        assert_eq!(seqs[1].loss_mask, vec![0, 0, 0, 1, 1, 0, 1]);
        let generated: usize = seqs.iter().map(|s| s.generated_tokens()).sum();
        assert_eq!(
            generated, 4,
            "every generated token is trained on exactly once"
        );
    }

    #[test]
    fn misaligned_turns_are_rejected_by_name() {
        let mut bad = turn(&[1], &[2, 3], 0);
        bad.output_logprobs.pop();
        let err = pack_turns(&[turn(&[1], &[2], 0), bad]).unwrap_err();
        assert_eq!(err.turn, 1);
        assert_eq!(err.field, "output_logprobs");
        assert!(err.to_string().contains("turn 1"));
    }

    #[test]
    fn no_turns_no_sequences() {
        assert!(pack_turns(&[]).unwrap().is_empty());
    }
}
