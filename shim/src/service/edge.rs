//! Where a request leaves the async thread, which serves every container of the shim: the
//! process layer and the runtime block (they fork, wait for helpers, read and write files,
//! cgroups and mounts), so the service calls them through [`blocking`], once per request. A
//! request that changes state runs [`detached`]: when containerd gives up on it, it still
//! runs to its end, success or undone failure, instead of stopping half-way.

use std::future::Future;

use crate::error::{Result, ShimError};

/// Runs `f` on tokio's blocking pool: the shim's one way off the async thread for blocking
/// work. Once begun, `f` runs to its end even if the caller stops waiting.
pub async fn off_thread<T, F>(f: F) -> std::io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// Runs request work `f` for container `id` on the blocking pool; `what` names it should the
/// pool fail it.
pub async fn blocking<T, F>(id: &str, what: &'static str, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    match off_thread(f).await {
        Ok(result) => result,
        Err(e) => Err(ShimError::io(id, what, e)),
    }
}

/// Runs `body`, a request that changes state, as a task of its own: when the caller gives up
/// (containerd's deadline drops the request) the request still runs to its end; a later
/// request then finds it done.
pub async fn detached<T, Fut>(id: &str, body: Fut) -> Result<T>
where
    T: Send + 'static,
    Fut: Future<Output = Result<T>> + Send + 'static,
{
    match tokio::spawn(body).await {
        Ok(result) => result,
        Err(e) => Err(ShimError::io(
            id,
            "request task",
            std::io::Error::other(e.to_string()),
        )),
    }
}
