//! The sidecar and the embedded engine (started through the C ABI, in this
//! process) serve the same bytes with the same headers for the same requests.
#![allow(clippy::unwrap_used, unsafe_code)]

mod support;

use std::ffi::{CStr, CString, c_char};
use std::path::Path;
use std::process::Command;

use support::*;

/// Status line and headers (lowercased names, sorted, without `date` and
/// `Server-Timing` durations), and the body.
fn fetch(url: &str, extra: &[&str], dir: &Path) -> (Vec<String>, Vec<u8>) {
    let (h, b) = (dir.join("h"), dir.join("b"));
    let _ = std::fs::remove_file(&b);
    let out =
        Command::new("curl").args(["-s", "-S", "-D"]).arg(&h).arg("-o").arg(&b).args(extra).arg(url).output().unwrap();
    assert!(out.status.success(), "curl {url}: {}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&h).unwrap();
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let mut head = vec![lines.next().unwrap().trim().to_string()];
    let mut rest: Vec<String> = lines
        .filter_map(|l| l.split_once(':').map(|(k, v)| format!("{}: {}", k.trim().to_ascii_lowercase(), v.trim())))
        .filter(|l| !l.starts_with("date:"))
        // Timings differ run to run; the metrics named must not.
        .map(|l| match l.strip_prefix("server-timing: ") {
            Some(v) => format!(
                "server-timing: {}",
                v.split(", ").map(|m| m.split(';').next().unwrap_or(m)).collect::<Vec<_>>().join(", ")
            ),
            None => l,
        })
        .collect();
    rest.sort();
    head.extend(rest);
    // With -I curl writes the headers (date and all) where the body would go.
    let body = if extra.contains(&"-I") { Vec::new() } else { std::fs::read(&b).unwrap_or_default() };
    (head, body)
}

fn take(p: *mut c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: `p` came from the library and is freed once, just below.
    let s = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
    // SAFETY: a string the library returned, not freed before.
    unsafe { shardgate::ffi::shardgate_string_free(p) };
    s
}

#[test]
fn the_sidecar_and_the_embedded_engine_answer_alike() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    make_dataset(&dir.join("src"));
    keygen(dir);
    ok(&["pack", "src", "--name", "emb", "--version", "1.0.0", "--key", "key", "--out", "out"], dir);
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[trust]\nkeys = [\"{pub_}\"]\n[[releases]]\nmanifest = \"{out}/manifest.json\"\n\
         [[origins]]\nkind = \"dir\"\npath = \"{out}\"\n",
        pub_ = dir.join("key.pub").display(),
        out = dir.join("out").display()
    );
    std::fs::write(dir.join("sidecar.toml"), &config).unwrap();
    let sidecar = Server::start(&dir.join("sidecar.toml"));

    let c = CString::new(config).unwrap();
    let (mut h, mut err) = (0u64, std::ptr::null_mut());
    // SAFETY: a valid NUL-terminated config, writable out-parameters.
    let rc = unsafe { shardgate::ffi::shardgate_start(c.as_ptr(), std::ptr::null(), &mut h, &mut err) };
    assert_eq!(rc, shardgate::ffi::SHARDGATE_OK, "{}", take(err));
    let mut json = std::ptr::null_mut();
    // SAFETY: as above.
    let rc = unsafe { shardgate::ffi::shardgate_stats_json(h, &mut json, std::ptr::null_mut()) };
    assert_eq!(rc, shardgate::ffi::SHARDGATE_OK);
    let stats: serde_json::Value = serde_json::from_str(&take(json)).unwrap();
    let embedded = stats["listen"].as_str().unwrap().to_string();

    let etag = {
        let (head, _) = fetch(&format!("{}/v1/datasets/emb/1.0.0/files/train.jsonl", sidecar.base), &["-I"], dir);
        head.iter().find_map(|l| l.strip_prefix("etag: ")).unwrap().to_string()
    };
    let inm = format!("If-None-Match: {etag}");
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("/v1/datasets/emb/1.0.0/files/train.jsonl", vec![]),
        ("/v1/datasets/emb/1.0.0/files/part1/blob5.bin", vec!["-r", "65530-65545"]),
        ("/v1/datasets/emb/1.0.0/files/part1/blob5.bin", vec!["-r", "-100"]),
        ("/v1/datasets/emb/1.0.0/files/part1/blob5.bin", vec!["-r", "400000-"]),
        ("/v1/datasets/emb/1.0.0/files/part0/blob4.bin", vec!["-I"]),
        ("/v1/datasets/emb/1.0.0/files/train.jsonl", vec!["-H", inm.as_str()]),
        ("/v1/datasets/emb/1.0.0/manifest", vec![]),
        ("/v1/datasets/emb/1.0.0/files/missing.bin", vec![]),
        ("/v1/datasets/emb", vec![]),
    ];
    for (path, extra) in &cases {
        let a = fetch(&format!("{}{path}", sidecar.base), extra, dir);
        let b = fetch(&format!("{embedded}{path}"), extra, dir);
        assert_eq!(a.0, b.0, "headers differ for {path} {extra:?}");
        assert!(a.1 == b.1, "bodies differ for {path} {extra:?}");
    }
    // The bytes are the published ones, not merely equal to each other.
    let (_, body) = fetch(&format!("{embedded}/v1/datasets/emb/1.0.0/files/part1/blob5.bin"), &[], dir);
    assert_eq!(body, std::fs::read(dir.join("src/part1/blob5.bin")).unwrap());

    // SAFETY: a handle this test started; error out-parameter ignored.
    let rc = unsafe { shardgate::ffi::shardgate_stop(h, std::ptr::null_mut()) };
    assert_eq!(rc, shardgate::ffi::SHARDGATE_OK);
}
