//! Python-compatible rendering of values inside chat templates: `json.dumps` (what HF's `tojson`
//! filter calls, with its `indent`, `separators`, `sort_keys` and `ensure_ascii` options) and
//! `repr(float)`, so that rendered prompts are byte-identical to transformers'.

use serde_json::Value;
use std::fmt::Write;

/// Options of `json.dumps` that HF's `tojson` filter exposes.
#[derive(Debug, Clone, Default)]
pub struct DumpOptions {
    pub indent: Option<String>,
    /// `(item separator, key separator)`; Python's default depends on `indent`.
    pub separators: Option<(String, String)>,
    pub sort_keys: bool,
    pub ensure_ascii: bool,
}

/// `json.dumps(value, **options)` as Python writes it.
pub fn dumps(value: &Value, opts: &DumpOptions) -> String {
    let (item_sep, key_sep) = match &opts.separators {
        Some((i, k)) => (i.clone(), k.clone()),
        None if opts.indent.is_some() => (",".into(), ": ".into()),
        None => (", ".into(), ": ".into()),
    };
    let writer = Dumper {
        opts,
        item_sep,
        key_sep,
    };
    let mut out = String::new();
    writer.value(&mut out, value, 0);
    out
}

struct Dumper<'a> {
    opts: &'a DumpOptions,
    item_sep: String,
    key_sep: String,
}

impl Dumper<'_> {
    fn value(&self, out: &mut String, v: &Value, depth: usize) {
        match v {
            Value::Null => out.push_str("null"),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
                (Some(i), _, _) => write!(out, "{i}").unwrap_or(()),
                (_, Some(u), _) => write!(out, "{u}").unwrap_or(()),
                (_, _, Some(f)) => out.push_str(&json_float(f)),
                _ => out.push_str(&n.to_string()),
            },
            Value::String(s) => self.string(out, s),
            Value::Array(items) => {
                if items.is_empty() {
                    return out.push_str("[]");
                }
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    self.separator(out, i, depth + 1);
                    self.value(out, item, depth + 1);
                }
                self.close(out, depth);
                out.push(']');
            }
            Value::Object(map) => {
                if map.is_empty() {
                    return out.push_str("{}");
                }
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                if self.opts.sort_keys {
                    entries.sort_by(|a, b| a.0.cmp(b.0));
                }
                out.push('{');
                for (i, (k, item)) in entries.into_iter().enumerate() {
                    self.separator(out, i, depth + 1);
                    self.string(out, k);
                    out.push_str(&self.key_sep);
                    self.value(out, item, depth + 1);
                }
                self.close(out, depth);
                out.push('}');
            }
        }
    }

    fn separator(&self, out: &mut String, i: usize, depth: usize) {
        if i > 0 {
            out.push_str(&self.item_sep);
        }
        if let Some(ind) = &self.opts.indent {
            out.push('\n');
            out.push_str(&ind.repeat(depth));
        }
    }

    fn close(&self, out: &mut String, depth: usize) {
        if let Some(ind) = &self.opts.indent {
            out.push('\n');
            out.push_str(&ind.repeat(depth));
        }
    }

    fn string(&self, out: &mut String, s: &str) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 => write!(out, "\\u{:04x}", c as u32).unwrap_or(()),
                c if self.opts.ensure_ascii && !c.is_ascii() => {
                    let mut buf = [0u16; 2];
                    for unit in c.encode_utf16(&mut buf) {
                        write!(out, "\\u{unit:04x}").unwrap_or(());
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

/// A float as `json.dumps` writes it (`repr`, with `NaN`/`Infinity` spelled the JSON-ish way).
fn json_float(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else {
        py_float_repr(f)
    }
}

/// Python's `repr(float)`: shortest round-trip digits, positional for exponents in [-4, 16),
/// scientific (`1e-05`, `1.5e+16`) otherwise.
pub fn py_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf" } else { "-inf" }.into();
    }
    let sci = format!("{f:e}"); // e.g. "-1.2345e2", "1e-5"
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if (-4..16).contains(&exp) {
        let point = exp + 1; // digits before the decimal point
        let body = if point <= 0 {
            format!("0.{}{}", "0".repeat((-point) as usize), digits)
        } else if point as usize >= digits.len() {
            format!("{}{}.0", digits, "0".repeat(point as usize - digits.len()))
        } else {
            let (a, b) = digits.split_at(point as usize);
            format!("{a}.{b}")
        };
        format!("{sign}{body}")
    } else {
        let exp_sign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{mantissa}e{exp_sign}{:02}", exp.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn float_repr_matches_python() {
        let cases = [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (1e16, "1e+16"),
            (1234.5, "1234.5"),
            (-2.5e-7, "-2.5e-07"),
            (123456789012345.0, "123456789012345.0"),
            (0.0, "0.0"),
        ];
        for (f, want) in cases {
            assert_eq!(py_float_repr(f), want, "{f}");
        }
    }

    #[test]
    fn dumps_uses_python_separators_and_escapes() {
        let v = json!({"b": [1, 2.5, null], "a": "é\"\n\u{1}"});
        let plain = dumps(&v, &DumpOptions::default());
        assert_eq!(plain, "{\"b\": [1, 2.5, null], \"a\": \"é\\\"\\n\\u0001\"}");
        let opts = DumpOptions {
            indent: Some("  ".into()),
            sort_keys: true,
            ensure_ascii: true,
            ..Default::default()
        };
        let pretty = dumps(&v, &opts);
        assert_eq!(
            pretty,
            "{\n  \"a\": \"\\u00e9\\\"\\n\\u0001\",\n  \"b\": [\n    1,\n    2.5,\n    null\n  ]\n}"
        );
    }
}
