//! The code pipeline: import detection and resolution per language family, dependency sorting
//! (cycles, documentation placement, batched imports), the repository markdown document,
//! quality tiers and loading a repository from disk. Every expected value below is worked out
//! by hand from the rules documented in `internlm2_datasets::code`.

use internlm2_datasets::code::{
    CodeFile, CodeQualityConfig, CodeQualityStage, DirConfig, Import, Language, RepoConfig,
    Repository, Resolver, Tier, TierWeights, detect_imports, group_repositories,
    repository_document, sort_files,
};
use internlm2_datasets::{Classifier, Document, Stage, Verdict};

fn repo(files: &[(&str, &str)]) -> Repository {
    let files = files
        .iter()
        .map(|(p, t)| CodeFile::new("r", p, *t))
        .collect();
    Repository::new("r", files).expect("unique paths")
}

fn paths<'a>(repo: &'a Repository, idx: &[usize]) -> Vec<&'a str> {
    idx.iter().map(|&i| repo.files[i].path.as_str()).collect()
}

fn index_of(repo: &Repository, path: &str) -> usize {
    repo.files
        .iter()
        .position(|f| f.path == path)
        .expect("path present")
}

/// Specifiers detected in `path`, and what each resolves to.
fn resolved<'a>(repo: &'a Repository, path: &str) -> Vec<(String, Vec<&'a str>)> {
    let resolver = Resolver::new(&repo.files);
    let i = index_of(repo, path);
    resolver
        .imports(i)
        .iter()
        .map(|imp| (imp.spec.clone(), paths(repo, &resolver.resolve(i, imp))))
        .collect()
}

fn order(repo: &Repository) -> Vec<&str> {
    paths(repo, &repo.dependency_order())
}

fn deps_by_path(repo: &Repository) -> Vec<(&str, Vec<&str>)> {
    repo.dependencies()
        .iter()
        .enumerate()
        .map(|(i, d)| (repo.files[i].path.as_str(), paths(repo, d)))
        .collect()
}

fn s(x: &str) -> String {
    x.to_string()
}

#[test]
fn code_python_imports() {
    let main = "import os\nimport app.config as cfg, helpers\nfrom .models import User, Group\n\
                from ..shared.util import slug\nfrom pkg import (\n    tools,\n    Thing as T,\n)\n\
                # import commented\n";
    assert_eq!(
        detect_imports(Language::Python, main),
        vec![
            Import::new("os"),
            Import::new("app.config"),
            Import::new("helpers"),
            Import::new(".models").with_names(["User", "Group"]),
            Import::new("..shared.util").with_names(["slug"]),
            Import::new("pkg").with_names(["tools", "Thing"]),
        ]
    );
    let r = repo(&[
        ("app/main.py", main),
        ("app/config.py", ""),
        ("app/models.py", ""),
        ("lib/helpers.py", ""),
        ("shared/util.py", ""),
        ("pkg/__init__.py", "from .things import Thing\n"),
        ("pkg/tools.py", ""),
        ("pkg/things.py", ""),
    ]);
    assert_eq!(
        resolved(&r, "app/main.py"),
        vec![
            (s("os"), vec![]),
            (s("app.config"), vec!["app/config.py"]),
            (s("helpers"), vec!["lib/helpers.py"]),
            (s(".models"), vec!["app/models.py"]),
            (s("..shared.util"), vec!["shared/util.py"]),
            // `tools` is a submodule; `Thing` is re-exported by pkg/__init__.py from .things.
            (s("pkg"), vec!["pkg/things.py", "pkg/tools.py"]),
        ]
    );
}

#[test]
fn code_rust_imports() {
    let shapes = "use super::area::area;\nuse crate::util::{clamp, Pair as P};\nuse std::fmt;\n";
    let specs: Vec<String> = detect_imports(Language::Rust, shapes)
        .into_iter()
        .map(|i| i.spec)
        .collect();
    assert_eq!(
        specs,
        [
            "super::area::area",
            "crate::util::clamp",
            "crate::util::Pair",
            "std::fmt"
        ]
    );
    let r = repo(&[
        (
            "src/lib.rs",
            "pub mod geo;\nmod util;\npub use geo::shapes::Circle;\n",
        ),
        ("src/geo/mod.rs", "pub mod shapes;\npub mod area;\n"),
        ("src/geo/shapes.rs", shapes),
        (
            "src/geo/area.rs",
            "use self::inner::X;\n// use crate::util::clamp;\n",
        ),
        ("src/util.rs", "pub fn clamp() {}\n"),
    ]);
    assert_eq!(
        resolved(&r, "src/lib.rs"),
        vec![
            (s("self::geo"), vec!["src/geo/mod.rs"]),
            (s("self::util"), vec!["src/util.rs"]),
            (s("geo::shapes::Circle"), vec!["src/geo/shapes.rs"]),
        ]
    );
    assert_eq!(
        resolved(&r, "src/geo/shapes.rs"),
        vec![
            (s("super::area::area"), vec!["src/geo/area.rs"]),
            (s("crate::util::clamp"), vec!["src/util.rs"]),
            (s("crate::util::Pair"), vec!["src/util.rs"]),
            (s("std::fmt"), vec![]),
        ]
    );
    assert_eq!(
        resolved(&r, "src/geo/area.rs"),
        vec![(s("self::inner::X"), vec![])]
    );
    // lib.rs and geo/mod.rs only declare and re-export: lib.rs's edge to the umbrella
    // geo/mod.rs becomes edges to its modules.
    assert_eq!(
        deps_by_path(&r),
        vec![
            ("src/geo/area.rs", vec![]),
            (
                "src/geo/mod.rs",
                vec!["src/geo/area.rs", "src/geo/shapes.rs"]
            ),
            ("src/geo/shapes.rs", vec!["src/geo/area.rs", "src/util.rs"]),
            (
                "src/lib.rs",
                vec!["src/geo/area.rs", "src/geo/shapes.rs", "src/util.rs"]
            ),
            ("src/util.rs", vec![]),
        ]
    );
    assert_eq!(
        order(&r),
        [
            "src/geo/area.rs",
            "src/util.rs",
            "src/geo/shapes.rs",
            "src/geo/mod.rs",
            "src/lib.rs"
        ]
    );
}

#[test]
fn code_c_includes() {
    let main = "#include <stdio.h>\n#include \"vec.h\"\n#include \"../include/config.h\"\n\
                /* #include \"gone.h\" */\n#include \"detail/impl.h\"\nint main(void) { return 0; }\n";
    let found = detect_imports(Language::C, main);
    let specs: Vec<(&str, bool)> = found.iter().map(|i| (i.spec.as_str(), i.system)).collect();
    assert_eq!(
        specs,
        [
            ("stdio.h", true),
            ("vec.h", false),
            ("../include/config.h", false),
            ("detail/impl.h", false)
        ]
    );
    let r = repo(&[
        ("src/main.c", main),
        ("src/vec.h", ""),
        ("include/vec.h", ""),
        ("include/config.h", ""),
        ("third_party/lib/detail/impl.h", ""),
        ("lib/detail/impl.h", ""),
        ("gone.h", ""),
    ]);
    assert_eq!(
        resolved(&r, "src/main.c"),
        vec![
            (s("stdio.h"), vec![]),
            // Relative to the file first, although include/vec.h also matches by suffix.
            (s("vec.h"), vec!["src/vec.h"]),
            (s("../include/config.h"), vec!["include/config.h"]),
            // Repository-wide: the shorter of the two matching paths.
            (s("detail/impl.h"), vec!["lib/detail/impl.h"]),
        ]
    );
}

#[test]
fn code_java_imports() {
    let app = "package com.acme;\n\nimport java.util.List;\nimport com.acme.model.User;\n\
               import static com.acme.util.Strings.join;\nimport com.acme.shapes.*;\n\n\
               public class App { Circle c; User u; }\n";
    let specs: Vec<String> = detect_imports(Language::Java, app)
        .into_iter()
        .map(|i| i.spec)
        .collect();
    assert_eq!(
        specs,
        [
            "java.util.List",
            "com.acme.model.User",
            "com.acme.util.Strings.join",
            "com.acme.shapes.*"
        ]
    );
    let base = "src/main/java/com/acme";
    let r = repo(&[
        (&format!("{base}/App.java"), app),
        (&format!("{base}/model/User.java"), ""),
        (&format!("{base}/util/Strings.java"), ""),
        (&format!("{base}/shapes/Circle.java"), ""),
        (&format!("{base}/shapes/Square.java"), ""),
    ]);
    let got = resolved(&r, &format!("{base}/App.java"));
    let want = vec![
        (s("java.util.List"), vec![]),
        (
            s("com.acme.model.User"),
            vec![format!("{base}/model/User.java")],
        ),
        // A static member: the class file.
        (
            s("com.acme.util.Strings.join"),
            vec![format!("{base}/util/Strings.java")],
        ),
        // The wildcard is refined to the class App actually names.
        (
            s("com.acme.shapes.*"),
            vec![format!("{base}/shapes/Circle.java")],
        ),
    ];
    let got: Vec<(String, Vec<String>)> = got
        .into_iter()
        .map(|(s, p)| (s, p.into_iter().map(String::from).collect()))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn code_js_ts_imports() {
    let app = "import { h } from 'preact';\nimport Button from \"./components/Button\";\n\
               import {\n  api,\n} from '../lib/api.js';\nexport * from './types';\nimport './styles.css';\n\
               const util = require('./util');\nconst lazy = () => import('./lazy');\n\
               // import x from './commented';\n";
    let specs: Vec<String> = detect_imports(Language::TypeScript, app)
        .into_iter()
        .map(|i| i.spec)
        .collect();
    assert_eq!(
        specs,
        [
            "preact",
            "./components/Button",
            "../lib/api.js",
            "./types",
            "./styles.css",
            "./util",
            "./lazy"
        ]
    );
    let r = repo(&[
        ("web/src/app.ts", app),
        ("web/src/components/Button.tsx", ""),
        ("web/lib/api.ts", ""),
        ("web/src/types/index.ts", ""),
        ("web/src/styles.css", ""),
        ("web/src/util.js", ""),
        ("web/src/lazy/index.js", ""),
        ("web/src/commented.ts", ""),
    ]);
    assert_eq!(
        resolved(&r, "web/src/app.ts"),
        vec![
            (s("preact"), vec![]),
            (
                s("./components/Button"),
                vec!["web/src/components/Button.tsx"]
            ),
            (s("../lib/api.js"), vec!["web/lib/api.ts"]),
            (s("./types"), vec!["web/src/types/index.ts"]),
            (s("./styles.css"), vec!["web/src/styles.css"]),
            (s("./util"), vec!["web/src/util.js"]),
            (s("./lazy"), vec!["web/src/lazy/index.js"]),
        ]
    );
}

#[test]
fn code_go_imports() {
    let main = "package main\n\nimport (\n\t\"fmt\"\n\tstr \"strings\"\n\
                \t\"github.com/acme/tool/internal/parse\"\n\t_ \"github.com/other/thing/render\"\n)\n\
                import \"github.com/acme/tool/pkg/out\"\n\nfunc main() {}\n";
    let specs: Vec<String> = detect_imports(Language::Go, main)
        .into_iter()
        .map(|i| i.spec)
        .collect();
    assert_eq!(
        specs,
        [
            "fmt",
            "strings",
            "github.com/acme/tool/internal/parse",
            "github.com/other/thing/render",
            "github.com/acme/tool/pkg/out"
        ]
    );
    let r = repo(&[
        ("go.mod", "module github.com/acme/tool\n\ngo 1.22\n"),
        ("cmd/tool/main.go", main),
        ("internal/parse/lexer.go", "package parse\n"),
        ("internal/parse/parser.go", "package parse\n"),
        ("internal/parse/parser_test.go", "package parse\n"),
        ("third/render/r.go", "package render\n"),
        ("pkg/out/out.go", "package out\n"),
    ]);
    assert_eq!(
        resolved(&r, "cmd/tool/main.go"),
        vec![
            (s("fmt"), vec![]),
            (s("strings"), vec![]),
            // Through go.mod's module path: every non-test file of the package folder.
            (
                s("github.com/acme/tool/internal/parse"),
                vec!["internal/parse/lexer.go", "internal/parse/parser.go"]
            ),
            // No module prefix: the folder matching the longest tail of the import path.
            (
                s("github.com/other/thing/render"),
                vec!["third/render/r.go"]
            ),
            (s("github.com/acme/tool/pkg/out"), vec!["pkg/out/out.go"]),
        ]
    );
}

#[test]
fn code_import_cycle_is_broken_alphabetically() {
    // a.py -> b.py -> a.py, and c.py imports nothing: c.py is ready first; then only the
    // cycle remains and its alphabetically first file, a.py, is placed, which frees b.py.
    let r = repo(&[
        ("a.py", "import b\n"),
        ("b.py", "import a\n"),
        ("c.py", "x = 1\n"),
    ]);
    assert_eq!(
        deps_by_path(&r),
        vec![
            ("a.py", vec!["b.py"]),
            ("b.py", vec!["a.py"]),
            ("c.py", vec![])
        ]
    );
    assert_eq!(order(&r), ["c.py", "a.py", "b.py"]);

    // A file that depends on a cycle is not taken to break it, even when it comes first
    // alphabetically: d.py is ready, then the cycle b <-> c breaks at b, and a.py comes last.
    let r = repo(&[
        ("a.py", "import c\n"),
        ("b.py", "import c\n"),
        ("c.py", "import b\n"),
        ("d.py", "y = 2\n"),
    ]);
    assert_eq!(order(&r), ["d.py", "b.py", "c.py", "a.py"]);

    // The same rules on a bare graph.
    let order = sort_files(&["z.py", "y.py"], &[vec![1], vec![0]]).unwrap();
    assert_eq!(order, [1, 0]);
}

#[test]
fn code_docs_land_before_first_code_file_of_their_folder() {
    let r = repo(&[
        ("README.md", "# Project\n"),
        ("CONTRIBUTING.md", "Be nice.\n"),
        ("docs/guide.rst", "Guide\n=====\n"),
        ("pkg/README.md", "# pkg\n"),
        ("pkg/core.py", "def run(): ...\n"),
        ("pkg/api.py", "from .core import run\n"),
        ("app.py", "from pkg.api import serve\n"),
        ("scripts/README.md", "Helper scripts.\n"),
        ("scripts/tool.py", "print('tool')\n"),
    ]);
    // Code: core (ready, before scripts/tool.py), api, app, tool. Root docs and docs/ (no code)
    // go before the first code file of the repository, README first, top level first;
    // pkg/README.md right before pkg/core.py; scripts/README.md right before scripts/tool.py.
    assert_eq!(
        order(&r),
        [
            "README.md",
            "CONTRIBUTING.md",
            "docs/guide.rst",
            "pkg/README.md",
            "pkg/core.py",
            "pkg/api.py",
            "app.py",
            "scripts/README.md",
            "scripts/tool.py",
        ]
    );
}

#[test]
fn code_shorter_path_preferred() {
    let r = repo(&[
        (
            "main.py",
            "import util\nfrom helpers.text import slug\nimport tie\n",
        ),
        ("lib/deep/util.py", ""),
        ("lib/util.py", ""),
        ("vendor/x/helpers/text.py", ""),
        ("src/helpers/text.py", ""),
        ("b1/tie.py", ""),
        ("a1/tie.py", ""),
    ]);
    assert_eq!(
        resolved(&r, "main.py"),
        vec![
            (s("util"), vec!["lib/util.py"]),
            (s("helpers.text"), vec!["src/helpers/text.py"]),
            // Same length: alphabetical.
            (s("tie"), vec!["a1/tie.py"]),
        ]
    );
}

#[test]
fn code_init_batched_import_refined() {
    let r = repo(&[
        (
            "pkg/__init__.py",
            "from .a import A\nfrom .b import B, helper\n",
        ),
        ("pkg/a.py", "from pkg import B\n\n\nclass A(B):\n    pass\n"),
        ("pkg/b.py", "class B:\n    pass\n"),
        ("pkg/c.py", "from . import a, b\nfrom pkg import *\n"),
        ("main.py", "import pkg\nfrom pkg import c, A\n"),
    ]);
    // a.py asks pkg for B: refined through __init__.py to pkg/b.py (not pkg/__init__.py,
    // which imports a.py and would make a cycle).
    assert_eq!(resolved(&r, "pkg/a.py"), vec![(s("pkg"), vec!["pkg/b.py"])]);
    assert_eq!(
        resolved(&r, "main.py"),
        vec![
            (s("pkg"), vec!["pkg/__init__.py"]),
            (s("pkg"), vec!["pkg/a.py", "pkg/c.py"])
        ]
    );
    // __init__.py only imports: edges to it become edges to pkg/a.py and pkg/b.py.
    assert_eq!(
        deps_by_path(&r),
        vec![
            ("main.py", vec!["pkg/a.py", "pkg/b.py", "pkg/c.py"]),
            ("pkg/__init__.py", vec!["pkg/a.py", "pkg/b.py"]),
            ("pkg/a.py", vec!["pkg/b.py"]),
            ("pkg/b.py", vec![]),
            ("pkg/c.py", vec!["pkg/a.py", "pkg/b.py"]),
        ]
    );
    assert_eq!(
        order(&r),
        [
            "pkg/b.py",
            "pkg/a.py",
            "pkg/__init__.py",
            "pkg/c.py",
            "main.py"
        ]
    );
}

#[test]
fn code_umbrella_header_refined() {
    let r = repo(&[
        (
            "include/all.h",
            "#ifndef ALL_H\n#define ALL_H\n#include \"a.h\"\n#include \"b.h\"\n#endif\n",
        ),
        ("include/a.h", "typedef int a_t;\n"),
        ("include/b.h", "#include \"all.h\"\ntypedef a_t b_t;\n"),
        (
            "src/main.c",
            "#include \"all.h\"\nint main(void) { return 0; }\n",
        ),
    ]);
    // b.h includes the umbrella that includes b.h: refined to the umbrella's other member.
    assert_eq!(
        deps_by_path(&r),
        vec![
            ("include/a.h", vec![]),
            ("include/all.h", vec!["include/a.h", "include/b.h"]),
            ("include/b.h", vec!["include/a.h"]),
            ("src/main.c", vec!["include/a.h", "include/b.h"]),
        ]
    );
    // Unrefined, b.h <-> all.h would be a cycle broken at all.h, placing all.h before b.h.
    assert_eq!(
        order(&r),
        ["include/a.h", "include/b.h", "include/all.h", "src/main.c"]
    );
}

#[test]
fn code_markdown_document_has_every_file_once_in_order() {
    let docs = vec![
        Document::new("from lib import f\nprint(f())\n")
            .with_meta("repo", "demo")
            .with_meta("path", "app.py")
            .with_meta("sample_weight", 1.0),
        Document::new("def f():\n    return 1\n")
            .with_meta("repo", "demo")
            .with_meta("path", "lib.py")
            .with_meta("sample_weight", 2.0),
        Document::new("# Demo\n")
            .with_meta("repo", "demo")
            .with_meta("path", "README.md"),
    ];
    let config = RepoConfig::default();
    let grouping = group_repositories(docs, &config);
    assert!(grouping.rejected.is_empty());
    let doc = repository_document(&grouping.repositories[0], &config);
    let expected = "# demo\n\n\
                    ## README.md\n\n# Demo\n\n\
                    ## lib.py\n\n```python\ndef f():\n    return 1\n```\n\n\
                    ## app.py\n\n```python\nfrom lib import f\nprint(f())\n```\n";
    assert_eq!(doc.text, expected);
    for path in ["README.md", "lib.py", "app.py"] {
        assert_eq!(
            doc.text.matches(&format!("## {path}\n")).count(),
            1,
            "{path}"
        );
    }
    assert_eq!(
        doc.metadata["files"],
        serde_json::json!(["README.md", "lib.py", "app.py"])
    );
    assert_eq!(doc.source.as_deref(), Some("demo"));
    assert_eq!(doc.id, "demo");
    // Byte-weighted: lib.py 22 bytes x 2.0, app.py 29 x 1.0, README.md 7 x 1.0 (no weight).
    assert_eq!(doc.metadata["sample_weight"].as_f64(), Some(80.0 / 58.0));
}

#[test]
fn code_grouping_rejects_with_reasons() {
    let file = |repo: &str, path: &str| {
        Document::new("x = 1\n")
            .with_meta("repo", repo)
            .with_meta("path", path)
    };
    let docs = vec![
        file("r2", "b.py"),
        file("r1", "./src\\a.py"),
        file("r2", "b.py"),
        Document::new("y").with_meta("repo", "r1"),
        Document::new("z")
            .with_meta("repo", "r1")
            .with_source("from/source.py"),
        Document::new("no repo").with_meta("path", "q.py"),
    ];
    let g = group_repositories(docs, &RepoConfig::default());
    let names: Vec<&str> = g.repositories.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["r1", "r2"]);
    let r1: Vec<&str> = g.repositories[0]
        .files
        .iter()
        .map(|f| f.path.as_str())
        .collect();
    assert_eq!(r1, ["from/source.py", "src/a.py"]);
    let reasons: Vec<&str> = g.rejected.iter().map(|(_, r)| *r).collect();
    assert_eq!(reasons, ["duplicate_path", "no_path", "no_repository"]);
}

struct Constant(f32);

impl Classifier for Constant {
    fn name(&self) -> &str {
        "good_code"
    }
    fn score(&self, _: &Document) -> f32 {
        self.0
    }
}

const NORMAL_CODE: &str = "import math\n\n\ndef circle_area(radius):\n    \"\"\"Area of a circle.\"\"\"\n    \
                           return math.pi * radius ** 2\n\n\ndef ring_area(outer, inner):\n    \
                           return circle_area(outer) - circle_area(inner)\n";

fn file(path: &str, text: &str) -> Document {
    Document::new(text).with_meta("path", path)
}

#[test]
fn code_quality_tiers() {
    let stage = CodeQualityStage::new(CodeQualityConfig::default()).unwrap();
    let tier = |path: &str, text: &str| {
        let a = stage.assess(&file(path, text));
        (a.tier, a.flags)
    };
    let minified = format!("(function(){{{}}})();", "var a=b+c;".repeat(200));
    assert_eq!(
        tier("dist/app.min.js", &minified),
        (
            Tier::Low,
            vec![
                s("max_line_length_low"),
                s("mean_line_length_low"),
                s("few_lines")
            ]
        )
    );
    assert_eq!(tier("geo.py", NORMAL_CODE), (Tier::High, vec![]));
    assert_eq!(
        tier("short.py", "value = compute(1)\nprint(value)\n"),
        (Tier::Moderate, vec![s("few_lines")])
    );
    let table = format!("TABLE = [\n{}]\n", "    101, 202, 303, 404,\n".repeat(10));
    assert_eq!(
        tier("table.py", &table),
        (Tier::Low, vec![s("numeric_fraction_low")])
    );
    let generated = format!("# Code generated by tool. DO NOT EDIT.\n{NORMAL_CODE}");
    assert_eq!(
        tier("gen.py", &generated),
        (Tier::Low, vec![s("generated")])
    );
    // Documentation skips the line-length and line-count rules.
    let prose = "word ".repeat(100);
    assert_eq!(tier("docs/README.md", &prose), (Tier::High, vec![]));
    assert_eq!(tier("empty.py", " \n\n"), (Tier::Low, vec![s("empty")]));

    // The stage writes the tier and weight and drops zero-weight tiers.
    let Verdict::Keep(kept) = stage.apply(file("geo.py", NORMAL_CODE)) else {
        panic!("kept")
    };
    assert_eq!(kept.metadata["tier"], "high");
    assert_eq!(kept.metadata["sample_weight"], 2.0);
    let dropped = stage.apply(file("dist/app.min.js", &minified));
    assert_eq!(dropped.reason(), Some("low_quality_code"));

    // Model-based: the classifier's tier caps the rules' tier.
    let with_model = |score: f32| {
        CodeQualityStage::new(CodeQualityConfig::default())
            .unwrap()
            .with_classifier(Constant(score))
    };
    let Verdict::Keep(doc) = with_model(0.3).apply(file("geo.py", NORMAL_CODE)) else {
        panic!("kept")
    };
    assert_eq!(doc.metadata["tier"], "moderate");
    assert_eq!(doc.metadata["sample_weight"], 1.0);
    assert_eq!(
        doc.metadata["quality_flags"],
        serde_json::json!(["model_moderate"])
    );
    assert_eq!(
        doc.metadata["code_quality_score"].as_f64(),
        Some(f64::from(0.3f32))
    );
    assert_eq!(
        with_model(0.1).apply(file("geo.py", NORMAL_CODE)).reason(),
        Some("low_quality_code")
    );
    assert_eq!(
        with_model(0.9).assess(&file("short.py", "x()\n")).tier,
        Tier::Moderate
    );

    // A positive low weight keeps low files, down-weighted.
    let keep_low = CodeQualityConfig::default().with_weights(TierWeights {
        low: 0.5,
        ..TierWeights::default()
    });
    let Verdict::Keep(doc) = CodeQualityStage::new(keep_low)
        .unwrap()
        .apply(file("t.py", &table))
    else {
        panic!("kept")
    };
    assert_eq!(
        (
            doc.metadata["tier"].as_str(),
            doc.metadata["sample_weight"].as_f64()
        ),
        (Some("low"), Some(0.5))
    );
}

#[test]
fn code_from_dir_skips_with_reasons() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("myrepo");
    let write = |rel: &str, bytes: &[u8]| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    };
    write("a.py", b"import b\n");
    write("b.py", b"x = 1\n");
    write("sub/README.md", b"# sub\n");
    write("sub/c.rs", b"fn c() {}\n");
    write(".hidden/x.py", b"x\n");
    write(".env", b"KEY=1\n");
    write("node_modules/lib/index.js", b"module.exports = 1;\n");
    write("blob.bin", &[0, 1, 2]);
    write("latin1.txt", &[0xE9, 0x41]);
    write("big.py", &[b'#'; 100]);
    #[cfg(unix)]
    std::os::unix::fs::symlink(root.join("a.py"), root.join("link.py")).unwrap();

    let repo =
        Repository::from_dir_with(&root, &DirConfig::default().with_max_file_bytes(64)).unwrap();
    assert_eq!(repo.name, "myrepo");
    let files: Vec<&str> = repo.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(files, ["a.py", "b.py", "sub/README.md", "sub/c.rs"]);
    let mut expected = vec![
        ("binary", 1),
        ("hidden", 2),
        ("not_utf8", 1),
        ("skipped_dir", 1),
        ("too_large", 1),
    ];
    if cfg!(unix) {
        expected.push(("symlink", 1));
    }
    expected.sort();
    let skipped: Vec<(&str, u64)> = repo.skipped.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_eq!(skipped, expected);
    assert_eq!(order(&repo), ["b.py", "a.py", "sub/README.md", "sub/c.rs"]);
    let doc = repo.to_document();
    assert!(
        doc.text
            .starts_with("# myrepo\n\n## b.py\n\n```python\nx = 1\n```\n\n## a.py\n")
    );

    assert!(Repository::from_dir(tmp.path().join("missing")).is_err());
}

#[test]
fn code_tinyrepo_example_order() {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/data/code/tinyrepo"
    );
    let repo = Repository::from_dir(dir).unwrap();
    assert_eq!(repo.name, "tinyrepo");
    assert!(repo.skipped.is_empty());
    // native/vec.h is the only file without dependencies; vec.c follows. Then only the
    // geometry cycle shapes <-> units remains (area, __init__ and main depend on it): it breaks
    // at shapes.py, which frees area.py and units.py; area.py frees __init__.py and main.py.
    // main.py's `from geometry import Circle, area` is refined to shapes.py and area.py.
    assert_eq!(
        order(&repo),
        [
            "README.md",
            "docs/usage.md",
            "native/vec.h",
            "native/vec.c",
            "geometry/README.md",
            "geometry/shapes.py",
            "geometry/area.py",
            "geometry/__init__.py",
            "geometry/units.py",
            "main.py",
        ]
    );
    assert_eq!(
        resolved(&repo, "main.py"),
        vec![(
            s("geometry"),
            vec!["geometry/area.py", "geometry/shapes.py"]
        )]
    );
}
