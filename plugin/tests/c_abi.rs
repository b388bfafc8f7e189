//! The C ABI: the committed header is what the code generates, and real C
//! (gcc, under valgrind) and Go (cgo) hosts drive the embedded engine.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_committed_header_is_what_the_code_generates() {
    let dir = manifest_dir();
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).unwrap();
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_src(dir.join("src/ffi.rs"))
        .with_config(config)
        .generate()
        .expect("cbindgen reads src/ffi.rs")
        .write(&mut generated);
    let path = dir.join("include/shardgate.h");
    if std::env::var_os("SHARDGATE_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} differs from what src/ffi.rs generates; run `SHARDGATE_BLESS=1 cargo test -p shardgate --test c_abi` and commit it",
        path.display()
    );
}

/// `target/debug` (or wherever this test binary was built), holding the
/// cdylib. `cargo test` builds only the rlib, so `cargo build -p shardgate`
/// must run first (conf/test.sh runs it just before the tests).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let lib = dir.join("libshardgate.so");
    assert!(lib.exists(), "{} is missing: run `cargo build -p shardgate` first", lib.display());
    dir
}

fn have(cmd: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {cmd}")).output().is_ok_and(|o| o.status.success())
}

/// Skips (with a line saying so) unless `SHARDGATE_REQUIRE_HOSTS` is set,
/// in which case a missing tool fails the test: CI sets it.
fn require(cmd: &str) -> bool {
    if have(cmd) {
        return true;
    }
    assert!(std::env::var_os("SHARDGATE_REQUIRE_HOSTS").is_none(), "{cmd} is not installed (conf/test.sh installs it)");
    eprintln!("skipped: {cmd} is not installed");
    false
}

const CHUNK: u64 = 64 * 1024;

/// A packed release served by the `dir` origin, its config, and the source file.
struct Embedded {
    rel: Release,
    config: PathBuf,
    source: PathBuf,
}

fn embedded_release() -> Embedded {
    let rel = Release::pack("embedded", &[("shards/train-0000.tar", bytes_of(1_000_000, 42))], CHUNK);
    let config = rel.dir.path().join("embedded.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_grace = \"2s\"\n[trust]\nkeys = [\"{}\"]\n\
             [[releases]]\nmanifest = \"{}\"\n[[origins]]\nkind = \"dir\"\npath = \"{}\"\n",
            rel.key.public(),
            rel.manifest_path(),
            rel.out.display()
        ),
    )
    .unwrap();
    let source = rel.dir.path().join("source.bin");
    std::fs::write(&source, &rel.files["shards/train-0000.tar"]).unwrap();
    Embedded { rel, config, source }
}

fn host_args(e: &Embedded) -> Vec<String> {
    vec![
        e.config.display().to_string(),
        "embedded@1.0.0".into(),
        "shards/train-0000.tar".into(),
        e.source.display().to_string(),
        CHUNK.to_string(),
    ]
}

#[test]
fn a_c_host_drives_the_engine_cleanly_under_valgrind() {
    if !require("gcc") || !require("valgrind") {
        return;
    }
    let e = embedded_release();
    let lib = target_dir();
    let exe = e.rel.dir.path().join("host");
    let out = Command::new("gcc")
        .args(["-std=c11", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Werror", "-g", "-o"])
        .arg(&exe)
        .arg(manifest_dir().join("tests/hosts/host.c"))
        .arg(format!("-I{}", manifest_dir().join("include").display()))
        .arg(format!("-L{}", lib.display()))
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .args(["-lshardgate", "-lpthread"])
        .output()
        .unwrap();
    assert!(out.status.success(), "gcc failed:\n{}", String::from_utf8_lossy(&out.stderr));

    let out = Command::new("valgrind")
        .args(["--quiet", "--leak-check=full", "--errors-for-leak-kinds=definite,indirect", "--error-exitcode=99"])
        .arg(&exe)
        .args(host_args(&e))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "host under valgrind exited {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    assert!(stdout.contains("host ok"), "{stdout}");
}

#[test]
fn a_go_host_drives_the_engine_through_cgo() {
    if !require("go") {
        return;
    }
    let e = embedded_release();
    let lib = target_dir();
    let exe = e.rel.dir.path().join("gohost");
    let gocache = e.rel.dir.path().join("gocache");
    // GOPATH mode, no modules: what Debian's golang-go builds offline.
    let out = Command::new("go")
        .args(["build", "-o"])
        .arg(&exe)
        .arg(".")
        .current_dir(manifest_dir().join("tests/hosts/gohost"))
        .env("GO111MODULE", "off")
        .env("GOPATH", e.rel.dir.path().join("gopath"))
        .env("GOCACHE", &gocache)
        .env("GOFLAGS", "")
        .env("CGO_ENABLED", "1")
        .env("CGO_CFLAGS", format!("-I{}", manifest_dir().join("include").display()))
        .env("CGO_LDFLAGS", format!("-L{} -Wl,-rpath,{}", lib.display(), lib.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "go build failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new(&exe).args(host_args(&e)).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("gohost ok"),
        "go host exited {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
