//! The runtime's layering, checked on its source so that it cannot slide back.
//!
//! # Why
//!
//! `eventbus/src` is organised in layers: a module uses only modules of its own layer or below,
//! never one above. Vocabulary (errors, event traits, retry policy) sits at the bottom and does no
//! I/O; the wire format, settings and telemetry sit on it; then the transport seam with its
//! backends; the handler API; per-delivery logic; scheduling; and the facades users call on top.
//! Each layer can then be read, changed and unit-tested knowing only the layers below it, and a
//! new backend, broker or facade lands in one place. Without a check the crate grows flat again:
//! most modules importing each other in one cycle, and Redis calls spread over many files, so
//! that no part can be tested without a server and no second transport can be added.
//!
//! This file is where the layering is written down: change the table ([`LAYERS`]) and this
//! explanation together.
//!
//! # The rules this test enforces
//!
//! A *top-level module* is the first path segment under `src/`: `src/bus.rs` is `bus`,
//! `src/transport/redis/conn.rs` is `transport`. `src/lib.rs` (the crate root: `mod` lines and
//! re-exports) is exempt from rules 2 and 3.
//!
//! 1. **Only the Redis backend names Redis.** No path starting with `redis::` (the redis crate)
//!    outside `src/transport/redis/`. Comments, doc comments and string literals do not count;
//!    a child module reached as `self::redis::` or through a `use ...::redis;` is not the crate.
//! 2. **Imports go down.** A file of top-level module M may import a top-level module X only if
//!    X's layer is at most M's layer ([`LAYERS`]). Imports are `use` declarations (also
//!    `pub(crate) use` and grouped `use crate::{a, b::c}`) and `crate::`, `self::`, `super::`
//!    and `eventbus::` paths anywhere in the code, test modules included; a name re-exported by
//!    `lib.rs` (`crate::Bus`) counts as an import of the module that defines it. A top-level
//!    module that is not in the table is itself a violation: every module gets a layer when it
//!    is created.
//! 3. **No cycles.** Same-layer imports are allowed, but the graph of imports between top-level
//!    modules must have no cycle. Each group of modules that reach each other is reported with
//!    the shortest cycle through each of them (`a -> b -> a`) and the line behind each step.
//! 4. **Backends stay apart.** Under `src/transport/`, the backends ([`BACKENDS`]) do not import
//!    each other; they share only the seam (`transport/mod.rs` and its neutral types) and the
//!    layers below. (That nothing under `transport/` imports the handler API, the pipeline or the
//!    runtime is rule 2.)
//!
//! The checker is a small Rust lexer (comments, strings, chars, raw strings, lifetimes) and a
//! reader of `use` trees and paths: std only, no `syn`. Its own tests at the bottom feed it small
//! sources, so this test cannot pass by finding nothing.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::path::Path;

/// The layer of every top-level module of `src/`, bottom (0) to top (6); why these layers: the
/// explanation at the top of this file. A module imports only from its own layer or below. Add
/// a new top-level module here, in the lowest layer that holds everything it uses; if it needs a
/// higher layer, it belongs higher (or the dependency is the wrong way round).
const LAYERS: &[(&str, u8)] = &[
    // L0 vocabulary, no I/O: errors, the event traits and their registration, handler state,
    // the retry policy.
    ("error", 0),
    ("event", 0),
    ("state", 0),
    ("retry", 0),
    // L1 wire, settings, observability: the envelope (encode/decode), configuration and its
    // validation, telemetry (stats, health, metrics, propagation).
    ("envelope", 1),
    ("config", 1),
    ("telemetry", 1),
    // L2 the transport seam and its backends (`transport/redis/` is the only place that names
    // `redis::`; `transport/memory/` is the in-process backend).
    ("transport", 2),
    // L3 the handler API: publishing, the handler's context, extractors, handler registration.
    ("publish", 3),
    ("context", 3),
    ("extract", 3),
    ("handler", 3),
    // L4 per-delivery logic: bytes in, an outcome out; no I/O.
    ("pipeline", 4),
    // L5 scheduling: prefetch window, concurrency, drain, broadcast lanes.
    ("runtime", 5),
    // L6 facades: what users and operators call.
    ("dlq", 6),
    ("admin", 6),
    ("testing", 6),
    ("bus", 6),
    ("private", 6),
];

/// The transport backends: children of `transport/` that may not import each other.
const BACKENDS: &[&str] = &["redis", "memory"];

#[test]
fn eventbus_src_keeps_its_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = read_sources(&src, &src);
    assert!(
        files.iter().any(|f| f.path == "lib.rs") && files.len() > 5,
        "found no eventbus sources under {}: {:?}",
        src.display(),
        files.iter().map(|f| &f.path).collect::<Vec<_>>()
    );
    // A lexer that misreads a literal or a comment would misplace every path after it.
    let misread: Vec<&str> = files
        .iter()
        .filter(|f| !brackets_balance(&lex(&f.text)))
        .map(|f| f.path.as_str())
        .collect();
    assert!(
        misread.is_empty(),
        "the checker's lexer lost track of the brackets in {misread:?}: fix it before trusting \
         its report"
    );
    let report = check(&files);
    assert!(report.is_empty(), "{report}");
}

/// Every `.rs` file under `dir`, with its path relative to `root` (`/`-separated), sorted.
fn read_sources(root: &Path, dir: &Path) -> Vec<Source> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| {
            e.unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
                .path()
        })
        .collect();
    entries.sort();
    let mut out = Vec::new();
    for path in entries {
        if path.is_dir() {
            out.extend(read_sources(root, &path));
        } else if path.extension().is_some_and(|x| x == "rs") {
            let rel = path.strip_prefix(root).expect("under the source root");
            let rel: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            out.push(Source {
                path: rel.join("/"),
                text,
            });
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The checker
// ---------------------------------------------------------------------------------------------

/// One source file: its path under `src/` (`transport/redis/conn.rs`) and its text.
struct Source {
    path: String,
    text: String,
}

/// One place in the source: `src/<file>:<line>` and the path written there.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Hit {
    file: String,
    line: usize,
    text: String,
}

impl fmt::Display for Hit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "src/{}:{}: {}", self.file, self.line, self.text)
    }
}

/// Top-level modules that all reach each other through imports (a strongly connected component
/// of the import graph), the shortest cycle through each of them, and the imports behind those
/// cycles.
#[derive(Debug)]
struct Cycles {
    modules: Vec<String>,
    /// Each cycle starts at its smallest module, which is not repeated at the end.
    cycles: Vec<Vec<String>>,
    /// `(from, to)` → the first import of `to` in `from`.
    edges: BTreeMap<(String, String), Hit>,
}

/// Every violation found, by rule.
#[derive(Debug, Default)]
struct Report {
    /// Rule 1: `redis::` paths outside `src/transport/redis/`.
    redis_paths: Vec<Hit>,
    /// Rule 2: top-level modules missing from [`LAYERS`], with their files.
    unlayered: BTreeMap<String, Vec<String>>,
    /// Rule 2: imports from a higher layer.
    upward: Vec<Hit>,
    /// Rule 3: import cycles, by group of modules that reach each other.
    cycles: Vec<Cycles>,
    /// Rule 4: backends importing each other.
    backends: Vec<Hit>,
}

impl Report {
    fn count(&self) -> usize {
        self.redis_paths.len()
            + self.unlayered.len()
            + self.upward.len()
            + self.cycles.iter().map(|g| g.cycles.len()).sum::<usize>()
            + self.backends.len()
    }

    fn is_empty(&self) -> bool {
        self.count() == 0
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "eventbus/src has {} layering violation(s); the rules and the layer table are at \
             the top of eventbus/tests/layers.rs.",
            self.count()
        )?;
        if !self.redis_paths.is_empty() {
            writeln!(
                f,
                "\n[rule 1] `redis::` outside src/transport/redis/ ({}): move the Redis calls \
                 behind the transport seam",
                self.redis_paths.len()
            )?;
            for hit in &self.redis_paths {
                writeln!(f, "  {hit}")?;
            }
        }
        if !self.unlayered.is_empty() || !self.upward.is_empty() {
            writeln!(
                f,
                "\n[rule 2] modules without a layer, and imports from a higher layer ({})",
                self.unlayered.len() + self.upward.len()
            )?;
            for (module, files) in &self.unlayered {
                writeln!(
                    f,
                    "  module `{module}` has no layer: add it to the table ({})",
                    files
                        .iter()
                        .map(|p| format!("src/{p}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )?;
            }
            for hit in &self.upward {
                writeln!(f, "  {hit}")?;
            }
        }
        if !self.cycles.is_empty() {
            writeln!(
                f,
                "\n[rule 3] import cycles between top-level modules ({})",
                self.cycles.iter().map(|g| g.cycles.len()).sum::<usize>()
            )?;
            for group in &self.cycles {
                writeln!(
                    f,
                    "  these {} modules all reach each other: {}",
                    group.modules.len(),
                    group.modules.join(", ")
                )?;
                writeln!(f, "  the shortest cycle through each of them:")?;
                for cycle in &group.cycles {
                    let first = cycle.first().map(String::as_str).unwrap_or_default();
                    writeln!(f, "    {} -> {first}", cycle.join(" -> "))?;
                }
                writeln!(f, "  the imports behind these cycles:")?;
                for ((from, to), hit) in &group.edges {
                    writeln!(f, "    {from} -> {to}: {hit}")?;
                }
            }
        }
        if !self.backends.is_empty() {
            writeln!(
                f,
                "\n[rule 4] transport backends importing each other ({})",
                self.backends.len()
            )?;
            for hit in &self.backends {
                writeln!(f, "  {hit}")?;
            }
        }
        Ok(())
    }
}

/// Checks `files` (paths relative to `src/`) against the four rules and the [`LAYERS`] table.
fn check(files: &[Source]) -> Report {
    let layer: BTreeMap<&str, u8> = LAYERS.iter().copied().collect();
    let parsed: Vec<ParsedFile> = files.iter().map(ParsedFile::parse).collect();
    let top_level: BTreeSet<String> = parsed
        .iter()
        .filter_map(|p| p.module.first().cloned())
        .collect();
    let root = parsed
        .iter()
        .find(|p| p.module.is_empty())
        .map(|p| p.bindings.clone())
        .unwrap_or_default();
    let crate_ = Crate {
        top_level: &top_level,
        root: &root,
    };

    let mut report = Report::default();
    // (file, line, "`from` (Lf) imports `to` (Lt)") -> the paths written there
    let mut upward: BTreeMap<(String, usize, String), Vec<String>> = BTreeMap::new();
    // from -> to -> the first line behind that edge
    let mut graph: BTreeMap<String, BTreeMap<String, Hit>> = BTreeMap::new();
    for file in &parsed {
        let hit = |line: usize, text: &str| Hit {
            file: file.path.clone(),
            line,
            text: text.to_owned(),
        };
        let in_redis_backend = file
            .module
            .starts_with(&["transport".into(), "redis".into()]);

        // Rule 1.
        if !in_redis_backend {
            let mut by_line: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
            for r in &file.refs {
                if r.names_redis_crate {
                    by_line.entry(r.line).or_default().push(&r.text);
                }
            }
            for (line, texts) in by_line {
                report.redis_paths.push(hit(line, &texts.join(", ")));
            }
        }

        let Some(from) = file.module.first() else {
            continue; // lib.rs: exempt from rules 2 to 4
        };
        if !layer.contains_key(from.as_str()) {
            report
                .unlayered
                .entry(from.clone())
                .or_default()
                .push(file.path.clone());
        }
        let backend = (from == "transport")
            .then(|| file.module.get(1))
            .flatten()
            .filter(|b| BACKENDS.contains(&b.as_str()));

        for r in &file.refs {
            let Some(target) = r.target.as_ref().and_then(|t| crate_.canonical(t)) else {
                continue;
            };
            // Rule 4: every reference counts, also one through a local name.
            if let Some(own) = backend
                && target.first().map(String::as_str) == Some("transport")
                && let Some(other) = target.get(1)
                && other != own
                && BACKENDS.contains(&other.as_str())
            {
                report.backends.push(hit(
                    r.line,
                    &format!("transport/{own} imports transport/{other}: {}", r.text),
                ));
            }
            if !r.import {
                continue;
            }
            let to = &target[0];
            if to == from {
                continue;
            }
            graph
                .entry(from.clone())
                .or_default()
                .entry(to.clone())
                .or_insert_with(|| hit(r.line, &r.text));
            // Rule 2 (a module without a layer is reported once, above).
            if let (Some(&lf), Some(&lt)) = (layer.get(from.as_str()), layer.get(to.as_str()))
                && lt > lf
            {
                upward
                    .entry((
                        file.path.clone(),
                        r.line,
                        format!("`{from}` (L{lf}) imports `{to}` (L{lt})"),
                    ))
                    .or_default()
                    .push(r.text.clone());
            }
        }
    }
    report.upward = upward
        .into_iter()
        .map(|((file, line, what), paths)| Hit {
            file,
            line,
            text: format!("{what}: {}", paths.join(", ")),
        })
        .collect();
    report.backends.sort();
    report.cycles = cycles(&graph);
    report
}

/// What the crate root tells about names: the top-level modules, and the names `lib.rs` binds
/// (its `mod`s and re-exports).
struct Crate<'a> {
    top_level: &'a BTreeSet<String>,
    root: &'a Bindings,
}

impl Crate<'_> {
    /// The path from the crate root, with names re-exported by `lib.rs` replaced by where they
    /// are defined, so it starts with a top-level module; `None` for the root's own items.
    fn canonical(&self, path: &[String]) -> Option<Vec<String>> {
        let mut path = path.to_vec();
        for _ in 0..8 {
            let first = path.first()?;
            if self.top_level.contains(first) {
                return Some(path);
            }
            match self.root.get(&(Vec::new(), first.clone())) {
                Some(Binding::Crate(to)) if to.as_slice() != &path[..1] => {
                    path = to.iter().chain(&path[1..]).cloned().collect();
                }
                _ => return None,
            }
        }
        None
    }
}

/// Every group of modules that reach each other, with the shortest cycle through each member.
fn cycles(graph: &BTreeMap<String, BTreeMap<String, Hit>>) -> Vec<Cycles> {
    let mut out = Vec::new();
    for modules in strongly_connected(graph) {
        if modules.len() < 2 {
            continue;
        }
        let members: BTreeSet<&String> = modules.iter().collect();
        let cycles: BTreeSet<Vec<String>> = modules
            .iter()
            .filter_map(|m| shortest_cycle(graph, &members, m))
            .collect();
        let edges = cycles
            .iter()
            .flat_map(|c| (0..c.len()).map(move |i| (&c[i], &c[(i + 1) % c.len()])))
            .map(|(from, to)| ((from.clone(), to.clone()), graph[from][to].clone()))
            .collect();
        out.push(Cycles {
            modules,
            cycles: cycles.into_iter().collect(),
            edges,
        });
    }
    out
}

/// The shortest cycle from `start` back to it inside `members` (breadth-first), rotated to
/// start at its smallest module.
fn shortest_cycle(
    graph: &BTreeMap<String, BTreeMap<String, Hit>>,
    members: &BTreeSet<&String>,
    start: &String,
) -> Option<Vec<String>> {
    let mut prev: BTreeMap<&String, &String> = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(node) = queue.pop_front() {
        for next in graph.get(node).into_iter().flat_map(BTreeMap::keys) {
            if next == start {
                let mut path = vec![node.clone()];
                let mut at = node;
                while at != start {
                    at = prev[at];
                    path.push(at.clone());
                }
                path.reverse();
                let smallest = (0..path.len()).min_by_key(|&i| &path[i]).unwrap_or(0);
                path.rotate_left(smallest);
                return Some(path);
            }
            if members.contains(next) && !prev.contains_key(next) {
                prev.insert(next, node);
                queue.push_back(next);
            }
        }
    }
    None
}

/// The strongly connected components of `graph` (Tarjan), each sorted, sorted by first module.
fn strongly_connected(graph: &BTreeMap<String, BTreeMap<String, Hit>>) -> Vec<Vec<String>> {
    struct Tarjan<'g> {
        graph: &'g BTreeMap<String, BTreeMap<String, Hit>>,
        index: BTreeMap<&'g String, usize>,
        low: BTreeMap<&'g String, usize>,
        stack: Vec<&'g String>,
        on_stack: BTreeSet<&'g String>,
        out: Vec<Vec<String>>,
    }
    impl<'g> Tarjan<'g> {
        fn visit(&mut self, v: &'g String) {
            let i = self.index.len();
            self.index.insert(v, i);
            self.low.insert(v, i);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.graph.get(v).into_iter().flat_map(BTreeMap::keys) {
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(lw);
                } else if self.on_stack.contains(w) {
                    let iw = self.index[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    component.push(w.clone());
                    if w == v {
                        break;
                    }
                }
                component.sort();
                self.out.push(component);
            }
        }
    }
    let nodes: BTreeSet<&String> = graph
        .iter()
        .flat_map(|(from, tos)| std::iter::once(from).chain(tos.keys()))
        .collect();
    let mut t = Tarjan {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in nodes {
        if !t.index.contains_key(v) {
            t.visit(v);
        }
    }
    t.out.sort();
    t.out
}

// ---------------------------------------------------------------------------------------------
// Reading one file: `use` trees, paths, and the names in scope
// ---------------------------------------------------------------------------------------------

/// What a name in some module scope stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Binding {
    /// An item of this crate, by its path from the crate root.
    Crate(Vec<String>),
    /// Something of another crate (or a name this checker does not follow).
    External,
}

/// Names in scope: (module path of the scope, name) → what it stands for.
type Bindings = BTreeMap<(Vec<String>, String), Binding>;

/// One path in the code or one leaf of a `use` tree.
#[derive(Debug)]
struct Ref {
    line: usize,
    /// As written (`crate::transport::SharedConn`, `super::memory::Queue`, `redis::cmd`).
    text: String,
    /// Where it points, from the crate root, if it points into this crate.
    target: Option<Vec<String>>,
    /// True for `use` leaves and `crate::`/`self::`/`super::`/`eventbus::` paths: the imports
    /// of rules 2 and 3. (A path through a name a `use` brought in is that `use`'s import.)
    import: bool,
    /// A path whose first segment is the redis crate.
    names_redis_crate: bool,
}

/// A file, read: its module path, the names bound in each of its scopes, and every path.
struct ParsedFile {
    path: String,
    /// `transport/redis/conn.rs` → `["transport", "redis", "conn"]`; `lib.rs` → `[]`.
    module: Vec<String>,
    bindings: Bindings,
    refs: Vec<Ref>,
}

/// A `use` leaf or a path before resolution.
#[derive(Debug)]
struct RawPath {
    /// The module (file module plus inline `mod`s) the path is written in.
    scope: Vec<String>,
    line: usize,
    segments: Vec<String>,
    /// Written with a leading `::` (a crate name follows).
    global: bool,
    /// For a `use` leaf: `*` (glob) or the name it binds (`None` for `as _`).
    leaf: Option<UseLeaf>,
}

#[derive(Debug, Clone)]
enum UseLeaf {
    Glob,
    Name(Option<String>),
}

impl RawPath {
    fn text(&self) -> String {
        let mut text = if self.global { "::" } else { "" }.to_owned();
        text.push_str(&self.segments.join("::"));
        if matches!(self.leaf, Some(UseLeaf::Glob)) {
            text.push_str("::*");
        }
        text
    }
}

impl ParsedFile {
    fn parse(source: &Source) -> ParsedFile {
        let module = module_path(&source.path);
        let tokens = lex(&source.text);
        let (paths, mods) = scan(&tokens, &module);

        let mut bindings = Bindings::new();
        for (scope, name) in &mods {
            let mut to = scope.clone();
            to.push(name.clone());
            bindings.insert((scope.clone(), name.clone()), Binding::Crate(to));
        }
        // `use` leaves may go through names other `use`s bind (`use crate::transport;` then
        // `use transport::keys::Keys;`), and `use super::*;` brings the parent's names into a
        // child module: resolve until nothing changes.
        let scopes: BTreeSet<Vec<String>> = paths.iter().map(|p| p.scope.clone()).collect();
        loop {
            let before = bindings.len();
            for p in &paths {
                match &p.leaf {
                    Some(UseLeaf::Name(Some(name))) => {
                        let key = (p.scope.clone(), name.clone());
                        if bindings.contains_key(&key) {
                            continue;
                        }
                        match resolve(p, &bindings) {
                            Resolved::Crate(to) => {
                                bindings.insert(key, Binding::Crate(to));
                            }
                            Resolved::External => {
                                bindings.insert(key, Binding::External);
                            }
                            Resolved::Unknown => {}
                        }
                    }
                    Some(UseLeaf::Glob) => {
                        let Resolved::Crate(from) = resolve(p, &bindings) else {
                            continue;
                        };
                        if !scopes.contains(&from) && from != module {
                            continue;
                        }
                        let inherited: Vec<(String, Binding)> = bindings
                            .iter()
                            .filter(|((s, _), _)| *s == from)
                            .map(|((_, n), b)| (n.clone(), b.clone()))
                            .collect();
                        for (name, b) in inherited {
                            bindings.entry((p.scope.clone(), name)).or_insert(b);
                        }
                    }
                    _ => {}
                }
            }
            if bindings.len() == before {
                break;
            }
        }

        let refs = paths
            .iter()
            .map(|p| {
                let head = p.segments.first().map(String::as_str).unwrap_or_default();
                let resolved = resolve(p, &bindings);
                let explicit = matches!(head, "crate" | "self" | "super" | "eventbus");
                let unbound = !bindings.contains_key(&(p.scope.clone(), head.to_owned()));
                Ref {
                    line: p.line,
                    text: p.text(),
                    names_redis_crate: head == "redis" && (p.global || unbound),
                    import: matches!(resolved, Resolved::Crate(_))
                        && (p.leaf.is_some() || explicit),
                    target: match resolved {
                        Resolved::Crate(to) => Some(to),
                        _ => None,
                    },
                }
            })
            .collect();
        ParsedFile {
            path: source.path.clone(),
            module,
            bindings,
            refs,
        }
    }
}

/// `transport/redis/conn.rs` → `transport::redis::conn`; `transport/mod.rs` → `transport`.
fn module_path(file: &str) -> Vec<String> {
    let file = file.strip_suffix(".rs").unwrap_or(file);
    let mut parts: Vec<String> = file.split('/').map(str::to_owned).collect();
    if parts.last().is_some_and(|l| l == "mod") || parts == ["lib"] {
        parts.pop();
    }
    parts
}

#[derive(Debug, PartialEq, Eq)]
enum Resolved {
    Crate(Vec<String>),
    External,
    Unknown,
}

/// Where a path points, from the crate root.
fn resolve(p: &RawPath, bindings: &Bindings) -> Resolved {
    let Some(first) = p.segments.first() else {
        return Resolved::Unknown;
    };
    let rest = &p.segments[1..];
    let join = |base: &[String]| Resolved::Crate(base.iter().chain(rest).cloned().collect());
    if p.global {
        return if first == "eventbus" {
            join(&[])
        } else {
            Resolved::External
        };
    }
    match first.as_str() {
        "crate" => join(&[]),
        "self" => join(&p.scope),
        "super" => {
            let ups = p.segments.iter().take_while(|s| *s == "super").count();
            if ups > p.scope.len() {
                return Resolved::Unknown;
            }
            let base = &p.scope[..p.scope.len() - ups];
            Resolved::Crate(base.iter().chain(&p.segments[ups..]).cloned().collect())
        }
        _ => match bindings.get(&(p.scope.clone(), first.clone())) {
            Some(Binding::Crate(to)) => join(to),
            Some(Binding::External) => Resolved::External,
            // `extern crate self as eventbus;` in lib.rs
            None if first == "eventbus" => join(&[]),
            None => Resolved::Unknown,
        },
    }
}

/// Walks the tokens of a file in module `module`: every `use` leaf and every other `a::b` path,
/// with the scope (inline `mod`s included) it is written in; and every `mod name` declaration.
fn scan(tokens: &[Token], module: &[String]) -> (Vec<RawPath>, Vec<ModDecl>) {
    let mut paths = Vec::new();
    let mut mods = Vec::new();
    let mut scope = module.to_vec();
    // Inline modules open at these brace depths.
    let mut open_mods: Vec<usize> = Vec::new();
    let mut depth = 0usize;
    let mut pending_mod: Option<String> = None;
    let mut i = 0;
    while i < tokens.len() {
        let t = &tokens[i];
        match &t.kind {
            Tok::Punct('{') => {
                depth += 1;
                if let Some(name) = pending_mod.take() {
                    scope.push(name);
                    open_mods.push(depth);
                }
                i += 1;
            }
            Tok::Punct('}') => {
                if open_mods.last() == Some(&depth) {
                    open_mods.pop();
                    scope.pop();
                }
                depth = depth.saturating_sub(1);
                i += 1;
            }
            Tok::Ident(kw) if kw == "mod" => {
                pending_mod = None;
                if let Some(Tok::Ident(name)) = tokens.get(i + 1).map(|t| &t.kind) {
                    mods.push((scope.clone(), name.clone()));
                    if tokens.get(i + 2).map(|t| &t.kind) == Some(&Tok::Punct('{')) {
                        pending_mod = Some(name.clone());
                    }
                }
                i += 2;
            }
            Tok::Ident(kw)
                if kw == "use" && tokens.get(i + 1).map(|t| &t.kind) != Some(&Tok::Punct('<')) =>
            {
                i += 1;
                let mut leaves = Vec::new();
                use_tree(tokens, &mut i, Vec::new(), false, &mut leaves);
                for (segments, global, leaf, line) in leaves {
                    paths.push(RawPath {
                        scope: scope.clone(),
                        line,
                        segments,
                        global,
                        leaf: Some(leaf),
                    });
                }
                while i < tokens.len() && tokens[i].kind != Tok::Punct(';') {
                    i += 1;
                }
            }
            Tok::Ident(_) | Tok::PathSep => {
                let prev = i.checked_sub(1).map(|p| &tokens[p].kind);
                let global = t.kind == Tok::PathSep
                    && !matches!(
                        prev,
                        Some(Tok::Ident(_) | Tok::Punct('>' | ')' | ']') | Tok::PathSep)
                    );
                let starts = match &t.kind {
                    Tok::Ident(_) => prev != Some(&Tok::PathSep),
                    _ => global,
                };
                let (segments, last) = if starts {
                    path_segments(tokens, if global { i + 1 } else { i })
                } else {
                    (Vec::new(), i)
                };
                if segments.len() > 1 || (global && !segments.is_empty()) {
                    paths.push(RawPath {
                        scope: scope.clone(),
                        line: t.line,
                        segments,
                        global,
                        leaf: None,
                    });
                    i = last + 1;
                } else {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    (paths, mods)
}

/// The segments of the path `a::b::c` whose first identifier is at `j`, and the index of its
/// last identifier.
fn path_segments(tokens: &[Token], mut j: usize) -> (Vec<String>, usize) {
    let kind = |k: usize| tokens.get(k).map(|t| &t.kind);
    let mut segments = Vec::new();
    while let Some(Tok::Ident(s)) = kind(j) {
        segments.push(s.clone());
        if kind(j + 1) == Some(&Tok::PathSep) && matches!(kind(j + 2), Some(Tok::Ident(_))) {
            j += 2;
        } else {
            break;
        }
    }
    (segments, j)
}

/// A `mod name` declaration: the scope it is in, and the name.
type ModDecl = (Vec<String>, String);

/// One leaf of a `use` tree: its full path, whether it starts with `::`, what it binds, its line.
type Leaf = (Vec<String>, bool, UseLeaf, usize);

/// Reads a `use` tree at `tokens[*i]` under `prefix`: `a::b`, `a::b as c`, `a::*`,
/// `a::{b, c::d, self}`, nested to any depth.
fn use_tree(
    tokens: &[Token],
    i: &mut usize,
    prefix: Vec<String>,
    global: bool,
    out: &mut Vec<Leaf>,
) {
    let mut segments = prefix;
    let mut global = global;
    if tokens.get(*i).map(|t| &t.kind) == Some(&Tok::PathSep) {
        global = segments.is_empty();
        *i += 1;
    }
    while let Some(t) = tokens.get(*i) {
        match &t.kind {
            Tok::Punct('*') => {
                *i += 1;
                out.push((segments, global, UseLeaf::Glob, t.line));
                return;
            }
            Tok::Punct('{') => {
                *i += 1;
                while let Some(t) = tokens.get(*i) {
                    match t.kind {
                        Tok::Punct('}') => {
                            *i += 1;
                            return;
                        }
                        Tok::Punct(',') => *i += 1,
                        _ => {
                            let before = *i;
                            use_tree(tokens, i, segments.clone(), global, out);
                            if *i == before {
                                *i += 1; // not a use tree: skip the token
                            }
                        }
                    }
                }
                return;
            }
            Tok::Ident(s) => {
                segments.push(s.clone());
                *i += 1;
                if tokens.get(*i).map(|t| &t.kind) == Some(&Tok::PathSep) {
                    *i += 1;
                    continue;
                }
                if segments.len() > 1 && segments.last().is_some_and(|l| l == "self") {
                    segments.pop(); // `a::{self}` imports `a`
                }
                let mut name = segments.last().cloned();
                if let Some(Tok::Ident(kw)) = tokens.get(*i).map(|t| &t.kind)
                    && kw == "as"
                {
                    name = match tokens.get(*i + 1).map(|t| &t.kind) {
                        Some(Tok::Ident(alias)) => Some(alias.clone()),
                        _ => None, // `as _`
                    };
                    *i += 2;
                }
                out.push((segments, global, UseLeaf::Name(name), t.line));
                return;
            }
            _ => return,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A small Rust lexer: identifiers, `::`, punctuation; comments, literals and lifetimes dropped
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    /// `::`
    PathSep,
    Punct(char),
    /// A literal or a lifetime: it ends any path.
    Other,
}

#[derive(Debug, Clone)]
struct Token {
    kind: Tok,
    line: usize,
}

fn lex(src: &str) -> Vec<Token> {
    let c: Vec<char> = src.chars().collect();
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    while i < c.len() {
        let (ch, start) = (c[i], i);
        let kind = if ch == '/' && at(i + 1) == '/' {
            i = c[i..]
                .iter()
                .position(|&x| x == '\n')
                .map_or(c.len(), |p| i + p);
            None
        } else if ch == '/' && at(i + 1) == '*' {
            i = block_comment_end(&c, i);
            None
        } else if ch == '"' {
            i = string_end(&c, i + 1);
            Some(Tok::Other)
        } else if ch == '\'' {
            // 'x', '\n', or a lifetime or label: 'a, 'static
            i = char_end(&c, i).unwrap_or_else(|| ident_end(&c, i + 1));
            Some(Tok::Other)
        } else if ch == ':' && at(i + 1) == ':' {
            i += 2;
            Some(Tok::PathSep)
        } else if ch.is_alphabetic() || ch == '_' {
            let j = ident_end(&c, i);
            let word: String = c[i..j].iter().collect();
            let hashes = c[j..].iter().take_while(|&&x| x == '#').count();
            if matches!(word.as_str(), "r" | "br" | "cr") && at(j + hashes) == '"' {
                i = raw_string_end(&c, j + hashes + 1, hashes);
                Some(Tok::Other)
            } else if matches!(word.as_str(), "b" | "c") && at(j) == '"' {
                i = string_end(&c, j + 1);
                Some(Tok::Other)
            } else if word == "b" && at(j) == '\'' {
                i = char_end(&c, j).unwrap_or(j + 1);
                Some(Tok::Other)
            } else if word == "r" && hashes == 1 && (at(j + 1).is_alphabetic() || at(j + 1) == '_')
            {
                // r#type: a raw identifier, never a keyword
                i = ident_end(&c, j + 1);
                Some(Tok::Ident(c[start..i].iter().collect()))
            } else {
                i = j;
                Some(Tok::Ident(word))
            }
        } else if ch.is_ascii_digit() {
            i = ident_end(&c, i);
            Some(Tok::Other)
        } else {
            i += 1;
            (!ch.is_whitespace()).then_some(Tok::Punct(ch))
        };
        if let Some(kind) = kind {
            out.push(Token { kind, line });
        }
        line += c[start..i].iter().filter(|&&x| x == '\n').count();
    }
    out
}

/// Whether every `(`, `[` and `{` of `tokens` is closed, in order, by its own kind.
fn brackets_balance(tokens: &[Token]) -> bool {
    let mut open = Vec::new();
    for t in tokens {
        match t.kind {
            Tok::Punct(c @ ('(' | '[' | '{')) => open.push(c),
            Tok::Punct(c @ (')' | ']' | '}')) => {
                let expected = match c {
                    ')' => '(',
                    ']' => '[',
                    _ => '{',
                };
                if open.pop() != Some(expected) {
                    return false;
                }
            }
            _ => {}
        }
    }
    open.is_empty()
}

/// The index after the identifier (or number) starting at `i`.
fn ident_end(c: &[char], mut i: usize) -> usize {
    while c.get(i).is_some_and(|&x| x.is_alphanumeric() || x == '_') {
        i += 1;
    }
    i
}

/// The index after the closing quote of a string whose body starts at `i` (escapes honoured).
fn string_end(c: &[char], mut i: usize) -> usize {
    while i < c.len() {
        match c[i] {
            '\\' => i += 2,
            '"' => return i + 1,
            _ => i += 1,
        }
    }
    c.len()
}

/// The index after a raw string whose body starts at `i` and ends with `"` and `hashes` `#`s.
fn raw_string_end(c: &[char], i: usize, hashes: usize) -> usize {
    (i..c.len())
        .find(|&k| c[k] == '"' && (1..=hashes).all(|h| c.get(k + h) == Some(&'#')))
        .map_or(c.len(), |k| k + 1 + hashes)
}

/// The index after a char literal whose opening quote is at `i` (`'x'`, `'\''`, `'\u{..}'`);
/// `None` when the quote starts a lifetime or a label.
fn char_end(c: &[char], i: usize) -> Option<usize> {
    let at = |k: usize| c.get(k).copied().unwrap_or('\0');
    if at(i + 1) == '\\' {
        let close = (i + 3..c.len()).find(|&k| c[k] == '\'').unwrap_or(c.len());
        Some(close + 1)
    } else if at(i + 2) == '\'' {
        Some(i + 3)
    } else {
        None
    }
}

/// The index after a block comment (nested ones included) that opens at `i`.
fn block_comment_end(c: &[char], mut i: usize) -> usize {
    let mut nesting = 0;
    while i < c.len() {
        if c[i] == '/' && c.get(i + 1) == Some(&'*') {
            nesting += 1;
            i += 2;
        } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
            nesting -= 1;
            i += 2;
            if nesting == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    c.len()
}

// ---------------------------------------------------------------------------------------------
// Tests of the checker itself
// ---------------------------------------------------------------------------------------------

/// A crate from `(path under src/, text)` pairs, with a `lib.rs` unless one is given.
fn sources(files: &[(&str, &str)]) -> Vec<Source> {
    let mut out: Vec<Source> = files
        .iter()
        .map(|(path, text)| Source {
            path: (*path).to_owned(),
            text: (*text).to_owned(),
        })
        .collect();
    if !files.iter().any(|(p, _)| *p == "lib.rs") {
        out.push(Source {
            path: "lib.rs".into(),
            text: String::new(),
        });
    }
    out
}

fn lines(hits: &[Hit]) -> Vec<String> {
    hits.iter().map(ToString::to_string).collect()
}

#[test]
fn checker_accepts_a_clean_crate() {
    let report = check(&sources(&[
        ("error.rs", "pub struct Error;"),
        (
            "envelope.rs",
            "use crate::error::Error;\nuse crate::event::DomainEvent;",
        ),
        ("event.rs", "pub trait DomainEvent {}"),
        (
            "transport/mod.rs",
            "pub(crate) mod redis;\npub(crate) use self::redis::conn::*;\nuse crate::{envelope, error::Error};",
        ),
        (
            "transport/redis/conn.rs",
            "use redis::aio::MultiplexedConnection;\nfn f() { redis::cmd(\"PING\"); super::errors::x(); }",
        ),
        ("transport/redis/errors.rs", "use crate::error::Error;"),
        (
            "bus.rs",
            "use crate::transport::{self, SharedConn};\nuse super::pipeline::Outcome;\nfn f() { crate::dlq::x(); }",
        ),
        ("dlq.rs", "use crate::transport;"),
        ("pipeline.rs", "use crate::retry::RetryPolicy;"),
        ("retry.rs", ""),
    ]));
    assert!(report.is_empty(), "{report}");
}

#[test]
fn checker_finds_redis_paths_but_not_in_comments_strings_or_child_modules() {
    let report = check(&sources(&[(
        "bus.rs",
        r##"
//! Talks to redis::Client through the seam.
use crate::transport::redis; // redis::cmd in a comment
/// Calls redis::cmd("PING").
fn a() -> redis::errors::Kind { todo!() } // a child module, bound by the `use`
/* block redis::x /* nested redis::y */ still redis::z */
fn b() {
    let s = "redis::cmd";
    let r = r#"redis::" "#;
    let c = '"';
    let l: &'static str = "";
    let n = redis_like::x(); let m = transport::redis::errors::y();
}
mod tests {
    use redis::{Cmd, Value}; // the crate: `redis` is not bound in this module
    fn c() -> redis::Value { ::redis::cmd("PING") }
}
"##,
    )]));
    assert_eq!(
        lines(&report.redis_paths),
        [
            "src/bus.rs:15: redis::Cmd, redis::Value",
            "src/bus.rs:16: redis::Value, ::redis::cmd",
        ],
        "{report}"
    );
    let in_backend = check(&sources(&[(
        "transport/redis/conn.rs",
        "use redis::Value;\nfn f() { redis::cmd(\"X\"); }",
    )]));
    assert!(in_backend.redis_paths.is_empty(), "{in_backend}");
}

#[test]
fn checker_reads_grouped_renamed_and_nested_use_trees() {
    let report = check(&sources(&[
        (
            "handler.rs",
            "pub(crate) use crate::{event, pipeline::Outcome, runtime::{self as rt, lane::*}};\n\
             use crate::{\n    error::{Error,\n        Result},\n    bus::Bus as B,\n};",
        ),
        ("event.rs", ""),
        ("error.rs", ""),
        ("pipeline.rs", ""),
        ("runtime/mod.rs", ""),
        ("bus.rs", ""),
    ]));
    assert_eq!(
        lines(&report.upward),
        [
            "src/handler.rs:1: `handler` (L3) imports `pipeline` (L4): crate::pipeline::Outcome",
            "src/handler.rs:1: `handler` (L3) imports `runtime` (L5): crate::runtime, crate::runtime::lane::*",
            "src/handler.rs:5: `handler` (L3) imports `bus` (L6): crate::bus::Bus",
        ],
        "{report}"
    );
}

#[test]
fn checker_follows_paths_in_code_super_and_root_reexports() {
    let report = check(&sources(&[
        (
            "lib.rs",
            "mod bus;\nmod envelope;\nmod pipeline;\npub use bus::{Bus, RunningBus};\npub mod prelude { pub use crate::Bus; }",
        ),
        (
            "envelope.rs",
            "fn f(b: &crate::Bus) {}\n\
             fn g() { super::pipeline::run(); }\n\
             mod tests { use super::super::bus::x; fn h() { self::y(); crate::prelude::z(); } }",
        ),
        (
            "pipeline.rs",
            "/// [`Bus`](crate::Bus) in a doc link is not an import.\nfn f() {}",
        ),
        ("bus.rs", ""),
    ]));
    assert_eq!(
        lines(&report.upward),
        [
            "src/envelope.rs:1: `envelope` (L1) imports `bus` (L6): crate::Bus",
            "src/envelope.rs:2: `envelope` (L1) imports `pipeline` (L4): super::pipeline::run",
            "src/envelope.rs:3: `envelope` (L1) imports `bus` (L6): super::super::bus::x",
        ],
        "{report}"
    );
}

#[test]
fn checker_reports_a_module_without_a_layer() {
    let report = check(&sources(&[
        ("coalesce.rs", "use crate::bus::Bus;"),
        ("bus.rs", "use crate::coalesce::Coalescer;"),
    ]));
    assert_eq!(
        report.unlayered.keys().collect::<Vec<_>>(),
        ["coalesce"],
        "{report}"
    );
    let text = report.to_string();
    assert!(
        text.contains("module `coalesce` has no layer: add it to the table (src/coalesce.rs)"),
        "{text}"
    );
    assert!(report.upward.is_empty(), "{report}");
}

#[test]
fn checker_finds_a_cycle_within_one_layer_and_names_its_lines() {
    let report = check(&sources(&[
        ("error.rs", "use crate::retry::RetryPolicy;"),
        ("retry.rs", "fn f() { crate::state::x(); }"),
        ("state.rs", "\n\nuse crate::error::Error;"),
        ("event.rs", "use crate::error::Error;"),
    ]));
    assert!(report.upward.is_empty(), "all in L0: {report}");
    assert_eq!(report.cycles.len(), 1, "{report}");
    assert_eq!(report.cycles[0].modules, ["error", "retry", "state"]);
    assert_eq!(report.cycles[0].cycles, [["error", "retry", "state"]]);
    let text = report.to_string();
    assert!(
        text.contains("    error -> retry -> state -> error\n"),
        "{text}"
    );
    assert!(
        text.contains("    state -> error: src/state.rs:3: crate::error::Error\n"),
        "{text}"
    );
}

#[test]
fn checker_lists_the_shortest_cycle_through_each_module_of_a_group() {
    let report = check(&sources(&[
        ("context.rs", "use crate::handler::Handler;"),
        (
            "handler.rs",
            "use crate::{context::Context, extract::States};",
        ),
        ("extract.rs", "use crate::handler::CheckFn;"),
    ]));
    assert_eq!(report.cycles.len(), 1, "{report}");
    assert_eq!(
        report.cycles[0].cycles,
        [["context", "handler"], ["extract", "handler"]],
        "{report}"
    );
    let text = report.to_string();
    assert!(
        text.contains(
            "  these 3 modules all reach each other: context, extract, handler\n\
             \x20 the shortest cycle through each of them:\n\
             \x20   context -> handler -> context\n\
             \x20   extract -> handler -> extract\n\
             \x20 the imports behind these cycles:\n\
             \x20   context -> handler: src/context.rs:1: crate::handler::Handler\n\
             \x20   extract -> handler: src/extract.rs:1: crate::handler::CheckFn\n\
             \x20   handler -> context: src/handler.rs:1: crate::context::Context\n\
             \x20   handler -> extract: src/handler.rs:1: crate::extract::States\n"
        ),
        "{text}"
    );
    assert_eq!(report.count(), 2);
}

#[test]
fn checker_keeps_transport_backends_apart() {
    let report = check(&sources(&[
        (
            "transport/mod.rs",
            "mod memory;\nmod redis;\nuse self::memory::Queue;",
        ),
        (
            "transport/memory/mod.rs",
            "use crate::transport::redis::conn::Shared;\n\
             use super::keys::Keys;\n\
             use crate::transport;\n\
             fn f() { transport::redis::errors::x(); super::redis::y(); }",
        ),
        ("transport/redis/mod.rs", "use crate::transport::memory;"),
        ("transport/keys.rs", ""),
    ]));
    assert_eq!(
        lines(&report.backends),
        [
            "src/transport/memory/mod.rs:1: transport/memory imports transport/redis: crate::transport::redis::conn::Shared",
            "src/transport/memory/mod.rs:4: transport/memory imports transport/redis: super::redis::y",
            "src/transport/memory/mod.rs:4: transport/memory imports transport/redis: transport::redis::errors::x",
            "src/transport/redis/mod.rs:1: transport/redis imports transport/memory: crate::transport::memory",
        ],
        "{report}"
    );
    assert!(
        report.upward.is_empty() && report.cycles.is_empty(),
        "{report}"
    );
}

#[test]
fn lexer_drops_comments_literals_and_lifetimes() {
    let kinds: Vec<Tok> = lex(
        "a /* x /* y */ z */ b // c\n'a' '\\'' b'x' br#\"\"# 'static r#type ::c 1_000u64 \"\\\"\"",
    )
    .into_iter()
    .map(|t| t.kind)
    .collect();
    let ident = |s: &str| Tok::Ident(s.to_owned());
    assert_eq!(
        kinds,
        [
            ident("a"),
            ident("b"),
            Tok::Other,
            Tok::Other,
            Tok::Other,
            Tok::Other,
            Tok::Other,
            ident("r#type"),
            Tok::PathSep,
            ident("c"),
            Tok::Other,
            Tok::Other,
        ]
    );
    let lines: Vec<usize> = lex("a\n/* \n */ b\n\"\n\" c")
        .iter()
        .map(|t| t.line)
        .collect();
    assert_eq!(lines, [1, 3, 4, 5]);
    assert!(brackets_balance(&lex(
        "fn f() { let a = ['{', '}']; let s = r#\"}\"#; /* { */ g(\"(\") }"
    )));
    assert!(!brackets_balance(&lex("fn f() { (] }")));
}
