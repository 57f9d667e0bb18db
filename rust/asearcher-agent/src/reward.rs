//! Rule-based rewards of a finished trajectory: an answer metric against the gold answers, the
//! format gate (a trajectory that broke the protocol scores 0), and the optional penalty for
//! calling a valid question "invalid".

use crate::metrics;
use crate::protocol::{ActionKind, ParsedTurn, ProtocolIssue};

/// Which answer metric a reward uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AnswerMetric {
    #[default]
    F1,
    ExactMatch,
    CoverExactMatch,
}

impl AnswerMetric {
    pub fn score<T: AsRef<str>>(self, prediction: &str, golds: &[T]) -> f64 {
        match self {
            AnswerMetric::F1 => metrics::f1(prediction, golds),
            AnswerMetric::ExactMatch => metrics::exact_match(prediction, golds),
            AnswerMetric::CoverExactMatch => metrics::cover_exact_match(prediction, golds),
        }
    }
}

/// How a trajectory is scored.
#[derive(Debug, Clone, PartialEq)]
pub struct RewardSpec {
    pub metric: AnswerMetric,
    /// Multiply the score by 0 when any turn broke the protocol or no answer was given.
    pub format_gate: bool,
    /// When set, answering "invalid" to a question whose gold answers do not say so scores this
    /// (ASearcher uses -0.5 with an "invalid question" instruction on part of the prompts).
    pub invalid_answer_penalty: Option<f64>,
}

impl Default for RewardSpec {
    fn default() -> Self {
        RewardSpec {
            metric: AnswerMetric::F1,
            format_gate: true,
            invalid_answer_penalty: None,
        }
    }
}

/// The parts of a reward, kept on the trajectory for analysis.
#[derive(Debug, Clone, PartialEq)]
pub struct RewardBreakdown {
    pub score: f64,
    pub metric_score: f64,
    pub format_ok: bool,
    pub penalised_invalid: bool,
}

/// Whether every turn held exactly one well-formed action and the last one answered.
/// An argument cut for length still counts as well formed: the model did follow the protocol.
pub fn format_ok(turns: &[ParsedTurn]) -> bool {
    let clean = |t: &ParsedTurn| {
        t.action.is_some()
            && t.issues
                .iter()
                .all(|i| matches!(i, ProtocolIssue::ArgumentTooLong { .. }))
    };
    let answered = turns
        .last()
        .and_then(|t| t.action.as_ref())
        .is_some_and(|a| a.kind == ActionKind::Answer);
    answered && turns.iter().all(clean)
}

fn says_invalid(text: &str) -> bool {
    let n = metrics::normalize_answer(text);
    n == "invalid" || n == "invalid question"
}

/// Scores a trajectory's final answer (None when it never answered) against its gold answers.
pub fn score<T: AsRef<str>>(
    spec: &RewardSpec,
    answer: Option<&str>,
    golds: &[T],
    turns: &[ParsedTurn],
) -> RewardBreakdown {
    let format_ok = format_ok(turns);
    let metric_score = answer.map_or(0.0, |a| spec.metric.score(a, golds));
    let gold_invalid = golds.iter().any(|g| says_invalid(g.as_ref()));
    let penalised_invalid =
        spec.invalid_answer_penalty.is_some() && answer.is_some_and(says_invalid) && !gold_invalid;
    let score = if penalised_invalid {
        spec.invalid_answer_penalty.unwrap_or(0.0)
    } else if spec.format_gate && !format_ok {
        0.0
    } else {
        metric_score
    };
    RewardBreakdown {
        score,
        metric_score,
        format_ok,
        penalised_invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{parse_turn, ParseOptions};

    fn turns(texts: &[&str]) -> Vec<ParsedTurn> {
        texts
            .iter()
            .map(|t| parse_turn(t, &ParseOptions::default()))
            .collect()
    }

    #[test]
    fn a_clean_trajectory_scores_its_metric() {
        let t = turns(&["<search>q</search>", "<answer>Barack Obama</answer>"]);
        let r = score(&RewardSpec::default(), Some("Barack Obama"), &["Obama"], &t);
        assert!(r.format_ok);
        assert!((r.score - 2.0 / 3.0).abs() < 1e-12);
        let em = RewardSpec {
            metric: AnswerMetric::ExactMatch,
            ..RewardSpec::default()
        };
        assert_eq!(score(&em, Some("Barack Obama"), &["Obama"], &t).score, 0.0);
    }

    #[test]
    fn the_format_gate_zeroes_broken_trajectories() {
        let broken = turns(&["no tag here", "<answer>Obama</answer>"]);
        let r = score(&RewardSpec::default(), Some("Obama"), &["Obama"], &broken);
        assert!(!r.format_ok);
        assert_eq!((r.score, r.metric_score), (0.0, 1.0));
        let ungated = RewardSpec {
            format_gate: false,
            ..RewardSpec::default()
        };
        assert_eq!(
            score(&ungated, Some("Obama"), &["Obama"], &broken).score,
            1.0
        );
        let never_answered = turns(&["<search>q</search>"]);
        assert!(!format_ok(&never_answered));
        assert_eq!(
            score(&RewardSpec::default(), None, &["x"], &never_answered).score,
            0.0
        );
    }

    #[test]
    fn calling_a_valid_question_invalid_is_penalised() {
        let spec = RewardSpec {
            invalid_answer_penalty: Some(-0.5),
            ..RewardSpec::default()
        };
        let t = turns(&["<answer>Invalid question</answer>"]);
        let r = score(&spec, Some("Invalid question"), &["Paris"], &t);
        assert!(r.penalised_invalid);
        assert_eq!(r.score, -0.5);
        let r = score(&spec, Some("invalid"), &["invalid"], &t);
        assert!(!r.penalised_invalid);
        assert_eq!(r.score, 1.0);
        let r = score(&RewardSpec::default(), Some("invalid"), &["Paris"], &t);
        assert_eq!(r.score, 0.0, "no penalty unless configured");
    }
}
