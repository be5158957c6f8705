//! The table of component types. The CLI registers every component crate here, one line each;
//! the registry turns a [`ComponentSpec`] into a built stage and documents every option.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::config::{ComponentSpec, InvalidConfig, Role, error_key};
use crate::stage::{
    BuildContext, Sink, SinkConfig, Source, SourceConfig, Transform, TransformConfig,
};

/// Why a component could not be built: at which key (relative to the file) and what.
#[derive(Debug, Clone)]
pub struct BuildError {
    pub key: String,
    pub message: String,
}

type Builder<T> = Box<dyn Fn(Value, &BuildContext) -> Result<T, BuildError> + Send + Sync>;

struct Entry<T> {
    summary: &'static str,
    example: &'static str,
    schema: fn() -> schemars::Schema,
    build: Builder<T>,
}

impl<T> Entry<T> {
    /// The entry of config type `C` of a component of `role`: its options are deserialized at
    /// the component's key (`sources.<name>`, …) and built by `build`.
    fn of<C>(
        role: Role,
        summary: &'static str,
        example: &'static str,
        build: fn(C, &BuildContext) -> Result<T, InvalidConfig>,
    ) -> Self
    where
        C: serde::de::DeserializeOwned + schemars::JsonSchema + 'static,
        T: 'static,
    {
        Entry {
            summary,
            example,
            schema: || schemars::schema_for!(C),
            build: Box::new(move |options, cx| {
                let key = format!("{}.{}", role.table(), cx.name);
                build(deserialize::<C>(options, &key)?, cx).map_err(|e| invalid(&key, e))
            }),
        }
    }

    fn doc(&self, role: Role, type_name: &str) -> ComponentDoc {
        ComponentDoc::new(role, type_name, self.summary, self.example, (self.schema)())
    }
}

/// Every registered source, transform and sink type.
#[derive(Default)]
pub struct Registry {
    sources: BTreeMap<&'static str, Entry<Box<dyn Source>>>,
    transforms: BTreeMap<&'static str, Entry<Box<dyn Transform>>>,
    sinks: BTreeMap<&'static str, Entry<Box<dyn Sink>>>,
}

fn deserialize<C: serde::de::DeserializeOwned>(options: Value, key: &str) -> Result<C, BuildError> {
    serde_path_to_error::deserialize(options).map_err(|e| {
        let (key, message) = error_key(key, &e);
        BuildError { key, message }
    })
}

fn invalid(key: &str, e: InvalidConfig) -> BuildError {
    let key = if e.key.is_empty() {
        key.to_string()
    } else {
        format!("{key}.{}", e.key)
    };
    BuildError {
        key,
        message: e.message,
    }
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register_source<C: SourceConfig>(&mut self) -> &mut Self {
        let entry = Entry::of::<C>(Role::Source, C::SUMMARY, C::EXAMPLE, C::build);
        self.sources.insert(C::TYPE, entry);
        self
    }

    pub fn register_transform<C: TransformConfig>(&mut self) -> &mut Self {
        let entry = Entry::of::<C>(Role::Transform, C::SUMMARY, C::EXAMPLE, C::build);
        self.transforms.insert(C::TYPE, entry);
        self
    }

    pub fn register_sink<C: SinkConfig>(&mut self) -> &mut Self {
        let entry = Entry::of::<C>(Role::Sink, C::SUMMARY, C::EXAMPLE, C::build);
        self.sinks.insert(C::TYPE, entry);
        self
    }

    fn unknown_type(&self, spec: &ComponentSpec) -> BuildError {
        let known: Vec<&str> = self.type_names(spec.role);
        BuildError {
            key: format!("{}.type", spec.key()),
            message: format!(
                "unknown {} type `{}`, expected one of {}",
                spec.role,
                spec.type_name,
                known.join(", ")
            ),
        }
    }

    /// The registered type names of one role, sorted.
    pub fn type_names(&self, role: Role) -> Vec<&'static str> {
        match role {
            Role::Source => self.sources.keys().copied().collect(),
            Role::Transform => self.transforms.keys().copied().collect(),
            Role::Sink => self.sinks.keys().copied().collect(),
        }
    }

    pub fn build_source(
        &self,
        spec: &ComponentSpec,
        cx: &BuildContext,
    ) -> Result<Box<dyn Source>, BuildError> {
        let entry = self
            .sources
            .get(spec.type_name.as_str())
            .ok_or_else(|| self.unknown_type(spec))?;
        (entry.build)(spec.options.clone(), cx)
    }

    pub fn build_transform(
        &self,
        spec: &ComponentSpec,
        cx: &BuildContext,
    ) -> Result<Box<dyn Transform>, BuildError> {
        let entry = self
            .transforms
            .get(spec.type_name.as_str())
            .ok_or_else(|| self.unknown_type(spec))?;
        (entry.build)(spec.options.clone(), cx)
    }

    pub fn build_sink(
        &self,
        spec: &ComponentSpec,
        cx: &BuildContext,
    ) -> Result<Box<dyn Sink>, BuildError> {
        let entry = self
            .sinks
            .get(spec.type_name.as_str())
            .ok_or_else(|| self.unknown_type(spec))?;
        (entry.build)(spec.options.clone(), cx)
    }

    /// The JSON Schema of every registered type's options (its config struct's, without the
    /// `type` and `inputs` keys the pipeline file adds), by role and type name, for
    /// `chatlake schema`.
    pub fn schemas(&self) -> Vec<ComponentSchema> {
        let sources = self
            .sources
            .iter()
            .map(|(t, e)| (Role::Source, *t, e.summary, e.schema));
        let transforms = self
            .transforms
            .iter()
            .map(|(t, e)| (Role::Transform, *t, e.summary, e.schema));
        let sinks = self
            .sinks
            .iter()
            .map(|(t, e)| (Role::Sink, *t, e.summary, e.schema));
        sources
            .chain(transforms)
            .chain(sinks)
            .map(|(role, type_name, summary, schema)| ComponentSchema {
                role,
                type_name,
                summary,
                options: schema(),
            })
            .collect()
    }

    /// Documentation of every registered type, from its config struct's doc comments and defaults.
    pub fn docs(&self) -> Vec<ComponentDoc> {
        let sources = self.sources.iter().map(|(t, e)| e.doc(Role::Source, t));
        let transforms = self
            .transforms
            .iter()
            .map(|(t, e)| e.doc(Role::Transform, t));
        let sinks = self.sinks.iter().map(|(t, e)| e.doc(Role::Sink, t));
        sources.chain(transforms).chain(sinks).collect()
    }
}

/// The options schema of one registered type.
#[derive(Debug, Clone)]
pub struct ComponentSchema {
    pub role: Role,
    pub type_name: &'static str,
    pub summary: &'static str,
    pub options: schemars::Schema,
}

/// What `chatlake components` prints for one type.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ComponentDoc {
    pub role: Role,
    #[serde(rename = "type")]
    pub type_name: String,
    pub summary: String,
    pub options: Vec<OptionDoc>,
    /// A table of this type as a user writes it (TOML), from the config's `EXAMPLE`.
    pub example: String,
}

/// One option of a component type.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OptionDoc {
    pub name: String,
    /// JSON-schema type, the enum values, or the nested table's name.
    pub kind: String,
    pub required: bool,
    pub default: Option<Value>,
    pub description: String,
}

impl ComponentDoc {
    fn new(
        role: Role,
        type_name: &str,
        summary: &str,
        example: &str,
        schema: schemars::Schema,
    ) -> Self {
        let root = schema.as_value();
        let defs = root.get("$defs").cloned().unwrap_or(Value::Null);
        let required: Vec<&str> = root
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut options = Vec::new();
        if let Some(props) = root.get("properties").and_then(Value::as_object) {
            for (name, p) in props {
                options.push(OptionDoc {
                    name: name.clone(),
                    kind: describe_kind(p, &defs),
                    required: required.contains(&name.as_str()),
                    default: p.get("default").cloned(),
                    description: description(p, &defs),
                });
            }
        }
        ComponentDoc {
            role,
            type_name: type_name.into(),
            summary: summary.into(),
            options,
            example: example.into(),
        }
    }
}

fn resolve<'a>(p: &'a Value, defs: &'a Value) -> &'a Value {
    if let Some(r) = p.get("$ref").and_then(Value::as_str)
        && let Some(name) = r.strip_prefix("#/$defs/")
        && let Some(d) = defs.get(name)
    {
        return d;
    }
    // `Option<T>` becomes anyOf [T, null].
    if let Some(any) = p.get("anyOf").and_then(Value::as_array)
        && any.len() == 2
        && let Some(first) = any
            .iter()
            .find(|v| v.get("type") != Some(&Value::String("null".into())))
    {
        return resolve(first, defs);
    }
    p
}

fn description(p: &Value, defs: &Value) -> String {
    let own = p.get("description").and_then(Value::as_str);
    let resolved = resolve(p, defs);
    own.or_else(|| resolved.get("description").and_then(Value::as_str))
        .unwrap_or("")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn describe_kind(p: &Value, defs: &Value) -> String {
    let p = resolve(p, defs);
    if let Some(values) = p.get("enum").and_then(Value::as_array) {
        return values
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join("|");
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(variants) = p.get(key).and_then(Value::as_array) {
            let names: Vec<String> = variants
                .iter()
                .map(|v| {
                    let v = resolve(v, defs);
                    v.get("const")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .or_else(|| {
                            v.pointer("/properties/type/const")
                                .and_then(Value::as_str)
                                .map(|t| format!("{{type = \"{t}\", ...}}"))
                        })
                        .or_else(|| {
                            v.get("enum").and_then(Value::as_array).map(|e| {
                                e.iter()
                                    .filter_map(Value::as_str)
                                    .collect::<Vec<_>>()
                                    .join("|")
                            })
                        })
                        .unwrap_or_else(|| describe_kind(v, defs))
                })
                .collect();
            return names.join(" | ");
        }
    }
    match p.get("type") {
        Some(Value::String(t)) if t == "array" => {
            let item = p
                .get("items")
                .map(|i| describe_kind(i, defs))
                .unwrap_or_default();
            format!("[{item}]")
        }
        Some(Value::String(t)) => t.clone(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .collect::<Vec<_>>()
            .join("|"),
        _ => "table".into(),
    }
}
