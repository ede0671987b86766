//! docs/TRANSITIONS.md is generated from the core's transition table; this
//! test fails when they drift apart. Regenerate with
//! `UPDATE_DOCS=1 cargo test -p hyp --test transitions_doc`.

#[test]
fn transitions_doc_matches_the_table() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/TRANSITIONS.md");
    let want = hyp::transitions::render_markdown();
    if std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::write(path, &want).expect("write docs/TRANSITIONS.md");
    }
    let have = std::fs::read_to_string(path).unwrap_or_default();
    assert_eq!(
        have, want,
        "docs/TRANSITIONS.md is stale: run with UPDATE_DOCS=1"
    );
}
