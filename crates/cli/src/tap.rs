//! `auditflow tap`: prints a sample of the events passing components of a running
//! instance, read from its API's `GET /tap` (see [`crate::api`]).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, HOST};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Component ids to tap.
    #[arg(required = true, value_name = "ID")]
    ids: Vec<String>,
    /// The instance's API (its pipeline's `api.address`).
    #[arg(long, default_value = "http://127.0.0.1:8686")]
    url: String,
    /// What the components send (the default for sources and transforms).
    #[arg(long, conflicts_with = "inputs_of")]
    outputs_of: bool,
    /// What reaches the components (the default for sinks).
    #[arg(long)]
    inputs_of: bool,
    /// Exit after this many events.
    #[arg(long, value_name = "N")]
    limit: Option<u64>,
    /// At most this many events a second, in all (the instance allows up to 10000).
    #[arg(long, value_name = "N", default_value_t = 100)]
    rate: u32,
    /// `json`: one line per event, `{"component_id","port","event"}`; `pretty`: a header
    /// line per event, then the event indented.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    format: Format,
    /// A file holding the bearer token the instance's `api.token_file` holds.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Format {
    Json,
    Pretty,
}

pub(crate) fn run(args: &Args) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("auditflow tap: cannot start the runtime: {error}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(tap(args)) {
        Ok(()) => ExitCode::SUCCESS,
        // `auditflow tap x | head`: the reader has what it wanted.
        Err(Failure::Output(error)) if error.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::SUCCESS
        }
        Err(Failure::Output(error)) => {
            eprintln!("auditflow tap: cannot write to standard output: {error}");
            ExitCode::from(1)
        }
        Err(Failure::Tap(message)) => {
            eprintln!("auditflow tap: {message}");
            ExitCode::from(1)
        }
    }
}

enum Failure {
    /// Reaching the instance, or what it answered.
    Tap(String),
    Output(std::io::Error),
}

impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure::Tap(message)
    }
}

async fn tap(args: &Args) -> Result<(), Failure> {
    let token = token(args.token_file.as_ref())?;
    let mut query: Vec<String> = args
        .ids
        .iter()
        .map(|id| format!("component={id}"))
        .collect();
    if args.outputs_of {
        query.push("port=outputs_of".into());
    }
    if args.inputs_of {
        query.push("port=inputs_of".into());
    }
    query.push(format!("rate={}", args.rate.max(1)));
    let path = format!("/tap?{}", query.join("&"));
    let response = get(&args.url, &path, token.as_deref()).await?;
    let status = response.status();
    if status != StatusCode::OK {
        let body = response
            .into_body()
            .collect()
            .await
            .map(|body| String::from_utf8_lossy(&body.to_bytes()).trim().to_owned())
            .unwrap_or_default();
        return Err(format!("{}: {status}: {body}", args.url).into());
    }
    let mut body = response.into_body();
    let mut pending: Vec<u8> = Vec::new();
    let mut printed = 0u64;
    let stdout = std::io::stdout();
    let limit = args.limit.unwrap_or(u64::MAX);
    if limit == 0 {
        return Ok(());
    }
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| format!("{}: the stream broke: {error}", args.url))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        let mut out = stdout.lock();
        let mut start = 0;
        while let Some(end) = memchr::memchr(b'\n', &pending[start..]) {
            let line = &pending[start..start + end];
            start += end + 1;
            print_event(&mut out, line, args.format).map_err(Failure::Output)?;
            printed += 1;
            if printed >= limit {
                out.flush().ok();
                return Ok(());
            }
        }
        out.flush().map_err(Failure::Output)?;
        pending.drain(..start);
    }
    match args.limit {
        Some(limit) => Err(Failure::Tap(format!(
            "the instance ended the stream after {printed} of {limit} events (did it stop?)"
        ))),
        None => Ok(()),
    }
}

fn print_event(out: &mut impl Write, line: &[u8], format: Format) -> std::io::Result<()> {
    match format {
        Format::Json => {
            out.write_all(line)?;
            out.write_all(b"\n")
        }
        Format::Pretty => {
            let Ok(value) = serde_json::from_slice::<serde_json::Value>(line) else {
                out.write_all(line)?;
                return out.write_all(b"\n");
            };
            let id = value["component_id"].as_str().unwrap_or("?");
            let port = match value["port"].as_str() {
                Some("inputs_of") => "input of",
                _ => "output of",
            };
            writeln!(out, "--- {port} {id}")?;
            let pretty = serde_json::to_string_pretty(&value["event"]).unwrap_or_default();
            writeln!(out, "{pretty}")
        }
    }
}

fn token(file: Option<&PathBuf>) -> Result<Option<String>, String> {
    if let Some(path) = file {
        let token = std::fs::read_to_string(path)
            .map_err(|error| format!("--token-file {}: cannot read it: {error}", path.display()))?;
        return Ok(Some(token.trim().to_owned()));
    }
    Ok(std::env::var("AUDITFLOW_API_TOKEN")
        .ok()
        .map(|token| token.trim().to_owned())
        .filter(|token| !token.is_empty()))
}

/// `GET base+path` over plain HTTP/1.1 (the API and `/metrics` are loopback or behind a
/// port-forward); errors say what to check.
pub(crate) async fn get(
    base: &str,
    path: &str,
    token: Option<&str>,
) -> Result<Response<Incoming>, String> {
    let uri: Uri = base
        .parse()
        .map_err(|error| format!("--url {base}: not a URL: {error}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!(
            "--url {base}: only http:// is served (use a port-forward or a tunnel for a remote instance)"
        ));
    }
    let host = uri.host().unwrap_or("127.0.0.1").trim_matches(['[', ']']);
    let port = uri.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|error| {
            format!("cannot connect to {base}: {error} (is an instance running with an `api:` or `metrics:` section at that address?)")
        })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| format!("{base}: {error}"))?;
    tokio::spawn(connection);
    let mut request = Request::get(path)
        .header(HOST, format!("{host}:{port}"))
        .body(Empty::<Bytes>::new())
        .map_err(|error| format!("{base}{path}: {error}"))?;
    if let Some(token) = token {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| "the bearer token holds characters a header cannot carry".to_owned())?;
        request.headers_mut().insert(AUTHORIZATION, value);
    }
    sender
        .send_request(request)
        .await
        .map_err(|error| format!("{base}{path}: {error}"))
}
