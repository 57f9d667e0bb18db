//! One seed's state machine: ground -> propose an action -> build the candidate (search with our
//! tools, rewrite) -> validate it against the ledger -> check quality and difficulty -> commit
//! or reject -> next round or finish. Budgets (rounds, rejections per round, LLM calls, tool
//! calls) end it; every failure is a recorded rejection.

use crate::config::SynthConfig;
use crate::ledger::{loose, mentions, Clause, Edit, Fact, QaState, Seed};
use crate::llm::{text_field, Reject, RoleClient};
use asearcher_tools::{Document, Toolbox};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;

/// The shared parts every seed uses.
pub struct Ctx {
    pub config: SynthConfig,
    pub proposer: Arc<RoleClient>,
    pub rewriter: Arc<RoleClient>,
    pub judge: Arc<RoleClient>,
    pub solver: Arc<RoleClient>,
    pub toolbox: Toolbox,
}

/// A step of the seed's run, for the provenance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    pub round: u32,
    pub kind: String,
    pub detail: Value,
}

/// How a seed ended, with everything that happened.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SeedOutcome {
    pub seed: Seed,
    pub state: QaState,
    /// `stopped` (the proposer said so), `rounds`, `rejections`, `llm_budget`, `tool_budget`.
    pub ended_by: String,
    pub steps: Vec<Step>,
    pub llm_calls: u32,
    pub tool_calls: u32,
    pub rejects: Vec<String>,
    pub candidates: u32,
}

struct Candidate {
    action: String,
    target: String,
    replacement: String,
    question: String,
    fact: Option<Fact>,
}

struct Run<'a> {
    ctx: &'a Ctx,
    state: QaState,
    steps: Vec<Step>,
    llm_calls: u32,
    tool_calls: u32,
    rejects: Vec<String>,
    candidates: u32,
    round: u32,
}

/// Grows one seed until a budget or the proposer ends it.
pub async fn grow(ctx: &Ctx, seed: Seed) -> SeedOutcome {
    let mut run = Run {
        ctx,
        state: QaState::from_seed(&seed),
        steps: Vec::new(),
        llm_calls: 0,
        tool_calls: 0,
        rejects: Vec::new(),
        candidates: 0,
        round: 0,
    };
    let ended_by = run.rounds().await;
    SeedOutcome {
        seed,
        state: run.state,
        ended_by,
        steps: run.steps,
        llm_calls: run.llm_calls,
        tool_calls: run.tool_calls,
        rejects: run.rejects,
        candidates: run.candidates,
    }
}

impl Run<'_> {
    async fn rounds(&mut self) -> String {
        let cfg = &self.ctx.config;
        for round in 1..=cfg.rounds {
            self.round = round;
            let mut rejected: Vec<String> = Vec::new();
            loop {
                if self.llm_calls >= cfg.max_llm_calls {
                    return "llm_budget".into();
                }
                if self.tool_calls >= cfg.max_tool_calls {
                    return "tool_budget".into();
                }
                match self.attempt(&rejected).await {
                    Ok(true) => break,
                    Ok(false) => return "stopped".into(),
                    Err(r) => {
                        self.record("reject", json!({"code": r.code, "detail": r.detail}));
                        self.rejects.push(r.code.clone());
                        rejected.push(format!("{}: {}", r.code, r.detail));
                        if rejected.len() as u32 > cfg.rejections_per_round {
                            return "rejections".into();
                        }
                    }
                }
            }
        }
        "rounds".into()
    }

    fn record(&mut self, kind: &str, detail: Value) {
        self.steps.push(Step {
            round: self.round,
            kind: kind.into(),
            detail,
        });
    }

    /// One proposal to a commit (`Ok(true)`), a stop (`Ok(false)`) or a rejection.
    async fn attempt(&mut self, rejected: &[String]) -> Result<bool, Reject> {
        let facts: Vec<Value> = self
            .state
            .facts
            .iter()
            .map(|f| json!({"id": f.id, "text": f.text}))
            .collect();
        let prompt = render(
            &self.ctx.config.prompts.propose,
            json!({"question": self.state.question, "answer": self.state.answer[0],
                   "facts": facts, "round": self.round, "rejected": rejected}),
        )?;
        let proposal = self.ask(Which::Proposer, &prompt, &["action"]).await?;
        let action = text_field(&proposal, "action")?.to_lowercase();
        let candidate = match action.as_str() {
            "stop" => {
                self.record("stop", proposal);
                return Ok(false);
            }
            "inject" => self.inject(&text_field(&proposal, "entity")?).await?,
            "fuzz" => {
                let kind = text_field(&proposal, "kind").unwrap_or_else(|_| "detail".into());
                self.fuzz(&text_field(&proposal, "span")?, &kind).await?
            }
            other => {
                return Err(Reject::new(
                    "bad_action",
                    format!("unknown action {other:?}"),
                ))
            }
        };
        self.candidates += 1;
        self.check_common(&candidate)?;
        if self.ctx.config.shortcut_check {
            self.check_shortcuts(&candidate).await?;
        }
        if self.ctx.config.judge_quality {
            self.judge(&candidate).await?;
        }
        let rate = self.solve_rate(&candidate.question).await?;
        if rate > 0.0 {
            return Err(Reject::new(
                "too_easy",
                format!("the no-tool solver answered {rate:.2} of the time"),
            ));
        }
        if rate > self.state.solve_rate {
            return Err(Reject::new(
                "easier",
                "the candidate is easier than the question",
            ));
        }
        self.commit(candidate, rate);
        Ok(true)
    }

    async fn ask(
        &mut self,
        which: Which,
        prompt: &str,
        required: &[&str],
    ) -> Result<Value, Reject> {
        let client = which.client(self.ctx).clone();
        let (reply, raw) = client.ask_json(prompt, required).await;
        self.llm_calls += raw.len().max(1) as u32;
        self.record(
            &format!("{}_reply", client.role.name()),
            json!({"raw": raw, "ok": reply.is_ok()}),
        );
        reply
    }

    async fn search(&mut self, query: &str) -> Result<Vec<Document>, Reject> {
        self.tool_calls += 1;
        let out = self
            .ctx
            .toolbox
            .search(query)
            .await
            .map_err(|e| Reject::new("tool_error", e.to_string()))?;
        let ids: Vec<&str> = out.docs.iter().map(|d| d.id.as_str()).collect();
        self.record("search", json!({"query": query, "doc_ids": ids}));
        Ok(out.docs)
    }

    async fn inject(&mut self, entity: &str) -> Result<Candidate, Reject> {
        if !mentions(&self.state.question, entity) {
            return Err(Reject::new(
                "entity_not_in_question",
                format!("{entity:?} is not in the question"),
            ));
        }
        if self.state.answer.iter().any(|a| loose(a) == loose(entity)) {
            return Err(Reject::new("entity_is_answer", entity.to_string()));
        }
        let docs = self.search(entity).await?;
        let chars = self.ctx.config.passage_chars;
        let passages: Vec<Value> = docs
            .iter()
            .map(|d| {
                let text: String = d.text.chars().take(chars).collect();
                json!({"id": d.id, "title": d.title, "text": text})
            })
            .collect();
        let prompt = render(
            &self.ctx.config.prompts.inject,
            json!({"question": self.state.question, "answer": self.state.answer[0],
                   "entity": entity, "passages": passages}),
        )?;
        let keys = ["doc_id", "fact", "relation", "description", "question"];
        let reply = self.ask(Which::Rewriter, &prompt, &keys).await?;
        let doc_id = text_field(&reply, "doc_id")?;
        let fact_text = text_field(&reply, "fact")?;
        let description = text_field(&reply, "description")?;
        let question = text_field(&reply, "question")?;
        let doc = docs.iter().find(|d| d.id == doc_id).ok_or_else(|| {
            Reject::new("unknown_passage", format!("{doc_id:?} was not retrieved"))
        })?;
        let start = doc.text.find(&fact_text).ok_or_else(|| {
            Reject::new(
                "fact_not_in_passage",
                format!("{fact_text:?} is not stated verbatim in passage {doc_id}"),
            )
        })?;
        if !mentions(&fact_text, entity) {
            return Err(Reject::new(
                "fact_not_about_entity",
                format!("the fact does not mention {entity:?}"),
            ));
        }
        if mentions(&description, entity) || !mentions(&question, &description) {
            return Err(Reject::new(
                "description_not_used",
                "the description names the entity or is not in the new question",
            ));
        }
        if mentions(&question, entity) {
            return Err(Reject::new(
                "entity_still_named",
                format!("the new question still names {entity:?}"),
            ));
        }
        let fact = Fact {
            id: format!("f{}", self.state.facts.len() + 1),
            text: fact_text.clone(),
            doc_id: doc.id.clone(),
            url: doc.url.clone(),
            span: [start, start + fact_text.len()],
            entity_in: entity.to_string(),
            entity_out: description.clone(),
            relation: reply
                .get("relation")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            round: self.round,
        };
        Ok(Candidate {
            action: "inject".into(),
            target: entity.to_string(),
            replacement: description,
            question,
            fact: Some(fact),
        })
    }

    async fn fuzz(&mut self, span: &str, kind: &str) -> Result<Candidate, Reject> {
        if !mentions(&self.state.question, span) {
            return Err(Reject::new(
                "span_not_in_question",
                format!("{span:?} is not in the question"),
            ));
        }
        let prompt = render(
            &self.ctx.config.prompts.fuzz,
            json!({"question": self.state.question, "answer": self.state.answer[0],
                   "span": span, "kind": kind}),
        )?;
        let reply = self
            .ask(Which::Rewriter, &prompt, &["blurred", "question"])
            .await?;
        let blurred = text_field(&reply, "blurred")?;
        let question = text_field(&reply, "question")?;
        if mentions(&question, span) || !mentions(&question, &blurred) {
            return Err(Reject::new(
                "span_not_blurred",
                "the new question keeps the span or lacks the blurred phrase",
            ));
        }
        Ok(Candidate {
            action: "fuzz".into(),
            target: span.to_string(),
            replacement: blurred,
            question,
            fact: None,
        })
    }

    /// Checks every candidate gets from code: changed, no answer leaked, one question.
    fn check_common(&self, c: &Candidate) -> Result<(), Reject> {
        if loose(&c.question) == loose(&self.state.question) {
            return Err(Reject::new("unchanged", "the question did not change"));
        }
        if let Some(a) = self.state.answer.iter().find(|a| mentions(&c.question, a)) {
            return Err(Reject::new(
                "answer_leaked",
                format!("the question names the answer {a:?}"),
            ));
        }
        if c.question.matches('?').count() > 1 {
            return Err(Reject::new("two_questions", "more than one question mark"));
        }
        Ok(())
    }

    /// No single clause's search may find the answer's own passage (one titled by an answer),
    /// and the evidence may not all come from one passage.
    async fn check_shortcuts(&mut self, c: &Candidate) -> Result<(), Reject> {
        let mut docs: Vec<&str> = self.state.facts.iter().map(|f| f.doc_id.as_str()).collect();
        if let Some(f) = &c.fact {
            docs.push(&f.doc_id);
        }
        if docs.len() >= 2 && docs.iter().all(|d| *d == docs[0]) {
            return Err(Reject::new(
                "one_passage",
                format!("every fact comes from passage {}", docs[0]),
            ));
        }
        let mut clauses: Vec<String> = self
            .state
            .clauses
            .iter()
            .map(|cl| cl.text.clone())
            .filter(|t| mentions(&c.question, t))
            .collect();
        if let Some(f) = &c.fact {
            clauses.push(f.entity_out.clone());
        }
        let answers = self.state.answer.clone();
        for clause in clauses {
            let found = self.search(&clause).await?;
            let k = self.ctx.config.search_top_k;
            if let Some(d) = found
                .iter()
                .take(k)
                .find(|d| answers.iter().any(|a| loose(&d.title) == loose(a)))
            {
                return Err(Reject::new(
                    "shortcut_clause",
                    format!(
                        "searching {clause:?} alone finds the answer's passage {}",
                        d.id
                    ),
                ));
            }
        }
        Ok(())
    }

    async fn judge(&mut self, c: &Candidate) -> Result<(), Reject> {
        let mut facts: Vec<Value> = self
            .state
            .facts
            .iter()
            .map(|f| json!({"text": f.text}))
            .collect();
        if let Some(f) = &c.fact {
            facts.push(json!({"text": f.text}));
        }
        let prompt = render(
            &self.ctx.config.prompts.judge,
            json!({"question": c.question, "answer": self.state.answer[0], "facts": facts}),
        )?;
        let keys = ["self_contained", "fluent", "single_question", "entailed"];
        let v = self.ask(Which::Judge, &prompt, &keys).await?;
        for k in keys {
            if v.get(k) != Some(&Value::Bool(true)) {
                let why = v.get("reason").and_then(Value::as_str).unwrap_or("");
                return Err(Reject::new(&format!("quality_{k}"), why.to_string()));
            }
        }
        Ok(())
    }

    /// The share of `solver_samples` no-tool answers that match a gold answer.
    async fn solve_rate(&mut self, question: &str) -> Result<f64, Reject> {
        let k = self.ctx.config.solver_samples;
        if k == 0 {
            return Ok(0.0);
        }
        let prompt = render(
            &self.ctx.config.prompts.solve,
            json!({"question": question}),
        )?;
        let solver = self.ctx.solver.clone();
        let replies =
            futures::future::join_all((0..k).map(|_| solver.ask_json(&prompt, &["answer"]))).await;
        let mut solved = 0;
        let mut answers = Vec::new();
        for (reply, raw) in replies {
            self.llm_calls += raw.len().max(1) as u32;
            let answer = reply?
                .get("answer")
                .map(|a| a.as_str().map_or_else(|| a.to_string(), str::to_string))
                .unwrap_or_default();
            let right = asearcher_agent::metrics::exact_match(&answer, &self.state.answer) > 0.0;
            solved += u32::from(right);
            answers.push(json!({"answer": answer, "right": right}));
        }
        let rate = f64::from(solved) / f64::from(k);
        self.record("solver", json!({"answers": answers, "rate": rate}));
        Ok(rate)
    }

    fn commit(&mut self, c: Candidate, rate: f64) {
        let before = std::mem::replace(&mut self.state.question, c.question.clone());
        let mut fact_ids = Vec::new();
        if let Some(f) = c.fact {
            fact_ids.push(f.id.clone());
            self.state.clauses.push(Clause {
                text: f.entity_out.clone(),
                fact_ids: vec![f.id.clone()],
            });
            self.state.facts.push(f);
            self.state.n_inject += 1;
            self.state.hops += 1;
        } else {
            self.state.n_fuzz += 1;
        }
        self.state.solve_rate = rate;
        let edit = Edit {
            round: self.round,
            action: c.action,
            target: c.target,
            replacement: c.replacement,
            before,
            after: c.question,
            fact_ids,
            solve_rate: rate,
        };
        self.record(
            "commit",
            serde_json::to_value(&edit).expect("an edit serialises"),
        );
        self.state.edits.push(edit);
    }
}

#[derive(Clone, Copy)]
enum Which {
    Proposer,
    Rewriter,
    Judge,
}

impl Which {
    fn client(self, ctx: &Ctx) -> &Arc<RoleClient> {
        match self {
            Which::Proposer => &ctx.proposer,
            Which::Rewriter => &ctx.rewriter,
            Which::Judge => &ctx.judge,
        }
    }
}

/// Renders a prompt template; a template error is a rejection (checked at start, so rare).
pub fn render(template: &str, vars: Value) -> Result<String, Reject> {
    minijinja::Environment::new()
        .render_str(template, vars)
        .map_err(|e| Reject::new("prompt_error", e.to_string()))
}
