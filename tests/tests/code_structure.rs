//! The architecture as the crates and modules draw it: the filesystem core links no front end
//! (FUSE, gRPC, lockd), and no module imports a module that imports it back (a loop means two
//! modules are one concern, or one holds what belongs to the other).
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ sits in the workspace").to_path_buf()
}

/// Package names `cargo tree` lists for `package`'s normal (non-dev, non-build) dependencies.
fn linked_packages(package: &str) -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(workspace())
        .args(["tree", "--offline", "-p", package, "-e", "normal", "--prefix", "none", "--format", "{p}"])
        .output()
        .expect("run cargo tree");
    assert!(out.status.success(), "cargo tree -p {package}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect()
}

fn assert_links_none(package: &str, forbidden: &[&str]) {
    let linked = linked_packages(package);
    assert!(linked.contains(package), "cargo tree of {package} lists the package itself: {linked:?}");
    let found: Vec<_> = forbidden.iter().filter(|f| linked.contains(**f)).collect();
    assert!(found.is_empty(), "{package} links {found:?}; it must not (see docs/design.md, where things are)");
}

#[test]
fn the_filesystem_core_links_no_fuse_grpc_async_runtime_or_lockd() {
    assert_links_none("mafs-core", &["fuser", "tokio", "tonic", "prost", "raft", "mafs-lockd", "mafs-proto", "clap", "mafs-fuse"]);
}

#[test]
fn the_fuse_glue_links_no_grpc_or_lockd() {
    assert_links_none("mafs-fuse", &["tokio", "tonic", "raft", "mafs-lockd", "clap"]);
}

#[test]
fn the_lockd_client_a_mount_links_has_no_raft_replica_or_command_line() {
    assert_links_none("mafs-lockd-client", &["raft", "raft-proto", "protobuf", "mafs-lockd-server", "clap", "mafs-lockd-cli"]);
}

#[test]
fn the_lockd_replica_has_no_command_line() {
    assert_links_none("mafs-lockd-server", &["clap", "mafs-lockd-cli"]);
}

/// `crate::a::b` and `super::c` paths named in `src`, with `use crate::{x, y::z}` groups
/// flattened.
fn referenced_paths(src: &str) -> Vec<String> {
    fn expand(prefix: &str, body: &str, out: &mut Vec<String>) {
        // body: "a, b::{c, d}, e::f"
        let mut depth = 0;
        let mut start = 0;
        let bytes = body.as_bytes();
        for i in 0..=bytes.len() {
            let end = i == bytes.len();
            let c = if end { b',' } else { bytes[i] };
            match c {
                b'{' => depth += 1,
                b'}' => depth -= 1,
                b',' if depth == 0 => {
                    let item = body[start..i].trim();
                    start = i + 1;
                    if item.is_empty() {
                        continue;
                    }
                    if let Some(open) = item.find("::{") {
                        let inner = item[open + 3..].trim_end().trim_end_matches('}');
                        expand(&format!("{prefix}::{}", &item[..open]), inner, out);
                    } else {
                        out.push(format!("{prefix}::{item}"));
                    }
                }
                _ => {}
            }
        }
    }
    let mut out = Vec::new();
    for root in ["crate", "super"] {
        let group = format!("{root}::{{");
        let mut rest = src;
        while let Some(at) = rest.find(&group) {
            let body = &rest[at + group.len()..];
            let mut depth = 1;
            let close = body
                .char_indices()
                .find(|&(_, c)| {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map(|(i, _)| i)
                .unwrap_or(body.len());
            expand(root, &body[..close], &mut out);
            rest = &body[close..];
        }
    }
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    for root in ["crate::", "super::"] {
        for (at, _) in src.match_indices(root) {
            if at > 0 && src[..at].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            let path: String = src[at..].chars().take_while(|&c| ident(c)).collect();
            out.push(path.trim_end_matches(':').to_string());
        }
    }
    out
}

/// Module path ("filesystem::data") of every `.rs` file under a crate's `src/`.
fn modules(src_dir: &Path) -> BTreeMap<String, PathBuf> {
    let mut found = BTreeMap::new();
    let mut stack = vec![src_dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("read src dir") {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if p.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let rel = p.strip_prefix(src_dir).expect("under src").with_extension("");
            let mut parts: Vec<String> = rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
            if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
                parts.pop();
            }
            found.insert(parts.join("::"), p);
        }
    }
    found
}

/// The longest module that `path` (already absolute from the crate root) names.
fn resolve<'a>(path: &str, mods: &'a BTreeMap<String, PathBuf>) -> Option<&'a str> {
    let parts: Vec<&str> = path.split("::").collect();
    (1..=parts.len()).rev().find_map(|n| mods.get_key_value(&parts[..n].join("::")).map(|(k, _)| k.as_str()))
}

fn is_ancestor(a: &str, b: &str) -> bool {
    a.is_empty() || b.starts_with(&format!("{a}::"))
}

/// Import edges between modules of one crate, leaving out a module's use of its own ancestors
/// or descendants (containment, not an import between peers).
fn import_graph(src_dir: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mods = modules(src_dir);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, file) in &mods {
        let src = std::fs::read_to_string(file).expect("read source");
        // A unit test module inside a file may reach anywhere; only the module's own code counts.
        let src = test_module_start(&src).map_or(src.as_str(), |at| &src[..at]);
        // Comments name modules without importing them.
        let src: String = src.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n");
        let src = src.as_str();
        let is_dir_module = file.file_name().is_some_and(|f| f == "mod.rs" || f == "lib.rs");
        let parent = if is_dir_module { m.clone() } else { m.rsplit_once("::").map(|(p, _)| p.to_string()).unwrap_or_default() };
        for path in referenced_paths(src) {
            let absolute = if let Some(rest) = path.strip_prefix("crate::") {
                rest.to_string()
            } else if let Some(rest) = path.strip_prefix("super::") {
                // `super` of `a::b::c` (file c.rs) is `a::b`; of a mod.rs, its parent's parent.
                let base =
                    if is_dir_module { parent.rsplit_once("::").map(|(p, _)| p.to_string()).unwrap_or_default() } else { parent.clone() };
                if base.is_empty() {
                    rest.to_string()
                } else {
                    format!("{base}::{rest}")
                }
            } else {
                continue;
            };
            if let Some(target) = resolve(&absolute, &mods) {
                if target != m && !is_ancestor(target, m) && !is_ancestor(m, target) {
                    graph.entry(m.clone()).or_default().insert(target.to_string());
                }
            }
        }
    }
    graph
}

/// Where `#[cfg(test)] mod ...` starts in `src`, if it has one.
fn test_module_start(src: &str) -> Option<usize> {
    src.match_indices("#[cfg(test)]")
        .map(|(at, m)| (at, &src[at + m.len()..]))
        .find(|(_, rest)| rest.trim_start().starts_with("mod "))
        .map(|(at, _)| at)
}

/// Every cycle's members (strongly connected components of more than one module).
fn loops(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    let reach = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.to_string()];
        while let Some(n) = stack.pop() {
            for t in graph.get(&n).into_iter().flatten() {
                if seen.insert(t.clone()) {
                    stack.push(t.clone());
                }
            }
        }
        seen
    };
    let reachable: BTreeMap<&String, BTreeSet<String>> = graph.keys().map(|k| (k, reach(k))).collect();
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for (m, r) in &reachable {
        if done.contains(*m) || !r.contains(*m) {
            continue;
        }
        let scc: Vec<String> = r.iter().filter(|o| reachable.get(o).is_some_and(|ro| ro.contains(*m))).cloned().collect();
        done.extend(scc.iter().cloned());
        out.push(scc);
    }
    out
}

fn crate_sources() -> Vec<PathBuf> {
    let root = workspace();
    let mut dirs = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            let name = e.file_name();
            if !p.is_dir() || name == "target" || name.to_string_lossy().starts_with('.') {
                continue;
            }
            if p.join("Cargo.toml").exists() && p.join("src").is_dir() {
                dirs.push(p.join("src"));
            }
            if p.strip_prefix(&root).map(|r| r.components().count() < 3).unwrap_or(false) {
                stack.push(p);
            }
        }
    }
    dirs.sort();
    dirs
}

#[test]
fn no_module_imports_a_module_that_imports_it_back() {
    let crates = crate_sources();
    assert!(crates.iter().any(|c| c.ends_with("fs/core/src")), "found the workspace's crates: {crates:?}");
    let mut all = Vec::new();
    for src in &crates {
        for l in loops(&import_graph(src)) {
            all.push(format!("{}: {}", src.strip_prefix(workspace()).unwrap_or(src).display(), l.join(" <-> ")));
        }
    }
    assert!(all.is_empty(), "module import loops:\n{}", all.join("\n"));
}

#[test]
fn the_loop_finder_sees_a_loop_between_two_sibling_modules() {
    // The check above must be able to fail: two files that import each other.
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path();
    std::fs::create_dir(src.join("filesystem")).expect("mkdir");
    std::fs::write(src.join("lib.rs"), "pub mod filesystem;\npub mod btree;\n").expect("write");
    std::fs::write(src.join("btree.rs"), "use crate::filesystem::Fs;\n").expect("write");
    std::fs::write(src.join("filesystem/mod.rs"), "mod data;\nmod orphans;\nuse crate::{btree::Tree, filesystem::data::X};\n")
        .expect("write");
    std::fs::write(src.join("filesystem/data.rs"), "use super::orphans::EXTENTS_PER_STEP;\nuse super::Fs;\n").expect("write");
    std::fs::write(src.join("filesystem/orphans.rs"), "use super::{data::{extents_in, Extent}, Fs};\n").expect("write");
    let found = loops(&import_graph(src));
    assert_eq!(
        found,
        vec![vec!["btree".to_string(), "filesystem".to_string()], vec!["filesystem::data".to_string(), "filesystem::orphans".to_string()]]
    );
}

/// Every tracked source, doc and script file, as paths relative to the workspace.
fn tracked_files() -> Vec<String> {
    let out = Command::new("git")
        .current_dir(workspace())
        .args(["ls-files", "--cached", "--others", "--exclude-standard"])
        .output()
        .expect("git ls-files");
    assert!(out.status.success(), "git ls-files: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

/// File names written in `text` (`foo/bar.rs`, `docs/x.md`, `tests/run.sh`, ...), leaving out
/// examples (`./script.sh`) and paths under a shell variable (`$WORK/summary.md`).
fn named_files(text: &str) -> Vec<String> {
    let is_path_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '/' | '.');
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices().chain(std::iter::once((text.len(), ' '))) {
        match (start, is_path_char(c)) {
            (None, true) => start = Some(i),
            (Some(s), false) => {
                start = None;
                let under_variable = text[..s].ends_with(['$', '}']);
                let word = text[s..i].trim_end_matches('.');
                let named = [".rs", ".md", ".sh", ".proto", ".toml"].iter().any(|ext| word.ends_with(ext) && word.len() > ext.len());
                if named && !under_variable && word.contains('/') && !word.starts_with(['/', '.']) {
                    out.push(word.to_string());
                }
            }
            _ => {}
        }
    }
    out
}

#[test]
fn files_named_in_docs_and_comments_exist() {
    let files = tracked_files();
    let exists = |named: &str| files.iter().any(|f| f == named || f.ends_with(&format!("/{named}")));
    let mut missing = Vec::new();
    // This file names made-up paths in its own examples.
    let checked =
        files.iter().filter(|f| (f.ends_with(".rs") || f.ends_with(".md") || f.ends_with(".sh")) && !f.ends_with("code_structure.rs"));
    for f in checked {
        let Ok(text) = std::fs::read_to_string(workspace().join(f)) else { continue };
        let text: String = if f.ends_with(".rs") {
            // Comments only: code names files it creates at run time.
            text.lines().filter_map(|l| l.find("//").map(|at| &l[at..])).collect::<Vec<_>>().join("\n")
        } else {
            text
        };
        for named in named_files(&text) {
            if !exists(&named) {
                missing.push(format!("{f}: {named}"));
            }
        }
    }
    missing.sort();
    missing.dedup();
    assert!(missing.is_empty(), "files named but not in the repository:\n{}", missing.join("\n"));
}

/// Functions of `src` (test modules left out) longer than `limit` lines, as (name, line,
/// length), unless a comment right above says why ("longer than ... because").
fn long_functions(src: &str, limit: usize) -> Vec<(String, usize, usize)> {
    let src = test_module_start(src).map_or(src, |at| &src[..at]);
    let lines: Vec<&str> = src.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let code = line.trim_start();
        let indent = &line[..line.len() - code.len()];
        let Some(at) = code.find("fn ") else { continue };
        let head = &code[..at];
        let is_fn = head.split_whitespace().all(|w| w.starts_with("pub") || matches!(w, "async" | "unsafe" | "const" | "extern"));
        if !is_fn || line.trim_end().ends_with(';') {
            continue;
        }
        let name: String = code[at + 3..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        let Some(end) = lines[i + 1..].iter().position(|l| *l == format!("{indent}}}")) else { continue };
        let len = end + 2;
        let reason = lines[..i]
            .iter()
            .rev()
            .take_while(|l| l.trim_start().starts_with("//") || l.trim_start().starts_with("#["))
            .any(|l| l.contains("longer than"));
        if len > limit && !reason {
            out.push((name, i + 1, len));
        }
    }
    out
}

#[test]
fn no_function_outside_tests_runs_over_80_lines_without_a_reason() {
    let mut long = Vec::new();
    for f in tracked_files().iter().filter(|f| f.ends_with(".rs")) {
        if f.starts_with("tests/") || f.contains("/tests/") || f.ends_with("/tests.rs") {
            continue;
        }
        let Ok(src) = std::fs::read_to_string(workspace().join(f)) else { continue };
        for (name, line, len) in long_functions(&src, 80) {
            long.push(format!("{f}:{line} {name}: {len} lines"));
        }
    }
    assert!(long.is_empty(), "split these into named steps, or say above them why they are longer than 80 lines:\n{}", long.join("\n"));
}

#[test]
fn the_function_length_check_measures_a_long_function_and_honours_a_reason() {
    let body = "    x();\n".repeat(85);
    let src = format!("fn short() {{\n}}\n\npub(crate) fn long() {{\n{body}}}\n\n// One match over every request: longer than 80 lines because each arm is one line.\nfn explained() {{\n{body}}}\n");
    assert_eq!(long_functions(&src, 80), vec![("long".to_string(), 4, 87)]);
}
