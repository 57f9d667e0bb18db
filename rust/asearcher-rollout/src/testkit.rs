//! Test support shared by the runner, reward and scheduler tests: the bundled sample tokenizer, a
//! real BM25 index over the sample corpus, a small token-space agent (search, then answer), and
//! an in-process [`LlmBackend`] that simulates a policy (scripted replies, latency, failures),
//! since no LLM can be reached from tests.

use crate::client::{FinishReason, GenOutput, GenRequest, LlmBackend};
use crate::questions::Question;
use crate::{Result, RolloutError};
use asearcher_agent::agent::{
    Agent, AgentStep, GenerateCall, Generation, SamplingConfig, StopReason, ToolCall, ToolKind,
    ToolObservation, TurnReading,
};
use asearcher_agent::protocol::{parse_turn, ActionKind, ParseOptions};
use asearcher_tokenizer::Tokenizer;
use asearcher_tools::{BuildOptions, LocalIndex, SearchBackend, Toolbox, ToolboxConfig};
use async_trait::async_trait;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

pub const SAMPLE_TOKENIZER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../python/asearcher/data/sample_tokenizer"
);
pub const SAMPLE_CORPUS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../python/asearcher/data/sample_corpus.jsonl"
);

pub fn tokenizer() -> Arc<Tokenizer> {
    static TOK: OnceLock<Arc<Tokenizer>> = OnceLock::new();
    TOK.get_or_init(|| Arc::new(Tokenizer::from_dir(SAMPLE_TOKENIZER).expect("sample tokenizer")))
        .clone()
}

/// A toolbox over a real BM25 index of the sample corpus, without a page source (so `access`
/// fails: a real tool failure).
pub fn toolbox() -> Toolbox {
    static INDEX: OnceLock<(tempfile::TempDir, Arc<LocalIndex>)> = OnceLock::new();
    let (_, index) = INDEX.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("index");
        let opts = BuildOptions {
            threads: 1,
            heap_mb: 64,
            ..BuildOptions::default()
        };
        LocalIndex::build(SAMPLE_CORPUS, &out, &opts, &mut |_, _, _| true).expect("build index");
        let index = Arc::new(LocalIndex::open(&out).expect("open index"));
        (dir, index)
    });
    Toolbox::new(
        Arc::new(index.clone()) as Arc<dyn SearchBackend>,
        None,
        None,
        ToolboxConfig::default(),
    )
}

pub fn question(id: &str, q: &str, answer: &str) -> Question {
    Question::new(id, q, vec![answer.to_string()])
}

/// A token-space agent: its prompt is `Question: ...` followed by each output and each
/// `<information>` observation; it follows the model's `<search>`, `<access>` and `<answer>`
/// tags, and gives up after 3 turns without a tag or after `max_turns` turns.
pub struct TestAgent {
    tok: Arc<Tokenizer>,
    seq: Vec<u32>,
    prefix: usize,
    turns: usize,
    max_turns: usize,
    failures: usize,
    pending: Option<ToolCall>,
    done: Option<StopReason>,
    answer: Option<String>,
    pub panic_on_turn: Option<usize>,
    /// Characters of each observation shown to the model (300).
    pub info_chars: usize,
}

impl TestAgent {
    pub fn new(tok: Arc<Tokenizer>, q: &Question, max_turns: usize) -> Self {
        let seq = tok
            .encode(&format!("Question: {}\n", q.question), false)
            .expect("encode");
        Self {
            tok,
            seq,
            prefix: 0,
            turns: 0,
            max_turns,
            failures: 0,
            pending: None,
            done: None,
            answer: None,
            panic_on_turn: None,
            info_chars: 300,
        }
    }
}

impl Agent for TestAgent {
    fn name(&self) -> &str {
        "test"
    }

    fn next_step(&mut self) -> AgentStep {
        if let Some(reason) = self.done {
            return AgentStep::Finish(reason);
        }
        if let Some(call) = self.pending.take() {
            return AgentStep::Tool(call);
        }
        if self.turns >= self.max_turns {
            return AgentStep::Finish(StopReason::MaxTurns);
        }
        if self.panic_on_turn == Some(self.turns) {
            panic!("test agent told to panic at turn {}", self.turns);
        }
        AgentStep::Generate(GenerateCall {
            role: "act".into(),
            prompt_ids: Arc::new(self.seq.clone()),
            prefix_len: self.prefix,
            stop: vec!["</search>".into(), "</access>".into(), "</answer>".into()],
            stop_token_ids: Vec::new(),
            sampling: SamplingConfig {
                max_new_tokens: 64,
                ..SamplingConfig::default()
            },
        })
    }

    fn on_generation(&mut self, _call: &GenerateCall, g: &Generation) -> TurnReading {
        self.turns += 1;
        self.seq.extend_from_slice(&g.output_ids);
        self.prefix = self.seq.len();
        let parsed = parse_turn(&g.text, &ParseOptions::default());
        match &parsed.action {
            Some(a) if a.kind == ActionKind::Answer => {
                self.answer = Some(a.argument.clone());
                self.done = Some(StopReason::Answered);
            }
            Some(a) => {
                let kind = if a.kind == ActionKind::Search {
                    ToolKind::Search
                } else {
                    ToolKind::Access
                };
                self.pending = Some(ToolCall {
                    kind,
                    argument: a.argument.clone(),
                });
            }
            None => {
                self.failures += 1;
                if self.failures >= 3 {
                    self.done = Some(StopReason::ProtocolFailures);
                }
            }
        }
        TurnReading {
            action: parsed.action,
            issues: parsed.issues,
        }
    }

    fn on_tool(&mut self, _call: &ToolCall, obs: &ToolObservation) {
        let text = match &obs.error {
            Some(e) => format!("Error: {e}"),
            None => obs.text.chars().take(self.info_chars).collect(),
        };
        let ids = self
            .tok
            .encode(&format!("\n<information>{text}</information>\n"), false)
            .expect("encode");
        self.seq.extend(ids);
    }

    fn answer(&self) -> Option<String> {
        self.answer.clone()
    }
}

/// What the simulated policy sees of one request.
#[derive(Debug, Clone)]
pub struct SimCall {
    /// `{trajectory id}-{turn}` (`~{attempt}` before the turn on retries).
    pub rid: String,
    /// The text after the last `Question: ` of the prompt, up to the end of its line.
    pub question: String,
    /// `<information>` blocks in the prompt (tool calls done so far).
    pub observations: usize,
    pub prompt: String,
    /// The request's sampling seed.
    pub seed: Option<u64>,
}

/// The simulated policy's reply to one request.
pub enum SimReply {
    Say(String),
    /// The backend fails (as a pool does after its own retries).
    Fail(String),
    /// Never answers.
    Hang,
}

type Script = dyn Fn(&SimCall) -> SimReply + Send + Sync;

/// An in-process stand-in for an inference server pool: decodes the prompt, asks the script what
/// to say, waits `latency`, and returns the reply's tokens (plus EOS) with logprobs and versions.
pub struct SimBackend {
    tok: Arc<Tokenizer>,
    script: Box<Script>,
    pub latency: Duration,
    pub version: AtomicU64,
    pub calls: AtomicU64,
    pub in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
    pub released: AtomicU64,
    pub rids: Mutex<Vec<String>>,
    pub record_rids: bool,
}

impl SimBackend {
    pub fn new(
        latency: Duration,
        script: impl Fn(&SimCall) -> SimReply + Send + Sync + 'static,
    ) -> Self {
        Self {
            tok: tokenizer(),
            script: Box::new(script),
            latency,
            version: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            released: AtomicU64::new(0),
            rids: Mutex::new(Vec::new()),
            record_rids: true,
        }
    }

    /// Searches `searches` times for the question, then answers `answer`.
    pub fn search_then_answer(latency: Duration, searches: usize, answer: &'static str) -> Self {
        Self::new(latency, move |c| {
            if c.observations < searches {
                SimReply::Say(format!("<search>{}</search>", c.question))
            } else {
                SimReply::Say(format!("<answer>{answer}</answer>"))
            }
        })
    }

    fn see(&self, req: &GenRequest) -> Result<SimCall> {
        let prompt = self.tok.decode(&req.input_ids, false)?;
        let question = prompt
            .rsplit_once("Question: ")
            .map(|(_, rest)| rest.lines().next().unwrap_or("").to_string())
            .unwrap_or_default();
        Ok(SimCall {
            rid: req.rid.clone(),
            observations: prompt.matches("<information>").count(),
            question,
            prompt,
            seed: req.sampling.seed,
        })
    }
}

struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

#[async_trait]
impl LlmBackend for SimBackend {
    async fn generate(&self, req: GenRequest) -> Result<GenOutput> {
        self.calls.fetch_add(1, SeqCst);
        let now = self.in_flight.fetch_add(1, SeqCst) + 1;
        let _guard = InFlight(&self.in_flight);
        self.max_in_flight.fetch_max(now, SeqCst);
        if self.record_rids {
            self.rids.lock().unwrap().push(req.rid.clone());
        }
        let call = self.see(&req)?;
        let reply = (self.script)(&call);
        tokio::time::sleep(self.latency).await;
        let text = match reply {
            SimReply::Say(text) => text,
            SimReply::Fail(message) => {
                return Err(RolloutError::AllServersFailed {
                    attempts: vec![("sim://0".into(), message)],
                })
            }
            SimReply::Hang => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                String::new()
            }
        };
        let mut ids = self.tok.encode(&text, false)?;
        ids.extend(req.sampling.stop_token_ids.last().copied());
        let n = ids.len();
        Ok(GenOutput {
            output_ids: ids,
            logprobs: vec![-0.25; n],
            versions: vec![self.version.load(SeqCst); n],
            finish: FinishReason::Stop,
            server: "sim://0".into(),
            resends: 0,
        })
    }

    fn release(&self, _affinity: u64) {
        self.released.fetch_add(1, SeqCst);
    }

    fn version(&self) -> u64 {
        self.version.load(SeqCst)
    }

    fn describe(&self) -> String {
        "simulated policy".into()
    }
}
