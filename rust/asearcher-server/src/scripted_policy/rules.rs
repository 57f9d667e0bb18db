//! The scripted policy's rules, as pure functions: what a decoded prompt says (the question, the
//! `<information>` observations, the text after them) and what the policy replies to it. Every
//! choice that looks random is a hash of the request id, the question and the seed, so the same
//! requests always get the same replies.

use std::collections::HashMap;

/// A count given as a fixed number or as an inclusive range `[min, max]` from which each
/// question (or request) gets one value by hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Spread {
    Fixed(u32),
    Range([u32; 2]),
}

impl Default for Spread {
    fn default() -> Self {
        Spread::Fixed(0)
    }
}

impl Spread {
    /// The value for the hash `h`.
    pub fn pick(&self, h: u64) -> u32 {
        match *self {
            Spread::Fixed(n) => n,
            Spread::Range([lo, hi]) if hi > lo => lo + (h % u64::from(hi - lo + 1)) as u32,
            Spread::Range([lo, _]) => lo,
        }
    }

    /// `None` when the range is well formed, else what is wrong.
    pub fn problem(&self) -> Option<String> {
        match *self {
            Spread::Range([lo, hi]) if lo > hi => Some(format!("range [{lo}, {hi}] has min > max")),
            _ => None,
        }
    }
}

/// FNV-1a over the parts (with a separator), finished with splitmix64 and the seed: stable across
/// platforms and Rust versions, unlike `DefaultHasher`.
pub fn hash(seed: u64, parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in part.iter().chain(std::iter::once(&0xff)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    splitmix(h ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A hash mapped to `[0, 1)`.
pub fn unit(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// The deterministic behaviour logprob of output token `id` at `position` of request `rid`:
/// negative, varying, never a constant.
pub fn token_logprob(seed: u64, rid: &str, position: usize, id: u32) -> f32 {
    let h = hash(
        seed,
        &[
            rid.as_bytes(),
            &(position as u64).to_le_bytes(),
            &id.to_le_bytes(),
        ],
    );
    let u = unit(h);
    -(0.001 + 3.0 * u * u) as f32
}

/// What a decoded prompt says.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptView<'a> {
    /// Text after the last `Question:` up to the end of that line or the first special token
    /// (`<|...`, as a chat template's end-of-turn marker), trimmed; empty if none.
    pub question: &'a str,
    /// Inner texts (trimmed) of the complete `<information>...</information>` blocks after the
    /// question line (so instructions that mention the tags before it are not counted).
    pub observations: Vec<&'a str>,
    /// The text after the last observation (or after the question line): where a partial
    /// output of an earlier, aborted request would sit.
    pub tail: &'a str,
}

const QUESTION_MARK: &str = "Question:";
const SPECIAL_OPEN: &str = "<|";
const INFO_OPEN: &str = "<information>";
const INFO_CLOSE: &str = "</information>";

/// Reads the question, the observations and the tail of a decoded prompt.
pub fn read_prompt(prompt: &str) -> PromptView<'_> {
    let (question, body_start) = match prompt.rfind(QUESTION_MARK) {
        Some(q) => {
            let start = q + QUESTION_MARK.len();
            // The line ends at a newline or at a chat-template special token (`<|im_end|>`
            // follows the question directly when the template ends with the question line).
            let line = &prompt[start..];
            let end = [line.find('\n'), line.find(SPECIAL_OPEN)]
                .into_iter()
                .flatten()
                .min()
                .map_or(prompt.len(), |e| start + e);
            let line = &prompt[start..end];
            let text = line.find("<|").map_or(line, |cut| &line[..cut]);
            (text.trim(), end)
        }
        None => ("", 0),
    };
    let mut observations = Vec::new();
    let mut pos = body_start;
    let mut tail_start = body_start;
    while let Some(open) = prompt[pos..].find(INFO_OPEN) {
        let inner = pos + open + INFO_OPEN.len();
        let Some(close) = prompt[inner..].find(INFO_CLOSE) else {
            break;
        };
        observations.push(prompt[inner..inner + close].trim());
        pos = inner + close + INFO_CLOSE.len();
        tail_start = pos;
    }
    PromptView {
        question,
        observations,
        tail: &prompt[tail_start..],
    }
}

/// Titles of the documents of an observation: the first line after each `[Doc k](url):`, without
/// the quotes of the Search-R1 `"Title"` form.
pub fn doc_titles(observation: &str) -> Vec<&str> {
    let mut titles = Vec::new();
    let mut rest = observation;
    while let Some(at) = rest.find("[Doc ") {
        rest = &rest[at + 5..];
        let Some(colon) = rest.find("):") else {
            break;
        };
        rest = &rest[colon + 2..];
        let body = rest.trim_start_matches([' ', '\t', '\r', '\n']);
        let line = body.lines().next().unwrap_or("").trim();
        let title = match line.strip_prefix('"') {
            Some(quoted) => quoted.split('"').next().unwrap_or(""),
            None => line,
        };
        let title = title.trim();
        if !title.is_empty() {
            titles.push(title);
        }
    }
    titles
}

/// The key under which gold answers are kept: lower case, whitespace collapsed.
pub fn question_key(question: &str) -> String {
    question
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// The rules' settings (taken from the server's config).
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// Gold answers by [`question_key`].
    pub answers: HashMap<String, Vec<String>>,
    pub searches: Spread,
    pub wrong_rate: f64,
    pub garbage_rate: f64,
    pub think_tokens: Spread,
    pub seed: u64,
}

/// What the policy does this turn.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Page-reading notes (the request stops at `</think>` only).
    Notes,
    /// An answer; `wrong` when the `wrong_rate` draw made it `unknown` on purpose.
    Answer {
        text: String,
        wrong: bool,
    },
    Search {
        query: String,
    },
    /// Protocol-breaking text of the given kind (0..GARBAGE_KINDS).
    Garbage {
        kind: u8,
    },
}

/// How many kinds of protocol-breaking replies there are.
pub const GARBAGE_KINDS: u64 = 4;

/// The words the `<think>` padding is made of.
const FILLER: [&str; 16] = [
    "so", "the", "next", "step", "is", "to", "check", "what", "each", "source", "says", "about",
    "it", "and", "then", "decide",
];

/// One request as the rules see it.
pub struct Request<'a> {
    pub rid: &'a str,
    pub stop: &'a [String],
    pub max_new_tokens: usize,
}

impl Rules {
    /// Searches the question gets before it is answered.
    pub fn searches_for(&self, question: &str) -> u32 {
        self.searches
            .pick(hash(self.seed, &[b"searches", question.as_bytes()]))
    }

    fn draw(&self, what: &str, rid: &str) -> u64 {
        hash(self.seed, &[what.as_bytes(), rid.as_bytes()])
    }

    /// Chooses this turn's action (rules d, a, b, c of docs/serving.md, in that order).
    pub fn decide(&self, view: &PromptView<'_>, req: &Request<'_>) -> Action {
        let garbage = self.draw("garbage", req.rid);
        if self.garbage_rate > 0.0 && unit(garbage) < self.garbage_rate {
            return Action::Garbage {
                kind: (splitmix(garbage) % GARBAGE_KINDS) as u8,
            };
        }
        let stops = |s: &str| req.stop.iter().any(|x| x == s);
        let may_search = stops("</search>");
        if stops("</think>") && !may_search {
            return Action::Notes;
        }
        let forced = stops("</answer>") && !may_search;
        let enough = view.observations.len() as u64 >= u64::from(self.searches_for(view.question));
        if forced || enough {
            return self.answer(view, req.rid);
        }
        Action::Search {
            query: search_query(view),
        }
    }

    fn answer(&self, view: &PromptView<'_>, rid: &str) -> Action {
        if self.wrong_rate > 0.0 && unit(self.draw("wrong", rid)) < self.wrong_rate {
            return Action::Answer {
                text: "unknown".into(),
                wrong: true,
            };
        }
        let text = self
            .gold_seen(view)
            .or_else(|| {
                view.observations
                    .last()
                    .and_then(|o| doc_titles(o).first().map(|t| t.to_string()))
            })
            .unwrap_or_else(|| "unknown".into());
        Action::Answer { text, wrong: false }
    }

    /// The first gold answer of the question that some observation contains (case-insensitive).
    fn gold_seen(&self, view: &PromptView<'_>) -> Option<String> {
        let golds = self.answers.get(&question_key(view.question))?;
        let seen: Vec<String> = view.observations.iter().map(|o| o.to_lowercase()).collect();
        golds
            .iter()
            .find(|g| {
                let g = g.to_lowercase();
                !g.is_empty() && seen.iter().any(|o| o.contains(&g))
            })
            .cloned()
    }

    /// `n` filler words chosen from the request id (the `<think>` padding).
    fn filler(&self, rid: &str) -> String {
        let h = self.draw("think", rid);
        let n = self.think_tokens.pick(h) as usize;
        let mut out = String::with_capacity(n * 6);
        for i in 0..n {
            out.push(' ');
            out.push_str(FILLER[(h as usize).wrapping_add(i * 7) % FILLER.len()]);
        }
        out
    }

    /// The full reply text for `action` (before stop strings and token limits apply).
    pub fn reply(&self, action: &Action, view: &PromptView<'_>, req: &Request<'_>) -> String {
        let filler = self.filler(req.rid);
        match action {
            Action::Notes => {
                let last = view.observations.last().copied().unwrap_or("");
                let head: String = last.chars().take(80).collect();
                format!("notes: {head}</think>")
            }
            Action::Answer { text, .. } => {
                format!("<think>I have found enough to answer.{filler}</think>\n<answer>{text}</answer>")
            }
            Action::Search { query } => {
                format!(
                    "<think>I need to search for this.{filler}</think>\n<search>{query}</search>"
                )
            }
            Action::Garbage { kind } => garbage(*kind, view.question, &filler, req.max_new_tokens),
        }
    }
}

/// The first search asks the question; later ones add the title of a document seen so far (a
/// different one each turn, so queries vary).
fn search_query(view: &PromptView<'_>) -> String {
    let n = view.observations.len();
    if n == 0 {
        return view.question.to_string();
    }
    let titles: Vec<&str> = view
        .observations
        .iter()
        .flat_map(|o| doc_titles(o))
        .collect();
    match titles.get((n - 1) % titles.len().max(1)) {
        Some(t) => format!("{} {t}", view.question),
        None => format!("{} (attempt {})", view.question, n + 1),
    }
}

/// Protocol-breaking replies: no tags; an unclosed `<search>`; several actions (an `<access>`
/// inside an unclosed `<search>`); a tagless ramble longer than `max_new_tokens` words.
fn garbage(kind: u8, question: &str, filler: &str, max_new_tokens: usize) -> String {
    match kind {
        0 => format!("I am not sure which tool to use, so I will keep thinking{filler}."),
        1 => format!("<think>Let me look this up{filler}</think>\n<search>{question}"),
        2 => format!(
            "<think>Two things at once{filler}</think>\n<search>{question} <access>https://example.org/page</access></search>"
        ),
        _ => {
            let words = max_new_tokens.saturating_add(16).min(20_000);
            let mut out = String::with_capacity(words * 5);
            for i in 0..words {
                out.push_str(["blah ", "zzz ", "hmm ", "ok "][i % 4]);
            }
            out
        }
    }
}

/// The reply cut after the stop string that completes first (kept, as SGLang's `no_stop_trim`
/// shows it), and that stop string.
pub fn cut_at_stop<'a, 's>(text: &'a str, stops: &'s [String]) -> (&'a str, Option<&'s str>) {
    let first = stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()).map(|p| (p + s.len(), s.as_str())))
        .min_by_key(|&(end, _)| end);
    match first {
        Some((end, s)) => (&text[..end], Some(s)),
        None => (text, None),
    }
}

/// What is left of `reply` when the prompt's tail already ends with its beginning (a re-sent
/// request carrying the partial output of an aborted one, with the same request id).
pub fn remaining<'a>(tail: &str, reply: &'a str) -> &'a str {
    let anchor_len = reply.char_indices().nth(7).map_or(reply.len(), |(i, _)| i);
    let anchor = &reply[..anchor_len];
    if anchor.is_empty() {
        return reply;
    }
    let mut from = tail.len().saturating_sub(reply.len());
    while !tail.is_char_boundary(from) {
        from -= 1;
    }
    let window = &tail[from..];
    match window.rfind(anchor) {
        Some(p) if reply.starts_with(&window[p..]) => &reply[window.len() - p..],
        _ => reply,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROMPT: &str = "Answer using <information> and </information> tags.\nQuestion: Where was Ada born?\n<|im_start|>assistant\n";

    fn rules() -> Rules {
        Rules {
            searches: Spread::Fixed(1),
            ..Rules::default()
        }
    }

    fn req<'a>(rid: &'a str, stop: &'a [String]) -> Request<'a> {
        Request {
            rid,
            stop,
            max_new_tokens: 512,
        }
    }

    fn agent_stops() -> Vec<String> {
        vec!["</search>".into(), "</access>".into(), "</answer>".into()]
    }

    #[test]
    fn question_is_the_rest_of_the_last_question_line() {
        let p = "Question: old one\nexample\nQuestion:  Who wrote Zed? \nmore";
        assert_eq!(read_prompt(p).question, "Who wrote Zed?");
        assert_eq!(read_prompt("no question here").question, "");
        assert_eq!(read_prompt("Question: at the end").question, "at the end");
        let chat = "<|im_start|>user\nQuestion: Who wrote Zed?<|im_end|>\n<|im_start|>assistant\n";
        assert_eq!(read_prompt(chat).question, "Who wrote Zed?");
    }

    #[test]
    fn observations_after_the_question_are_counted() {
        let p = format!(
            "{PROMPT}<search>a</search>\n<information> one </information>\n<search>b</search><information>two</information>\nafter <information>unclosed"
        );
        let v = read_prompt(&p);
        assert_eq!(v.observations, vec!["one", "two"]);
        assert_eq!(v.tail, "\nafter <information>unclosed");
        assert!(read_prompt(PROMPT).observations.is_empty());
    }

    #[test]
    fn titles_come_from_doc_headers() {
        let obs = "[Doc 1](https://a):\n\"Naenne\"\nNaenne is...\n\n[Doc 2](https://b):\nPlain title\ntext";
        assert_eq!(doc_titles(obs), vec!["Naenne", "Plain title"]);
        assert!(doc_titles("No search results are found.").is_empty());
    }

    #[test]
    fn fresh_prompt_searches_the_question() {
        let r = rules();
        let v = read_prompt(PROMPT);
        let stops = agent_stops();
        let a = r.decide(&v, &req("r1", &stops));
        assert_eq!(
            a,
            Action::Search {
                query: "Where was Ada born?".into()
            }
        );
        let text = r.reply(&a, &v, &req("r1", &stops));
        assert!(
            text.ends_with("<search>Where was Ada born?</search>"),
            "{text}"
        );
    }

    #[test]
    fn answers_gold_seen_in_an_observation_else_first_title() {
        let mut r = rules();
        r.answers
            .insert(question_key("where was ADA born?"), vec!["Koford".into()]);
        let stops = agent_stops();
        let seen = format!(
            "{PROMPT}<information>[Doc 1](u):\n\"Ada\"\nAda was born in koford.</information>\n"
        );
        let a = r.decide(&read_prompt(&seen), &req("r", &stops));
        assert_eq!(
            a,
            Action::Answer {
                text: "Koford".into(),
                wrong: false
            }
        );
        let unseen = format!(
            "{PROMPT}<information>[Doc 1](u):\n\"Ada Lane\"\nNothing here.</information>\n"
        );
        let a = r.decide(&read_prompt(&unseen), &req("r", &stops));
        assert_eq!(
            a,
            Action::Answer {
                text: "Ada Lane".into(),
                wrong: false
            }
        );
        let empty = format!("{PROMPT}<information>No search results are found.</information>\n");
        let a = r.decide(&read_prompt(&empty), &req("r", &stops));
        assert!(matches!(a, Action::Answer { text, .. } if text == "unknown"));
    }

    #[test]
    fn stop_strings_choose_notes_and_forced_answers() {
        let r = rules();
        let p = format!("{PROMPT}<information>[Doc 1](u):\n\"T\"\nbody</information>");
        let v = read_prompt(&p);
        let notes = vec!["</think>".to_string()];
        let a = r.decide(&v, &req("r", &notes));
        assert_eq!(a, Action::Notes);
        assert_eq!(
            r.reply(&a, &v, &req("r", &notes)),
            "notes: [Doc 1](u):\n\"T\"\nbody</think>"
        );
        let answer_only = vec!["</answer>".to_string()];
        let fresh = read_prompt(PROMPT);
        assert!(matches!(
            r.decide(&fresh, &req("r", &answer_only)),
            Action::Answer { .. }
        ));
    }

    #[test]
    fn searches_range_is_deterministic_and_spread() {
        let r = Rules {
            searches: Spread::Range([1, 128]),
            seed: 7,
            ..Rules::default()
        };
        let counts: Vec<u32> = (0..200)
            .map(|i| r.searches_for(&format!("question {i}")))
            .collect();
        assert!(counts.iter().all(|&c| (1..=128).contains(&c)));
        assert_eq!(
            counts,
            (0..200)
                .map(|i| r.searches_for(&format!("question {i}")))
                .collect::<Vec<_>>()
        );
        let distinct: std::collections::HashSet<_> = counts.iter().collect();
        assert!(distinct.len() > 50, "{distinct:?}");
        let other_seed = Rules {
            seed: 8,
            ..r.clone()
        };
        assert_ne!(
            counts[..20],
            (0..20)
                .map(|i| other_seed.searches_for(&format!("question {i}")))
                .collect::<Vec<_>>()[..]
        );
    }

    #[test]
    fn wrong_rate_splits_a_group_by_rid() {
        let mut r = rules();
        r.wrong_rate = 0.5;
        let stops = agent_stops();
        let p = format!("{PROMPT}<information>[Doc 1](u):\n\"Koford\"\nx</information>");
        let v = read_prompt(&p);
        let wrong = (0..100)
            .filter(|i| {
                matches!(
                    r.decide(&v, &req(&format!("rid-{i}"), &stops)),
                    Action::Answer { wrong: true, .. }
                )
            })
            .count();
        assert!((25..=75).contains(&wrong), "{wrong}");
    }

    #[test]
    fn garbage_breaks_the_protocol_in_every_kind() {
        let mut r = rules();
        r.garbage_rate = 1.0;
        let v = read_prompt(PROMPT);
        let stops = agent_stops();
        let mut kinds = std::collections::HashSet::new();
        for i in 0..64 {
            let rid = format!("g{i}");
            let rq = req(&rid, &stops);
            let a = r.decide(&v, &rq);
            let Action::Garbage { kind } = a else {
                panic!("{a:?}")
            };
            kinds.insert(kind);
            let reply = r.reply(&a, &v, &rq);
            let (cut, _) = cut_at_stop(&reply, &stops);
            let complete_single =
                cut.matches("</search>").count() == 1 && !cut.contains("<access>");
            assert!(!complete_single, "kind {kind}: {cut}");
        }
        assert_eq!(kinds.len() as u64, GARBAGE_KINDS);
    }

    #[test]
    fn think_padding_spreads_with_the_rid() {
        let r = Rules {
            think_tokens: Spread::Range([0, 400]),
            ..rules()
        };
        let v = read_prompt(PROMPT);
        let stops = agent_stops();
        let lens: Vec<usize> = (0..50)
            .map(|i| {
                let rid = format!("t{i}");
                let rq = req(&rid, &stops);
                r.reply(&r.decide(&v, &rq), &v, &rq).len()
            })
            .collect();
        let (lo, hi) = (lens.iter().min().unwrap(), lens.iter().max().unwrap());
        assert!(hi - lo > 1000, "{lo}..{hi}");
    }

    #[test]
    fn cut_keeps_the_first_completed_stop() {
        let stops = agent_stops();
        let (cut, s) = cut_at_stop("<search>a</search><answer>b</answer>", &stops);
        assert_eq!((cut, s), ("<search>a</search>", Some("</search>")));
        let (cut, s) = cut_at_stop("no tags at all", &stops);
        assert_eq!((cut, s), ("no tags at all", None));
    }

    #[test]
    fn a_resent_partial_output_continues() {
        let reply = "<think>I need to search.</think>\n<search>q</search>";
        let tail = "\n<|im_start|>assistant\n<think>I need to se";
        assert_eq!(remaining(tail, reply), "arch.</think>\n<search>q</search>");
        assert_eq!(remaining("\n<|im_start|>assistant\n", reply), reply);
        assert_eq!(remaining("<think>other text", reply), reply);
    }

    #[test]
    fn logprobs_are_negative_and_vary() {
        let lps: Vec<f32> = (0..20).map(|i| token_logprob(0, "r", i, 5)).collect();
        assert!(lps.iter().all(|&l| l < 0.0));
        assert!(lps.windows(2).any(|w| w[0] != w[1]));
        assert_eq!(token_logprob(0, "r", 3, 5), lps[3]);
    }
}
