//! The pipeline loader (`auditflow_config::load::load_with_env`): `${VAR}`
//! interpolation, YAML parsing (figment), every component's options and `validate()`, the
//! buffer options, and the graph checks (unknown inputs, cycles).
//!
//! Input: one pipeline file's text, loaded as YAML with no environment variable set (the
//! `${VAR:-default}` defaults apply) and no `AUDITFLOW_*` overrides, through a registry of
//! every plugin but `kafka` (see Cargo.toml). Checks: no panic; a refusal lists at least
//! one error, each naming a file or `environment`, with a message; a load that succeeds
//! has every component's inputs among its components.
//!
//! Inputs naming device or process files (`/dev/`, `/proc/`, `/sys/`) are skipped: a
//! certificate path of `/dev/zero` would read forever, which is no bug of the loader.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use auditflow_config::{Plugin, Registry};
use libfuzzer_sys::fuzz_target;

fn registry() -> Registry {
    Registry::new(vec![
        Plugin::source::<auditflow_stdin::StdinConfig>("stdin", ""),
        Plugin::source::<auditflow_file::FileConfig>("file", ""),
        Plugin::source::<auditflow_webhook::WebhookConfig>("webhook", ""),
        Plugin::source::<auditflow_generator::GeneratorConfig>("generator", ""),
        Plugin::transform::<auditflow_filter::FilterConfig>("filter", ""),
        Plugin::transform::<auditflow_rbac_denial::RbacDenialConfig>("rbac_denial", ""),
        Plugin::transform::<auditflow_sample::SampleConfig>("sample", ""),
        Plugin::transform::<auditflow_redact::RedactConfig>("redact", ""),
        Plugin::transform::<auditflow_audit_policy::AuditPolicyConfig>("audit_policy", ""),
        Plugin::transform::<auditflow_dedupe::DedupeConfig>("dedupe", ""),
        Plugin::sink::<auditflow_stdout::StdoutConfig>("stdout", ""),
        Plugin::sink::<auditflow_blackhole::BlackholeConfig>("blackhole", ""),
        Plugin::sink::<auditflow_file::FileSinkConfig>("file", ""),
        Plugin::sink::<auditflow_https::HttpsConfig>("https", ""),
    ])
}

struct Setup {
    registry: Registry,
    path: PathBuf,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("auditflow-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Setup {
            registry: registry(),
            path: dir.join("pipeline.yaml"),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if ["/dev/", "/proc/", "/sys/"]
        .iter()
        .any(|device| text.contains(device))
    {
        return;
    }
    let setup = setup();
    std::fs::write(&setup.path, text).unwrap();
    let loaded = auditflow_config::load::load_with_env(
        std::slice::from_ref(&setup.path),
        &setup.registry,
        |_| None,
        false,
    );
    match loaded {
        Ok(pipeline) => {
            for component in &pipeline.components {
                for input in &component.inputs {
                    assert!(
                        pipeline.component(input).is_some(),
                        "{} reads from {input}, which is not loaded",
                        component.id
                    );
                }
            }
        }
        Err(errors) => {
            assert!(!errors.is_empty(), "refused without an error");
            for error in &errors {
                assert!(!error.file.is_empty(), "an error names no file: {error}");
                assert!(
                    !error.message.is_empty(),
                    "an error says nothing: {error:?}"
                );
            }
        }
    }
});
