//! The library's shape: no import cycles between the modules of `framework/src`
//! (`scripts/import-graph`, see docs/architecture.md).

use werkmann_tests::workspace;

#[test]
fn framework_modules_import_one_way() {
    let out = std::process::Command::new("python3")
        .arg(workspace().join("scripts/import-graph"))
        .current_dir(workspace())
        .output()
        .expect("python3 runs scripts/import-graph");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "import cycles:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("no cycles"), "{text}");
}
