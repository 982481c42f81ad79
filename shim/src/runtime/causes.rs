//! The cause of a failure inside a container's init process, for the error containerd shows.
//!
//! libcontainer 0.7's init process sends its parent only its top error's text ("failed to
//! prepare rootfs"), so `ctr` said `failed to prepare rootfs: unknown` where runc says `error
//! mounting "tmpfs" to rootfs at "/dev": ... not a directory`. The details are in the error
//! records it logs on the way. While a libcontainer call runs in a zygote worker, every
//! error-level record of that worker and of the processes it clones (which share its memory
//! and descriptors until they exec the container's program; the pipe is close-on-exec) is
//! also written to a pipe; when the call fails, the first specific record, with the operating
//! system's message from the error chain it logged, is added to the error.

use std::fs::File;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex, PoisonError};

/// The most bytes of records read back.
const MAX_RECORDS: usize = 64 * 1024;

/// Records that only restate a failure already named in an earlier one.
const GENERIC: [&str; 5] = [
    "failed to initialize container process",
    "failed to wait for init ready",
    "failed to run container process",
    "failed to open container state file",
    "failed to execute payload",
];

/// Where error records go while a call is watched: made by `main` (or an executed zygote's
/// start), given to the logger, which [`Causes::record`]s every error-level record, and to
/// the zygote, whose workers [`Causes::watch`] libcontainer's calls.
#[derive(Debug, Clone, Default)]
pub struct Causes {
    sink: Arc<Mutex<Option<File>>>,
}

impl Causes {
    fn sink(&self) -> std::sync::MutexGuard<'_, Option<File>> {
        self.sink.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Called by the logger for every error-level record.
    pub fn record(&self, message: &str) {
        if let Some(f) = self.sink().as_mut() {
            let line = format!("{}\n", message.replace('\n', " "));
            let _ = f.write_all(line.as_bytes());
        }
    }

    /// Runs `f` with error records collected; returns its result and the cause they give.
    pub fn watch<T>(&self, f: impl FnOnce() -> T) -> (T, Option<String>) {
        let pipe = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK);
        let Ok((read_end, write_end)) = pipe else {
            return (f(), None);
        };
        *self.sink() = Some(File::from(write_end));
        let result = f();
        // Dropping the write end here leaves only descendants' copies, gone with them.
        *self.sink() = None;
        let mut records = Vec::new();
        let _ = File::from(read_end)
            .take(MAX_RECORDS as u64)
            .read_to_end(&mut records);
        let text = String::from_utf8_lossy(&records);
        (result, cause(&text))
    }
}

/// The cause the records give: the first that is not [`GENERIC`], with the innermost OS
/// message any record's error chain holds (`message: "Not a directory"`).
pub fn cause(records: &str) -> Option<String> {
    let first = records
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !GENERIC.iter().any(|g| l.starts_with(g)))?;
    let first = first
        .split(" err=")
        .next()
        .unwrap_or(first)
        .split(" e=")
        .next()
        .unwrap_or(first);
    let os = records
        .lines()
        .find_map(os_message)
        .or_else(|| records.lines().find_map(errno_message));
    let mut out = first.to_owned();
    if let Some(os) = os.filter(|o| !first.contains(o.as_str())) {
        out.push_str(": ");
        out.push_str(&os);
    }
    Some(nvidia_shim_core::quote::bounded(&out, 1000))
}

/// The OS message of an error chain logged in Debug form (`message: "Not a directory"`).
fn os_message(line: &str) -> Option<String> {
    let at = line
        .rfind("message: \\\"")
        .map(|i| i + 11)
        .or_else(|| line.rfind("message: \"").map(|i| i + 10))?;
    let rest = &line[at..];
    let end = rest.find('\\').or_else(|| rest.find('"'))?;
    Some(rest[..end].to_owned())
}

/// The description of an errno logged by name (`err=ENOTDIR` gives `Not a directory`).
fn errno_message(line: &str) -> Option<String> {
    line.split(|c: char| c == '=' || c.is_whitespace() || c == '(' || c == ')')
        .filter(|w| {
            w.len() > 2
                && w.starts_with('E')
                && w[1..]
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        })
        .find_map(|name| {
            (1..134)
                .map(nix::errno::Errno::from_raw)
                .find(|e| format!("{e:?}") == name)
                .map(|e| e.desc().to_owned())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_specific_record_and_the_os_message_make_the_cause() {
        let records = "failed to mount /dev: cannot re-open [7]<\"/r/dev\"> with O_DIRECTORY\n\
            failed to prepare rootfs err=Mount(Pathrs(Error(Wrapped { source: Os { code: 20, kind: NotADirectory, message: \"Not a directory\" } })))\n\
            failed to initialize container process: failed to prepare rootfs\n";
        assert_eq!(
            cause(records).unwrap(),
            "failed to mount /dev: cannot re-open [7]<\"/r/dev\"> with O_DIRECTORY: Not a directory"
        );
        assert_eq!(
            cause("failed to chdir e=ENOTDIR\n").unwrap(),
            "failed to chdir: Not a directory"
        );
        assert_eq!(cause("failed to run container process x\n"), None);
        assert_eq!(cause(""), None);
    }

    #[test]
    fn records_written_while_watched_come_back() {
        let causes = Causes::default();
        let (v, cause) = causes.watch(|| {
            causes.record("failed to mount /x: no such file");
            7
        });
        assert_eq!(v, 7);
        assert_eq!(cause.as_deref(), Some("failed to mount /x: no such file"));
        causes.record("not watched");
        assert_eq!(causes.watch(|| ()).1, None);
    }
}
