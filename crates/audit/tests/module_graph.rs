//! No two modules of this crate, nor of any other crate of the workspace, import each
//! other, directly or around a circle.
//!
//! A circle of imports means no module of it can be read, changed or tested without the
//! others (issue 18: config → event → writer used to be one). The check reads the sources:
//! every path a module names that starts with `crate::`, `super::` or `self::`, or with the
//! name of one of its own child modules, is an edge to the deepest module file that path
//! reaches. Names the crate root re-exports (`crate::AuditError`) count as the module that
//! defines them, since lib.rs only declares modules and re-exports their items. Comments,
//! string literals and `#[cfg(test)]` items are ignored: a test may reach into whatever it
//! tests.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A module path relative to the crate root: `[]` is lib.rs, `["writer", "log"]` is
/// writer/log.rs.
type Module = Vec<String>;

#[test]
fn the_module_import_graph_has_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut sources = BTreeMap::new();
    read_modules(&src, &mut Vec::new(), &mut sources);
    let graph = import_graph(&sources);

    // The reader must actually see the imports, or an empty graph would pass.
    let edge = |from: &[&str], to: &[&str]| graph[&module(from)].contains(&module(to));
    assert!(
        sources.len() >= 25,
        "found only {} module files",
        sources.len()
    );
    assert!(
        edge(&["writer", "log"], &["writer", "append"]),
        "a `use super::` import"
    );
    assert!(
        edge(&["writer", "open"], &["sinks", "postgres"]),
        "a `use crate::a::{{b}}` import"
    );
    assert!(edge(&["event"], &["json"]), "an inline `crate::` path");
    assert!(
        edge(&["search"], &["error"]),
        "a root re-export (`crate::AuditError`)"
    );
    assert!(
        edge(&["sinks"], &["sinks", "shipping"]),
        "a re-export of a child module"
    );

    if let Some(cycle) = find_cycle(&graph) {
        let names: Vec<String> = cycle.iter().map(display).collect();
        panic!("modules import each other: {}", names.join(" → "));
    }
}

/// The same rule for every crate of the workspace (issue 18: "no import circles in any
/// crate"); the reader is the one the audit crate's own test above shows sees imports.
#[test]
fn no_crate_of_the_workspace_has_an_import_cycle() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut checked = Vec::new();
    let mut dirs: Vec<_> = std::fs::read_dir(&crates)
        .expect("read crates/")
        .map(|e| e.expect("read crates/").path().join("src"))
        .filter(|src| src.is_dir())
        .collect();
    dirs.sort();
    for src in dirs {
        let mut sources = BTreeMap::new();
        read_modules(&src, &mut Vec::new(), &mut sources);
        let graph = import_graph(&sources);
        if let Some(cycle) = find_cycle(&graph) {
            let names: Vec<String> = cycle.iter().map(display).collect();
            panic!(
                "modules of {} import each other: {}",
                src.display(),
                names.join(" → ")
            );
        }
        checked.push(src);
    }
    // proxy, policy, upstream, audit, … : the walk must have found the crates.
    assert!(checked.len() >= 9, "only {} crates found", checked.len());
}

#[test]
fn a_cycle_is_found() {
    let mut sources = BTreeMap::new();
    sources.insert(module(&[]), "mod a; mod b; pub use a::X;".to_string());
    sources.insert(
        module(&["a"]),
        "use crate::b::{self, Y}; pub struct X;".to_string(),
    );
    sources.insert(
        module(&["b"]),
        "// crate::c in a comment\nfn f() -> &'static str { let _ = \"crate::c\"; crate::X::g() }"
            .to_string(),
    );
    sources.insert(
        module(&["c"]),
        "#[cfg(test)]\nmod tests { use crate::a; }".to_string(),
    );
    let graph = import_graph(&sources);
    assert_eq!(graph[&module(&["c"])], BTreeSet::new());
    let cycle = find_cycle(&graph).expect("a → b → a");
    assert_eq!(cycle.len(), 3, "{cycle:?}");
}

fn module(path: &[&str]) -> Module {
    path.iter().map(|s| s.to_string()).collect()
}

fn display(m: &Module) -> String {
    if m.is_empty() {
        "crate".to_string()
    } else {
        m.join("::")
    }
}

/// Every `.rs` file under `dir`, keyed by its module path, with its text.
fn read_modules(dir: &Path, at: &mut Vec<String>, out: &mut BTreeMap<Module, String>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read src")
        .map(|e| e.expect("read src").path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path
            .file_stem()
            .expect("a file name")
            .to_string_lossy()
            .into_owned();
        if path.is_dir() {
            at.push(name);
            read_modules(&path, at, out);
            at.pop();
        } else if path.extension().is_some_and(|e| e == "rs") {
            let mut m = at.clone();
            if !(name == "mod" || (at.is_empty() && (name == "lib" || name == "main"))) {
                m.push(name);
            }
            out.insert(m, std::fs::read_to_string(&path).expect("read a module"));
        }
    }
}

/// For each module, the modules it imports.
fn import_graph(sources: &BTreeMap<Module, String>) -> BTreeMap<Module, BTreeSet<Module>> {
    let modules: BTreeSet<Module> = sources.keys().cloned().collect();
    let tokens: BTreeMap<&Module, Vec<String>> = sources
        .iter()
        .map(|(m, text)| (m, drop_test_items(tokenize(&strip(text)))))
        .collect();
    // What the crate root re-exports, by name: `pub use event::{Connect, ...}`.
    let mut reexports: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if let Some(root) = tokens.get(&Vec::new()) {
        for path in paths(root) {
            if let Some(name) = path.last() {
                reexports.insert(name.clone(), path.clone());
            }
        }
    }
    let mut graph = BTreeMap::new();
    for (m, toks) in &tokens {
        let mut to = BTreeSet::new();
        for path in paths(toks) {
            let Some(abs) = absolute(m, &path, &modules) else {
                continue;
            };
            let mut target = deepest_module(&abs, &modules);
            // `crate::Name`: the module that defines what the root re-exports.
            if target.is_empty() && !abs.is_empty() {
                if let Some(full) = reexports.get(&abs[0]) {
                    target = deepest_module(full, &modules);
                }
            }
            if &target != *m {
                to.insert(target);
            }
        }
        graph.insert((*m).clone(), to);
    }
    graph
}

/// `path` as a path from the crate root, if it is one into this crate.
fn absolute(m: &Module, path: &[String], modules: &BTreeSet<Module>) -> Option<Vec<String>> {
    let first = path.first()?;
    let mut base = m.clone();
    let rest = match first.as_str() {
        "crate" => {
            base.clear();
            &path[1..]
        }
        "self" => &path[1..],
        "super" => {
            let supers = path.iter().take_while(|s| *s == "super").count();
            for _ in 0..supers {
                base.pop()?;
            }
            &path[supers..]
        }
        // A child module named without a prefix (`pub use log::AuditLog` in writer/mod.rs).
        name => {
            let mut child = m.clone();
            child.push(name.to_string());
            if !modules.contains(&child) {
                return None;
            }
            path
        }
    };
    base.extend(rest.iter().filter(|s| *s != "self").cloned());
    Some(base)
}

/// The longest prefix of `path` that is a module file.
fn deepest_module(path: &[String], modules: &BTreeSet<Module>) -> Module {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| modules.contains(p))
        .unwrap_or_default()
}

/// The text without comments, and with every string and character literal emptied, so
/// only code is left to read paths from.
fn strip(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    while i < c.len() {
        let prev_ident = i > 0 && ident(c[i - 1]);
        if c[i] == '/' && c.get(i + 1) == Some(&'/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if c[i] == '/' && c.get(i + 1) == Some(&'*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if let Some((hashes, quote)) = raw_string_start(&c, i).filter(|_| !prev_ident) {
            i = quote + 1;
            while i < c.len() && !(c[i] == '"' && (1..=hashes).all(|k| c.get(i + k) == Some(&'#')))
            {
                i += 1;
            }
            i += 1 + hashes;
            out.push_str("\"\"");
        } else if c[i] == '"' || (!prev_ident && c[i] == 'b' && c.get(i + 1) == Some(&'"')) {
            i += if c[i] == 'b' { 2 } else { 1 };
            while i < c.len() && c[i] != '"' {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if c[i] == '\'' && c.get(i + 1) == Some(&'\\') {
            // '\n', '\'', '\u{..}'
            i += 2;
            while i < c.len() && c[i] != '\'' {
                i += 1;
            }
            i += 1;
            out.push_str("' '");
        } else if c[i] == '\'' && c.get(i + 2) == Some(&'\'') {
            i += 3;
            out.push_str("' '");
        } else {
            // Everything else, lifetimes (`'a`) included.
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

/// `r"`, `r#"`, `br##"`...: the number of `#` and where the opening quote is.
fn raw_string_start(c: &[char], i: usize) -> Option<(usize, usize)> {
    let mut j = i;
    if c.get(j) == Some(&'b') {
        j += 1;
    }
    if c.get(j) != Some(&'r') {
        return None;
    }
    j += 1;
    let hashes = c[j..].iter().take_while(|&&ch| ch == '#').count();
    (c.get(j + hashes) == Some(&'"')).then_some((hashes, j + hashes))
}

/// Identifiers, `::`, and every other character as a token of its own.
fn tokenize(code: &str) -> Vec<String> {
    let c: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        if c[i].is_alphanumeric() || c[i] == '_' {
            let s = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            out.push(c[s..i].iter().collect());
        } else if c[i] == ':' && c.get(i + 1) == Some(&':') {
            out.push("::".to_string());
            i += 2;
        } else {
            if !c[i].is_whitespace() {
                out.push(c[i].to_string());
            }
            i += 1;
        }
    }
    out
}

/// The tokens without the items marked `#[cfg(test)]`.
fn drop_test_items(toks: Vec<String>) -> Vec<String> {
    const ATTR: [&str; 7] = ["#", "[", "cfg", "(", "test", ")", "]"];
    let mut out = Vec::with_capacity(toks.len());
    let mut i = 0;
    while i < toks.len() {
        if toks[i..].starts_with(&ATTR.map(String::from)) {
            // The item ends at its first `;` outside braces, or at the brace that closes
            // its body.
            i += ATTR.len();
            let mut depth = 0usize;
            while i < toks.len() {
                match toks[i].as_str() {
                    "{" => depth += 1,
                    "}" => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ";" if depth == 0 => break,
                    _ => {}
                }
                i += 1;
            }
            i += 1;
        } else {
            out.push(toks[i].clone());
            i += 1;
        }
    }
    out
}

/// Every path in the code: each leaf of each `use` tree, and each `a::b::c` elsewhere.
fn paths(toks: &[String]) -> Vec<Vec<String>> {
    let is_ident = |t: &str| {
        t.chars()
            .next()
            .is_some_and(|c| c.is_alphanumeric() || c == '_')
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        if toks[i] == "use" {
            let end = toks[i..]
                .iter()
                .position(|t| t == ";")
                .map_or(toks.len(), |n| i + n);
            use_tree(&toks[i + 1..end], &mut Vec::new(), &mut out);
            i = end + 1;
        } else if is_ident(&toks[i])
            && toks.get(i + 1).is_some_and(|t| t == "::")
            && (i == 0 || toks[i - 1] != "::")
        {
            let mut path = vec![toks[i].clone()];
            i += 1;
            while toks.get(i).is_some_and(|t| t == "::")
                && toks.get(i + 1).is_some_and(|t| is_ident(t))
            {
                path.push(toks[i + 1].clone());
                i += 2;
            }
            out.push(path);
        } else {
            i += 1;
        }
    }
    out
}

/// The leaves of one `use` tree (`a::{b, c::{self, D as E}}` → `a::b`, `a::c`, `a::c::D`).
fn use_tree(toks: &[String], prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    let depth = prefix.len();
    let mut i = 0;
    while i < toks.len() {
        match toks[i].as_str() {
            "::" => i += 1,
            "{" => {
                // Each member of the group, split at the group's own commas.
                let mut level = 0usize;
                let mut start = i + 1;
                for j in i..toks.len() {
                    match toks[j].as_str() {
                        "{" => level += 1,
                        "}" | "," if level == 1 => {
                            use_tree(&toks[start..j], prefix, out);
                            start = j + 1;
                            if toks[j] == "}" {
                                break;
                            }
                        }
                        "}" => level -= 1,
                        _ => {}
                    }
                }
                return;
            }
            "as" | "*" => break,
            t => {
                prefix.push(t.to_string());
                i += 1;
            }
        }
    }
    if !prefix.is_empty() {
        out.push(prefix.clone());
    }
    prefix.truncate(depth);
}

/// A cycle of the graph (its first module repeated at the end), if there is one.
fn find_cycle(graph: &BTreeMap<Module, BTreeSet<Module>>) -> Option<Vec<Module>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(
        m: &Module,
        graph: &BTreeMap<Module, BTreeSet<Module>>,
        marks: &mut BTreeMap<Module, Mark>,
        stack: &mut Vec<Module>,
    ) -> Option<Vec<Module>> {
        marks.insert(m.clone(), Mark::Open);
        stack.push(m.clone());
        for next in graph.get(m).into_iter().flatten() {
            match marks.get(next).copied().unwrap_or(Mark::New) {
                Mark::Open => {
                    let at = stack
                        .iter()
                        .position(|s| s == next)
                        .expect("an open module is on the stack");
                    let mut cycle = stack[at..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(c) = visit(next, graph, marks, stack) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        marks.insert(m.clone(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for m in graph.keys() {
        if marks.get(m).copied().unwrap_or(Mark::New) == Mark::New {
            if let Some(c) = visit(m, graph, &mut marks, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}
