//! The shared tokio runtime and the two ways Python waits on Rust futures: blocking with the GIL
//! released while polling for signals (Ctrl-C works, also in Jupyter), or as an asyncio awaitable.

use pyo3::prelude::*;
use std::future::Future;
use std::time::Duration;

/// The process-wide runtime (the one pyo3-async-runtimes also uses for awaitables).
pub fn runtime() -> &'static tokio::runtime::Runtime {
    pyo3_async_runtimes::tokio::get_runtime()
}

/// Runs `fut` to completion on the runtime without holding the GIL; every 100 ms the GIL is
/// taken briefly to run Python signal handlers, and a `KeyboardInterrupt` cancels the work.
pub fn wait_for_future<F, T>(py: Python<'_>, fut: F) -> PyResult<T>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: Send + 'static,
{
    let mut handle = runtime().spawn(fut);
    loop {
        let done = py.detach(|| {
            runtime().block_on(async {
                tokio::select! {
                    r = &mut handle => Some(r),
                    _ = tokio::time::sleep(Duration::from_millis(100)) => None,
                }
            })
        });
        match done {
            Some(Ok(result)) => return result,
            Some(Err(join)) => return Err(crate::errors::join_err(join)),
            None => {
                if let Err(e) = py.check_signals() {
                    handle.abort();
                    return Err(e);
                }
            }
        }
    }
}

/// Wraps `fut` as a Python awaitable. Called inside a running event loop it is an asyncio
/// future at once; called outside one (`asyncio.run(engine.anext_batch(2))` builds the argument
/// before the loop starts) it is a coroutine that makes the future when first awaited.
pub fn awaitable<'py, F, T>(py: Python<'py>, fut: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    let asyncio = py.import("asyncio")?;
    if asyncio.call_method0("get_running_loop").is_ok() {
        return pyo3_async_runtimes::tokio::future_into_py(py, fut);
    }
    let slot = std::sync::Mutex::new(Some(fut));
    let make = pyo3::types::PyCFunction::new_closure(py, None, None, move |args, _kwargs| {
        let py = args.py();
        let fut = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        match fut {
            Some(fut) => pyo3_async_runtimes::tokio::future_into_py(py, fut).map(Bound::unbind),
            None => Err(pyo3::exceptions::PyRuntimeError::new_err(
                "this awaitable was already awaited",
            )),
        }
    })?;
    py.import("asearcher._awaitables")?
        .call_method1("deferred", (make,))
}
