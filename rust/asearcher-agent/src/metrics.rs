//! Answer metrics used as rewards and for evaluation: token F1, exact match (EM) and cover exact
//! match (CEM: the gold answer appears in the prediction), after the usual answer normalisation
//! (lowercase, punctuation removed, the articles a/an/the dropped, whitespace collapsed).
//!
//! Text containing CJK characters is compared character by character, since it has no spaces
//! between words. Every metric takes a list of gold answers and returns the best score over it.

use std::collections::HashMap;

/// The answer normalisation of SQuAD-style evaluation, Unicode-aware: lowercase, every character
/// that is neither alphanumeric nor whitespace removed, the articles a/an/the removed, whitespace
/// collapsed to single spaces.
pub fn normalize_answer(text: &str) -> String {
    let lowered = text.to_lowercase();
    let no_punct: String = lowered
        .chars()
        .filter(|c| c.is_alphanumeric() || c.is_whitespace())
        .collect();
    no_punct
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether `c` is a CJK ideograph, kana or hangul syllable.
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF        // hiragana, katakana
        | 0x3400..=0x4DBF      // CJK extension A
        | 0x4E00..=0x9FFF      // CJK unified ideographs
        | 0xAC00..=0xD7AF      // hangul syllables
        | 0xF900..=0xFAFF      // CJK compatibility ideographs
        | 0x20000..=0x2FA1F) // CJK extensions B-F, compatibility supplement
}

/// The comparison units of a normalised answer: characters (spaces dropped) when it contains CJK
/// text, words otherwise.
fn units(normalized: &str) -> Vec<String> {
    if normalized.chars().any(is_cjk) {
        normalized
            .chars()
            .filter(|c| !c.is_whitespace())
            .map(String::from)
            .collect()
    } else {
        normalized.split_whitespace().map(String::from).collect()
    }
}

fn counts(tokens: &[String]) -> HashMap<&str, usize> {
    let mut map = HashMap::new();
    for t in tokens {
        *map.entry(t.as_str()).or_insert(0) += 1;
    }
    map
}

/// Token-level F1 of one prediction against one gold answer. Two empty answers score 1; one
/// empty answer scores 0.
pub fn f1_single(prediction: &str, gold: &str) -> f64 {
    let pred = units(&normalize_answer(prediction));
    let gold = units(&normalize_answer(gold));
    if pred.is_empty() || gold.is_empty() {
        return f64::from(u8::from(pred.is_empty() && gold.is_empty()));
    }
    let gold_counts = counts(&gold);
    let common: usize = counts(&pred)
        .iter()
        .map(|(tok, n)| (*n).min(gold_counts.get(tok).copied().unwrap_or(0)))
        .sum();
    if common == 0 {
        return 0.0;
    }
    let precision = common as f64 / pred.len() as f64;
    let recall = common as f64 / gold.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// Exact match after normalisation (CJK: spaces ignored).
pub fn em_single(prediction: &str, gold: &str) -> bool {
    units(&normalize_answer(prediction)) == units(&normalize_answer(gold))
}

/// Cover exact match: the normalised gold answer appears as a contiguous run of units in the
/// normalised prediction ("Paris" covers "it is paris", not "parisian"). An empty gold covers
/// nothing.
pub fn cem_single(prediction: &str, gold: &str) -> bool {
    let pred = units(&normalize_answer(prediction));
    let gold = units(&normalize_answer(gold));
    !gold.is_empty() && pred.windows(gold.len()).any(|w| w == gold.as_slice())
}

fn best<T: AsRef<str>>(golds: &[T], score: impl Fn(&str) -> f64) -> f64 {
    golds.iter().map(|g| score(g.as_ref())).fold(0.0, f64::max)
}

/// Best F1 over the gold answers (0 when there are none).
pub fn f1<T: AsRef<str>>(prediction: &str, golds: &[T]) -> f64 {
    best(golds, |g| f1_single(prediction, g))
}

/// 1 when the prediction exactly matches some gold answer, else 0.
pub fn exact_match<T: AsRef<str>>(prediction: &str, golds: &[T]) -> f64 {
    best(golds, |g| f64::from(u8::from(em_single(prediction, g))))
}

/// 1 when some gold answer is covered by the prediction, else 0.
pub fn cover_exact_match<T: AsRef<str>>(prediction: &str, golds: &[T]) -> f64 {
    best(golds, |g| f64::from(u8::from(cem_single(prediction, g))))
}

/// ASearcher's augmented-answer reward: `0.7 * F1(gold) + 0.3 * max(F1(augmented), F1(gold))`.
pub fn augmented_f1<T: AsRef<str>, U: AsRef<str>>(
    prediction: &str,
    golds: &[T],
    augmented: &[U],
) -> f64 {
    let gold = f1(prediction, golds);
    0.7 * gold + 0.3 * f1(prediction, augmented).max(gold)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_drops_case_punctuation_articles_and_spaces() {
        assert_eq!(normalize_answer("  The  Eiffel-Tower!! "), "eiffeltower");
        assert_eq!(normalize_answer("An apple, a pear"), "apple pear");
        assert_eq!(normalize_answer("Théâtre «Grand»"), "théâtre grand");
        assert_eq!(normalize_answer("theory"), "theory");
    }

    #[test]
    fn f1_counts_overlapping_words() {
        // pred {barack, obama}, gold {obama}: p = 1/2, r = 1 -> 2/3.
        assert!((f1_single("Barack Obama", "Obama") - 2.0 / 3.0).abs() < 1e-12);
        // gold units {city, of, paris}: p = 1, r = 1/3 -> 1/2.
        assert!((f1_single("Paris", "the city of paris") - 0.5).abs() < 1e-12);
        assert_eq!(f1_single("London", "Paris"), 0.0);
        assert_eq!(f1_single("", "Paris"), 0.0);
        assert_eq!(f1_single("the", "a"), 1.0, "both normalise to empty");
    }

    #[test]
    fn f1_respects_repeated_words() {
        // common = min(2, 1) "new" + 1 "york" = 2 of 3 predicted words: p = 2/3, r = 1.
        let s = f1_single("new new york", "new york");
        assert!((s - 0.8).abs() < 1e-12);
    }

    #[test]
    fn cjk_text_is_compared_by_character() {
        assert!((f1_single("北京市", "北京") - 0.8).abs() < 1e-12);
        assert!(em_single("北京 市", "北京市"));
        assert!(cem_single("答案是北京。", "北京"));
        assert!(!cem_single("南京", "北京"));
    }

    #[test]
    fn cem_needs_a_contiguous_run_of_words() {
        assert!(cem_single("It is Paris, France.", "paris"));
        assert!(!cem_single("Parisian food", "paris"));
        assert!(cem_single("the new york times", "New York"));
        assert!(!cem_single("york new", "new york"));
        assert!(!cem_single("anything", "the"), "empty gold covers nothing");
    }

    #[test]
    fn scores_take_the_best_gold() {
        let golds = ["Paris", "City of Light"];
        assert_eq!(exact_match("the city of light", &golds), 1.0);
        assert_eq!(exact_match("Lyon", &golds), 0.0);
        assert_eq!(f1("paris", &golds), 1.0);
        assert_eq!(cover_exact_match("I think Paris", &golds), 1.0);
        assert_eq!(f1::<&str>("paris", &[]), 0.0);
    }

    #[test]
    fn augmented_reward_mixes_gold_and_augmented() {
        let r = augmented_f1("Obama", &["Barack Obama"], &["Obama"]);
        let gold = f1_single("Obama", "Barack Obama");
        assert!((r - (0.7 * gold + 0.3 * 1.0)).abs() < 1e-12);
        let same = augmented_f1("Paris", &["Paris"], &["Lyon"]);
        assert_eq!(same, 1.0);
    }
}
