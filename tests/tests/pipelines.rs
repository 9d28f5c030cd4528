//! Every pipeline file under `pipelines/` passes `auditflow validate`. The folder is read
//! when the test runs, so a new example is covered the moment it is added.

use std::path::{Path, PathBuf};

use auditflow_e2e::{clean_command, repo_root};

fn pipeline_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("read a directory entry").path();
        if path.is_dir() {
            pipeline_files(&path, found);
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "toml" | "json")
        ) {
            found.push(path);
        }
    }
}

/// Names in `${NAME}` references without a default: the variables a user must set.
fn required_variables(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        rest = &rest[at + 2..];
        let Some(end) = rest.find('}') else { break };
        let reference = &rest[..end];
        if !reference.contains(":-") {
            names.push(reference.to_owned());
        }
        rest = &rest[end..];
    }
    names
}

#[test]
fn every_pipeline_file_validates() {
    let root = repo_root();
    let mut files = Vec::new();
    pipeline_files(&root.join("pipelines"), &mut files);
    files.sort();
    assert!(
        files.iter().any(|file| file.ends_with("quickstart.yaml")),
        "pipelines/quickstart.yaml is missing"
    );

    let mut failures = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let relative = file.strip_prefix(&root).unwrap();
        let mut command = clean_command(&["validate"]);
        command.arg(relative).current_dir(&root);
        // Secrets and addresses come from the environment; any value does for checking.
        for name in required_variables(&text) {
            command.env(name, "dummy-value-for-validate");
        }
        let output = command.output().expect("run auditflow validate");
        if !output.status.success() {
            failures.push(format!(
                "{} (exit {}):\n{}{}",
                relative.display(),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} pipeline files do not validate:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

#[test]
fn required_variables_are_found() {
    assert_eq!(
        required_variables("a: ${TOKEN}\nb: ${PORT:-80}\nc: x${URL}"),
        ["TOKEN", "URL"]
    );
}
