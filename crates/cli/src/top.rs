//! `auditflow top`: a terminal view of a running instance, one row per component, made
//! from its `/metrics` every second. `q` (or Esc, or Ctrl-C) exits.
//!
//! Rates are the change of a counter between two scrapes over the time between them, so
//! the first screen shows totals only; a restart of the instance (counters going down)
//! shows no rate for one refresh.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use auditflow_metrics::names;
use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use http_body_util::BodyExt;
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table};
use ratatui::{DefaultTerminal, Frame};

/// How often the view is refreshed.
const REFRESH: Duration = Duration::from_secs(1);
/// Events the channel in front of a transform or sink holds at most (2 batches of 1,000).
const CHANNEL_EVENTS: f64 = 2000.0;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The instance's metrics endpoint (its pipeline's `metrics.address`).
    #[arg(long, default_value = "http://127.0.0.1:9598")]
    url: String,
}

pub(crate) fn run(args: &Args) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("auditflow top: cannot start the runtime: {error}");
            return ExitCode::from(1);
        }
    };
    let terminal = match ratatui::try_init() {
        Ok(terminal) => terminal,
        Err(error) => {
            eprintln!("auditflow top: needs a terminal: {error}");
            return ExitCode::from(1);
        }
    };
    let result = show(terminal, &runtime, &args.url);
    ratatui::restore();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("auditflow top: {error}");
            ExitCode::from(1)
        }
    }
}

fn show(
    mut terminal: DefaultTerminal,
    runtime: &tokio::runtime::Runtime,
    url: &str,
) -> std::io::Result<()> {
    let mut view = View::new(url);
    loop {
        let scraped = runtime.block_on(scrape(url));
        view.update(scraped, Instant::now());
        terminal.draw(|frame| view.draw(frame))?;
        let next = Instant::now() + REFRESH;
        while let Some(left) = next.checked_duration_since(Instant::now()) {
            if !event::poll(left)? {
                break;
            }
            if let Event::Key(key) = event::read()? {
                let ctrl_c =
                    key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL);
                if key.kind == KeyEventKind::Press
                    && (matches!(key.code, KeyCode::Char('q') | KeyCode::Esc) || ctrl_c)
                {
                    return Ok(());
                }
            }
        }
    }
}

async fn scrape(url: &str) -> Result<String, String> {
    let request = async {
        let response = crate::tap::get(url, "/metrics", None).await?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|error| format!("{url}/metrics: {error}"))?
            .to_bytes();
        if !status.is_success() {
            return Err(format!("{url}/metrics answered {status}"));
        }
        Ok(String::from_utf8_lossy(&body).into_owned())
    };
    tokio::time::timeout(Duration::from_millis(900), request)
        .await
        .unwrap_or_else(|_| Err(format!("{url}/metrics did not answer within 900 ms")))
}

/// One component's figures from one scrape.
#[derive(Debug, Clone, Default)]
struct Figures {
    kind: String,
    type_name: String,
    received: f64,
    sent: f64,
    errors: f64,
    discarded: BTreeMap<String, f64>,
    buffer_events: f64,
    /// `(bytes, max_bytes)` of a disk buffer.
    disk_buffer: Option<(f64, f64)>,
    kafka_lag: Option<f64>,
}

/// The figures of every component, by id.
fn figures(text: &str) -> BTreeMap<String, Figures> {
    let lines = text.lines().map(|line| Ok(line.to_owned()));
    let Ok(scrape) = prometheus_parse::Scrape::parse(lines) else {
        return BTreeMap::new();
    };
    let mut by_id: BTreeMap<String, Figures> = BTreeMap::new();
    for sample in scrape.samples {
        let Some(id) = sample.labels.get("component_id") else {
            continue;
        };
        let value = match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => continue,
        };
        let figures = by_id.entry(id.to_owned()).or_default();
        if let Some(kind) = sample.labels.get("component_kind") {
            figures.kind = kind.to_owned();
        }
        if let Some(type_name) = sample.labels.get("component_type") {
            figures.type_name = type_name.to_owned();
        }
        match sample.metric.as_str() {
            names::COMPONENT_RECEIVED_EVENTS_TOTAL => figures.received += value,
            names::COMPONENT_SENT_EVENTS_TOTAL => figures.sent += value,
            names::COMPONENT_ERRORS_TOTAL => figures.errors += value,
            names::COMPONENT_DISCARDED_EVENTS_TOTAL => {
                let reason = sample.labels.get("reason").unwrap_or("unknown");
                *figures.discarded.entry(reason.to_owned()).or_default() += value;
            }
            names::BUFFER_EVENTS => figures.buffer_events += value,
            names::BUFFER_BYTES => figures.disk_buffer.get_or_insert((0.0, 0.0)).0 += value,
            names::BUFFER_MAX_BYTES => figures.disk_buffer.get_or_insert((0.0, 0.0)).1 += value,
            names::KAFKA_CONSUMER_LAG => *figures.kafka_lag.get_or_insert(0.0) += value,
            _ => {}
        }
    }
    // Series that name a component the main counters do not (none today) are left out.
    by_id.retain(|_, figures| !figures.kind.is_empty());
    by_id
}

struct View {
    url: String,
    previous: Option<(Instant, BTreeMap<String, Figures>)>,
    current: BTreeMap<String, Figures>,
    rates: BTreeMap<String, (Option<f64>, Option<f64>)>,
    status: String,
}

impl View {
    fn new(url: &str) -> View {
        View {
            url: url.to_owned(),
            previous: None,
            current: BTreeMap::new(),
            rates: BTreeMap::new(),
            status: "connecting".into(),
        }
    }

    fn update(&mut self, scraped: Result<String, String>, now: Instant) {
        let text = match scraped {
            Ok(text) => text,
            Err(error) => {
                self.status = format!("{error}; retrying every second");
                return;
            }
        };
        let current = figures(&text);
        self.rates.clear();
        if let Some((then, previous)) = &self.previous {
            let seconds = now.duration_since(*then).as_secs_f64().max(1e-3);
            for (id, figures) in &current {
                let Some(before) = previous.get(id) else {
                    continue;
                };
                let rate =
                    |now: f64, before: f64| (now >= before).then_some((now - before) / seconds);
                self.rates.insert(
                    id.clone(),
                    (
                        rate(figures.received, before.received),
                        rate(figures.sent, before.sent),
                    ),
                );
            }
        }
        self.status = format!("{} components, refreshed every second", current.len());
        self.previous = Some((now, current.clone()));
        self.current = current;
    }

    fn draw(&self, frame: &mut Frame) {
        let [title, table, help] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Min(3),
            Constraint::Length(1),
        ])
        .areas(frame.area());
        frame.render_widget(
            Paragraph::new(Line::from(format!(
                "auditflow top  {}/metrics  {}",
                self.url, self.status
            ))),
            title,
        );
        let header = Row::new([
            "COMPONENT",
            "KIND",
            "TYPE",
            "IN/S",
            "OUT/S",
            "ERRORS",
            "DISCARDED",
            "BUFFER",
            "KAFKA LAG",
        ])
        .style(Style::new().add_modifier(Modifier::BOLD));
        let rows = self.current.iter().map(|(id, figures)| {
            let (in_rate, out_rate) = self.rates.get(id).copied().unwrap_or((None, None));
            let per_sec = |rate: Option<f64>, applies: bool| match (applies, rate) {
                (false, _) => "-".to_owned(),
                (true, Some(rate)) => format!("{rate:.0}"),
                (true, None) => "…".to_owned(),
            };
            let discarded = match figures.discarded.iter().filter(|(_, n)| **n > 0.0).count() {
                0 => "0".to_owned(),
                _ => figures
                    .discarded
                    .iter()
                    .filter(|(_, n)| **n > 0.0)
                    .map(|(reason, n)| format!("{reason} {n:.0}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            };
            let buffer = match (figures.kind.as_str(), figures.disk_buffer) {
                (_, Some((bytes, max))) if max > 0.0 => {
                    format!("{:.0}% of disk", 100.0 * bytes / max)
                }
                ("source", _) => "-".to_owned(),
                _ => format!(
                    "{:.0}% ({:.0} ev)",
                    100.0 * figures.buffer_events / CHANNEL_EVENTS,
                    figures.buffer_events
                ),
            };
            Row::new([
                Cell::from(id.clone()),
                Cell::from(figures.kind.clone()),
                Cell::from(figures.type_name.clone()),
                Cell::from(per_sec(in_rate, figures.kind != "source")),
                Cell::from(per_sec(out_rate, figures.kind != "sink")),
                Cell::from(format!("{:.0}", figures.errors)),
                Cell::from(discarded),
                Cell::from(buffer),
                Cell::from(
                    figures
                        .kafka_lag
                        .map(|lag| format!("{lag:.0}"))
                        .unwrap_or_else(|| "-".into()),
                ),
            ])
        });
        let widths = [
            Constraint::Min(12),
            Constraint::Length(9),
            Constraint::Length(12),
            Constraint::Length(9),
            Constraint::Length(9),
            Constraint::Length(7),
            Constraint::Min(14),
            Constraint::Length(14),
            Constraint::Length(9),
        ];
        frame.render_widget(
            Table::new(rows, widths)
                .header(header)
                .block(Block::bordered()),
            table,
        );
        frame.render_widget(Paragraph::new("q: quit"), help);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = r#"# HELP auditflow_component_received_events_total Events.
# TYPE auditflow_component_received_events_total counter
auditflow_component_received_events_total{component_id="s",component_kind="sink",component_type="blackhole"} 100
auditflow_component_received_events_total{component_id="g",component_kind="source",component_type="generator"} 100
# TYPE auditflow_component_sent_events_total counter
auditflow_component_sent_events_total{component_id="g",component_kind="source",component_type="generator"} 100
# TYPE auditflow_component_discarded_events_total counter
auditflow_component_discarded_events_total{component_id="s",component_kind="sink",component_type="blackhole",reason="rejected"} 3
auditflow_component_discarded_events_total{component_id="s",component_kind="sink",component_type="blackhole",reason="malformed"} 0
# TYPE auditflow_buffer_events gauge
auditflow_buffer_events{component_id="s",component_kind="sink",component_type="blackhole"} 500
# TYPE auditflow_kafka_consumer_lag gauge
auditflow_kafka_consumer_lag{component_id="g",partition="0",topic="t"} 7
auditflow_kafka_consumer_lag{component_id="g",partition="1",topic="t"} 5
"#;

    #[test]
    fn figures_are_gathered_per_component() {
        let figures = figures(SCRAPE);
        let sink = &figures["s"];
        assert_eq!(
            (sink.kind.as_str(), sink.type_name.as_str()),
            ("sink", "blackhole")
        );
        assert_eq!(sink.received, 100.0);
        assert_eq!(sink.discarded["rejected"], 3.0);
        assert_eq!(sink.buffer_events, 500.0);
        assert_eq!(figures["g"].kafka_lag, Some(12.0));
        assert_eq!(figures["g"].sent, 100.0);
    }

    #[test]
    fn rates_come_from_two_scrapes() {
        let mut view = View::new("http://x");
        let start = Instant::now();
        view.update(Ok(SCRAPE.to_owned()), start);
        assert!(view.rates.is_empty());
        let later = SCRAPE.replace("} 100", "} 300");
        view.update(Ok(later), start + Duration::from_secs(2));
        assert_eq!(view.rates["g"].1, Some(100.0));
        assert_eq!(view.rates["s"].0, Some(100.0));
    }
}
