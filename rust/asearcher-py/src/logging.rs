//! Bridges `tracing` events to the Python logger named "asearcher". Events below the logger's
//! effective level are dropped without taking the GIL; the level is re-read at most once a second
//! (or at once through `refresh_log_level`). Warnings and errors that repeat (the same message
//! from the same place, whatever their fields) are rate-limited: the first is logged, the
//! repeats within [`REPEAT_WINDOW_MS`] are counted, and the next one logged after the window says
//! how many were held back, so 10,000 failing tool calls do not flood a notebook.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

static LOGGER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static MIN_LEVEL: AtomicI64 = AtomicI64::new(30);
static LEVEL_READ_AT_MS: AtomicU64 = AtomicU64::new(0);

/// Repeats of a warning within this many milliseconds of the last one logged are counted, not
/// logged.
pub const REPEAT_WINDOW_MS: u64 = 10_000;

/// Per (target, message): when it was last logged (ms) and the repeats held back since.
type Repeats = HashMap<(String, String), (u64, u64)>;
static REPEATS: Mutex<Option<Repeats>> = Mutex::new(None);

/// `None`: hold this repeat back; `Some(n)`: log it, `n` repeats were held back before it.
fn admit_repeat(target: &str, text: &str, now: u64) -> Option<u64> {
    let mut guard = REPEATS.lock().unwrap_or_else(|p| p.into_inner());
    let map = guard.get_or_insert_with(HashMap::new);
    if map.len() > 10_000 {
        map.clear();
    }
    let entry = map
        .entry((target.to_string(), text.to_string()))
        .or_insert((0, 0));
    if entry.0 != 0 && now.saturating_sub(entry.0) < REPEAT_WINDOW_MS {
        entry.1 += 1;
        return None;
    }
    let held = entry.1;
    *entry = (now, 0);
    Some(held)
}

fn py_level(level: &Level) -> i64 {
    match *level {
        Level::ERROR => 40,
        Level::WARN => 30,
        Level::INFO => 20,
        Level::DEBUG => 10,
        Level::TRACE => 5,
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn logger(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    LOGGER
        .get_or_try_init(py, || {
            py.import("logging")?
                .call_method1("getLogger", ("asearcher",))
                .map(|l| l.unbind())
        })
        .map(|l| l.bind(py))
}

/// Re-reads the effective level of the "asearcher" logger.
#[pyfunction]
pub fn refresh_log_level(py: Python<'_>) -> PyResult<i64> {
    let level: i64 = logger(py)?.call_method0("getEffectiveLevel")?.extract()?;
    MIN_LEVEL.store(level, Ordering::Relaxed);
    LEVEL_READ_AT_MS.store(now_ms(), Ordering::Relaxed);
    Ok(level)
}

/// Emits one tracing event at `level` (for tests of the bridge).
#[pyfunction]
pub fn emit_test_event(py: Python<'_>, level: &str, message: String) -> PyResult<()> {
    py.detach(|| match level {
        "error" => tracing::error!(source = "test", "{message}"),
        "warning" => tracing::warn!(source = "test", "{message}"),
        "info" => tracing::info!(source = "test", "{message}"),
        _ => tracing::debug!(source = "test", "{message}"),
    });
    Ok(())
}

#[derive(Default)]
struct Message {
    text: String,
    fields: String,
}

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.text, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.text.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }
}

struct PythonLogLayer;

impl<S: Subscriber> Layer<S> for PythonLogLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let level = py_level(event.metadata().level());
        let stale = now_ms().saturating_sub(LEVEL_READ_AT_MS.load(Ordering::Relaxed)) > 1000;
        if level < MIN_LEVEL.load(Ordering::Relaxed) && !stale {
            return;
        }
        let mut msg = Message::default();
        event.record(&mut msg);
        let target = event.metadata().target().to_string();
        let mut repeats = String::new();
        if level >= 30 {
            match admit_repeat(&target, &msg.text, now_ms()) {
                None => return,
                Some(0) => {}
                Some(n) => repeats = format!(" (and {n} more like it held back)"),
            }
        }
        let _ = Python::try_attach(|py| -> PyResult<()> {
            if stale {
                refresh_log_level(py)?;
            }
            if level < MIN_LEVEL.load(Ordering::Relaxed) {
                return Ok(());
            }
            let line = format!("{}{}{repeats} [{target}]", msg.text, msg.fields);
            logger(py)?.call_method1("log", (level, line))?;
            Ok(())
        });
    }
}

/// Installs the bridge as the global tracing subscriber (once; a no-op if one is already set).
pub fn install() {
    let subscriber = tracing_subscriber::registry().with(PythonLogLayer);
    let _ = tracing::subscriber::set_global_default(subscriber);
}
