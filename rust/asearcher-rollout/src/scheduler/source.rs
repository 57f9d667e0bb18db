//! Where the scheduler's questions come from: a list read once or for several epochs (optionally
//! reshuffled each epoch from a seed), or any iterator. Keeps its position (questions handed out)
//! so a run can be resumed from it.

use crate::questions::Question;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::sync::Arc;

/// A question handed out, with the epoch it belongs to.
#[derive(Debug, Clone)]
pub struct NextQuestion {
    pub question: Arc<Question>,
    pub epoch: u32,
}

enum Inner {
    List {
        questions: Vec<Arc<Question>>,
        /// `None`: repeat forever.
        epochs: Option<u32>,
        shuffle_seed: Option<u64>,
        order: Vec<usize>,
        epoch: u32,
        index: usize,
    },
    Iter(Box<dyn Iterator<Item = Question> + Send>),
}

/// The question stream of a run.
pub struct QuestionSource {
    inner: Inner,
    /// A question read ahead by [`QuestionSource::is_exhausted`], not yet handed out.
    peeked: Option<NextQuestion>,
    position: u64,
}

impl QuestionSource {
    /// Each question once, in order.
    pub fn once(questions: Vec<Question>) -> Self {
        Self::epochs(questions, Some(1), None)
    }

    /// The questions `epochs` times (`None`: forever), reshuffled each epoch when a seed is given
    /// (epoch `e` uses `seed + e`, so the order is reproducible).
    pub fn epochs(
        questions: Vec<Question>,
        epochs: Option<u32>,
        shuffle_seed: Option<u64>,
    ) -> Self {
        let questions: Vec<Arc<Question>> = questions.into_iter().map(Arc::new).collect();
        let mut inner = Inner::List {
            order: (0..questions.len()).collect(),
            questions,
            epochs,
            shuffle_seed,
            epoch: 0,
            index: 0,
        };
        shuffle_epoch(&mut inner);
        Self {
            inner,
            peeked: None,
            position: 0,
        }
    }

    /// Any iterator of questions (read lazily; handed out in its order, epoch 0).
    pub fn from_iterator(iter: impl Iterator<Item = Question> + Send + 'static) -> Self {
        Self {
            inner: Inner::Iter(Box::new(iter)),
            peeked: None,
            position: 0,
        }
    }

    /// Skips the first `position` questions (resuming a run from [`QuestionSource::position`]).
    pub fn resume_at(mut self, position: u64) -> Self {
        while self.position < position && self.next_question().is_some() {}
        self
    }

    /// Questions handed out so far.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Whether no question is left (reads one ahead if needed; the position does not move).
    pub fn is_exhausted(&mut self) -> bool {
        if self.peeked.is_none() {
            self.peeked = self.read();
        }
        self.peeked.is_none()
    }

    /// The next question, or `None` when the source is exhausted.
    pub fn next_question(&mut self) -> Option<NextQuestion> {
        let next = self.peeked.take().or_else(|| self.read());
        if next.is_some() {
            self.position += 1;
        }
        next
    }

    fn read(&mut self) -> Option<NextQuestion> {
        match &mut self.inner {
            Inner::Iter(iter) => iter.next().map(|q| NextQuestion {
                question: Arc::new(q),
                epoch: 0,
            }),
            Inner::List { .. } => next_from_list(&mut self.inner),
        }
    }
}

fn next_from_list(inner: &mut Inner) -> Option<NextQuestion> {
    let Inner::List {
        questions,
        epochs,
        order,
        epoch,
        index,
        ..
    } = inner
    else {
        return None;
    };
    if questions.is_empty() {
        return None;
    }
    if *index == questions.len() {
        if epochs.is_some_and(|e| *epoch + 1 >= e) {
            return None;
        }
        *epoch += 1;
        *index = 0;
        shuffle_epoch(inner);
        return next_from_list(inner);
    }
    let q = NextQuestion {
        question: questions[order[*index]].clone(),
        epoch: *epoch,
    };
    *index += 1;
    Some(q)
}

fn shuffle_epoch(inner: &mut Inner) {
    if let Inner::List {
        order,
        shuffle_seed: Some(seed),
        epoch,
        ..
    } = inner
    {
        order.sort_unstable();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_add(u64::from(*epoch)));
        order.shuffle(&mut rng);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qs(n: usize) -> Vec<Question> {
        (0..n)
            .map(|i| Question::new(format!("q{i}"), format!("Q{i}?"), vec!["a".into()]))
            .collect()
    }

    fn ids(src: &mut QuestionSource) -> Vec<(String, u32)> {
        std::iter::from_fn(|| src.next_question())
            .map(|n| (n.question.id.clone(), n.epoch))
            .collect()
    }

    #[test]
    fn epochs_repeat_and_shuffle_reproducibly() {
        let mut once = QuestionSource::once(qs(3));
        assert_eq!(
            ids(&mut once),
            [("q0".into(), 0), ("q1".into(), 0), ("q2".into(), 0)]
        );
        assert_eq!(once.position(), 3);
        let a = ids(&mut QuestionSource::epochs(qs(20), Some(3), Some(7)));
        let b = ids(&mut QuestionSource::epochs(qs(20), Some(3), Some(7)));
        assert_eq!(a, b);
        assert_eq!(a.len(), 60);
        for e in 0..3 {
            let mut epoch: Vec<_> = a
                .iter()
                .filter(|(_, ep)| *ep == e)
                .map(|(id, _)| id.clone())
                .collect();
            epoch.sort();
            let mut all: Vec<_> = (0..20).map(|i| format!("q{i}")).collect();
            all.sort();
            assert_eq!(epoch, all, "each epoch holds every question once");
        }
        assert_ne!(a[..20], a[20..40], "epochs are reshuffled");
        let mut forever = QuestionSource::epochs(qs(2), None, None);
        assert_eq!(
            (0..101).filter_map(|_| forever.next_question()).count(),
            101
        );
        assert!(QuestionSource::epochs(Vec::new(), None, None)
            .next_question()
            .is_none());
    }

    #[test]
    fn resuming_skips_what_was_handed_out() {
        let mut src = QuestionSource::epochs(qs(4), Some(2), Some(1));
        let all = ids(&mut src);
        let mut resumed = QuestionSource::epochs(qs(4), Some(2), Some(1)).resume_at(5);
        assert_eq!(resumed.position(), 5);
        assert_eq!(ids(&mut resumed), all[5..]);
        let mut it = QuestionSource::from_iterator(qs(3).into_iter()).resume_at(1);
        assert!(!it.is_exhausted());
        assert_eq!(it.position(), 1, "looking ahead does not move the position");
        assert_eq!(ids(&mut it), [("q1".into(), 0), ("q2".into(), 0)]);
    }
}
