//! The one list of every component type this binary knows. A new plugin is one line here
//! (and one dependency in Cargo.toml).

use auditflow_config::{Plugin, Registry};

pub fn registry() -> Registry {
    Registry::new(vec![
        // Sources.
        Plugin::source::<auditflow_stdin::StdinConfig>(
            "stdin",
            "One JSON event per line from standard input; ends at end of input.",
        ),
        // Transforms.
        // Sinks.
        Plugin::sink::<auditflow_stdout::StdoutConfig>(
            "stdout",
            "One compact JSON event per line to standard output.",
        ),
        Plugin::sink::<auditflow_blackhole::BlackholeConfig>(
            "blackhole",
            "Counts and drops events, acknowledging at once (benchmarks).",
        ),
    ])
}
