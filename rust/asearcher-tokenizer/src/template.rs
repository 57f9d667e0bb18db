//! Chat templates rendered with minijinja the way transformers renders them with Jinja2:
//! `trim_blocks` + `lstrip_blocks`, loop controls, `raise_exception`, a `tojson` that is Python's
//! `json.dumps`, `strftime_now`, Python string/dict methods (`.startswith`, `.split`, `.items`, ...
//! through minijinja-contrib's pycompat), and `None`/`True`/`False` printed as Python prints them.

use crate::pyjson::{dumps, py_float_repr, DumpOptions};
use crate::TokenizerError;
use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, Error, ErrorKind, Output, State, Value};
use std::path::Path;

/// The compiled chat templates of one tokenizer: a default one and/or named ones.
pub struct ChatTemplates {
    env: Environment<'static>,
    names: Vec<String>,
}

impl ChatTemplates {
    /// Compiles `(name, source)` pairs; a syntax error names the file, the template and its line.
    pub fn compile(templates: Vec<(String, String)>, file: &Path) -> Result<Self, TokenizerError> {
        let mut env = new_environment();
        let mut names = Vec::new();
        for (name, source) in templates {
            env.add_template_owned(name.clone(), source)
                .map_err(|e| template_error(file, &name, &e))?;
            names.push(name);
        }
        Ok(ChatTemplates { env, names })
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Picks the template the way transformers does: an explicit name, else `tool_use` when tools
    /// are given and such a template exists, else `default` (the only one for a plain string).
    pub fn pick(&self, name: Option<&str>, with_tools: bool) -> Result<String, String> {
        let has = |n: &str| self.names.iter().any(|x| x == n);
        match name {
            Some(n) if has(n) => Ok(n.to_string()),
            Some(n) => Err(format!(
                "no chat template named `{n}` (available: {})",
                self.names.join(", ")
            )),
            None if with_tools && has("tool_use") => Ok("tool_use".into()),
            None if has("default") => Ok("default".into()),
            None => Err(format!(
                "several chat templates and none named `default` (available: {})",
                self.names.join(", ")
            )),
        }
    }

    /// Renders template `name` with `context` (a JSON object of template variables).
    pub fn render(
        &self,
        name: &str,
        context: &serde_json::Value,
        file: &Path,
    ) -> Result<String, TokenizerError> {
        let tmpl = self
            .env
            .get_template(name)
            .map_err(|e| template_error(file, name, &e))?;
        tmpl.render(Value::from_serialize(context))
            .map_err(|e| template_error(file, name, &e))
    }
}

fn template_error(file: &Path, name: &str, e: &Error) -> TokenizerError {
    let mut msg = e
        .detail()
        .map(str::to_string)
        .unwrap_or_else(|| e.to_string());
    if e.kind() != ErrorKind::InvalidOperation || e.detail().is_none() {
        msg = format!("{}: {msg}", e.kind());
    }
    TokenizerError::Template {
        path: file.to_path_buf(),
        template: name.to_string(),
        line: e.line(),
        msg,
    }
}

fn new_environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.set_formatter(python_formatter);
    env.add_filter("tojson", tojson);
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime_now);
    env
}

/// Prints values as Jinja2 (Python `str`) would: `None`, `True`, `False`, float reprs.
fn python_formatter(out: &mut Output, state: &State, value: &Value) -> Result<(), Error> {
    let text = match value.kind() {
        ValueKind::None => Some("None".to_string()),
        ValueKind::Bool => Some(if value.is_true() { "True" } else { "False" }.to_string()),
        ValueKind::Number if value.as_i64().is_none() => {
            f64::try_from(value.clone()).ok().map(py_float_repr)
        }
        _ => None,
    };
    match text {
        Some(t) => out.write_str(&t).map_err(Error::from),
        None => minijinja::escape_formatter(out, state, value),
    }
}

fn raise_exception(msg: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

/// HF's `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
fn tojson(value: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match v.as_i64() {
            Some(n) => Some(" ".repeat(n.max(0) as usize)),
            None => Some(v.as_str().unwrap_or_default().to_string()),
        },
    };
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    let separators = match separators {
        Some(s) if s.len() == 2 => Some((s[0].clone(), s[1].clone())),
        Some(_) => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "tojson: separators must be a pair of strings",
            ))
        }
        None => None,
    };
    let opts = DumpOptions {
        indent,
        separators,
        sort_keys: kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false),
        ensure_ascii: kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false),
    };
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(&value).map_err(|e| {
        Error::new(ErrorKind::InvalidOperation, "tojson: value is not JSON").with_source(e)
    })?;
    Ok(Value::from_safe_string(dumps(&json, &opts)))
}

/// `strftime_now(format)`: the current time (UTC) formatted with the common strftime codes.
fn strftime_now(format: String) -> Result<Value, Error> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    strftime(&format, secs).map(Value::from)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// Civil date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn strftime(format: &str, unix_secs: i64) -> Result<String, Error> {
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (secs / 3600, secs / 60 % 60, secs % 60);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let year_start = days - (1..m).map(|mo| month_len(y, mo)).sum::<i64>() - (i64::from(d) - 1);
    let yday = days - year_start + 1;
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let code = chars.next().unwrap_or('%');
        let piece = match code {
            'Y' => y.to_string(),
            'y' => format!("{:02}", y.rem_euclid(100)),
            'm' => format!("{m:02}"),
            'd' => format!("{d:02}"),
            'e' => format!("{d:>2}"),
            '-' => match chars.next() {
                Some('d') => d.to_string(),
                Some('m') => m.to_string(),
                Some('H') => hh.to_string(),
                other => return Err(bad_code(other)),
            },
            'H' => format!("{hh:02}"),
            'I' => format!("{:02}", (hh + 11) % 12 + 1),
            'M' => format!("{mm:02}"),
            'S' => format!("{ss:02}"),
            'p' => if hh < 12 { "AM" } else { "PM" }.into(),
            'B' => MONTHS[m as usize - 1].into(),
            'b' | 'h' => MONTHS[m as usize - 1][..3].into(),
            'A' => DAYS[weekday].into(),
            'a' => DAYS[weekday][..3].into(),
            'j' => format!("{yday:03}"),
            '%' => "%".into(),
            other => return Err(bad_code(Some(other))),
        };
        out.push_str(&piece);
    }
    Ok(out)
}

fn month_len(y: i64, m: u32) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn bad_code(c: Option<char>) -> Error {
    Error::new(
        ErrorKind::InvalidOperation,
        format!(
            "strftime_now: unsupported format code %{}",
            c.map(String::from).unwrap_or_default()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(src: &str, ctx: serde_json::Value) -> Result<String, TokenizerError> {
        let t = ChatTemplates::compile(vec![("default".into(), src.into())], Path::new("t.json"))?;
        t.render("default", &ctx, Path::new("t.json"))
    }

    #[test]
    fn python_methods_and_printing() {
        let src = "{% for m in messages %}{% if m.content.startswith('<a>') %}{{ m.content.split('>')[-1].strip() }}|{% endif %}{% endfor %}{{ x }} {{ y }} {{ z }} {{ f }}";
        let ctx = json!({"messages": [{"content": "<a> hi "}, {"content": "no"}], "x": null, "y": true, "z": false, "f": 1e-5});
        assert_eq!(render(src, ctx).unwrap(), "hi|None True False 1e-05");
    }

    #[test]
    fn trim_and_lstrip_blocks() {
        let src = "  {% if true %}\nA\n  {% endif %}\nB\n";
        assert_eq!(render(src, json!({})).unwrap(), "A\nB");
    }

    #[test]
    fn tojson_is_python_json_dumps() {
        let out = render("{{ t | tojson }}", json!({"t": {"z": 1, "a": "<é>"}})).unwrap();
        assert_eq!(out, "{\"z\": 1, \"a\": \"<é>\"}");
        let out = render("{{ t | tojson(indent=2) }}", json!({"t": [1]})).unwrap();
        assert_eq!(out, "[\n  1\n]");
    }

    #[test]
    fn raise_exception_and_syntax_errors_name_the_line() {
        let err = render("{{ raise_exception('no system role') }}", json!({})).unwrap_err();
        assert!(err.to_string().contains("no system role"), "{err}");
        let err = render("line one\n{% if %}", json!({})).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("t.json") && msg.contains("line 2"), "{msg}");
    }

    #[test]
    fn strftime_known_dates() {
        // 2024-02-29 13:05:09 UTC, a Thursday
        let t = 1_709_211_909;
        assert_eq!(
            strftime("%Y-%m-%d %H:%M:%S %a %A %b %B %j %I%p %-d", t).unwrap(),
            "2024-02-29 13:05:09 Thu Thursday Feb February 060 01PM 29"
        );
        assert!(strftime("%Q", t).is_err());
    }
}
