//! The synthesis config (a root of the typed config schema): one OpenAI-chat endpoint and model
//! per role, the budgets of a seed, the checks and the prompt templates.

use asearcher_rollout::client::openai::ChatConfig;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One LLM role: where it is served (OpenAI chat protocol: vLLM, SGLang or a paid API) and how it
/// samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RoleConfig {
    /// Base URL of the server (`http://host:port`, a trailing `/v1` is accepted).
    pub url: String,
    /// Model name sent in every request.
    pub model: String,
    /// Environment variable holding the API key (none: no `Authorization` header).
    pub api_key_env: Option<String>,
    /// Sampling temperature.
    pub temperature: f32,
    /// Most tokens per reply.
    pub max_tokens: u32,
    /// Timeout of one call, in seconds.
    pub timeout_s: f64,
    /// Calls per request at most (transient failures retried with back-off).
    pub max_attempts: u32,
    /// Requests in flight to this endpoint at most, over all seeds.
    pub max_concurrent: usize,
}

impl Default for RoleConfig {
    fn default() -> Self {
        RoleConfig {
            url: String::new(),
            model: String::new(),
            api_key_env: None,
            temperature: 0.8,
            max_tokens: 1024,
            timeout_s: 120.0,
            max_attempts: 2,
            max_concurrent: 16,
        }
    }
}

impl RoleConfig {
    pub fn is_set(&self) -> bool {
        !self.url.trim().is_empty()
    }

    pub(crate) fn chat_config(&self) -> ChatConfig {
        let mut c = ChatConfig::new(self.url.clone(), self.model.clone());
        c.api_key_env = self.api_key_env.clone();
        c.timeout_secs = self.timeout_s;
        c.max_attempts = self.max_attempts.max(1);
        c.backoff_base_ms = 200;
        c.backoff_max_ms = 2000;
        c
    }
}

/// The prompt of each step, a minijinja template (variables in each default). Override any to
/// change what the models are asked; the prompt hashes are recorded in the provenance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PromptTemplates {
    /// The proposer picks the next action (`question`, `answer`, `facts`, `round`, `rejected`).
    pub propose: String,
    /// The rewriter replaces an entity by a description built from one retrieved fact
    /// (`question`, `answer`, `entity`, `passages`).
    pub inject: String,
    /// The rewriter blurs one detail (`question`, `answer`, `span`, `kind`).
    pub fuzz: String,
    /// The judge checks a candidate's quality (`question`, `answer`, `facts`).
    pub judge: String,
    /// The no-tool solver answers from its own knowledge (`question`).
    pub solve: String,
}

impl Default for PromptTemplates {
    fn default() -> Self {
        PromptTemplates {
            propose: include_str!("prompts/propose.j2").into(),
            inject: include_str!("prompts/inject.j2").into(),
            fuzz: include_str!("prompts/fuzz.j2").into(),
            judge: include_str!("prompts/judge.j2").into(),
            solve: include_str!("prompts/solve.j2").into(),
        }
    }
}

/// How seeds are grown into hard questions (`asearcher synthesize`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SynthConfig {
    /// Picks the next action (inject an entity, fuzz a span, stop). Required.
    pub proposer: RoleConfig,
    /// Writes the candidate question; default: the proposer's endpoint.
    pub rewriter: RoleConfig,
    /// Checks a candidate's quality; default: the proposer's endpoint.
    pub judge: RoleConfig,
    /// Answers without tools, for the difficulty check; default: the proposer's endpoint.
    pub solver: RoleConfig,
    /// Rounds (committed edits) per seed at most.
    pub rounds: u32,
    /// Rejected candidates in one round before the seed is finished.
    pub rejections_per_round: u32,
    /// LLM calls per seed at most (a budget on tokens and cost).
    pub max_llm_calls: u32,
    /// Search calls per seed at most.
    pub max_tool_calls: u32,
    /// Passages per search shown to the rewriter.
    pub search_top_k: usize,
    /// Characters kept of each passage shown to the rewriter.
    pub passage_chars: usize,
    /// No-tool solver samples per candidate; a candidate any of them answers is too easy.
    pub solver_samples: u32,
    /// Ask the judge about each candidate's quality (the code checks run regardless).
    pub judge_quality: bool,
    /// Reject shortcuts: a clause whose own search finds the answer's passage (titled by the
    /// answer) in the top `search_top_k`, or every fact read from one passage.
    pub shortcut_check: bool,
    /// Seeds grown at the same time.
    pub max_concurrent_seeds: usize,
    /// Seeds at most (0: all).
    pub limit: usize,
    /// The prompt templates of the steps.
    pub prompts: PromptTemplates,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            proposer: RoleConfig::default(),
            rewriter: RoleConfig::default(),
            judge: RoleConfig::default(),
            solver: RoleConfig {
                temperature: 0.6,
                ..RoleConfig::default()
            },
            rounds: 4,
            rejections_per_round: 3,
            max_llm_calls: 96,
            max_tool_calls: 32,
            search_top_k: 5,
            passage_chars: 1500,
            solver_samples: 8,
            judge_quality: true,
            shortcut_check: true,
            max_concurrent_seeds: 8,
            limit: 0,
            prompts: PromptTemplates::default(),
        }
    }
}

impl asearcher_config::Document for SynthConfig {}

impl SynthConfig {
    /// A role's settings, the proposer's endpoint where the role has none.
    pub fn role(&self, role: Role) -> RoleConfig {
        let r = match role {
            Role::Proposer => &self.proposer,
            Role::Rewriter => &self.rewriter,
            Role::Judge => &self.judge,
            Role::Solver => &self.solver,
        };
        if r.is_set() {
            return r.clone();
        }
        RoleConfig {
            url: self.proposer.url.clone(),
            model: self.proposer.model.clone(),
            api_key_env: self.proposer.api_key_env.clone(),
            ..r.clone()
        }
    }

    /// Checks the values; the error names the key.
    pub fn validate(&self) -> crate::Result<()> {
        if !self.proposer.is_set() || self.proposer.model.trim().is_empty() {
            return Err(crate::SynthError::config(
                "proposer",
                "required: the url and model of an OpenAI-chat endpoint",
            ));
        }
        for (name, v) in [
            ("rounds", self.rounds as usize),
            ("max_llm_calls", self.max_llm_calls as usize),
            ("search_top_k", self.search_top_k),
            ("max_concurrent_seeds", self.max_concurrent_seeds),
        ] {
            if v == 0 {
                return Err(crate::SynthError::config(name, "must be at least 1"));
            }
        }
        for (name, t) in [
            ("prompts.propose", &self.prompts.propose),
            ("prompts.inject", &self.prompts.inject),
            ("prompts.fuzz", &self.prompts.fuzz),
            ("prompts.judge", &self.prompts.judge),
            ("prompts.solve", &self.prompts.solve),
        ] {
            minijinja::Environment::new()
                .template_from_str(t)
                .map_err(|e| crate::SynthError::config(name, format!("not a template: {e}")))?;
        }
        Ok(())
    }
}

/// The LLM roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Proposer,
    Rewriter,
    Judge,
    Solver,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Proposer => "proposer",
            Role::Rewriter => "rewriter",
            Role::Judge => "judge",
            Role::Solver => "solver",
        }
    }
}
