//! `chatlake schema`: the JSON Schema of pipeline files, for editors (Taplo for TOML, the YAML
//! language server for YAML) and for checking files in CI.
//!
//! It is put together from the same structs that read the file: the `[pipeline]` table's
//! ([`PipelineSection`]) and each registered component's config struct (the registry's
//! schemars schemas, with their doc comments, defaults and allowed values). A component table
//! is a tagged union on `type`: one definition per registered type, holding `type` (a constant)
//! and, for transforms and sinks, `inputs`, next to the type's own options. Draft 7 is written
//! (`definitions`, not 2020-12's `$defs`) because Taplo's and the YAML language server's
//! validators read it.
//!
//! `tests/schema/check_pipelines.py` (run by `.ci/run`) validates every shipped pipeline against
//! it with Python's `jsonschema` and checks that misspelt or wrong options fail; a Rust validator
//! crate would change the features of arrow's dependencies in test builds and so compile arrow
//! and parquet twice.

use serde_json::{Map, Value, json};

use chatlake_core::Registry;
use chatlake_core::config::{PipelineSection, Role};

/// The `$schema` of the generated document.
pub const DRAFT: &str = "http://json-schema.org/draft-07/schema#";

const DEFS_PREFIX: &str = "#/$defs/";
const DEFINITIONS_PREFIX: &str = "#/definitions/";

/// The JSON Schema of a pipeline file that uses the components of `registry`.
pub fn pipeline_schema(registry: &Registry) -> Value {
    let mut definitions = Map::new();
    let mut variants: [(Role, Vec<Value>); 3] = [
        (Role::Source, Vec::new()),
        (Role::Transform, Vec::new()),
        (Role::Sink, Vec::new()),
    ];

    let pipeline = schemars::schema_for!(PipelineSection);
    let mut pipeline = relocate(pipeline.to_value(), "pipeline", &mut definitions);
    pipeline["title"] = json!("pipeline");
    definitions.insert("pipeline".into(), pipeline);

    for component in registry.schemas() {
        // A source and a sink may one day share a type name: the role keeps them apart.
        let name = format!("{}.{}", component.role, component.type_name);
        let mut schema = relocate(component.options.to_value(), &name, &mut definitions);
        add_graph_keys(
            &mut schema,
            component.role,
            component.type_name,
            component.summary,
        );
        definitions.insert(name.clone(), schema);
        if let Some((_, list)) = variants.iter_mut().find(|(r, _)| *r == component.role) {
            list.push(json!({ "$ref": format!("{DEFINITIONS_PREFIX}{name}") }));
        }
    }

    let mut properties = Map::new();
    properties.insert(
        "pipeline".into(),
        json!({ "$ref": format!("{DEFINITIONS_PREFIX}pipeline") }),
    );
    for (role, list) in variants {
        let union = format!("{role}");
        let types: Vec<&str> = registry.type_names(role);
        definitions.insert(
            union.clone(),
            json!({
                "description": format!("A {role}: `type` is one of {}; the other keys are that type's options.", types.join(", ")),
                "type": "object",
                "required": ["type"],
                "properties": { "type": { "enum": types } },
                "oneOf": list,
            }),
        );
        properties.insert(
            role.table().into(),
            json!({
                "description": format!("The pipeline's {}s, by name (letters, digits, `_` and `-`; the name keys state and file names).", role),
                "type": "object",
                "propertyNames": { "pattern": NAME_PATTERN },
                "additionalProperties": { "$ref": format!("{DEFINITIONS_PREFIX}{union}") },
            }),
        );
    }

    json!({
        "$schema": DRAFT,
        "title": "chatlake pipeline file",
        "description": "A chatlake pipeline: sources, transforms and sinks wired into a graph (`chatlake components` documents every type). Every string may use ${VAR} or ${VAR:-default}.",
        "type": "object",
        "required": ["pipeline"],
        "additionalProperties": false,
        "properties": properties,
        "definitions": definitions,
    })
}

/// Component names as `chatlake_core::config::is_safe_name` accepts them.
const NAME_PATTERN: &str = "^[A-Za-z0-9_-]+$";

/// Moves a schemars root schema's `$defs` into `definitions` under `prefix.` and points its
/// references there; returns the root without `$schema` and `$defs`.
fn relocate(mut schema: Value, prefix: &str, definitions: &mut Map<String, Value>) -> Value {
    let Some(root) = schema.as_object_mut() else {
        return schema;
    };
    root.remove("$schema");
    let defs = root.remove("$defs");
    rewrite_refs(&mut schema, prefix);
    if let Some(Value::Object(defs)) = defs {
        for (name, mut def) in defs {
            rewrite_refs(&mut def, prefix);
            definitions.insert(format!("{prefix}.{name}"), def);
        }
    }
    schema
}

/// Points every `"$ref": "#/$defs/X"` of `value` at `#/definitions/<prefix>.X`. Draft 7 ignores
/// the keys beside a `$ref`, so a reference that carries its own description or default (an
/// option whose type is a named enum or table) goes into an `allOf` of one, where editors still
/// show the description and default.
fn rewrite_refs(value: &mut Value, prefix: &str) {
    match value {
        Value::Object(map) => {
            if map.len() > 1
                && let Some(reference) = map.remove("$ref")
            {
                map.insert("allOf".into(), json!([{ "$ref": reference }]));
            }
            for (key, v) in map.iter_mut() {
                if key == "$ref"
                    && let Value::String(r) = v
                    && let Some(name) = r.strip_prefix(DEFS_PREFIX)
                {
                    *r = format!("{DEFINITIONS_PREFIX}{prefix}.{name}");
                } else {
                    rewrite_refs(v, prefix);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| rewrite_refs(v, prefix)),
        _ => {}
    }
}

/// Adds the keys the pipeline file puts beside a component's options: `type` (this type's name,
/// which selects the union's member) and, except for sources, `inputs`.
fn add_graph_keys(schema: &mut Value, role: Role, type_name: &str, summary: &str) {
    let Some(root) = schema.as_object_mut() else {
        return;
    };
    // The Rust struct's name means nothing to a user; the type name does.
    root.insert("title".into(), json!(type_name));
    root.insert("description".into(), json!(summary));
    let properties = root
        .entry("properties")
        .or_insert_with(|| json!({}))
        .as_object_mut();
    let mut required = vec![json!("type")];
    if let Some(properties) = properties {
        properties.insert(
            "type".into(),
            json!({ "description": format!("The {role} type: {summary}"), "const": type_name }),
        );
        if role != Role::Source {
            properties.insert(
                "inputs".into(),
                json!({
                    "description": "The components this one reads from: source or transform names (one name may stand alone).",
                    "anyOf": [
                        { "type": "array", "items": { "type": "string", "pattern": NAME_PATTERN }, "minItems": 1 },
                        { "type": "string", "pattern": NAME_PATTERN },
                    ],
                }),
            );
            required.push(json!("inputs"));
        }
    }
    match root.get_mut("required") {
        Some(Value::Array(list)) => list.extend(required),
        _ => {
            root.insert("required".into(), Value::Array(required));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::registry;

    #[test]
    fn every_registered_type_is_a_member_of_its_role_union() {
        let schema = pipeline_schema(&registry());
        let registry = registry();
        for role in [Role::Source, Role::Transform, Role::Sink] {
            let members: Vec<String> = schema["definitions"][role.to_string()]["oneOf"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["$ref"].as_str().unwrap().to_string())
                .collect();
            let want: Vec<String> = registry
                .type_names(role)
                .iter()
                .map(|t| format!("#/definitions/{role}.{t}"))
                .collect();
            assert_eq!(members, want);
        }
    }

    #[test]
    fn every_reference_resolves() {
        fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
            match v {
                Value::Object(m) => {
                    for (k, v) in m {
                        match (k.as_str(), v) {
                            ("$ref", Value::String(r)) => out.push(r),
                            _ => refs(v, out),
                        }
                    }
                }
                Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let schema = pipeline_schema(&registry());
        let mut found = Vec::new();
        refs(&schema, &mut found);
        assert!(found.len() > 20, "{found:?}");
        for r in found {
            let name = r
                .strip_prefix(DEFINITIONS_PREFIX)
                .unwrap_or_else(|| panic!("{r} is not a local definition"));
            assert!(
                schema["definitions"].get(name).is_some(),
                "{r} does not resolve"
            );
        }
    }
}
