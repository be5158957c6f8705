//! Turns a loaded pipeline file into a checked graph of built stages: every component built by
//! its type (offline), every input known, no cycle, nothing unused, record types that fit.
//! Every problem is collected, so `validate` reports them all at once.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use indexmap::IndexMap;

use crate::config::{ComponentSpec, ConfigError, ConfigErrors, PipelineFile, Role};
use crate::registry::Registry;
use crate::shard::{Shard, Share, ShareTaken};
use crate::stage::{BuildContext, DataKind, EmulatorProfile, Sink, Source, Transform};
use crate::state::StateStore;

/// What the command line adds to building.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    pub emulator: Option<EmulatorProfile>,
    /// Read each source's ledger so it plans only what earlier runs did not commit (`run` and
    /// `plan`; `validate` reads nothing).
    pub use_state: bool,
    pub start: Option<chrono::DateTime<chrono::FixedOffset>>,
    pub end: Option<chrono::DateTime<chrono::FixedOffset>>,
    pub now: Option<chrono::DateTime<chrono::Utc>>,
    /// For a worker of a sharded run whose state is in an object store: where copies of the
    /// other workers' ledgers were fetched to (see [`StateStore::with_peers_in`]).
    pub peer_ledgers: Option<PathBuf>,
}

pub enum Stage {
    Source(Box<dyn Source>),
    Transform(Box<dyn Transform>),
    Sink(Box<dyn Sink>),
}

/// One built component and where it sits.
pub struct Node {
    pub spec: ComponentSpec,
    pub stage: Stage,
    /// Record type it emits (sources, transforms).
    pub output: Option<DataKind>,
}

/// A checked pipeline, ready to plan or run. Nodes are in dependency order: every node comes
/// after all of its inputs.
pub struct Pipeline {
    pub file: PipelineFile,
    pub nodes: Vec<Node>,
}

impl Pipeline {
    pub fn name(&self) -> &str {
        &self.file.pipeline.name
    }

    /// See [`PipelineFile::pipeline_state_dir`].
    pub fn pipeline_state_dir(&self) -> PathBuf {
        self.file.pipeline_state_dir()
    }

    /// The window ledgers of this pipeline.
    pub fn state(&self) -> StateStore {
        StateStore::new(self.pipeline_state_dir())
    }

    /// Builds and checks `file`.
    pub fn build(
        file: PipelineFile,
        registry: &Registry,
        opts: &BuildOptions,
    ) -> Result<Pipeline, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let now = opts.now.unwrap_or_else(chrono::Utc::now);

        // Names are global across the three tables: inputs refer to them.
        let mut seen: HashMap<&str, Role> = HashMap::new();
        for c in &file.components {
            if let Some(first) = seen.insert(&c.name, c.role) {
                errors.0.push(file.error(
                    c.key(),
                    format!(
                        "the name `{}` is also used by a {first}; names must be unique",
                        c.name
                    ),
                ));
            }
        }

        let mut store = StateStore::new(file.pipeline_state_dir());
        if let Some(peers) = &opts.peer_ledgers {
            store = store.with_peers_in(peers);
        }
        let committed_by = if opts.use_state {
            match store.committed_runs() {
                Ok(keys) => Arc::new(keys),
                Err(e) => {
                    errors
                        .0
                        .push(file.error(String::new(), format!("cannot read the state: {e}")));
                    return Err(errors);
                }
            }
        } else {
            Arc::default()
        };
        let committed: Arc<std::collections::HashSet<String>> =
            Arc::new(committed_by.keys().cloned().collect());
        let mut built: IndexMap<String, Node> = IndexMap::new();
        for spec in &file.components {
            let state = if opts.use_state && spec.role == Role::Source {
                match store.load_with_peers(&spec.name) {
                    Ok(s) => Arc::new(s),
                    Err(e) => {
                        errors
                            .0
                            .push(file.error(spec.key(), format!("cannot read its state: {e}")));
                        continue;
                    }
                }
            } else {
                Arc::default()
            };
            let cx = BuildContext {
                name: spec.name.clone(),
                pipeline: file.pipeline.name.clone(),
                emulator: opts.emulator.clone(),
                start: opts.start,
                end: opts.end,
                now,
                state,
                state_dir: store.dir().to_path_buf(),
                committed: committed.clone(),
                committed_by: committed_by.clone(),
                storage: file.pipeline.storage.clone(),
            };
            let stage = match spec.role {
                Role::Source => registry.build_source(spec, &cx).map(Stage::Source),
                Role::Transform => registry.build_transform(spec, &cx).map(Stage::Transform),
                Role::Sink => registry.build_sink(spec, &cx).map(Stage::Sink),
            };
            match stage {
                Ok(stage) => {
                    let output = match &stage {
                        Stage::Source(s) => Some(s.output_kind()),
                        _ => None,
                    };
                    built.insert(
                        spec.name.clone(),
                        Node {
                            spec: spec.clone(),
                            stage,
                            output,
                        },
                    );
                }
                Err(e) => errors.0.push(file.error(e.key, e.message)),
            }
        }

        check_edges(&file, &mut errors);
        let order = match topological_order(&file) {
            Ok(order) => order,
            Err(cycle) => {
                errors.0.push(cycle);
                return Err(errors);
            }
        };

        // Record types, in dependency order.
        let mut nodes = Vec::new();
        for name in order {
            let Some(mut node) = built.shift_remove(&name) else {
                continue;
            };
            let input_kinds: Vec<(String, DataKind)> = node
                .spec
                .inputs
                .iter()
                .filter_map(|i| {
                    nodes
                        .iter()
                        .find(|n: &&Node| &n.spec.name == i)
                        .and_then(|n| n.output.clone().map(|k| (i.clone(), k)))
                })
                .collect();
            if input_kinds.len() == node.spec.inputs.len() && !input_kinds.is_empty() {
                let first = &input_kinds[0].1;
                // A transform may take several record types if it makes one kind of each
                // (`normalize` fed LINE WORKS, Zoom and Qlara sources at once).
                let one_output = match &node.stage {
                    Stage::Transform(t) => {
                        let outputs: Vec<_> = input_kinds
                            .iter()
                            .map(|(_, k)| t.output_kind(k).ok())
                            .collect();
                        outputs[0].is_some() && outputs.iter().all(|o| o == &outputs[0])
                    }
                    _ => false,
                };
                if let Some((other, kind)) = input_kinds
                    .iter()
                    .find(|(_, k)| k != first)
                    .filter(|_| !one_output)
                {
                    errors.0.push(file.error(
                        format!("{}.inputs", node.spec.key()),
                        format!(
                            "inputs carry different record types: `{}` gives {first}, `{other}` gives {kind}; \
                             put a normalize transform in front so both are canonical messages",
                            input_kinds[0].0
                        ),
                    ));
                } else {
                    match &node.stage {
                        Stage::Transform(t) => match t.output_kind(first) {
                            Ok(k) => node.output = Some(k),
                            Err(why) => errors
                                .0
                                .push(file.error(format!("{}.inputs", node.spec.key()), why)),
                        },
                        Stage::Sink(s) => {
                            if let Err(why) = s.accepts(first) {
                                errors
                                    .0
                                    .push(file.error(format!("{}.inputs", node.spec.key()), why));
                            }
                        }
                        Stage::Source(_) => {}
                    }
                }
            }
            nodes.push(node);
        }

        // A transform that wants provider records whole (normalize `raw = true`) gets them from
        // every source above it, through any transform between; sources are told before they
        // run, so the others pay nothing.
        let mut raw_wanted_by: HashMap<String, String> = HashMap::new();
        for node in nodes.iter().rev() {
            let wanted = match &node.stage {
                Stage::Transform(t) if t.wants_raw_records() => Some(node.spec.name.clone()),
                _ => raw_wanted_by.get(&node.spec.name).cloned(),
            };
            if let Some(by) = wanted {
                for input in &node.spec.inputs {
                    raw_wanted_by
                        .entry(input.clone())
                        .or_insert_with(|| by.clone());
                }
            }
        }
        for node in &mut nodes {
            if let (Stage::Source(s), Some(by)) =
                (&mut node.stage, raw_wanted_by.get(&node.spec.name))
                && let Err(why) = s.keep_raw_records()
            {
                errors.0.push(file.error(
                    node.spec.key(),
                    format!("`{by}` wants the provider's records whole (`raw = true`), but {why}"),
                ));
            }
        }

        // A sink fed by a transform that replaces rows of earlier runs must be able to take
        // those rows out of its files.
        let mut replacers: HashMap<String, Vec<String>> = HashMap::new();
        for node in &nodes {
            let mut upstream: Vec<String> = node
                .spec
                .inputs
                .iter()
                .flat_map(|i| replacers.get(i).cloned().unwrap_or_default())
                .collect();
            if let Stage::Transform(t) = &node.stage
                && t.replaces_rows_of_earlier_runs()
            {
                upstream.push(node.spec.name.clone());
            }
            upstream.sort();
            upstream.dedup();
            if let Stage::Sink(s) = &node.stage
                && let Some(t) = upstream.first()
                && let Err(why) = s.removes_rows()
            {
                errors.0.push(file.error(
                    format!("{}.inputs", node.spec.key()),
                    format!(
                        "`{t}` replaces rows that earlier runs loaded (dedupe keep = \"latest\" with across_runs), \
                         but this sink cannot take them out of its files: {why}"
                    ),
                ));
            }
            replacers.insert(node.spec.name.clone(), upstream);
        }

        check_sink_paths(&file, &nodes, &mut errors);

        if let Some(shard) = file.worker() {
            take_shares(&mut nodes, shard);
        }

        if errors.is_empty() {
            Ok(Pipeline { file, nodes })
        } else {
            Err(errors)
        }
    }
}

/// Tells every source which share of its windows this worker loads (see [`crate::shard`]). A
/// source feeding a transform that compares windows (dedupe), through any transform between,
/// keeps a message's copies together. A source that keeps all of its windows together is
/// replaced, on every worker but its own, by one that loads nothing.
fn take_shares(nodes: &mut [Node], shard: Shard) {
    let mut compared_below: HashSet<String> = HashSet::new();
    for node in nodes.iter().rev() {
        let compares = compared_below.contains(&node.spec.name)
            || matches!(&node.stage, Stage::Transform(t) if t.compares_windows());
        if compares {
            compared_below.extend(node.spec.inputs.iter().cloned());
        }
    }
    for node in nodes.iter_mut() {
        let Stage::Source(source) = &mut node.stage else {
            continue;
        };
        let share = Share {
            shard,
            keep_copies_together: compared_below.contains(&node.spec.name),
        };
        let taken = source.share(&share);
        if taken == ShareTaken::Whole && !shard.takes_source(&node.spec.name) {
            let worker = Shard::worker_of_source(&node.spec.name, shard.count());
            node.stage = Stage::Source(Box::new(IdleSource {
                kind: source.output_kind(),
                note: format!(
                    "every window of `{}` is loaded by worker {worker}/{} (they stay on one worker); \
                     this worker loads none",
                    node.spec.name,
                    shard.count()
                ),
            }));
        }
    }
}

/// A source on a worker that does not load it: sends nothing, so its sinks commit nothing of it.
struct IdleSource {
    kind: DataKind,
    note: String,
}

#[async_trait::async_trait]
impl Source for IdleSource {
    fn output_kind(&self) -> DataKind {
        self.kind.clone()
    }

    fn plan(&self) -> crate::Result<Vec<crate::PlannedWindow>> {
        Ok(Vec::new())
    }

    fn plan_notes(&self) -> Vec<String> {
        vec![self.note.clone()]
    }

    async fn run(self: Box<Self>, _cx: crate::SourceContext) -> crate::Result<()> {
        tracing::info!("{}", self.note);
        Ok(())
    }
}

impl Pipeline {
    /// What `validate` (and `run`) warn about without refusing the file: a sink path that holds
    /// the state directory. Its files are safe (sinks delete only their own file names) and no
    /// data glob matches a state file's name, but a reader given the directory itself sees them.
    pub fn warnings(&self) -> Vec<ConfigError> {
        let state = lexical_absolute(&self.file.state_root());
        let mut out = Vec::new();
        for node in &self.nodes {
            let Stage::Sink(sink) = &node.stage else {
                continue;
            };
            let Some(location) = sink.location() else {
                continue;
            };
            let path = lexical_absolute(&location.path);
            if state.starts_with(&path) && state != path {
                out.push(self.file.error(
                    format!("{}.path", node.spec.key()),
                    format!(
                        "`{}` holds the state directory `{}` (state, run summaries and dead \
                         letters): keep the state directory outside sink paths \
                         (`pipeline.state_dir`) so that a reader of the sink's directory sees \
                         only its data",
                        location.path.display(),
                        self.file.state_root().display()
                    ),
                ));
            }
        }
        out
    }
}

/// A path made absolute against the working directory, `.` and `..` resolved by name (no I/O:
/// `validate` runs offline and the directories need not exist yet).
fn lexical_absolute(path: &std::path::Path) -> PathBuf {
    use std::path::Component;
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut out = PathBuf::new();
    for c in absolute.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Sink paths that would lose or mix data: the file-system root or the home directory (a sink
/// deletes, when it starts, its files of windows the ledger does not list under its whole
/// path), the state directory or a place inside it, a parent of a state directory readers would
/// see (a name without a leading `_` or `.` between them), and two sinks of one format on one
/// path (readers of one would read the other's rows).
fn check_sink_paths(file: &PipelineFile, nodes: &[Node], errors: &mut ConfigErrors) {
    let state = lexical_absolute(&file.state_root());
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| lexical_absolute(std::path::Path::new(&h)));
    let mut seen: Vec<(PathBuf, String, String)> = Vec::new();
    for node in nodes {
        let Stage::Sink(sink) = &node.stage else {
            continue;
        };
        let Some(location) = sink.location() else {
            continue;
        };
        let key = format!("{}.path", node.spec.key());
        let shown = location.path.display();
        let path = lexical_absolute(&location.path);
        let problem = if path.parent().is_none() {
            Some(format!(
                "`{shown}` is the file-system root: a sink removes files of windows its ledger \
                 does not list under its whole path; give it a directory of its own"
            ))
        } else if home.as_ref() == Some(&path) {
            Some(format!(
                "`{shown}` is the home directory: a sink removes files of windows its ledger \
                 does not list under its whole path; give it a directory of its own"
            ))
        } else if path.starts_with(&state) {
            Some(format!(
                "`{shown}` is inside the state directory `{}`: keep data and state apart",
                file.state_root().display()
            ))
        } else if state.starts_with(&path)
            && !state
                .strip_prefix(&path)
                .expect("checked above")
                .components()
                .any(|c| {
                    let name = c.as_os_str().to_string_lossy();
                    name.starts_with('_') || name.starts_with('.')
                })
        {
            Some(format!(
                "`{shown}` holds the state directory `{}`, whose files readers of the sink's \
                 directory would see: move `pipeline.state_dir` out of it (or into a directory \
                 whose name starts with `_`, which Hive readers skip)",
                file.state_root().display()
            ))
        } else if let Some((_, other, _)) = seen
            .iter()
            .find(|(p, _, ext)| *p == path && *ext == location.extension)
        {
            Some(format!(
                "`{shown}` is also the path of `{other}`, with the same format (`{}` files): \
                 a reader of one would read the other's rows; give each sink its own path",
                location.extension
            ))
        } else {
            None
        };
        if let Some(message) = problem {
            errors.0.push(file.error(key, message));
        }
        seen.push((path, node.spec.key(), location.extension));
    }
}

/// Who reaches whom in a checked pipeline: what the runtime needs to count a window's markers,
/// commit it once every sink has it, route removal logs and size a source's fetching.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    /// The sources whose windows reach each node (a source reaches itself): along how many
    /// inputs a window's marker arrives.
    reached_by: HashMap<String, HashSet<String>>,
    /// How many sinks each source's windows reach: a window is in the ledger once that many
    /// sinks have committed it.
    pub sinks_per_source: HashMap<String, usize>,
    /// The sinks downstream of each transform: where its removal logs go.
    pub removal_targets: HashMap<String, Vec<String>>,
    /// Every node above a transform that holds every row until its input ends (dedupe
    /// `keep = "latest"`): nothing below such a source works while it fetches.
    pub rows_held_below: HashSet<String>,
}

impl Topology {
    /// The topology of `pipeline`, whose nodes come in dependency order.
    pub fn of(pipeline: &Pipeline) -> Topology {
        // Every stage upstream of each node.
        let mut upstream: HashMap<String, HashSet<String>> = HashMap::new();
        for node in &pipeline.nodes {
            let mut set = HashSet::new();
            for input in &node.spec.inputs {
                set.insert(input.clone());
                set.extend(upstream.get(input).cloned().unwrap_or_default());
            }
            upstream.insert(node.spec.name.clone(), set);
        }
        let sources: HashSet<&str> = pipeline
            .nodes
            .iter()
            .filter(|n| n.spec.role == Role::Source)
            .map(|n| n.spec.name.as_str())
            .collect();
        let reached_by: HashMap<String, HashSet<String>> = upstream
            .iter()
            .map(|(node, above)| {
                let mut set: HashSet<String> = above
                    .iter()
                    .filter(|n| sources.contains(n.as_str()))
                    .cloned()
                    .collect();
                if sources.contains(node.as_str()) {
                    set.insert(node.clone());
                }
                (node.clone(), set)
            })
            .collect();

        let mut sinks_per_source: HashMap<String, usize> = HashMap::new();
        for node in pipeline.nodes.iter().filter(|n| n.spec.role == Role::Sink) {
            for source in reached_by.get(&node.spec.name).into_iter().flatten() {
                *sinks_per_source.entry(source.clone()).or_insert(0) += 1;
            }
        }
        let sinks_below = |transform: &str| -> Vec<String> {
            pipeline
                .nodes
                .iter()
                .filter(|n| n.spec.role == Role::Sink && upstream[&n.spec.name].contains(transform))
                .map(|n| n.spec.name.clone())
                .collect()
        };
        let removal_targets: HashMap<String, Vec<String>> = pipeline
            .nodes
            .iter()
            .filter(|n| n.spec.role == Role::Transform)
            .map(|n| (n.spec.name.clone(), sinks_below(&n.spec.name)))
            .collect();
        let rows_held_below: HashSet<String> = pipeline
            .nodes
            .iter()
            .filter(|n| matches!(&n.stage, Stage::Transform(t) if t.holds_rows_until_finish()))
            .flat_map(|n| upstream[&n.spec.name].iter().cloned())
            .collect();
        Topology {
            reached_by,
            sinks_per_source,
            removal_targets,
            rows_held_below,
        }
    }

    /// For each source, along how many of a node's `inputs` its window markers arrive.
    pub fn expected_markers(&self, inputs: &[String]) -> HashMap<String, usize> {
        let mut expected = HashMap::new();
        let distinct: HashSet<&String> = inputs.iter().collect();
        for input in distinct {
            for source in self.reached_by.get(input).into_iter().flatten() {
                *expected.entry(source.clone()).or_insert(0) += 1;
            }
        }
        expected
    }
}

fn check_edges(file: &PipelineFile, errors: &mut ConfigErrors) {
    let roles: HashMap<&str, Role> = file
        .components
        .iter()
        .map(|c| (c.name.as_str(), c.role))
        .collect();
    let mut used: HashSet<&str> = HashSet::new();
    for c in &file.components {
        for (i, input) in c.inputs.iter().enumerate() {
            let key = format!("{}.inputs[{i}]", c.key());
            match roles.get(input.as_str()) {
                None => {
                    let mut known: Vec<&str> = file
                        .components
                        .iter()
                        .filter(|k| k.role != Role::Sink)
                        .map(|k| k.name.as_str())
                        .collect();
                    known.sort();
                    errors.0.push(file.error(
                        key,
                        format!(
                            "unknown component `{input}`; sources and transforms are: {}{}",
                            known.join(", "),
                            crate::config::did_you_mean_note(input, known.iter().copied())
                        ),
                    ));
                }
                Some(Role::Sink) => errors.0.push(file.error(
                    key,
                    format!("`{input}` is a sink; a sink has no output to read"),
                )),
                Some(_) if input == &c.name => errors
                    .0
                    .push(file.error(key, "a component cannot read its own output")),
                Some(_) => {
                    used.insert(input);
                }
            }
        }
    }
    for c in &file.components {
        if c.role != Role::Sink && !used.contains(c.name.as_str()) {
            errors.0.push(file.error(
                c.key(),
                format!(
                    "`{}` is not used: no transform or sink lists it in `inputs`",
                    c.name
                ),
            ));
        }
    }
    if !file.components.iter().any(|c| c.role == Role::Sink) {
        errors
            .0
            .push(file.error("sinks".into(), "a pipeline needs at least one sink"));
    }
}

/// Kahn's algorithm over the known edges; a cycle is reported with its members.
fn topological_order(file: &PipelineFile) -> Result<Vec<String>, ConfigError> {
    let names: HashSet<&str> = file.components.iter().map(|c| c.name.as_str()).collect();
    let mut indegree: IndexMap<&str, usize> = file
        .components
        .iter()
        .map(|c| (c.name.as_str(), 0))
        .collect();
    let mut consumers: HashMap<&str, Vec<&str>> = HashMap::new();
    for c in &file.components {
        let mut distinct = HashSet::new();
        for i in c
            .inputs
            .iter()
            .filter(|i| names.contains(i.as_str()) && *i != &c.name)
        {
            if distinct.insert(i.as_str()) {
                *indegree
                    .get_mut(c.name.as_str())
                    .expect("every component is in indegree") += 1;
                consumers.entry(i.as_str()).or_default().push(&c.name);
            }
        }
    }
    let mut ready: Vec<&str> = indegree
        .iter()
        .filter(|(_, d)| **d == 0)
        .map(|(n, _)| *n)
        .collect();
    ready.reverse();
    let mut order = Vec::new();
    while let Some(n) = ready.pop() {
        order.push(n.to_string());
        for c in consumers.get(n).into_iter().flatten() {
            let d = indegree.get_mut(c).expect("consumer is a component");
            *d -= 1;
            if *d == 0 {
                ready.push(c);
            }
        }
    }
    if order.len() == file.components.len() {
        return Ok(order);
    }
    let mut in_cycle: Vec<&str> = indegree
        .iter()
        .filter(|(_, d)| **d > 0)
        .map(|(n, _)| *n)
        .collect();
    // Left over are the cycle and whatever hangs below it: peel off members that feed nothing left.
    loop {
        let before = in_cycle.len();
        let rest = in_cycle.clone();
        in_cycle.retain(|n| {
            consumers
                .get(n)
                .is_some_and(|cs| cs.iter().any(|c| rest.contains(c)))
        });
        if in_cycle.len() == before {
            break;
        }
    }
    in_cycle.sort();
    let first = file
        .components
        .iter()
        .find(|c| in_cycle.contains(&c.name.as_str()))
        .expect("a cycle has members");
    Err(file.error(
        format!("{}.inputs", first.key()),
        format!("the inputs form a cycle through {}", in_cycle.join(", ")),
    ))
}
