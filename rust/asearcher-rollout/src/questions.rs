//! Questions of a run: the [`Question`] record and the jsonl reader. A line holds `question` and
//! the gold answers as `answer` (a string or a list) or `answers` (a list), an optional `id`
//! (default `"<file stem>-<line>"`) and any other fields, which are kept as metadata.

use crate::{Result, RolloutError};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::io::{BufRead, BufReader};
use std::path::Path;

/// One question with its gold answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Question {
    pub id: String,
    pub question: String,
    pub answers: Vec<String>,
    /// The line's other fields, kept for the user (copied onto every trajectory).
    #[serde(default)]
    pub metadata: Map<String, Value>,
}

impl Question {
    pub fn new(id: impl Into<String>, question: impl Into<String>, answers: Vec<String>) -> Self {
        Self {
            id: id.into(),
            question: question.into(),
            answers,
            metadata: Map::new(),
        }
    }
}

/// What to do with a malformed line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BadQuestionLines {
    /// Stop with an error naming `path:line` and what is wrong.
    #[default]
    Error,
    /// Skip the line (logged at warn level) and count it.
    Skip,
}

/// The questions of a file and how many lines were skipped.
#[derive(Debug, Clone, PartialEq)]
pub struct QuestionFile {
    pub questions: Vec<Question>,
    pub skipped: usize,
}

/// Reads a questions jsonl file; a malformed line is an error naming `path:line`.
pub fn read_questions(path: impl AsRef<Path>) -> Result<Vec<Question>> {
    Ok(read_questions_with(path, BadQuestionLines::Error)?.questions)
}

/// Reads a questions jsonl file with a policy for malformed lines. Blank lines are ignored; a
/// file without a single question is an error.
pub fn read_questions_with(path: impl AsRef<Path>, bad: BadQuestionLines) -> Result<QuestionFile> {
    let path = path.as_ref();
    let file = std::fs::File::open(path).map_err(|e| RolloutError::io(path, e))?;
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "questions".into());
    let mut out = QuestionFile {
        questions: Vec::new(),
        skipped: 0,
    };
    for (index, line) in BufReader::new(file).lines().enumerate() {
        let number = index + 1;
        let line = line.map_err(|e| RolloutError::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        match parse_question_line(&line, &stem, number) {
            Ok(q) => out.questions.push(q),
            Err(message) => {
                let err = RolloutError::BadLine {
                    path: path.to_path_buf(),
                    line: number,
                    message,
                };
                if bad == BadQuestionLines::Error {
                    return Err(err);
                }
                tracing::warn!("skipping question line: {err}");
                out.skipped += 1;
            }
        }
    }
    if out.questions.is_empty() {
        let message = match out.skipped {
            0 => "no questions: the file has no line that is not blank".to_string(),
            n => format!("no questions: all {n} lines were malformed and skipped"),
        };
        return Err(RolloutError::BadData {
            path: path.to_path_buf(),
            message,
        });
    }
    Ok(out)
}

/// Parses one jsonl line; the error says what is wrong with it.
pub fn parse_question_line(
    line: &str,
    stem: &str,
    number: usize,
) -> std::result::Result<Question, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(mut fields) = value else {
        return Err("expected a JSON object".into());
    };
    let question = match fields.remove("question") {
        Some(Value::String(q)) if !q.trim().is_empty() => q,
        Some(Value::String(_)) => return Err("`question` is empty".into()),
        Some(other) => return Err(format!("`question` must be a string, got {}", kind(&other))),
        None => return Err("missing field `question`".into()),
    };
    let answers = take_answers(&mut fields)?;
    let id = match fields.remove("id") {
        None | Some(Value::Null) => format!("{stem}-{number}"),
        Some(Value::String(s)) if !s.is_empty() => s,
        Some(Value::Number(n)) => n.to_string(),
        Some(other) => {
            return Err(format!(
                "`id` must be a non-empty string or a number, got {}",
                kind(&other)
            ))
        }
    };
    Ok(Question {
        id,
        question,
        answers,
        metadata: fields,
    })
}

fn take_answers(fields: &mut Map<String, Value>) -> std::result::Result<Vec<String>, String> {
    let (name, value) = match (fields.remove("answer"), fields.remove("answers")) {
        (Some(_), Some(_)) => return Err("both `answer` and `answers` are given; use one".into()),
        (Some(v), None) => ("answer", v),
        (None, Some(v)) => ("answers", v),
        (None, None) => return Err("missing field `answer` (or `answers`)".into()),
    };
    let answers = match value {
        Value::String(s) => vec![s],
        Value::Number(n) => vec![n.to_string()],
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => Ok(s),
                Value::Number(n) => Ok(n.to_string()),
                other => Err(format!(
                    "`{name}[{i}]` must be a string, got {}",
                    kind(&other)
                )),
            })
            .collect::<std::result::Result<Vec<_>, _>>()?,
        other => {
            return Err(format!(
                "`{name}` must be a string or a list of strings, got {}",
                kind(&other)
            ))
        }
    };
    if answers.is_empty() {
        return Err(format!("`{name}` is an empty list"));
    }
    Ok(answers)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(lines: &[&str]) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new()
            .suffix(".jsonl")
            .tempfile()
            .unwrap();
        for l in lines {
            writeln!(f, "{l}").unwrap();
        }
        f
    }

    #[test]
    fn reads_answer_shapes_ids_and_metadata() {
        let f = write(&[
            r#"{"question": "Q1?", "answer": "a"}"#,
            "",
            r#"{"question": "Q2?", "answer": ["b", "c"], "hops": 2}"#,
            r#"{"id": "x9", "question": "Q3?", "answers": ["d"]}"#,
        ]);
        let qs = read_questions(f.path()).unwrap();
        let stem = f.path().file_stem().unwrap().to_string_lossy().into_owned();
        assert_eq!(qs.len(), 3);
        assert_eq!(qs[0].id, format!("{stem}-1"));
        assert_eq!(qs[0].answers, vec!["a"]);
        assert_eq!(
            qs[1].id,
            format!("{stem}-3"),
            "ids count file lines, blank ones included"
        );
        assert_eq!(qs[1].answers, vec!["b", "c"]);
        assert_eq!(qs[1].metadata.get("hops"), Some(&Value::from(2)));
        assert_eq!(qs[2].id, "x9");
        assert!(qs[2].metadata.is_empty());
    }

    #[test]
    fn the_bundled_sample_questions_read() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../python/asearcher/data/sample_questions.jsonl"
        );
        let qs = read_questions(path).unwrap();
        assert_eq!(qs.len(), 60);
        assert!(qs
            .iter()
            .all(|q| !q.answers.is_empty() && q.question.ends_with('?')));
        assert_eq!(qs[0].id, "sample_questions-1");
    }

    #[test]
    fn malformed_lines_name_path_line_and_problem() {
        let cases = [
            ("not json", "not JSON"),
            (r#"[1, 2]"#, "expected a JSON object"),
            (r#"{"answer": "a"}"#, "missing field `question`"),
            (
                r#"{"question": 3, "answer": "a"}"#,
                "`question` must be a string, got a number",
            ),
            (r#"{"question": "q"}"#, "missing field `answer`"),
            (
                r#"{"question": "q", "answer": []}"#,
                "`answer` is an empty list",
            ),
            (
                r#"{"question": "q", "answers": [{"x": 1}]}"#,
                "`answers[0]` must be a string, got an object",
            ),
            (
                r#"{"question": "q", "answer": "a", "answers": ["a"]}"#,
                "both `answer` and `answers`",
            ),
            (
                r#"{"question": "q", "answer": "a", "id": true}"#,
                "`id` must be",
            ),
        ];
        for (bad, expected) in cases {
            let f = write(&[r#"{"question": "ok?", "answer": "a"}"#, bad]);
            let err = read_questions(f.path()).unwrap_err().to_string();
            let location = format!("{}:2: ", f.path().display());
            assert!(
                err.starts_with(&location),
                "{err} should start with {location}"
            );
            assert!(err.contains(expected), "{err} should say {expected}");
        }
    }

    #[test]
    fn skipping_counts_bad_lines() {
        let f = write(&[
            r#"{"question": "ok?", "answer": "a"}"#,
            "garbage",
            r#"{"question": "q"}"#,
            r#"{"question": "ok2?", "answer": "b"}"#,
        ]);
        let out = read_questions_with(f.path(), BadQuestionLines::Skip).unwrap();
        assert_eq!(out.skipped, 2);
        assert_eq!(
            out.questions
                .iter()
                .map(|q| q.question.as_str())
                .collect::<Vec<_>>(),
            ["ok?", "ok2?"]
        );
    }

    #[test]
    fn a_missing_file_names_its_path() {
        let err = read_questions("/nonexistent/qs.jsonl")
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/qs.jsonl"), "{err}");
    }
}
