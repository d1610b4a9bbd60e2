//! Every example spec shipped in `examples/` must parse and validate, so the
//! files users copy from never rot as the format changes.

use std::fs;
use std::path::Path;

use herd_api::job::JobType;
use herd_api::spec_file::parse_job_spec;

#[test]
fn every_example_spec_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut paths: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    paths.sort();

    let mut failures = Vec::new();
    let mut names = Vec::new();
    for path in &paths {
        let source =
            fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        match parse_job_spec(&source, &path.display().to_string()) {
            Ok(spec) => names.push(spec.name),
            Err(e) => failures.push(e.to_string()),
        }
    }
    assert!(
        failures.is_empty(),
        "invalid examples:\n{}",
        failures.join("\n")
    );
    // The two documented examples exist (and nothing silently skipped them).
    assert!(names.contains(&"hello".to_string()), "{names:?}");
    assert!(names.contains(&"web".to_string()), "{names:?}");
}

#[test]
fn the_web_example_is_a_three_instance_service() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/web.toml");
    let source = fs::read_to_string(&path).expect("examples/web.toml exists");
    let spec = parse_job_spec(&source, "web.toml").expect("valid");
    assert_eq!(spec.job_type, JobType::Service);
    assert_eq!(spec.count, 3);
    assert_eq!(spec.task.command.as_deref(), Some("/bin/sh"));
}
