//! `grpo-host plugins list` and `grpo-host plugins check`, run as a user runs them.

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Output};

/// Run `exe` with `args`, isolated from the user's own plugin directories.
fn run(exe: &Path, args: &[&str], plugin_path: Option<&Path>) -> Output {
    let home = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(exe);
    cmd.args(args).env_remove("GRPO_PLUGIN_PATH").env("XDG_DATA_HOME", home.path());
    if let Some(p) = plugin_path {
        cmd.env("GRPO_PLUGIN_PATH", p);
    }
    cmd.output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn list_shows_the_plugins_beside_the_executable() {
    let dir = installed();
    let out = run(&dir.join("grpo-host"), &["plugins", "list"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("NAME"), "{stdout}");
    for (name, kind, stem) in [
        ("drgrpo", "algorithm", "grpo_drgrpo"),
        ("grpo", "algorithm", "grpo_grpo"),
        ("math", "environment", "grpo_math"),
        ("calc_tools", "environment", "grpo_calc_tools"),
        ("multiturn_qa", "environment", "grpo_multiturn_qa"),
    ] {
        let line =
            lines.iter().find(|l| l.split_whitespace().next() == Some(name)).unwrap_or_else(|| panic!("{stdout}"));
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols[1..3], [kind, env!("CARGO_PKG_VERSION")], "{line}");
        assert_eq!(Path::new(cols[3]), dir.join(library_file(stem)), "{line}");
    }
    assert_eq!(lines.len(), 1 + SHIPPED.len(), "{stdout}");
}

#[test]
fn a_text_file_in_a_plugin_dir_is_one_clear_line() {
    let bad = tempfile::tempdir().unwrap();
    std::fs::write(bad.path().join("libfoo.so"), "hello\n").unwrap();
    let out =
        run(&installed().join("grpo-host"), &["plugins", "list", "--plugin-dir", bad.path().to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let expected =
        format!("error: plugin file {}: not a loadable shared library", bad.path().join("libfoo.so").display());
    assert!(stderr.starts_with(&expected), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn grpo_plugin_path_is_searched() {
    let broken = broken_plugin("abi_major");
    let out = run(&installed().join("grpo-host"), &["plugins", "list"], Some(broken.parent().unwrap()));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("libbroken_abi_major.so: built for plugin ABI 99"), "{}", text(&out.stderr));
}

#[test]
fn a_missing_plugin_dir_is_one_clear_line() {
    let out = run(&installed().join("grpo-host"), &["plugins", "list", "--plugin-dir", "/no/such/dir"], None);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr).trim_end(),
        "error: --plugin-dir /no/such/dir: not a directory; pass a folder that holds plugin libraries (*.so)"
    );
}

#[test]
fn check_passes_on_each_shipped_plugin() {
    let exe = Path::new(env!("CARGO_BIN_EXE_grpo-host"));
    for (stem, start) in [
        ("grpo_grpo", "ok  algorithm grpo "),
        ("grpo_drgrpo", "ok  algorithm drgrpo "),
        ("grpo_math", "ok  environment math "),
    ] {
        let file = shipped(stem);
        let out = run(exe, &["plugins", "check", file.to_str().unwrap()], None);
        assert!(out.status.success(), "{stem}: {}", text(&out.stderr));
        assert!(text(&out.stdout).starts_with(start), "{}", text(&out.stdout));
    }
    let file = shipped("grpo_math");
    let out = run(exe, &["plugins", "check", file.to_str().unwrap(), "--config", r#"{"numerik": 1}"#], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("unknown field `numerik`"), "{}", text(&out.stderr));
}
