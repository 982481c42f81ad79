//! `binary://` log URIs: containerd's logging-binary protocol, as the runc shim implements it.
//!
//! `binary:///path/to/logger?key=value&k2=v2` starts `/path/to/logger key value k2 v2` with
//! `CONTAINER_ID` and `CONTAINER_NAMESPACE` in its environment, the read ends of the container's
//! stdout and stderr pipes as fds 3 and 4, and a "ready" pipe as fd 5, which the logger closes
//! once it is ready. The container writes to the pipes; the logger reads until EOF, after the
//! last container process is gone. The shim reaps it like any child.

use std::os::fd::{AsRawFd, OwnedFd};

use crate::error::{Result, ShimError};
use crate::io::spawn::{self, Program};

/// How long a logger may take to signal readiness.
const READY_TIMEOUT_MS: i32 = 10_000;

/// A parsed `binary://` URI: the program and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggerUri {
    /// Absolute path of the logging binary.
    pub path: String,
    /// Arguments from the query, `key value` pairs in order.
    pub args: Vec<String>,
}

impl LoggerUri {
    /// Parses `binary:///path?k=v&k2`.
    pub fn parse(id: &str, uri: &str) -> Result<Self> {
        let invalid = |reason: &str| ShimError::InvalidArgument {
            id: id.to_owned(),
            reason: format!("log URI {uri:?}: {reason}"),
        };
        let rest = uri
            .strip_prefix("binary://")
            .ok_or_else(|| invalid("not a binary:// URI"))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        if !path.starts_with('/') {
            return Err(invalid("the logging binary must be an absolute path"));
        }
        let args = query
            .split('&')
            .filter(|kv| !kv.is_empty())
            .flat_map(|kv| match kv.split_once('=') {
                Some((k, v)) => vec![k.to_owned(), v.to_owned()],
                None => vec![kv.to_owned()],
            })
            .collect();
        Ok(Self {
            path: path.to_owned(),
            args,
        })
    }
}

fn pipe(id: &str) -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| ShimError::io(id, "create log pipe", e.into()))
}

/// Starts the logger of `uri` for container `id` of containerd namespace `namespace` (its
/// `CONTAINER_NAMESPACE`); returns the write ends for the container's stdout and stderr once
/// the logger said it is ready.
pub fn start(id: &str, namespace: &str, uri: &str) -> Result<(OwnedFd, OwnedFd)> {
    let logger = LoggerUri::parse(id, uri)?;
    let failed = |e| ShimError::io(id, format!("start logging binary {}", logger.path), e);
    let program = Program::new(
        &logger.path,
        &logger.args,
        &[("CONTAINER_ID", id), ("CONTAINER_NAMESPACE", namespace)],
    )
    .map_err(failed)?;
    let (out_r, out_w) = pipe(id)?;
    let (err_r, err_w) = pipe(id)?;
    let (ready_r, ready_w) = pipe(id)?;
    let fds = [out_r.as_raw_fd(), err_r.as_raw_fd(), ready_w.as_raw_fd()];
    spawn::spawn(&program, &fds, 3).map_err(failed)?;
    drop((out_r, err_r, ready_w));
    wait_ready(id, &logger.path, ready_r)?;
    Ok((out_w, err_w))
}

/// Waits until the logger closes (or writes to) its ready pipe.
fn wait_ready(id: &str, path: &str, ready: OwnedFd) -> Result<()> {
    let mut pfd = libc::pollfd {
        fd: ready.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut pfd, 1, READY_TIMEOUT_MS) };
    if n > 0 {
        return Ok(());
    }
    Err(ShimError::io(
        id,
        format!("logging binary {path} did not signal readiness"),
        if n == 0 {
            std::io::Error::from(std::io::ErrorKind::TimedOut)
        } else {
            std::io::Error::last_os_error()
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_path_and_query_args() {
        let u = LoggerUri::parse("c", "binary:///usr/bin/log?file=/tmp/x&verbose").unwrap();
        assert_eq!(u.path, "/usr/bin/log");
        assert_eq!(u.args, ["file", "/tmp/x", "verbose"]);
        let plain = LoggerUri::parse("c", "binary:///bin/logger").unwrap();
        assert!(plain.args.is_empty());
    }

    #[test]
    fn relative_path_is_rejected_naming_container() {
        let err = LoggerUri::parse("c8", "binary://logger")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("container c8") && err.contains("absolute"),
            "{err}"
        );
    }

    #[test]
    fn missing_binary_fails_clearly() {
        let err = start("c9", "default", "binary:///nonexistent/logger")
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/logger"), "{err}");
    }

    #[test]
    fn logger_receives_output_on_fd_3() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("logger.sh");
        let out = dir.path().join("out");
        std::fs::write(&script, "#!/bin/sh\nexec 5>&-\ncat <&3 > \"$2\"\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let uri = format!("binary://{}?file={}", script.display(), out.display());
        let (w, e) = start("c", "default", &uri).unwrap();
        drop(e);
        let mut w = std::fs::File::from(w);
        std::io::Write::write_all(&mut w, b"hello\n").unwrap();
        drop(w);
        for _ in 0..200 {
            if std::fs::read_to_string(&out).unwrap_or_default() == "hello\n" {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("logger wrote {:?}", std::fs::read_to_string(&out));
    }
}
