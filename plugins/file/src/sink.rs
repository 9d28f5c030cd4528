//! `file` sink: NDJSON to files named by a date template, rotated by size and by date,
//! closed files optionally gzipped; a batch is acknowledged only once fsynced.
//!
//! The active file is always the rendered template path (`audit-2026-12-01.log`). A file
//! is closed when the rendered path changes (a new day) or when the next batch would take
//! it past `max_bytes`; a file closed for size is first renamed to `<path>.<N>` (the first
//! free N from 1, so higher is newer). With `compression: gzip` a closed file becomes
//! `<file>.gz` (written beside it, fsynced, renamed over, then the plain file removed).
//! A restart appends to the active file. All file work runs on a blocking thread.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use auditflow_core::blocking::run as blocking;
use auditflow_core::{
    BatchStatus, BuildContext, BuildError, CompileOnce, ComponentError, Sink, SinkConfig,
    SinkContext, Validate,
};
use schemars::JsonSchema;
use serde::Deserialize;

/// How long to wait before writing a batch again after a failed write or fsync.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// Writes one JSON event per line to local files: an on-premises archive of audit logs,
/// or the place dead letters go.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// What `validate` compiled when the pipeline loaded, for `build` to take.
    #[serde(skip)]
    #[schemars(skip)]
    compiled: CompileOnce<Files>,
    /// The file to write, as a template of the current UTC time:
    /// `/var/log/auditflow/audit-%Y-%m-%d.log`. `%Y` year, `%m` month, `%d` day, `%H`
    /// hour, `%M` minute, `%S` second, `%%` a percent sign. Directories are created.
    pub path: String,
    /// Close the file and start a new one before it would grow past this many bytes
    /// (a single larger batch still goes into one file).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// What to do with closed files.
    #[serde(default)]
    pub compression: Compression,
}

/// Compression of closed files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// Closed files stay as they are.
    #[default]
    None,
    /// Closed files become `<file>.gz`.
    Gzip,
}

fn default_max_bytes() -> u64 {
    100 * 1024 * 1024
}

impl FileSinkConfig {
    /// The options compiled into the files the sink writes (the path template parsed
    /// once), or every problem with them. The one step behind both `validate` and `build`.
    fn compile(&self) -> Result<Files, Vec<BuildError>> {
        let mut errors = Vec::new();
        let template = PathTemplate::parse(&self.path);
        if self.max_bytes == 0 {
            errors.push(BuildError::field("max_bytes", "must be at least 1"));
        }
        match template {
            Ok(template) if errors.is_empty() => Ok(Files {
                template,
                max_bytes: self.max_bytes,
                compression: self.compression,
                active: None,
            }),
            Ok(_) => Err(errors),
            Err(error) => {
                errors.insert(0, error);
                Err(errors)
            }
        }
    }
}

impl Validate for FileSinkConfig {
    fn validate(&self) -> Vec<BuildError> {
        self.compiled.validate(|| self.compile())
    }
}

impl SinkConfig for FileSinkConfig {
    fn build(&self, _: BuildContext) -> Result<Box<dyn Sink>, BuildError> {
        let files = self.compiled.take(|| self.compile())?;
        Ok(Box::new(FileSink { files }))
    }
}

/// A path with `%` fields filled from the current UTC time, parsed once at load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PathTemplate(Vec<Piece>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Year,
    Month,
    Day,
    Hour,
    Minute,
    Second,
}

impl PathTemplate {
    pub(crate) fn parse(template: &str) -> Result<PathTemplate, BuildError> {
        if template.is_empty() {
            return Err(BuildError::field("path", "give the file to write"));
        }
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut chars = template.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                text.push(c);
                continue;
            }
            let piece = match chars.next() {
                Some('%') => {
                    text.push('%');
                    continue;
                }
                Some('Y') => Piece::Year,
                Some('m') => Piece::Month,
                Some('d') => Piece::Day,
                Some('H') => Piece::Hour,
                Some('M') => Piece::Minute,
                Some('S') => Piece::Second,
                other => {
                    let found = other.map_or("the end".to_owned(), |c| format!("`%{c}`"));
                    return Err(BuildError::field(
                        "path",
                        format!("unknown time field {found}; use %Y, %m, %d, %H, %M, %S or %% for a percent sign"),
                    ));
                }
            };
            if !text.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut text)));
            }
            pieces.push(piece);
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        if template.ends_with('/') {
            return Err(BuildError::field(
                "path",
                "names a directory; give a file name",
            ));
        }
        Ok(PathTemplate(pieces))
    }

    /// The path at `time` (UTC).
    pub(crate) fn render(&self, time: time::OffsetDateTime) -> PathBuf {
        use std::fmt::Write as _;
        let mut out = String::new();
        for piece in &self.0 {
            let _ = match piece {
                Piece::Text(text) => out.write_str(text),
                Piece::Year => write!(out, "{:04}", time.year()),
                Piece::Month => write!(out, "{:02}", u8::from(time.month())),
                Piece::Day => write!(out, "{:02}", time.day()),
                Piece::Hour => write!(out, "{:02}", time.hour()),
                Piece::Minute => write!(out, "{:02}", time.minute()),
                Piece::Second => write!(out, "{:02}", time.second()),
            };
        }
        PathBuf::from(out)
    }
}

struct FileSink {
    files: Files,
}

#[async_trait]
impl Sink for FileSink {
    async fn run(self: Box<Self>, mut cx: SinkContext) -> Result<(), ComponentError> {
        let mut files = Some(self.files);
        let mut lines = Vec::with_capacity(1024 * 1024);
        while let Some(batch) = cx.input.recv().await {
            lines.clear();
            for event in &batch.events {
                event.write_json(&mut lines);
                lines.push(b'\n');
            }
            let mut failing = false;
            loop {
                let mut taken = files.take().expect("the files are back between writes");
                let (back, buffer, written) = blocking(move || {
                    let written = taken.write(&lines, time::OffsetDateTime::now_utc());
                    (taken, lines, written)
                })
                .await;
                files = Some(back);
                lines = buffer;
                match written {
                    Ok(path) => {
                        if failing {
                            tracing::info!(component_id = %cx.id, file = %path.display(), "writing again");
                        }
                        break;
                    }
                    Err(error) => {
                        cx.telemetry.errored("io", 1);
                        if !failing {
                            tracing::error!(component_id = %cx.id, error = %error,
                                "cannot write the batch; retrying every second (free space or fix permissions); nothing is acknowledged until it is written");
                            failing = true;
                        }
                        tokio::time::sleep(RETRY_INTERVAL).await;
                    }
                }
            }
            cx.telemetry.sent(batch.len(), lines.len());
            batch.resolve(BatchStatus::Delivered);
        }
        if let Some(mut files) = files {
            if let Err(error) = blocking(move || files.sync()).await {
                tracing::warn!(component_id = %cx.id, error = %error, "cannot fsync the active file at shutdown");
            }
        }
        Ok(())
    }
}

struct Active {
    path: PathBuf,
    file: File,
    len: u64,
}

/// The files one sink writes. Every method blocks on the disk.
struct Files {
    template: PathTemplate,
    max_bytes: u64,
    compression: Compression,
    active: Option<Active>,
}

impl Files {
    /// Appends `lines` to the file for `now`, rotating first when due, and fsyncs.
    /// Returns the file written. A failed write is cut back off, so the file keeps only
    /// whole lines.
    fn write(&mut self, lines: &[u8], now: time::OffsetDateTime) -> io::Result<PathBuf> {
        let path = self.template.render(now);
        if self
            .active
            .as_ref()
            .is_some_and(|active| active.path != path)
        {
            self.close(false)?;
        }
        if self.active.as_ref().is_some_and(|active| {
            active.len > 0 && active.len + lines.len() as u64 > self.max_bytes
        }) {
            self.close(true)?;
        }
        let active = match &mut self.active {
            Some(active) => active,
            None => self.active.insert(open(&path)?),
        };
        if let Err(error) = active.file.write_all(lines) {
            let _ = active.file.set_len(active.len);
            return Err(error);
        }
        active.len += lines.len() as u64;
        active.file.sync_data()?;
        Ok(path)
    }

    fn sync(&mut self) -> io::Result<()> {
        match &self.active {
            Some(active) => active.file.sync_data(),
            None => Ok(()),
        }
    }

    /// Closes the active file: renamed to `<path>.<N>` when closed for size, then gzipped
    /// when asked.
    fn close(&mut self, for_size: bool) -> io::Result<()> {
        let Some(active) = self.active.take() else {
            return Ok(());
        };
        active.file.sync_all()?;
        drop(active.file);
        let mut closed = active.path.clone();
        if for_size {
            closed = (1u64..)
                .map(|n| with_suffix(&active.path, &format!(".{n}")))
                .find(|candidate| !candidate.exists() && !with_suffix(candidate, ".gz").exists())
                .expect("some number is free");
            std::fs::rename(&active.path, &closed)?;
            sync_parent(&closed)?;
        }
        if self.compression == Compression::Gzip {
            gzip(&closed)?;
        }
        Ok(())
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn open(path: &Path) -> io::Result<Active> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    let len = file.metadata()?.len();
    sync_parent(path)?;
    Ok(Active {
        path: path.to_owned(),
        file,
        len,
    })
}

fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => File::open(parent)?.sync_all(),
        None => File::open(".")?.sync_all(),
    }
}

/// `file` -> `file.gz`, durable before the plain file goes.
fn gzip(path: &Path) -> io::Result<()> {
    let target = with_suffix(path, ".gz");
    let partial = with_suffix(path, ".gz.partial");
    let mut input = File::open(path)?;
    let output = File::create(&partial)?;
    let mut encoder = flate2::write::GzEncoder::new(output, flate2::Compression::default());
    io::copy(&mut input, &mut encoder)?;
    encoder.finish()?.sync_all()?;
    std::fs::rename(&partial, &target)?;
    std::fs::remove_file(path)?;
    sync_parent(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    use auditflow_testkit::compliance::check_sink;
    use auditflow_testkit::events::{audit_log_events, audit_log_lines};

    fn at(day: u8, hour: u8) -> time::OffsetDateTime {
        time::OffsetDateTime::from_unix_timestamp(0)
            .unwrap()
            .replace_date(time::Date::from_calendar_date(2026, time::Month::December, day).unwrap())
            .replace_hour(hour)
            .unwrap()
    }

    fn files(dir: &Path, template: &str, max_bytes: u64, compression: Compression) -> Files {
        Files {
            template: PathTemplate::parse(&format!("{}/{template}", dir.display())).unwrap(),
            max_bytes,
            compression,
            active: None,
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    fn gunzip(path: &Path) -> String {
        let mut text = String::new();
        flate2::read::GzDecoder::new(File::open(path).unwrap())
            .read_to_string(&mut text)
            .unwrap();
        text
    }

    #[test]
    fn the_template_takes_utc_fields_and_refuses_unknown_ones() {
        let template =
            PathTemplate::parse("/logs/%Y/%m/audit-%Y-%m-%dT%H:%M:%S-100%%.log").unwrap();
        assert_eq!(
            template.render(at(1, 7)),
            PathBuf::from("/logs/2026/12/audit-2026-12-01T07:00:00-100%.log")
        );
        let error = PathTemplate::parse("/logs/audit-%F.log").unwrap_err();
        assert_eq!(error.field.as_deref(), Some("path"));
        assert!(
            error.message.contains("unknown time field `%F`"),
            "{}",
            error.message
        );
    }

    #[test]
    fn a_file_closed_for_size_is_renamed_with_the_next_number_and_gzipped() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = files(dir.path(), "audit-%Y-%m-%d.log", 120, Compression::Gzip);
        let line = |i: usize| format!("{{\"auditID\":\"{i:040}\"}}\n"); // 55 bytes
        for i in 0..5 {
            files.write(line(i).as_bytes(), at(1, 0)).unwrap();
        }
        // Two lines fit in 120 bytes: files of lines 0-1 and 2-3 were closed.
        assert_eq!(
            names(dir.path()),
            [
                "audit-2026-12-01.log",
                "audit-2026-12-01.log.1.gz",
                "audit-2026-12-01.log.2.gz"
            ]
        );
        assert_eq!(
            gunzip(&dir.path().join("audit-2026-12-01.log.1.gz")),
            line(0) + &line(1)
        );
        assert_eq!(
            gunzip(&dir.path().join("audit-2026-12-01.log.2.gz")),
            line(2) + &line(3)
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("audit-2026-12-01.log")).unwrap(),
            line(4)
        );
    }

    #[test]
    fn a_new_day_closes_yesterdays_file_and_a_restart_appends() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = files(dir.path(), "audit-%Y-%m-%d.log", 1 << 20, Compression::None);
        first.write(b"{\"a\":1}\n", at(1, 23)).unwrap();
        first.write(b"{\"a\":2}\n", at(2, 0)).unwrap();
        drop(first);
        let mut restarted = files(dir.path(), "audit-%Y-%m-%d.log", 1 << 20, Compression::None);
        restarted.write(b"{\"a\":3}\n", at(2, 1)).unwrap();
        assert_eq!(
            names(dir.path()),
            ["audit-2026-12-01.log", "audit-2026-12-02.log"]
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("audit-2026-12-02.log")).unwrap(),
            "{\"a\":2}\n{\"a\":3}\n"
        );
    }

    #[tokio::test]
    async fn writes_each_event_as_the_line_it_arrived_as_and_acknowledges() {
        let dir = tempfile::tempdir().unwrap();
        let config = FileSinkConfig {
            path: format!("{}/out/audit.log", dir.path().display()),
            max_bytes: default_max_bytes(),
            compression: Compression::None,
            compiled: CompileOnce::default(),
        };
        assert!(config.validate().is_empty());
        let sink = config
            .build(BuildContext::unobserved(
                "archive",
                dir.path().join("state"),
            ))
            .unwrap();
        let batches = audit_log_events().chunks(100).map(<[_]>::to_vec).collect();
        let statuses = check_sink(sink, batches, Duration::from_secs(10)).await;
        assert!(statuses.iter().all(|s| *s == BatchStatus::Delivered));
        let expected: String = audit_log_lines().map(|line| format!("{line}\n")).collect();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("out/audit.log")).unwrap(),
            expected
        );
    }
}
