//! Pipeline files (spec section 2): TOML or YAML by extension, loaded with figment, with
//! `${VAR}` / `${VAR:-default}` interpolation in every string and `CHATLAKE__<PATH>` environment
//! overrides. Every error names the file and the key path; loading collects every error it can
//! instead of stopping at the first.

use std::fmt;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Toml, Yaml};
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use crate::secret::Secret;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Environment variables with this prefix override keys of the file (`__` between keys).
pub const ENV_PREFIX: &str = "CHATLAKE__";

/// One problem in a pipeline file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// Dotted key path, e.g. `sinks.lake.compression`; empty for the file as a whole.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(f, "{}: {}: {}", self.file.display(), self.key, self.message)
        }
    }
}

/// Every problem found in one or more pipeline files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn push(&mut self, file: &Path, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            file: file.to_path_buf(),
            key: key.into(),
            message: message.into(),
        });
    }
}

/// A component's own check failed: `key` is relative to the component (`end`, `auth.token`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidConfig {
    pub key: String,
    pub message: String,
}

impl InvalidConfig {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        InvalidConfig {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for InvalidConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

impl std::error::Error for InvalidConfig {}

/// The `[pipeline]` table.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineSection {
    /// Names the pipeline; keys its state, run summaries and dead letters.
    pub name: String,
    /// Where cursors, run summaries and dead letters live. Default `./lake/_state`.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// How to reach the object store of an object-store `state_dir`, and the default for the
    /// sinks' own `storage` tables (spec section 5).
    #[serde(default, skip_serializing_if = "StorageOptions::is_empty")]
    pub storage: StorageOptions,
}

/// How to reach an object store. Every field is optional: what is not set here comes from the
/// environment, as DuckDB, Polars and the AWS CLI read it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StorageOptions {
    /// The service's address, for an S3-compatible server (SeaweedFS, MinIO, Ceph, R2):
    /// `http://127.0.0.1:8333`. Default: `AWS_ENDPOINT_URL`, else the provider's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The bucket's region. Default: `AWS_REGION`, else `us-east-1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Allow a plain-http endpoint. Default: `AWS_ALLOW_HTTP`, else false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_http: Option<bool>,
    /// Default: `AWS_ACCESS_KEY_ID` (then profiles and instance roles, as object_store reads them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<Secret>,
    /// Default: `AWS_SECRET_ACCESS_KEY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<Secret>,
    /// Default: `AWS_SESSION_TOKEN`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token: Option<Secret>,
    /// Address buckets as `bucket.host` instead of `host/bucket`. Default: false (path style,
    /// which every S3-compatible server accepts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_hosted_style: Option<bool>,
    /// Any other setting object_store knows for the URL's store, by its name
    /// (`google_service_account`, `azure_storage_account_name`, `aws_imdsv1_fallback`, …).
    /// Values are treated as secrets.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, Secret>,
}

impl StorageOptions {
    /// These options, with what `other` sets where these set nothing (a sink's table over the
    /// pipeline's).
    pub fn or(&self, other: &StorageOptions) -> StorageOptions {
        let mut options = other.options.clone();
        options.extend(self.options.clone());
        StorageOptions {
            endpoint: self.endpoint.clone().or_else(|| other.endpoint.clone()),
            region: self.region.clone().or_else(|| other.region.clone()),
            allow_http: self.allow_http.or(other.allow_http),
            access_key_id: self
                .access_key_id
                .clone()
                .or_else(|| other.access_key_id.clone()),
            secret_access_key: self
                .secret_access_key
                .clone()
                .or_else(|| other.secret_access_key.clone()),
            session_token: self
                .session_token
                .clone()
                .or_else(|| other.session_token.clone()),
            virtual_hosted_style: self.virtual_hosted_style.or(other.virtual_hosted_style),
            options,
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == StorageOptions::default()
    }
}

/// Which table of the file a component sits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Source,
    Transform,
    Sink,
}

impl Role {
    pub fn table(self) -> &'static str {
        match self {
            Role::Source => "sources",
            Role::Transform => "transforms",
            Role::Sink => "sinks",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Source => "source",
            Role::Transform => "transform",
            Role::Sink => "sink",
        })
    }
}

/// One component as written in the file, before its type-specific options are checked.
#[derive(Debug, Clone)]
pub struct ComponentSpec {
    pub role: Role,
    pub name: String,
    pub type_name: String,
    pub inputs: Vec<String>,
    /// Every other key of the component's table.
    pub options: Value,
}

impl ComponentSpec {
    /// The key path of the component, e.g. `sinks.lake`.
    pub fn key(&self) -> String {
        format!("{}.{}", self.role.table(), self.name)
    }
}

/// A loaded pipeline file.
#[derive(Debug, Clone)]
pub struct PipelineFile {
    pub path: PathBuf,
    pub pipeline: PipelineSection,
    /// Sources, transforms and sinks in file order.
    pub components: Vec<ComponentSpec>,
    figment: Figment,
    /// Keys whose value lost a `${VAR:-}` that expanded to nothing, with the variable: named in
    /// any error about that key.
    emptied: Vec<(String, String)>,
    /// `--shard K/N` (or `CHATLAKE_SHARD`) of the command line: this worker's state lives in its
    /// own directory ([`PipelineFile::pipeline_state_dir`]). `None` (and `0/1`) for one worker.
    pub shard: Option<crate::shard::Shard>,
}

impl PipelineFile {
    /// Loads `path`, applies environment overrides and interpolation, and checks the file's
    /// structure. Component options are checked later, by their own types.
    pub fn load(path: &Path) -> Result<PipelineFile, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        if !path.is_file() {
            errors.push(path, "", "no such pipeline file");
            return Err(errors);
        }
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        let base = match ext.as_str() {
            "toml" => Figment::from(Toml::file_exact(path)),
            "yaml" | "yml" => Figment::from(Yaml::file_exact(path)),
            _ => {
                errors.push(path, "", "a pipeline file ends in .toml, .yaml or .yml");
                return Err(errors);
            }
        };
        if matches!(ext.as_str(), "yaml" | "yml") {
            // figment keeps the last of two equal YAML keys without a word; TOML refuses them.
            // serde_yaml's own value type refuses them, with the line, so the file is read once
            // more through it first.
            if let Err(message) = yaml_duplicate_keys(path) {
                errors.push(path, "", message);
                return Err(errors);
            }
        }
        let figment = base.merge(Env::prefixed(ENV_PREFIX).split("__"));
        let mut root: Value = match figment.extract() {
            Ok(v) => v,
            Err(e) => {
                for e in e {
                    let key = e.path.join(".");
                    errors.push(path, key, e.kind.to_string());
                }
                return Err(errors);
            }
        };
        let mut emptied: Vec<(String, String)> = Vec::new();
        interpolate_noting(
            &mut root,
            &mut String::new(),
            &|k| std::env::var(k).ok(),
            &mut |key, msg| errors.push(path, key, msg),
            &mut |key, var| emptied.push((key, var)),
        );
        // Not a warning: shipped pipelines leave credentials `${VAR:-}` for `--emulate`, where
        // an empty value is what is meant. Any error about the key names the variable.
        for (key, var) in &emptied {
            tracing::debug!(
                file = %path.display(),
                key = %key,
                "`${{{var}:-}}` expanded to nothing: {var} is not set or empty"
            );
        }

        let Value::Object(mut top) = root else {
            errors.push(path, "", "the file must be a table");
            return Err(errors);
        };
        for key in top.keys() {
            if !["pipeline", "sources", "transforms", "sinks"].contains(&key.as_str()) {
                errors.push(
                    path,
                    key.clone(),
                    format!(
                        "unknown key `{key}`, expected one of pipeline, sources, transforms, sinks{}",
                        did_you_mean_note(key, ["pipeline", "sources", "transforms", "sinks"])
                    ),
                );
            }
        }
        let pipeline = match top.remove("pipeline") {
            None => {
                errors.push(
                    path,
                    "pipeline",
                    "missing: a [pipeline] table with a `name` is required",
                );
                None
            }
            Some(v) => match serde_path_to_error::deserialize::<_, PipelineSection>(v) {
                Ok(p) => Some(p),
                Err(e) => {
                    let (key, msg) = error_key("pipeline", &e);
                    errors.push(path, key, msg);
                    None
                }
            },
        };
        if let Some(p) = &pipeline
            && !is_safe_name(&p.name)
        {
            errors.push(
                path,
                "pipeline.name",
                "use letters, digits, `_` and `-` only (it names files)",
            );
        }

        let mut components = Vec::new();
        for role in [Role::Source, Role::Transform, Role::Sink] {
            let Some(table) = top.remove(role.table()) else {
                continue;
            };
            let Value::Object(table) = table else {
                errors.push(path, role.table(), "must be a table of components");
                continue;
            };
            for (name, body) in table {
                let key = format!("{}.{name}", role.table());
                match component_spec(role, &name, body) {
                    Ok(spec) => components.push(spec),
                    Err(issues) => {
                        for (k, m) in issues {
                            errors.push(
                                path,
                                if k.is_empty() {
                                    key.clone()
                                } else {
                                    format!("{key}.{k}")
                                },
                                m,
                            );
                        }
                    }
                }
            }
        }
        // A name is a component's identity (inputs, state, file names): one per pipeline across
        // the three tables.
        for (i, later) in components.iter().enumerate() {
            if let Some(first) = components[..i].iter().find(|c| c.name == later.name) {
                errors.push(
                    path,
                    later.key(),
                    format!(
                        "the name `{}` is also used by {} (`{}`): a component name must be unique \
                         across sources, transforms and sinks",
                        later.name,
                        first.role,
                        first.key()
                    ),
                );
            }
        }
        match pipeline {
            Some(pipeline) if errors.is_empty() => Ok(PipelineFile {
                path: path.to_path_buf(),
                pipeline,
                components,
                figment,
                emptied,
                shard: None,
            }),
            _ => Err(errors),
        }
    }

    /// The directory every pipeline's state lives under: `pipeline.state_dir`, default
    /// `./lake/_state`.
    pub fn state_root(&self) -> PathBuf {
        self.pipeline
            .state_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("./lake/_state"))
    }

    /// This pipeline's own state directory, `<state_root>/<pipeline name>`: its window ledgers
    /// and lock, run summaries, dead letters, removal logs and transforms' state. The one place
    /// that rule is written.
    pub fn pipeline_state_dir(&self) -> PathBuf {
        let shared = self.shared_state_dir();
        match self.worker() {
            Some(shard) => shared.join(shard.dir_name()),
            None => shared,
        }
    }

    /// `<state_root>/<pipeline name>`: the state directory of a run without `--shard`, and the
    /// directory that holds every worker's own (`shard-K-of-N`) for a sharded run.
    pub fn shared_state_dir(&self) -> PathBuf {
        self.state_root().join(&self.pipeline.name)
    }

    /// The shard of a run split among more than one worker (`--shard 0/1` is one worker).
    pub fn worker(&self) -> Option<crate::shard::Shard> {
        self.shard.filter(|s| s.count() > 1)
    }

    /// Where a key's value came from, when an environment variable set it.
    pub fn env_origin(&self, key: &str) -> Option<String> {
        let meta = self.figment.find_metadata(key)?;
        meta.name.contains("environment").then(|| {
            format!(
                "{ENV_PREFIX}{}",
                key.split('.')
                    .map(str::to_ascii_uppercase)
                    .collect::<Vec<_>>()
                    .join("__")
            )
        })
    }

    /// An error at `key` of this file, naming the environment variable that set it, if one did.
    pub fn error(&self, key: String, message: impl Into<String>) -> ConfigError {
        let mut message = message.into();
        if let Some(var) = self.env_origin(&key) {
            message.push_str(&format!(" (set by environment variable {var})"));
        }
        for (emptied, var) in &self.emptied {
            if key == *emptied
                || key.starts_with(&format!("{emptied}."))
                || key.starts_with(&format!("{emptied}["))
            {
                message.push_str(&format!(
                    " (`${{{var}:-}}` expanded to nothing: {var} is not set or empty)"
                ));
            }
        }
        ConfigError {
            file: self.path.clone(),
            key,
            message,
        }
    }
}

/// Refuses a YAML file in which one mapping holds a key twice, naming the key and its line.
fn yaml_duplicate_keys(path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read the file: {e}"))?;
    match serde_yaml::from_str::<serde_yaml::Value>(&text) {
        Ok(_) => Ok(()),
        Err(e) if e.to_string().contains("duplicate entry") => Err(e.to_string()),
        // Other syntax errors are figment's to report, with its key paths.
        Err(_) => Ok(()),
    }
}

/// Names end up in file names and window keys, so they stay plain.
pub fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn component_spec(
    role: Role,
    name: &str,
    body: Value,
) -> Result<ComponentSpec, Vec<(String, String)>> {
    let mut issues = Vec::new();
    if !is_safe_name(name) {
        issues.push((
            String::new(),
            "use letters, digits, `_` and `-` only in component names".into(),
        ));
    }
    let Value::Object(mut map) = body else {
        issues.push((String::new(), "must be a table".into()));
        return Err(issues);
    };
    let type_name = match map.remove("type") {
        Some(Value::String(t)) => t,
        Some(_) => {
            issues.push(("type".into(), "must be a string".into()));
            String::new()
        }
        None => {
            issues.push((
                "type".into(),
                "missing: every component names its `type`".into(),
            ));
            String::new()
        }
    };
    let inputs = match (role, map.remove("inputs")) {
        (Role::Source, Some(_)) => {
            issues.push(("inputs".into(), "a source takes no inputs".into()));
            vec![]
        }
        (Role::Source, None) => vec![],
        (_, None) => {
            issues.push((
                "inputs".into(),
                "missing: list the components this one reads from".into(),
            ));
            vec![]
        }
        (_, Some(Value::Array(items))) => {
            let mut inputs = Vec::new();
            for (i, item) in items.into_iter().enumerate() {
                match item {
                    Value::String(s) => inputs.push(s),
                    _ => issues.push((format!("inputs[{i}]"), "must be a component name".into())),
                }
            }
            if inputs.is_empty() && issues.is_empty() {
                issues.push(("inputs".into(), "must name at least one component".into()));
            }
            inputs
        }
        (_, Some(Value::String(s))) => vec![s],
        (_, Some(_)) => {
            issues.push(("inputs".into(), "must be a list of component names".into()));
            vec![]
        }
    };
    if issues.is_empty() {
        Ok(ComponentSpec {
            role,
            name: name.to_string(),
            type_name,
            inputs,
            options: Value::Object(map),
        })
    } else {
        Err(issues)
    }
}

/// Turns a serde error at some path inside `prefix` into a key path and a message (an unknown
/// field's path already ends in the field).
pub fn error_key<E: fmt::Display>(
    prefix: &str,
    e: &serde_path_to_error::Error<E>,
) -> (String, String) {
    let mut key = prefix.to_string();
    let path = e.path().to_string();
    if path != "." && !path.is_empty() {
        if !path.starts_with('[') {
            key.push('.');
        }
        key.push_str(&path);
    }
    let message = with_suggestion(&e.inner().to_string());
    (key, message)
}

/// The candidate closest to `word` if it is close enough to be what was meant (a typo, a
/// transposition, another case), for "did you mean" in error messages.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    // Jaro-Winkler rewards a shared prefix and forgives transpositions (`langauge`); 0.8 keeps
    // unrelated short names from being offered.
    let word = word.to_lowercase();
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(&word, &c.to_lowercase()), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// `; did you mean `x`?` when a candidate is close to `word`, else nothing: a suffix, so a
/// message keeps its first words (what was wrong) and its list of what exists.
pub fn did_you_mean_note<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    did_you_mean(word, candidates)
        .map(|best| format!("; did you mean `{best}`?"))
        .unwrap_or_default()
}

/// serde words an unknown key or value as ``unknown field `x`, expected one of `a`, `b` `` (or
/// ``unknown variant ...``): adds the closest of the expected names at the end.
fn with_suggestion(message: &str) -> String {
    for what in ["unknown field `", "unknown variant `"] {
        let Some(rest) = message.strip_prefix(what) else {
            continue;
        };
        let Some((word, expected)) = rest.split_once('`') else {
            break;
        };
        // The expected names are the back-quoted words of the rest.
        let candidates = expected.split('`').skip(1).step_by(2);
        return format!("{message}{}", did_you_mean_note(word, candidates));
    }
    message.to_string()
}

/// Expands `${VAR}`, `${VAR:-default}` and `${file:PATH}` in every string of `value`; `$${`
/// stands for a literal `${`. Reports an unset variable without a default, an unreadable file,
/// and an unclosed `${`, at its key.
#[cfg(test)]
fn interpolate(
    value: &mut Value,
    key: &mut String,
    lookup: &dyn Fn(&str) -> Option<String>,
    report: &mut dyn FnMut(String, String),
) {
    interpolate_noting(value, key, lookup, report, &mut |_, _| {})
}

/// [`interpolate`], also telling `note` the key and variable of every `${VAR:-}` that expanded
/// to nothing.
fn interpolate_noting(
    value: &mut Value,
    key: &mut String,
    lookup: &dyn Fn(&str) -> Option<String>,
    report: &mut dyn FnMut(String, String),
    note: &mut dyn FnMut(String, String),
) {
    match value {
        Value::String(s) if s.contains('$') => {
            let mut empty = Vec::new();
            match expand_noting(s, lookup, &mut empty) {
                Ok(expanded) => *s = expanded,
                Err(msg) => report(key.clone(), msg),
            }
            for name in empty {
                note(key.clone(), name);
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = key.len();
                key.push_str(&format!("[{i}]"));
                interpolate_noting(item, key, lookup, report, note);
                key.truncate(len);
            }
        }
        Value::Object(map) => interpolate_map(map, key, lookup, report, note),
        _ => {}
    }
}

fn interpolate_map(
    map: &mut Map<String, Value>,
    key: &mut String,
    lookup: &dyn Fn(&str) -> Option<String>,
    report: &mut dyn FnMut(String, String),
    note: &mut dyn FnMut(String, String),
) {
    for (k, v) in map.iter_mut() {
        let len = key.len();
        if !key.is_empty() {
            key.push('.');
        }
        key.push_str(k);
        interpolate_noting(v, key, lookup, report, note);
        key.truncate(len);
    }
}

/// `${file:PATH}` stands for the content of the file at PATH (Docker and Kubernetes secrets).
const FILE_PREFIX: &str = "file:";

/// The content of a file named by `${file:PATH}`, without its trailing line break (`echo` and
/// most editors end a secret file with one). The message names the path, never the content: the
/// value may be a secret.
fn read_secret_file(path: &str) -> Result<String, String> {
    let expr = format!("${{{FILE_PREFIX}{path}}}");
    if path.is_empty() {
        return Err(format!(
            "`{expr}` names no file: write ${{file:/run/secrets/name}}"
        ));
    }
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read the file of `{expr}`: {e}"))?;
    let text =
        String::from_utf8(bytes).map_err(|_| format!("the file of `{expr}` is not UTF-8 text"))?;
    let text = text.trim_end_matches(['\n', '\r']);
    if text.is_empty() {
        return Err(format!("the file of `{expr}` is empty"));
    }
    Ok(text.to_string())
}

#[cfg(test)]
fn expand(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    expand_noting(s, lookup, &mut Vec::new())
}

/// [`expand`], also naming in `empty` every variable that was unset or empty and whose default
/// is empty (`${VAR:-}`): a value that silently vanished is worth a word when it fails later.
fn expand_noting(
    s: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    empty: &mut Vec<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(escaped) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = escaped;
        } else if let Some(body) = after.strip_prefix("${") {
            let end = body
                .find('}')
                .ok_or_else(|| format!("unclosed `${{` in {s:?}"))?;
            let expr = &body[..end];
            if let Some(file) = expr.strip_prefix(FILE_PREFIX) {
                out.push_str(&read_secret_file(file)?);
                rest = &body[end + 1..];
                continue;
            }
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("`${{{expr}}}` is not a variable name"));
            }
            match (lookup(name).filter(|v| !v.is_empty()), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => {
                    if d.is_empty() {
                        empty.push(name.to_string());
                    }
                    out.push_str(d)
                }
                (None, None) => {
                    return Err(format!(
                        "environment variable {name} is not set (write ${{{name}:-default}} for a default)"
                    ));
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Every component spec grouped by role, for callers that want maps.
pub fn by_name(components: &[ComponentSpec]) -> IndexMap<&str, &ComponentSpec> {
    components.iter().map(|c| (c.name.as_str(), c)).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn env(k: &str) -> Option<String> {
        match k {
            "TOKEN" => Some("abc".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_variables_defaults_and_escapes() {
        assert_eq!(expand("x${TOKEN}y", &env).unwrap(), "xabcy");
        assert_eq!(expand("${MISSING:-dflt}", &env).unwrap(), "dflt");
        assert_eq!(expand("${EMPTY:-dflt}", &env).unwrap(), "dflt");
        assert_eq!(expand("$${TOKEN} and $5", &env).unwrap(), "${TOKEN} and $5");
        assert!(
            expand("${MISSING}", &env)
                .unwrap_err()
                .contains("MISSING is not set")
        );
        assert!(expand("${TOKEN", &env).unwrap_err().contains("unclosed"));
    }

    #[test]
    fn file_references_read_the_file_without_its_line_break() {
        let dir = tempdir();
        let secret = dir.join("secret");
        std::fs::write(&secret, "s3cr3t\r\n").unwrap();
        let reference = format!("${{file:{}}}", secret.display());
        assert_eq!(
            expand(&format!("Bearer {reference}"), &env).unwrap(),
            "Bearer s3cr3t"
        );
        // Not expanded again: a file may hold `${`.
        std::fs::write(&secret, "a${TOKEN}\n").unwrap();
        assert_eq!(expand(&reference, &env).unwrap(), "a${TOKEN}");

        let missing = dir.join("missing");
        let err = expand(&format!("${{file:{}}}", missing.display()), &env).unwrap_err();
        assert!(err.starts_with("cannot read the file of `${file:"), "{err}");
        assert!(err.contains(&missing.display().to_string()), "{err}");
        std::fs::write(&secret, "\n").unwrap();
        assert!(expand(&reference, &env).unwrap_err().ends_with("is empty"));
        std::fs::write(&secret, [0xff, 0xfe]).unwrap();
        let err = expand(&reference, &env).unwrap_err();
        assert!(err.ends_with("is not UTF-8 text"), "{err}");
        assert!(
            expand("${file:}", &env)
                .unwrap_err()
                .contains("names no file")
        );
    }

    #[test]
    fn unknown_names_get_the_closest_known_one() {
        assert_eq!(
            with_suggestion("unknown field `langauge`, expected one of `base_url`, `language`"),
            "unknown field `langauge`, expected one of `base_url`, `language`; did you mean `language`?"
        );
        assert_eq!(
            with_suggestion("unknown variant `zstdd`, expected `zstd` or `snappy`"),
            "unknown variant `zstdd`, expected `zstd` or `snappy`; did you mean `zstd`?"
        );
        // Nothing close, nothing offered; other messages pass through.
        let far = "unknown field `xyz`, expected one of `base_url`, `language`";
        assert_eq!(with_suggestion(far), far);
        assert_eq!(
            with_suggestion("invalid type: integer"),
            "invalid type: integer"
        );
        assert_eq!(
            did_you_mean("Parquet", ["csv", "parquet", "jsonl"]),
            Some("parquet")
        );
        assert_eq!(
            did_you_mean("canonicl", ["canonical", "lw"]),
            Some("canonical")
        );
        assert_eq!(did_you_mean("s3", ["csv", "parquet", "jsonl"]), None);
    }

    #[test]
    fn interpolation_reports_the_key_path() {
        let mut v = serde_json::json!({"sources": {"lw": {"files": ["a", "${NOPE}"]}}});
        let mut errs = vec![];
        interpolate(&mut v, &mut String::new(), &env, &mut |k, m| {
            errs.push((k, m))
        });
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].0, "sources.lw.files[1]");
    }

    fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p
    }

    #[test]
    fn loads_toml_and_yaml_alike() {
        let dir = tempdir();
        let t = write(
            &dir,
            "p.toml",
            "[pipeline]\nname = \"x\"\n[sources.a]\ntype = \"t\"\nk = 1\n[sinks.s]\ntype = \"u\"\ninputs = [\"a\"]\n",
        );
        let y = write(
            &dir,
            "p.yaml",
            "pipeline:\n  name: x\nsources:\n  a:\n    type: t\n    k: 1\nsinks:\n  s:\n    type: u\n    inputs: [a]\n",
        );
        for p in [t, y] {
            let f = PipelineFile::load(&p).unwrap();
            assert_eq!(f.pipeline.name, "x");
            assert_eq!(f.components.len(), 2);
            assert_eq!(f.components[0].options, serde_json::json!({"k": 1}));
            assert_eq!(f.components[1].inputs, vec!["a".to_string()]);
        }
    }

    #[test]
    fn reports_every_structural_error_with_file_and_key() {
        let dir = tempdir();
        let p = write(
            &dir,
            "bad.toml",
            "[pipelin]\nname = 1\n[sources.a]\ninputs = [\"b\"]\n[sinks.s]\ntype = \"u\"\n",
        );
        let errs = PipelineFile::load(&p).unwrap_err();
        let text = errs.to_string();
        assert!(text.contains("bad.toml: pipelin: unknown key"), "{text}");
        assert!(text.contains("bad.toml: pipeline: missing"), "{text}");
        assert!(text.contains("sources.a.type: missing"), "{text}");
        assert!(
            text.contains("sources.a.inputs: a source takes no inputs"),
            "{text}"
        );
        assert!(text.contains("sinks.s.inputs: missing"), "{text}");
    }

    #[test]
    fn unknown_field_is_reported_at_its_own_key() {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct C {
            a: u32,
        }
        let e = serde_path_to_error::deserialize::<_, C>(serde_json::json!({"a": 1, "zz": 2}))
            .unwrap_err();
        let (key, msg) = error_key("sources.x", &e);
        assert_eq!(key, "sources.x.zz");
        assert!(msg.contains("unknown field `zz`"));
    }

    pub(crate) fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "chatlake-core-test-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
