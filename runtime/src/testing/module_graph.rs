//! The runtime's modules import each other without a circle, so the
//! layering stays: leaves (`config`, `stage`, `rundir` ...), the gate
//! (`capability`), services (`ssh`, `serial`, `http`, `power`, `transfer`
//! ...), the invocation context, `host`, and the commands on top.
//!
//! The graph is rebuilt from the sources: starting at `lib.rs`, every
//! `mod` declaration is followed to its file; each file is parsed (with
//! `syn`) and every `crate::x` path names an edge from the file's top-level
//! module to `x`: in `use` trees, types, expressions and macro bodies
//! (`format!("{}", crate::x::Y)`), with `super::` and `self::` resolved.
//! What must be allowed is exactly what never ships: test-only code
//! (`#[cfg(test)]` items and modules, this `testing` module among them),
//! which may reach anywhere; and doc comments, which are not imports.
//! Every top-level module is one node, `host` and its interface modules
//! included.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use proc_macro2::{TokenStream, TokenTree};
use syn::visit::Visit;

/// Edges between top-level modules: from → to → where (file and path).
type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

fn is_test_only(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && matches!(&a.meta, syn::Meta::List(l) if l.tokens.to_string() == "test")
    })
}

fn item_attrs(item: &syn::Item) -> &[syn::Attribute] {
    use syn::Item::*;
    match item {
        Const(i) => &i.attrs,
        Enum(i) => &i.attrs,
        ExternCrate(i) => &i.attrs,
        Fn(i) => &i.attrs,
        ForeignMod(i) => &i.attrs,
        Impl(i) => &i.attrs,
        Macro(i) => &i.attrs,
        Mod(i) => &i.attrs,
        Static(i) => &i.attrs,
        Struct(i) => &i.attrs,
        Trait(i) => &i.attrs,
        TraitAlias(i) => &i.attrs,
        Type(i) => &i.attrs,
        Union(i) => &i.attrs,
        Use(i) => &i.attrs,
        _ => &[],
    }
}

fn impl_item_attrs(item: &syn::ImplItem) -> &[syn::Attribute] {
    match item {
        syn::ImplItem::Const(i) => &i.attrs,
        syn::ImplItem::Fn(i) => &i.attrs,
        syn::ImplItem::Type(i) => &i.attrs,
        syn::ImplItem::Macro(i) => &i.attrs,
        _ => &[],
    }
}

/// Collects the crate-internal references of one file.
struct Refs<'a> {
    /// Module path of the code being visited (`["host", "ssh"]`).
    module: Vec<String>,
    file: &'a str,
    /// (top-level module, evidence)
    found: BTreeSet<(String, String)>,
}

impl Refs<'_> {
    /// Records the top-level module `segments` (a path as written) lands
    /// in, if it is one of this crate's.
    fn resolve(&mut self, segments: &[String]) {
        let (mut absolute, rest) = match segments.first().map(String::as_str) {
            Some("crate") => (Vec::new(), &segments[1..]),
            Some("self" | "super") => (self.module.clone(), segments),
            _ => return,
        };
        // `super::super::x`, `self::super::x`.
        let mut rest = rest.iter().peekable();
        while let Some(s) = rest.next_if(|s| *s == "super" || *s == "self") {
            if s == "super" {
                absolute.pop();
            }
        }
        absolute.extend(rest.cloned());
        if let Some(top) = absolute.first() {
            let shown = segments.join("::");
            self.found
                .insert((top.clone(), format!("{}: {shown}", self.file)));
        }
    }

    fn use_tree(&mut self, mut prefix: Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
            }
            syn::UseTree::Name(n) => {
                prefix.push(n.ident.to_string());
                self.resolve(&prefix);
            }
            syn::UseTree::Rename(r) => {
                prefix.push(r.ident.to_string());
                self.resolve(&prefix);
            }
            syn::UseTree::Glob(_) => self.resolve(&prefix),
            syn::UseTree::Group(g) => {
                for item in &g.items {
                    self.use_tree(prefix.clone(), item);
                }
            }
        }
    }

    /// Paths inside a macro's tokens (`crate :: x :: y`).
    fn tokens(&mut self, tokens: TokenStream) {
        let flat = flatten(tokens);
        let mut i = 0;
        while i < flat.len() {
            let start = matches!(&flat[i], TokenTree::Ident(id) if id == "crate" || id == "super" || id == "self");
            if !start {
                i += 1;
                continue;
            }
            let mut segments = vec![flat[i].to_string()];
            let mut j = i + 1;
            while j + 2 < flat.len()
                && matches!(&flat[j], TokenTree::Punct(p) if p.as_char() == ':')
                && matches!(&flat[j + 1], TokenTree::Punct(p) if p.as_char() == ':')
            {
                match &flat[j + 2] {
                    TokenTree::Ident(id) => segments.push(id.to_string()),
                    _ => break,
                }
                j += 3;
            }
            if segments.len() > 1 {
                self.resolve(&segments);
            }
            i = j.max(i + 1);
        }
    }
}

/// Every token of `tokens`, groups opened.
fn flatten(tokens: TokenStream) -> Vec<TokenTree> {
    let mut out = Vec::new();
    for t in tokens {
        match t {
            TokenTree::Group(g) => out.extend(flatten(g.stream())),
            other => out.push(other),
        }
    }
    out
}

impl<'ast> Visit<'ast> for Refs<'_> {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        if !is_test_only(item_attrs(item)) {
            syn::visit::visit_item(self, item);
        }
    }

    fn visit_impl_item(&mut self, item: &'ast syn::ImplItem) {
        if !is_test_only(impl_item_attrs(item)) {
            syn::visit::visit_impl_item(self, item);
        }
    }

    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        self.module.push(m.ident.to_string());
        syn::visit::visit_item_mod(self, m);
        self.module.pop();
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        self.use_tree(Vec::new(), &u.tree);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        self.resolve(&segments);
        syn::visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        self.tokens(mac.tokens.clone());
        syn::visit::visit_macro(self, mac);
    }

    // Doc comments and other attributes are not imports.
    fn visit_attribute(&mut self, _: &'ast syn::Attribute) {}
}

/// The non-test module files of the crate rooted at `src/lib.rs`, each
/// with its module path.
fn module_files(src: &Path) -> Vec<(Vec<String>, PathBuf)> {
    let mut out = Vec::new();
    let mut todo = vec![(Vec::<String>::new(), src.join("lib.rs"))];
    while let Some((module, file)) = todo.pop() {
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        let parsed = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        // Children of `x.rs` live in `x/`; of `lib.rs` and `mod.rs` beside it.
        let dir = match file.file_name().and_then(|n| n.to_str()) {
            Some("lib.rs" | "mod.rs") => file.parent().unwrap().to_path_buf(),
            _ => file.with_extension(""),
        };
        for item in &parsed.items {
            if let syn::Item::Mod(m) = item
                && m.content.is_none()
                && !is_test_only(&m.attrs)
            {
                let name = m.ident.to_string();
                let flat = dir.join(format!("{name}.rs"));
                let nested = dir.join(&name).join("mod.rs");
                let path = if flat.exists() { flat } else { nested };
                let mut child = module.clone();
                child.push(name);
                todo.push((child, path));
            }
        }
        if !module.is_empty() {
            out.push((module, file));
        }
    }
    out
}

/// The graph of the crate rooted at `src/lib.rs`.
fn graph(src: &Path) -> Graph {
    let files = module_files(src);
    let tops: BTreeSet<String> = files.iter().map(|(m, _)| m[0].clone()).collect();
    let mut graph = Graph::new();
    for (module, file) in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let parsed = syn::parse_file(&text).unwrap();
        let shown = file.strip_prefix(src).unwrap_or(file).display().to_string();
        let mut refs = Refs {
            module: module.clone(),
            file: &shown,
            found: BTreeSet::new(),
        };
        refs.visit_file(&parsed);
        let from = graph.entry(module[0].clone()).or_default();
        for (to, evidence) in refs.found {
            if to != module[0] && tops.contains(&to) {
                from.entry(to).or_default().insert(evidence);
            }
        }
    }
    graph
}

/// The strongly connected components of more than one module (Tarjan).
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    struct State<'g> {
        graph: &'g Graph,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'g>(s: &mut State<'g>, v: &'g str) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.graph.get(v).into_iter().flat_map(|e| e.keys()) {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.out.push(component);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    let nodes: BTreeSet<&str> = graph
        .iter()
        .flat_map(|(k, e)| std::iter::once(k.as_str()).chain(e.keys().map(String::as_str)))
        .collect();
    for v in nodes {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.out.sort();
    s.out
}

/// Names each circle and the references that close it.
fn describe(graph: &Graph, cycles: &[Vec<String>]) -> String {
    let mut out = String::new();
    for c in cycles {
        let _ = writeln!(
            out,
            "import circle among {} modules: {}",
            c.len(),
            c.join(", ")
        );
        for from in c {
            for (to, evidence) in graph.get(from).into_iter().flatten() {
                if c.contains(to) {
                    let first = evidence.iter().next().map(String::as_str).unwrap_or("");
                    let _ = writeln!(
                        out,
                        "    {from} -> {to} ({first}{})",
                        if evidence.len() > 1 {
                            format!(" and {} more", evidence.len() - 1)
                        } else {
                            String::new()
                        }
                    );
                }
            }
        }
    }
    out
}

#[test]
fn no_import_circle_among_runtime_modules() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = graph(&src);
    // The parse saw the crate: the layering's known edges are there.
    for (from, to) in [
        ("host", "capability"),
        ("host", "ssh"),
        ("run", "host"),
        ("http", "capability"),
    ] {
        assert!(
            graph.get(from).is_some_and(|e| e.contains_key(to)),
            "expected an edge {from} -> {to}; the parser lost track of the sources"
        );
    }
    assert!(
        !graph.contains_key("testing"),
        "test-only modules are not nodes"
    );
    let found = cycles(&graph);
    assert!(found.is_empty(), "{}", describe(&graph, &found));
}

/// The checker itself: paths in uses, expressions and macros, `super`
/// resolved, test-only code and doc links ignored, a circle named with the
/// references that close it.
#[test]
fn circles_are_found_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    let write = |name: &str, text: &str| {
        let path = src.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write(
        "lib.rs",
        "pub mod a;\npub mod b;\npub mod c;\npub mod d;\n#[cfg(test)]\nmod t;\n",
    );
    write(
        "a.rs",
        "//! See [`crate::d`].\npub fn f() -> String { format!(\"{}\", crate::b::X) }\npub mod inner;\n",
    );
    write("a/inner.rs", "pub use super::super::c::Y;\n");
    write(
        "b.rs",
        "pub const X: u8 = 1;\nuse super::a;\n#[cfg(test)]\nmod tests { use crate::t::Z; use crate::d::W; }\n",
    );
    write("c.rs", "pub struct Y;\n");
    write(
        "d.rs",
        "pub struct W(crate::c::Y);\nimpl W { #[cfg(test)] fn t() { crate::a::f(); } }\n",
    );
    write("t.rs", "pub use crate::a::f;\n");
    let graph = graph(src);
    let edges: Vec<(String, String)> = graph
        .iter()
        .flat_map(|(f, e)| e.keys().map(move |t| (f.clone(), t.clone())))
        .collect();
    let pairs: Vec<(&str, &str)> = edges
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    assert_eq!(pairs, [("a", "b"), ("a", "c"), ("b", "a"), ("d", "c")]);
    let found = cycles(&graph);
    assert_eq!(found, [vec!["a".to_string(), "b".to_string()]]);
    let text = describe(&graph, &found);
    assert!(
        text.contains("import circle among 2 modules: a, b"),
        "{text}"
    );
    assert!(text.contains("a -> b (a.rs: crate::b::X)"), "{text}");
    assert!(text.contains("b -> a (b.rs: super::a)"), "{text}");
}
