//! Every registered component's documented example (its config's `EXAMPLE`, which `chatlake
//! components` shows) parses from TOML and from YAML and passes `validate`, as Vector's
//! `test_generate_config` does for each of its components: documentation that cannot drift. A
//! component registered without an example fails here.

// Test helpers outside `#[test]` functions may unwrap too.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use chatlake_core::config::{PipelineFile, Role};
use chatlake_core::graph::{BuildOptions, Pipeline};
use chatlake_core::registry::ComponentDoc;

/// The name of the component under test in the pipeline built around its example.
const UNDER_TEST: &str = "example";

fn table(text: &str) -> toml::Table {
    text.parse().unwrap()
}

/// A LINE WORKS source of hand-downloaded files: raw records, and no credentials needed.
fn raw_source() -> toml::Value {
    toml::Value::Table(table(
        "type = \"lineworks_message_contents\"\nfiles = [\"in/*.csv\"]",
    ))
}

/// A whole pipeline file around one example: every input it names exists (`canonical` as
/// normalized LINE WORKS files, any other name as a LINE WORKS files source) and a source's or
/// transform's output goes to a JSON Lines sink, so the graph checks pass as they would in a
/// user's file.
fn pipeline_around(doc: &ComponentDoc, example: &toml::Table, dir: &Path) -> toml::Table {
    let mut sources = toml::Table::new();
    let mut transforms = toml::Table::new();
    let mut sinks = toml::Table::new();
    let inputs = example
        .get("inputs")
        .and_then(toml::Value::as_array)
        .cloned()
        .unwrap_or_default();
    for input in inputs {
        let name = input.as_str().expect("inputs are names").to_string();
        if name == "canonical" {
            sources.insert("raw".into(), raw_source());
            transforms.insert(
                name,
                toml::Value::Table(table("type = \"normalize\"\ninputs = [\"raw\"]")),
            );
        } else {
            sources.insert(name, raw_source());
        }
    }
    let own_table = match doc.role {
        Role::Source => &mut sources,
        Role::Transform => &mut transforms,
        Role::Sink => &mut sinks,
    };
    own_table.insert(UNDER_TEST.into(), toml::Value::Table(example.clone()));
    if doc.role != Role::Sink {
        let mut out = table(&format!("type = \"jsonl\"\ninputs = [\"{UNDER_TEST}\"]"));
        out.insert(
            "path".into(),
            toml::Value::String(dir.join("lake").display().to_string()),
        );
        sinks.insert("out".into(), toml::Value::Table(out));
    }
    let mut pipeline = table("name = \"examples\"");
    pipeline.insert(
        "state_dir".into(),
        toml::Value::String(dir.join("state").display().to_string()),
    );
    let mut root = toml::Table::new();
    root.insert("pipeline".into(), toml::Value::Table(pipeline));
    for (key, components) in [
        ("sources", sources),
        ("transforms", transforms),
        ("sinks", sinks),
    ] {
        if !components.is_empty() {
            root.insert(key.into(), toml::Value::Table(components));
        }
    }
    root
}

/// Loads and checks `path` as `chatlake validate` does; the number of components, or every
/// error.
fn validate(path: &Path) -> Result<usize, String> {
    let file = PipelineFile::load(path).map_err(|e| e.to_string())?;
    let pipeline = Pipeline::build(file, &chatlake_cli::registry(), &BuildOptions::default())
        .map_err(|e| e.to_string())?;
    Ok(pipeline.nodes.len())
}

#[test]
fn every_component_example_parses_from_toml_and_yaml_and_validates() {
    let docs = chatlake_cli::registry().docs();
    assert!(docs.len() >= 11, "{} components registered", docs.len());
    let mut failures = Vec::new();
    for doc in &docs {
        let name = format!("{} `{}`", doc.role, doc.type_name);
        if doc.example.trim().is_empty() {
            failures.push(format!("{name}: no example (set `EXAMPLE` in its config)"));
            continue;
        }
        let example: toml::Table = match doc.example.parse() {
            Ok(t) => t,
            Err(e) => {
                failures.push(format!("{name}: the example is not TOML: {e}"));
                continue;
            }
        };
        let written_type = example.get("type").and_then(toml::Value::as_str);
        if written_type != Some(doc.type_name.as_str()) {
            failures.push(format!(
                "{name}: the example's `type` is {written_type:?}, not the type it documents"
            ));
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        let root = pipeline_around(doc, &example, dir.path());
        let toml_path = dir.path().join("example.toml");
        std::fs::write(&toml_path, toml::to_string(&root).unwrap()).unwrap();
        let yaml_path = dir.path().join("example.yaml");
        std::fs::write(&yaml_path, serde_yaml::to_string(&root).unwrap()).unwrap();
        let from_toml = validate(&toml_path);
        let from_yaml = validate(&yaml_path);
        match (&from_toml, &from_yaml) {
            (Ok(a), Ok(b)) if a == b => {}
            _ => failures.push(format!(
                "{name}: from TOML {from_toml:?}, from YAML {from_yaml:?}\n{}",
                doc.example
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn a_broken_example_fails_the_check() {
    // The harness itself must be able to fail: the same pipeline with a misspelt key does not
    // validate, from either format.
    let docs = chatlake_cli::registry().docs();
    let doc = docs
        .iter()
        .find(|d| d.type_name == "dedupe")
        .expect("dedupe is registered");
    let mut example: toml::Table = doc.example.parse().unwrap();
    example.insert("kepe".into(), toml::Value::String("latest".into()));
    let dir = tempfile::tempdir().unwrap();
    let root = pipeline_around(doc, &example, dir.path());
    let toml_path = dir.path().join("broken.toml");
    std::fs::write(&toml_path, toml::to_string(&root).unwrap()).unwrap();
    let yaml_path = dir.path().join("broken.yaml");
    std::fs::write(&yaml_path, serde_yaml::to_string(&root).unwrap()).unwrap();
    for path in [toml_path, yaml_path] {
        let err = validate(&path).unwrap_err();
        assert!(err.contains("transforms.example"), "{err}");
        assert!(err.contains("kepe"), "{err}");
    }
}
