//! A readable HTML rendering of a trajectory (notebooks' `_repr_html_`): the question, gold
//! answers, answer, rewards, stop reason and errors, then one block per turn. All model and tool
//! text is escaped; long texts are folded into `<details>`.

use super::{ToolCallRecord, Trajectory, TurnRecord};
use std::fmt::Write;

/// Texts longer than this many characters are folded.
const FOLD_CHARS: usize = 600;

/// `text` with `& < > " '` escaped for HTML.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Escaped text in a `<pre>`, folded into `<details>` when long.
fn block(text: &str) -> String {
    let chars = text.chars().count();
    let pre = format!(
        "<pre style=\"white-space:pre-wrap;margin:0\">{}</pre>",
        escape(text)
    );
    if chars <= FOLD_CHARS {
        return pre;
    }
    let head: String = text.chars().take(120).collect();
    format!(
        "<details><summary>{} &hellip; ({chars} chars)</summary>{pre}</details>",
        escape(&head)
    )
}

fn row(out: &mut String, key: &str, value_html: &str) {
    let _ = write!(out, "<tr><th style=\"text-align:left\">{key}</th><td style=\"text-align:left\">{value_html}</td></tr>");
}

fn header(t: &Trajectory, out: &mut String) {
    let _ = write!(
        out,
        "<div class=\"asearcher-trajectory\"><b>{}</b> &middot; agent {} &middot; {} turns &middot; {} tool calls &middot; {} output tokens<table>",
        escape(&t.id),
        escape(&t.agent),
        t.num_turns(),
        t.tool_calls(),
        t.output_tokens()
    );
    row(out, "question", &escape(&t.question));
    row(out, "gold", &escape(&t.answers.join(" | ")));
    row(
        out,
        "answer",
        &t.answer.as_deref().map_or("<i>none</i>".into(), escape),
    );
    let rewards: Vec<String> = t
        .rewards
        .iter()
        .map(|(k, v)| format!("{}={v:.3}", escape(k)))
        .collect();
    let reward = t.reward.map_or("none".into(), |r| format!("{r:.3}"));
    row(out, "reward", &format!("{reward} ({})", rewards.join(", ")));
    row(out, "stop", &format!("{:?}", t.stop_reason));
    for e in &t.errors {
        let turn = e.turn.map_or(String::new(), |n| format!(" (turn {n})"));
        let mut html = format!("{}{turn}: {}", escape(&e.kind), escape(&e.message));
        if let Some(tb) = &e.traceback {
            html.push_str(&block(tb));
        }
        row(out, "error", &html);
    }
    out.push_str("</table>");
}

fn tool_line(tool: &ToolCallRecord) -> String {
    let status = tool
        .error
        .as_deref()
        .map_or("ok".into(), |e| format!("<b>error</b>: {}", escape(e)));
    format!(
        "{} <code>{}</code> &middot; {:.1} ms{} &middot; {} chars shown &middot; {status}",
        escape(&tool.tool),
        escape(&tool.input),
        tool.latency_ms,
        if tool.cached { " (cached)" } else { "" },
        tool.observation_chars
    )
}

fn turn(i: usize, t: &TurnRecord, out: &mut String) {
    let _ = write!(
        out,
        "<div style=\"border-top:1px solid #ccc;padding:4px 0\"><b>turn {i}</b> &middot; {} &middot; {} prompt tokens new &middot; {} output tokens &middot; {:?}",
        escape(&t.role),
        t.prompt_ids.len(),
        t.output_ids.len(),
        t.finish
    );
    if let Some(server) = &t.server {
        let _ = write!(out, " &middot; {}", escape(server));
    }
    out.push_str(&block(&t.output_text));
    if let Some(a) = &t.action {
        let _ = write!(
            out,
            "<div>action: {} <code>{}</code></div>",
            a.kind.tag(),
            escape(&a.argument)
        );
    }
    if !t.issues.is_empty() {
        let _ = write!(
            out,
            "<div style=\"color:#a00\">issues: {}</div>",
            escape(&format!("{:?}", t.issues))
        );
    }
    if let Some(tool) = &t.tool {
        let _ = write!(out, "<div>tool: {}</div>", tool_line(tool));
        if let Some(seen) = &tool.observation {
            let _ = write!(
                out,
                "<details><summary>what the agent saw</summary><pre>{}</pre></details>",
                escape(seen)
            );
        }
    }
    out.push_str("</div>");
}

impl Trajectory {
    /// An HTML rendering for notebooks (see the module comment).
    pub fn to_html(&self) -> String {
        let mut out = String::new();
        header(self, &mut out);
        for (i, t) in self.turns.iter().enumerate() {
            turn(i, t, &mut out);
        }
        out.push_str("</div>");
        out
    }
}
