//! Every close code is written down once, in `protocol/src/close.rs`: no other non-test code in the workspace
//! may spell one as a number, so a code cannot drift between the node that sends it and the one that parses it.

use std::path::{Path, PathBuf};

use ces_protocol::close::{ABNORMAL, CloseCode, NO_STATUS_RECEIVED};

/// This package's directory, read when the test runs (not when it was built), so a test binary that a shared
/// target directory reuses from another checkout still reads this checkout's files.
fn manifest_dir() -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo or nextest"))
}

/// The non-test Rust code of `file`: comment lines dropped, and everything from `#[cfg(test)]` on (the unit
/// tests sit at the bottom of each file).
fn production_code(file: &Path) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    code.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Whether `code` contains `number` as a whole number (not part of a longer one or an identifier).
fn mentions(code: &str, number: u16) -> bool {
    let needle = number.to_string();
    code.match_indices(&needle).any(|(i, _)| {
        let before = code[..i].chars().next_back();
        let after = code[i + needle.len()..].chars().next();
        let boundary = |c: Option<char>| !c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        boundary(before) && boundary(after)
    })
}

#[test]
fn no_close_code_literal_outside_the_close_module() {
    let root = manifest_dir().join("..");
    let mut files = Vec::new();
    for dir in [
        "protocol/src",
        "runtime/src",
        "services",
        "loadtest/src",
        "systest/src",
    ] {
        rust_files(&root.join(dir), &mut files);
    }
    // Service tests (`services/*/tests`) assert on the numbers on purpose: they pin the wire values.
    files.retain(|f| {
        !f.components().any(|c| c.as_os_str() == "tests") && !f.ends_with("protocol/src/close.rs")
    });
    assert!(
        files.len() > 20,
        "the scan found only {} files; is the layout different?",
        files.len()
    );
    let codes: Vec<u16> = CloseCode::ALL
        .iter()
        .map(|c| c.code())
        .chain([ABNORMAL, NO_STATUS_RECEIVED])
        .collect();
    let mut offenders = Vec::new();
    for file in &files {
        let code = production_code(file);
        for &n in &codes {
            if mentions(&code, n) {
                offenders.push(format!("{} spells close code {n}", file.display()));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "use ces_protocol::close instead:\n{}",
        offenders.join("\n")
    );
}

#[test]
fn the_scan_sees_a_literal_when_there_is_one() {
    assert!(mentions("close(socket, 4009).await", 4009));
    assert!(mentions("x => 1012,", 1012));
    assert!(!mentions("let t = 40090;", 4009));
    assert!(!mentions("timeout_ms_4009x", 4009));
    let close_rs = manifest_dir().join("src/close.rs");
    assert!(mentions(&production_code(&close_rs), 4009));
}

#[test]
fn the_protocol_document_lists_exactly_the_codes_the_edge_sends() {
    let doc = std::fs::read_to_string(manifest_dir().join("../docs/protocol.md")).unwrap();
    let section = doc
        .split("### Close codes")
        .nth(1)
        .and_then(|s| s.split("\n#").next())
        .expect("docs/protocol.md has a Close codes section");
    let mut documented: Vec<u16> = section
        .lines()
        .filter_map(|l| l.strip_prefix("| ")?.split(' ').next()?.parse().ok())
        .collect();
    documented.sort_unstable();
    let mut sent: Vec<u16> = CloseCode::ALL.iter().map(|c| c.code()).collect();
    sent.sort_unstable();
    assert_eq!(documented, sent);
}
