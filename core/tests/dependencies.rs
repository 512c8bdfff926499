//! stowage-core stays pure: no Kubernetes client or API types, async runtime, HTTP server or
//! metrics among its dependencies, direct or transitive.
//!
//! The check reads `core/Cargo.toml` for the crate's normal dependencies (`[dependencies]`
//! and `[target.*.dependencies]`, optional ones included; never dev- or build-dependencies),
//! then walks the workspace's `Cargo.lock` from them. The lock lists, per package, every
//! dependency the workspace's resolution enabled for it, so the walk can only see more than
//! a build of this crate alone would pull in, never less. Any forbidden crate on the way
//! fails the test with the path that reaches it.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;

/// Crates this one must never reach.
const FORBIDDEN: &[&str] = &[
    "kube",
    "kube-client",
    "kube-runtime",
    "kube-core",
    "kube-derive",
    "k8s-openapi",
    "tokio",
    "axum",
    "axum-core",
    "prometheus",
];

/// One `[[package]]` of a lock file.
#[derive(Debug)]
struct Package {
    name: String,
    version: String,
    /// Entries as written: `name`, `name version` or `name version (source)`.
    dependencies: Vec<String>,
}

/// The `[[package]]` entries of a `Cargo.lock` (format version 3 or 4): `name`, `version`
/// and the `dependencies` array, which the lock writes one string per line.
fn parse_lock(text: &str) -> Vec<Package> {
    let mut packages = Vec::new();
    for block in text.split("[[package]]").skip(1) {
        let mut name = None;
        let mut version = None;
        let mut dependencies = Vec::new();
        let mut in_deps = false;
        for line in block.lines().map(str::trim) {
            if in_deps {
                if line.starts_with(']') {
                    in_deps = false;
                } else if let Some(dep) = quoted(line) {
                    dependencies.push(dep.to_string());
                }
            } else if line.starts_with('[') {
                // A following table ([metadata], [[patch.unused]]): this package is over.
                break;
            } else if let Some(v) = value(line, "name") {
                name = quoted(v).map(str::to_string);
            } else if let Some(v) = value(line, "version") {
                version = quoted(v).map(str::to_string);
            } else if let Some(v) = value(line, "dependencies") {
                // `dependencies = [` (one per line) or `dependencies = ["a", "b"]`.
                let inner = v.trim_start_matches('[');
                for item in inner.trim_end_matches(']').split(',') {
                    if let Some(dep) = quoted(item.trim()) {
                        dependencies.push(dep.to_string());
                    }
                }
                in_deps = !v.ends_with(']');
            }
        }
        if let (Some(name), Some(version)) = (name, version) {
            packages.push(Package {
                name,
                version,
                dependencies,
            });
        }
    }
    packages
}

/// The value of `key = value`, if the line sets `key`.
fn value<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let rest = line.strip_prefix(key)?.trim_start();
    Some(rest.strip_prefix('=')?.trim())
}

/// The contents of a `"..."` string, ignoring a trailing comma.
fn quoted(s: &str) -> Option<&str> {
    s.trim_end_matches(',').strip_prefix('"')?.strip_suffix('"')
}

/// The package names of a manifest's normal dependencies: the keys of `[dependencies]` and
/// `[target.<cfg>.dependencies]` (or their `package = "..."` when renamed), in both the
/// inline (`foo = ...`, `foo.workspace = true`) and the table (`[dependencies.foo]`) forms.
fn normal_dependencies(manifest: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut section = String::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line.trim_matches(|c| c == '[' || c == ']').to_string();
            let table = section
                .strip_prefix("target.")
                .map_or(section.as_str(), |t| {
                    // target.'cfg(unix)'.dependencies.foo: drop the quoted cfg.
                    t.rsplit_once("'.")
                        .or(t.split_once('.'))
                        .map_or(t, |(_, rest)| rest)
                });
            if let Some(dep) = table.strip_prefix("dependencies.") {
                names.push(dep.trim_matches('"').to_string());
            }
            continue;
        }
        let table = section
            .strip_prefix("target.")
            .map_or(section.as_str(), |t| {
                t.rsplit_once("'.")
                    .or(t.split_once('.'))
                    .map_or(t, |(_, rest)| rest)
            });
        if table.starts_with("dependencies.") {
            if let Some(v) = value(line, "package")
                && let (Some(last), Some(renamed)) = (names.last_mut(), quoted(v))
            {
                *last = renamed.to_string();
            }
            continue;
        }
        if table != "dependencies" || line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, rest)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        let key = key
            .split_once('.')
            .map_or(key, |(k, _)| k)
            .trim_matches('"');
        let renamed = rest
            .split_once("package")
            .and_then(|(_, r)| r.trim_start().strip_prefix('='))
            .and_then(|r| r.trim_start().strip_prefix('"'))
            .and_then(|r| r.split_once('"'))
            .map(|(name, _)| name);
        names.push(renamed.unwrap_or(key).to_string());
    }
    names
}

/// The package a lock's dependency entry names: by name alone when only one version is in
/// the lock, by name and version otherwise.
fn resolve<'a>(packages: &'a [Package], entry: &str) -> Result<&'a Package, String> {
    let mut words = entry.split_whitespace();
    let name = words.next().unwrap_or_default();
    let version = words.next();
    let mut found = packages
        .iter()
        .filter(|p| p.name == name && version.is_none_or(|v| p.version == v));
    match (found.next(), found.next()) {
        (Some(p), None) => Ok(p),
        (None, _) => Err(format!("{entry:?} is not a package of Cargo.lock")),
        (Some(_), Some(_)) => Err(format!("{entry:?} names several packages of Cargo.lock")),
    }
}

/// Walks the lock from `roots` (dependency names of the crate `root`), breadth first. Returns
/// every package reached (name and version), and for each forbidden one the shortest path
/// to it, written `root -> a 1.0 -> b 2.0`.
fn closure(
    packages: &[Package],
    root: &str,
    roots: &[String],
    forbidden: &[&str],
) -> Result<(Vec<String>, Vec<String>), String> {
    // Package (name version) -> the package it was first reached from.
    let mut parent: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut queue = VecDeque::new();
    let id = |p: &Package| format!("{} {}", p.name, p.version);
    for entry in roots {
        let p = resolve(packages, entry)?;
        if parent.insert(id(p), None).is_none() {
            queue.push_back(p);
        }
    }
    let mut reached_forbidden = Vec::new();
    while let Some(p) = queue.pop_front() {
        if forbidden.contains(&p.name.as_str()) {
            let mut path = vec![id(p)];
            let mut at = id(p);
            while let Some(Some(up)) = parent.get(&at) {
                path.push(up.clone());
                at = up.clone();
            }
            path.push(root.to_string());
            path.reverse();
            reached_forbidden.push(path.join(" -> "));
        }
        for entry in &p.dependencies {
            let dep = resolve(packages, entry)?;
            if let std::collections::btree_map::Entry::Vacant(e) = parent.entry(id(dep)) {
                e.insert(Some(id(p)));
                queue.push_back(dep);
            }
        }
    }
    Ok((parent.into_keys().collect(), reached_forbidden))
}

#[test]
fn stowage_core_reaches_no_kubernetes_client_runtime_http_server_or_metrics() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
    let lock = std::fs::read_to_string(dir.join("../Cargo.lock")).unwrap();
    let packages = parse_lock(&lock);
    assert!(
        packages.len() > 100,
        "a parser gone wrong: {} packages",
        packages.len()
    );

    let roots = normal_dependencies(&manifest);
    // The parser sees what the manifest says: these are dependencies of core today.
    for known in ["rustix", "serde", "thiserror"] {
        assert!(
            roots.iter().any(|r| r == known),
            "{known} not among {roots:?}"
        );
    }
    // ...and the lock agrees: every normal dependency is one of core's entries there.
    let core = resolve(&packages, "stowage-core").unwrap();
    for dep in &roots {
        assert!(
            core.dependencies
                .iter()
                .any(|d| d.split_whitespace().next() == Some(dep.as_str())),
            "{dep} is in core/Cargo.toml but not in Cargo.lock's stowage-core entry: {:?} \
             (run a cargo build to update the lock)",
            core.dependencies
        );
    }

    let (reached, forbidden) = closure(&packages, "stowage-core", &roots, FORBIDDEN).unwrap();
    assert!(
        reached.iter().any(|p| p.starts_with("serde_derive ")),
        "the walk went no deeper than the roots: {reached:?}"
    );
    assert!(
        forbidden.is_empty(),
        "stowage-core must stay pure (no Kubernetes client, async runtime, HTTP server or \
         metrics), but its dependencies reach:\n  {}",
        forbidden.join("\n  ")
    );
}

/// The walk finds a forbidden crate however deep, names the path, and ignores a package
/// that only other crates depend on.
#[test]
fn the_walk_names_the_path_to_a_forbidden_crate() {
    let lock = r#"
version = 4

[[package]]
name = "a"
version = "1.0.0"
dependencies = [
 "b",
 "c 2.0.0",
]

[[package]]
name = "b"
version = "1.0.0"

[[package]]
name = "c"
version = "1.0.0"
dependencies = ["tokio"]

[[package]]
name = "c"
version = "2.0.0"
source = "registry+https://github.com/rust-lang/crates.io-index"
dependencies = [
 "d",
]

[[package]]
name = "d"
version = "0.1.0"
dependencies = [
 "kube-client",
]

[[package]]
name = "kube-client"
version = "5.0.0"

[[package]]
name = "tokio"
version = "1.0.0"
"#;
    let packages = parse_lock(lock);
    assert_eq!(packages.len(), 7);
    let manifest = r#"
[package]
name = "me"

[dependencies]
a.workspace = true
x = { version = "1", package = "b" }

[target.'cfg(unix)'.dependencies]
d = "0.1"

[dev-dependencies]
tokio = "1"

[dependencies.renamed]
package = "c"
version = "1"
"#;
    let roots = normal_dependencies(manifest);
    assert_eq!(roots, ["a", "b", "d", "c"]);
    let (_, found) = closure(&packages, "me", &roots[..2], FORBIDDEN).unwrap();
    assert_eq!(
        found,
        ["me -> a 1.0.0 -> c 2.0.0 -> d 0.1.0 -> kube-client 5.0.0"]
    );
    // "c" alone is ambiguous (two versions in the lock).
    assert!(closure(&packages, "me", &roots, FORBIDDEN).is_err());
}
