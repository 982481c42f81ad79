//! The shim's log (containerd's `log` FIFO in the bundle, written by [`FifoLog`] in
//! containerd-shim's line format through the `log` facade; libcontainer's `tracing` events
//! arrive through tracing's `log` feature) and the `delete` command's stderr.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::Arc;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// What sees every error-level record besides the log (the zygote's workers collect their
/// init process's causes through it, see `runtime::causes`).
pub type ErrorHook = Arc<dyn Fn(&str) + Send + Sync>;

/// The shim log: containerd's `log` FIFO in the bundle, which containerd copies into its own
/// log. The line format is containerd-shim's (`time="…" level=… msg="…"`), but each record is
/// formatted whole and written with one `write`: records from the shim, its zygote and the
/// zygote's workers, which share the FIFO, never interleave (a FIFO write of at most
/// `PIPE_BUF` bytes is atomic), and a record costs one syscall instead of one per formatted
/// piece.
struct FifoLog {
    fifo: File,
    on_error: Option<ErrorHook>,
}

impl log::Log for FifoLog {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let message = record.args().to_string();
        let level = effective_level(record.level(), record.target(), &message);
        if level == log::Level::Error {
            if let Some(hook) = &self.on_error {
                hook(&message);
            }
        }
        if level > log::max_level() {
            return;
        }
        let now = OffsetDateTime::now_utc();
        let time = now.format(&Rfc3339).unwrap_or_else(|_| now.to_string());
        let level = level.as_str().to_ascii_lowercase();
        let line = format!(
            "time=\"{time}\" level={level} msg=\"{}\"\n",
            escape(&message)
        );
        let _ = (&self.fifo).write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// `message` as a quoted logfmt value (as logrus quotes it): one record per line, whatever the
/// message holds.
fn escape(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for c in message.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

/// Warnings that libcontainer and libcgroups give on every create although nothing is wrong,
/// as (log target, part of the message): they are logged at debug level instead of five
/// warnings per container in containerd's log.
/// - The intermediate process is the shim's child (libcontainer clones it as a sibling of the
///   zygote worker) and the shim reaps every child, so libcontainer finds it already reaped,
///   which its own comment there calls safe.
/// - libcgroups' v1 manager names each controller the host does not mount; a spec that needs
///   one fails with an error of its own.
const BENIGN_WARNINGS: [(&str, &str); 2] = [
    (
        "libcontainer::process::container_main_process",
        "intermediate process already reaped",
    ),
    ("libcgroups::v1::manager", "not supported on this system"),
];

/// The level a record is logged at: its own, except for [`BENIGN_WARNINGS`].
fn effective_level(level: log::Level, target: &str, message: &str) -> log::Level {
    let benign = BENIGN_WARNINGS
        .iter()
        .any(|(t, m)| target == *t && message.contains(m));
    if level == log::Level::Warn && benign {
        log::Level::Debug
    } else {
        level
    }
}

/// The log level: `RUST_LOG` if set, else the config file's, raised to debug by `-debug`.
pub fn level(configured: &str, rust_log: Option<&str>, debug: bool) -> log::LevelFilter {
    let level = rust_log
        .unwrap_or(configured)
        .parse()
        .unwrap_or(log::LevelFilter::Info);
    if debug {
        level.max(log::LevelFilter::Debug)
    } else {
        level
    }
}

/// Opens the shim log: containerd's `log` FIFO in the bundle, the daemon's working directory.
pub fn open_fifo() -> std::io::Result<File> {
    OpenOptions::new().write(true).open("log")
}

/// Logs to `fifo` (containerd's log FIFO) at `max`; `on_error` sees every error record.
pub fn init_on(fifo: File, max: log::LevelFilter, on_error: Option<ErrorHook>) {
    if log::set_boxed_logger(Box::new(FifoLog { fifo, on_error })).is_ok() {
        log::set_max_level(max);
    }
}

/// Warnings and errors to stderr, for the `delete` command: containerd reads its stderr and
/// logs it as "cleanup warnings" (the shim log FIFO belonged to the shim that is gone).
pub fn init_stderr() {
    struct Stderr;
    impl log::Log for Stderr {
        fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
            metadata.level() <= log::Level::Warn
        }
        fn log(&self, record: &log::Record<'_>) {
            if self.enabled(record.metadata()) {
                eprintln!("{}: {}", record.level(), record.args());
            }
        }
        fn flush(&self) {}
    }
    static LOGGER: Stderr = Stderr;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Warn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use log::{Level, LevelFilter, Log, Record};

    #[test]
    fn level_follows_rust_log_then_config_and_debug_raises_it() {
        assert_eq!(level("warn", None, false), LevelFilter::Warn);
        assert_eq!(level("warn", Some("error"), false), LevelFilter::Error);
        assert_eq!(level("warn", None, true), LevelFilter::Debug);
        assert_eq!(level("trace", None, true), LevelFilter::Trace);
        assert_eq!(level("nonsense", None, false), LevelFilter::Info);
    }

    #[test]
    fn dependencies_benign_warnings_go_to_debug() {
        let cgroups = "libcgroups::v1::manager";
        assert_eq!(
            effective_level(
                Level::Warn,
                cgroups,
                "cgroup hugetlb not supported on this system"
            ),
            Level::Debug
        );
        assert_eq!(
            effective_level(Level::Warn, cgroups, "something else"),
            Level::Warn
        );
        assert_eq!(
            effective_level(
                Level::Error,
                cgroups,
                "cgroup memory not supported on this system"
            ),
            Level::Error
        );
        assert_eq!(
            effective_level(
                Level::Warn,
                "libcontainer::process::container_main_process",
                "intermediate process already reaped"
            ),
            Level::Debug
        );
        assert_eq!(
            effective_level(
                Level::Warn,
                "containerd_shim_nvidia_v2::task",
                "intermediate process already reaped"
            ),
            Level::Warn
        );
    }

    #[test]
    fn a_record_is_one_write_in_containerd_shims_format() {
        let (reader, writer) = nix::unistd::pipe().expect("pipe");
        let mut reader = File::from(reader);
        let logger = FifoLog {
            fifo: File::from(writer),
            on_error: None,
        };
        log::set_max_level(LevelFilter::Info);
        logger.log(
            &Record::builder()
                .level(Level::Warn)
                .args(format_args!("container {}: oops", "c1"))
                .build(),
        );
        drop(logger);
        let mut text = String::new();
        std::io::Read::read_to_string(&mut reader, &mut text).expect("read");
        assert!(text.starts_with("time=\""), "{text}");
        assert!(
            text.ends_with(" level=warn msg=\"container c1: oops\"\n"),
            "one line, no empty record after it: {text}"
        );
        assert_eq!(text.lines().count(), 1);
    }

    #[test]
    fn messages_stay_one_quoted_value() {
        assert_eq!(escape("a \"b\"\nc\\"), "a \\\"b\\\"\\nc\\\\");
        assert_eq!(escape("bell\u{7}"), "bell\\u0007");
    }
}
