//! Turning fetched bodies into page text: content-type gating, charset decoding, HTML-to-text
//! (readability with a whole-document fallback), and splitting long pages into chunks.

use dom_smoothie::{Config, Readability, TextMode};

/// Readability output shorter than this (in characters) is replaced by the whole-document text.
const MIN_READABLE_CHARS: usize = 200;

/// Elements whose contents are never page text.
const JUNK_SELECTOR: &str = "script, style, noscript, template, svg, iframe, object, head";

/// Block elements that `formatted_text` does not separate by itself.
const EXTRA_BLOCKS: &str = "header, footer, nav, main, aside, figure, figcaption, address, \
     details, summary, dt, dd, caption, fieldset, form, center";

/// How a body's media type is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyKind {
    Html,
    Text,
    /// No Content-Type: sniff the body.
    Unknown,
}

/// The essence of a Content-Type value (`text/html; charset=x` -> `text/html`), lowercased.
pub(crate) fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Classifies a media type; `None` means it is not text-like and must be refused.
pub(crate) fn body_kind(media: &str) -> Option<BodyKind> {
    match media {
        "" => Some(BodyKind::Unknown),
        "text/html" | "application/xhtml+xml" => Some(BodyKind::Html),
        "application/xml" | "application/json" | "application/ld+json" => Some(BodyKind::Text),
        m if m.starts_with("text/") => Some(BodyKind::Text),
        _ => None,
    }
}

/// Whether the first bytes of a body look like text: valid UTF-8 (a character cut at the end of
/// the sample is fine) with no NUL bytes.
pub(crate) fn looks_like_text(body: &[u8]) -> bool {
    let sample = &body[..body.len().min(1024)];
    if sample.contains(&0) {
        return false;
    }
    match std::str::from_utf8(sample) {
        Ok(_) => true,
        // Only an incomplete character at the very end is tolerated.
        Err(e) => e.error_len().is_none(),
    }
}

/// Whether a text body without a media type is HTML.
pub(crate) fn looks_like_html(body: &str) -> bool {
    let head: String = body
        .trim_start_matches('\u{feff}')
        .trim_start()
        .chars()
        .take(256)
        .collect();
    let head = head.to_ascii_lowercase();
    head.starts_with("<!doctype html") || head.starts_with("<html") || head.starts_with("<head")
}

/// The charset named by a Content-Type header or, for HTML, by a `<meta>` in the first bytes.
fn charset(content_type: Option<&str>, body: &[u8], html: bool) -> Option<String> {
    let from_header = content_type.and_then(|ct| {
        ct.split(';').skip(1).find_map(|param| {
            let (k, v) = param.split_once('=')?;
            (k.trim().eq_ignore_ascii_case("charset")).then(|| {
                v.trim()
                    .trim_matches(|c| c == '"' || c == '\'')
                    .to_ascii_lowercase()
            })
        })
    });
    if from_header.is_some() || !html {
        return from_header;
    }
    let head = String::from_utf8_lossy(&body[..body.len().min(2048)]).to_ascii_lowercase();
    let at = head.find("charset=")? + "charset=".len();
    let rest = head[at..].trim_start_matches(['"', '\'']);
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        .unwrap_or(rest.len());
    (end > 0).then(|| rest[..end].to_string())
}

/// Decodes a body to text: UTF-8 by default (invalid bytes replaced), Latin-1 for the
/// ISO-8859-1 / Windows-1252 family. A UTF-8 byte-order mark is dropped.
pub(crate) fn decode_body(body: &[u8], content_type: Option<&str>, html: bool) -> String {
    let latin1 = matches!(
        charset(content_type, body, html).as_deref(),
        Some("iso-8859-1" | "latin1" | "latin-1" | "iso8859-1" | "windows-1252" | "cp1252" | "l1")
    );
    if latin1 && std::str::from_utf8(body).is_err() {
        return body.iter().map(|&b| b as char).collect();
    }
    let text = String::from_utf8_lossy(body);
    text.strip_prefix('\u{feff}').unwrap_or(&text).to_string()
}

/// Collapses runs of spaces and tabs, trims line ends, and keeps at most one blank line.
fn tidy(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut blank_run = 0usize;
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.is_empty() {
            blank_run += 1;
            continue;
        }
        if !out.is_empty() {
            out.push_str(if blank_run > 0 { "\n\n" } else { "\n" });
        }
        blank_run = 0;
        for (i, w) in words.iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            out.push_str(w);
        }
    }
    out
}

fn collapse_spaces(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Extracts the title and readable text of an HTML document.
///
/// Markup nested deeper than [`MAX_DEPTH`] or with more than [`MAX_TAGS`] tags (which would
/// make DOM-based extraction take minutes) is converted by a linear tag stripper instead.
///
/// The main article text comes from readability (dom_smoothie); when that fails or yields
/// fewer than about 200 characters, the text of the whole document is used instead (without
/// scripts, styles and other non-text elements, with line breaks between block elements).
/// Runs of spaces are collapsed and at most one blank line is kept; entities are decoded. The
/// title is the document's `<title>`, else readability's. `url` (absolute) helps readability
/// resolve links; it is ignored when not absolute.
pub fn html_to_text(html: &str, url: Option<&str>) -> (String, String) {
    if is_pathological(html) {
        return strip_tags(html);
    }
    let cfg = Config {
        text_mode: TextMode::Formatted,
        ..Config::default()
    };
    let mut reader = match Readability::new(html, url, Some(cfg.clone())) {
        Ok(r) => r,
        Err(_) => match Readability::new(html, None, Some(cfg)) {
            Ok(r) => r,
            Err(_) => return (String::new(), fallback_text(html)),
        },
    };
    let mut title = collapse_spaces(&reader.doc.select("head title").first().text());
    if title.is_empty() {
        title = collapse_spaces(&reader.doc.select("title").first().text());
    }
    let article = reader.parse();
    let readable = match &article {
        Ok(a) => tidy(&a.text_content),
        Err(_) => String::new(),
    };
    if title.is_empty() {
        if let Ok(a) = &article {
            title = collapse_spaces(&a.title);
        }
    }
    if readable.chars().count() >= MIN_READABLE_CHARS {
        return (title, readable);
    }
    let whole = fallback_text(html);
    let text = if whole.is_empty() { readable } else { whole };
    (title, text)
}

/// Nesting depth above which DOM extraction is not attempted.
pub const MAX_DEPTH: usize = 256;
/// Tag count above which DOM extraction is not attempted.
pub const MAX_TAGS: usize = 100_000;

const VOID_TAGS: &[&str] = &[
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track",
    "wbr",
];
const SKIPPED_TAGS: &[&str] = &["script", "style", "noscript", "template", "svg"];
const BREAK_TAGS: &[&str] = &[
    "p",
    "div",
    "br",
    "li",
    "tr",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "section",
    "article",
    "table",
    "ul",
    "ol",
    "blockquote",
    "pre",
    "title",
];

/// One tag: its lowercase name, whether it closes, and the byte just past its `>`.
fn scan_tag(html: &str, at: usize) -> Option<(String, bool, bool, usize)> {
    let rest = &html[at + 1..];
    let closing = rest.starts_with('/');
    let name: String = rest[closing as usize..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if name.is_empty() {
        return None;
    }
    let end = rest.find('>').map(|i| at + 1 + i + 1)?;
    let self_closing = html[..end - 1].ends_with('/');
    Some((name, closing, self_closing, end))
}

/// Whether the markup is too deep or too large for DOM extraction (one linear pass).
fn is_pathological(html: &str) -> bool {
    let (mut depth, mut max_depth, mut tags, mut at) = (0usize, 0usize, 0usize, 0usize);
    while let Some(i) = html[at..].find('<') {
        let pos = at + i;
        match scan_tag(html, pos) {
            Some((name, closing, self_closing, end)) => {
                tags += 1;
                if closing {
                    depth = depth.saturating_sub(1);
                } else if !self_closing && !VOID_TAGS.contains(&name.as_str()) {
                    depth += 1;
                    max_depth = max_depth.max(depth);
                }
                if max_depth > MAX_DEPTH || tags > MAX_TAGS {
                    return true;
                }
                at = end;
            }
            None => at = pos + 1,
        }
    }
    false
}

fn decode_entities(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let end = rest[..rest.len().min(12)].find(';');
        let decoded = end.and_then(|e| {
            let name = &rest[1..e];
            let c = match name {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" | "#39" => Some('\''),
                "nbsp" => Some(' '),
                _ => name
                    .strip_prefix("#x")
                    .or_else(|| name.strip_prefix("#X"))
                    .and_then(|h| u32::from_str_radix(h, 16).ok())
                    .or_else(|| name.strip_prefix('#').and_then(|d| d.parse().ok()))
                    .and_then(char::from_u32),
            };
            c.map(|c| (c, e + 1))
        });
        match decoded {
            Some((c, len)) => {
                out.push(c);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Title and text by a linear scan: tags dropped (block tags become line breaks), the contents
/// of scripts, styles and similar skipped, entities decoded.
fn strip_tags(html: &str) -> (String, String) {
    let (mut text, mut title) = (String::new(), String::new());
    let (mut at, mut skipping, mut in_title) = (0usize, None::<String>, false);
    while let Some(i) = html[at..].find('<') {
        let pos = at + i;
        if skipping.is_none() {
            let chunk = &html[at..pos];
            if in_title {
                title.push_str(chunk);
            } else {
                text.push_str(chunk);
            }
        }
        let Some((name, closing, _, end)) = scan_tag(html, pos) else {
            if skipping.is_none() {
                text.push('<');
            }
            at = pos + 1;
            continue;
        };
        match &skipping {
            Some(skipped) if closing && *skipped == name => skipping = None,
            Some(_) => {}
            None if name == "title" => in_title = !closing,
            None if !closing && SKIPPED_TAGS.contains(&name.as_str()) => {
                skipping = Some(name.clone())
            }
            None => {}
        }
        if BREAK_TAGS.contains(&name.as_str()) {
            text.push('\n');
        } else {
            text.push(' ');
        }
        at = end;
    }
    if skipping.is_none() {
        text.push_str(&html[at..]);
    }
    (
        collapse_spaces(&decode_entities(&title)),
        tidy(&decode_entities(&text)),
    )
}

/// The text of a whole HTML document, without non-text elements.
fn fallback_text(html: &str) -> String {
    let Ok(reader) = Readability::new(html, None, None) else {
        return String::new();
    };
    let doc = &reader.doc;
    doc.select(JUNK_SELECTOR).remove();
    doc.select(EXTRA_BLOCKS).rename("div");
    tidy(&doc.formatted_text())
}

/// How a long page is cut for the agent (the ASearcher defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageChunking {
    /// Characters of the page kept at all (250,000).
    pub max_chars: usize,
    /// Characters per chunk at most (25,000).
    pub chunk_chars: usize,
    /// Chunks returned at most (10).
    pub max_chunks: usize,
}

impl Default for PageChunking {
    fn default() -> Self {
        Self {
            max_chars: 250_000,
            chunk_chars: 25_000,
            max_chunks: 10,
        }
    }
}

/// Splits page text into at most `max_chunks` chunks of at most `chunk_chars` characters,
/// taken from the first `max_chars` characters (characters, never splitting one).
///
/// A chunk that must be cut ends after the last newline in its final 10% if there is one, else
/// after the last whitespace there, else exactly at `chunk_chars`. Chunks are not trimmed, so
/// they concatenate back to the kept text (unless `max_chunks` stops early). Empty or
/// whitespace-only text gives no chunks. No headers are added.
pub fn chunk_page(text: &str, cfg: &PageChunking) -> Vec<String> {
    if text.trim().is_empty() || cfg.max_chunks == 0 {
        return Vec::new();
    }
    let kept = match text.char_indices().nth(cfg.max_chars) {
        Some((at, _)) => &text[..at],
        None => text,
    };
    let size = cfg.chunk_chars.max(1);
    let window = size / 10;
    let mut chunks = Vec::new();
    let mut rest = kept;
    while !rest.is_empty() && chunks.len() < cfg.max_chunks {
        let Some((end, _)) = rest.char_indices().nth(size) else {
            chunks.push(rest.to_string());
            break;
        };
        let cut = if window == 0 {
            end
        } else {
            let (win_start, _) = rest.char_indices().nth(size - window).unwrap_or((0, ' '));
            let win = &rest[win_start..end];
            let after = |i: usize, c: char| win_start + i + c.len_utf8();
            if let Some(i) = win.rfind('\n') {
                after(i, '\n')
            } else if let Some((i, c)) = win.char_indices().rev().find(|(_, c)| c.is_whitespace()) {
                after(i, c)
            } else {
                end
            }
        };
        chunks.push(rest[..cut].to_string());
        rest = &rest[cut..];
    }
    chunks
}

#[cfg(test)]
mod tests {
    #[test]
    fn deeply_nested_markup_is_stripped_in_linear_time() {
        let depth = 20_000;
        let html = format!(
            "<html><head><title>Deep &amp; dark</title><style>p {{}}</style></head><body>{}<p>The treasure is under the old oak.</p>{}<script>var x = '<p>no</p>';</script></body></html>",
            "<div>".repeat(depth),
            "</div>".repeat(depth)
        );
        let started = std::time::Instant::now();
        let (title, text) = html_to_text(&html, None);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(title, "Deep & dark");
        assert!(
            text.contains("The treasure is under the old oak."),
            "{text:?}"
        );
        assert!(
            !text.contains("var x") && !text.contains("p {}"),
            "{text:?}"
        );
    }

    #[test]
    fn ordinary_markup_is_not_pathological() {
        let html = format!(
            "<html><body>{}</body></html>",
            "<p>a <b>b</b><br> c</p>".repeat(1000)
        );
        assert!(!is_pathological(&html));
        assert!(is_pathological(&"<div>".repeat(MAX_DEPTH + 1)));
        assert_eq!(
            decode_entities("a &lt;b&gt; &#65;&#x42; &bogus; &"),
            "a <b> AB &bogus; &"
        );
    }

    use super::*;

    const ARTICLE: &str = r#"<!DOCTYPE html><html><head><title>The Tides &amp; the Moon</title>
<style>body { color: red; }</style><script>var tracking = "SCRIPTJUNK";</script></head>
<body><nav><a href="/">Home</a> <a href="/a">NAVJUNK link</a></nav>
<article><h1>The Tides &amp; the Moon</h1>
<p>The tides of the ocean are caused mostly by the gravitational pull of the Moon on the rotating
Earth. Because the Moon's pull is stronger on the near side than on the far side, the water bulges
on both sides, and each coast sees two high tides a day.</p>
<p>The Sun also raises tides, about half as strong as the Moon's. When Sun and Moon line up, at new
and full moon, their effects add to spring tides; at the quarters they partly cancel in neap tides.</p>
<p>Local geography shapes the size of the tides: in the Bay of Fundy the range exceeds fifteen metres,
while enclosed seas such as the Mediterranean barely notice them at all &mdash; a few centimetres.</p>
</article><footer>FOOTERJUNK copyright</footer></body></html>"#;

    #[test]
    fn article_text_is_extracted() {
        let (title, text) = html_to_text(ARTICLE, Some("https://example.org/tides"));
        assert_eq!(title, "The Tides & the Moon");
        assert!(text.contains("gravitational pull of the Moon"), "{text}");
        assert!(text.contains("Bay of Fundy"), "{text}");
        assert!(
            text.contains("at all \u{2014} a few"),
            "entities decoded: {text}"
        );
        for junk in ["SCRIPTJUNK", "color: red", "NAVJUNK", "FOOTERJUNK", "<p>"] {
            assert!(!text.contains(junk), "{junk} in {text}");
        }
        // Paragraphs stay separate.
        assert!(text.contains("two high tides a day.\n\nThe Sun"), "{text}");
    }

    #[test]
    fn short_page_falls_back_to_whole_document() {
        let html = "<html><head><title> Short\n page </title><script>alert('SCRIPTJUNK')</script>\
            <style>p{}</style></head><body><div>First   block</div><div>Second &lt;b&gt;</div>\
            <noscript>NOSCRIPTJUNK</noscript><template>TPLJUNK</template><svg><text>SVGJUNK</text></svg>\
            <ul><li>one</li><li>two</li></ul><p>\n\n\n</p><p>para</p></body></html>";
        let (title, text) = html_to_text(html, None);
        assert_eq!(title, "Short page");
        for junk in ["SCRIPTJUNK", "NOSCRIPTJUNK", "TPLJUNK", "SVGJUNK", "p{}"] {
            assert!(!text.contains(junk), "{junk} in {text:?}");
        }
        assert!(text.contains("First block\n"), "{text:?}");
        assert!(text.contains("Second <b>"), "{text:?}");
        assert!(text.contains("one\ntwo"), "{text:?}");
        assert!(!text.contains("\n\n\n"), "{text:?}");
        assert!(text.ends_with("para"), "{text:?}");
    }

    #[test]
    fn garbage_and_empty_html() {
        assert_eq!(html_to_text("", None), (String::new(), String::new()));
        let (_, text) = html_to_text("just words, no tags", Some("not a url"));
        assert_eq!(text, "just words, no tags");
    }

    #[test]
    fn content_types_and_sniffing() {
        assert_eq!(media_type("Text/HTML; charset=UTF-8"), "text/html");
        assert_eq!(body_kind("text/html"), Some(BodyKind::Html));
        assert_eq!(body_kind("application/xhtml+xml"), Some(BodyKind::Html));
        assert_eq!(body_kind("text/plain"), Some(BodyKind::Text));
        assert_eq!(body_kind("application/ld+json"), Some(BodyKind::Text));
        assert_eq!(body_kind(""), Some(BodyKind::Unknown));
        assert_eq!(body_kind("application/octet-stream"), None);
        assert_eq!(body_kind("image/png"), None);
        assert_eq!(body_kind("application/pdf"), None);
        assert!(looks_like_text("héllo wörld".as_bytes()));
        assert!(looks_like_text(b""));
        assert!(!looks_like_text(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"));
        assert!(!looks_like_text(b"abc\xff\xfedef"));
        // A multi-byte character cut by the 1024-byte sample is still text.
        let mut long = "a".repeat(1023);
        long.push('é');
        assert!(looks_like_text(long.as_bytes()));
        assert!(looks_like_html("\u{feff}  <!DOCTYPE html><html>"));
        assert!(!looks_like_html("plain text"));
    }

    #[test]
    fn charsets() {
        assert_eq!(
            decode_body(b"caf\xe9", Some("text/plain; charset=ISO-8859-1"), false),
            "café"
        );
        assert_eq!(
            decode_body("café".as_bytes(), Some("text/plain; charset=utf-8"), false),
            "café"
        );
        let html = b"<html><head><meta charset=\"windows-1252\"></head><body>caf\xe9</body></html>";
        assert!(decode_body(html, Some("text/html"), true).contains("café"));
        assert_eq!(decode_body(b"\xef\xbb\xbfhi", None, false), "hi");
    }

    fn cfg(max_chars: usize, chunk_chars: usize, max_chunks: usize) -> PageChunking {
        PageChunking {
            max_chars,
            chunk_chars,
            max_chunks,
        }
    }

    #[test]
    fn chunk_defaults_and_empty() {
        assert_eq!(
            PageChunking::default(),
            PageChunking {
                max_chars: 250_000,
                chunk_chars: 25_000,
                max_chunks: 10
            }
        );
        assert!(chunk_page("", &PageChunking::default()).is_empty());
        assert!(chunk_page(" \n\t ", &PageChunking::default()).is_empty());
        assert_eq!(
            chunk_page("short", &PageChunking::default()),
            vec!["short".to_string()]
        );
    }

    #[test]
    fn chunk_multibyte_never_splits_chars() {
        // 3-byte and 4-byte characters, no whitespace: hard cuts at exactly chunk_chars.
        let text: String = "日本語🙂".repeat(25); // 100 chars
        let chunks = chunk_page(&text, &cfg(1000, 30, 10));
        assert_eq!(
            chunks.iter().map(|c| c.chars().count()).collect::<Vec<_>>(),
            vec![30, 30, 30, 10]
        );
        assert_eq!(chunks.concat(), text);
    }

    #[test]
    fn chunk_prefers_newline_then_whitespace_in_last_tenth() {
        // chunk_chars 100: window is chars 90..100.
        let mut text = "x".repeat(92);
        text.push('\n'); // char 92
        text.push_str(&"y".repeat(3));
        text.push(' '); // char 96
        text.push_str(&"z".repeat(50));
        let chunks = chunk_page(&text, &cfg(1000, 100, 10));
        assert_eq!(chunks[0].chars().count(), 93, "cut after the newline");
        assert!(chunks[0].ends_with('\n'));
        assert_eq!(chunks.concat(), text);

        let text = format!("{} {}", "a".repeat(95), "b".repeat(50));
        let chunks = chunk_page(&text, &cfg(1000, 100, 10));
        assert_eq!(chunks[0], format!("{} ", "a".repeat(95)));

        // A newline before the window is ignored: hard cut at 100.
        let text = format!("{}\n{}", "a".repeat(50), "b".repeat(100));
        let chunks = chunk_page(&text, &cfg(1000, 100, 10));
        assert_eq!(chunks[0].chars().count(), 100);
        assert_eq!(chunks[1], "b".repeat(51));
    }

    #[test]
    fn chunk_respects_max_chunks_and_max_chars() {
        let text = "é".repeat(1000);
        let chunks = chunk_page(&text, &cfg(1000, 100, 3));
        assert_eq!(chunks.len(), 3);
        assert!(chunks.iter().all(|c| c.chars().count() == 100));

        let chunks = chunk_page(&text, &cfg(250, 100, 10));
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks.concat().chars().count(), 250);
        assert_eq!(chunks[2].chars().count(), 50);

        // Exactly chunk_chars: one chunk.
        assert_eq!(chunk_page(&"q".repeat(100), &cfg(1000, 100, 10)).len(), 1);
        assert!(chunk_page("text", &cfg(1000, 100, 0)).is_empty());
    }
}
