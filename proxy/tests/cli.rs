//! The publisher CLI end to end: keygen, pack, inspect, verify, and bad input.
#![allow(clippy::unwrap_used)]

mod support;

use support::*;

fn packed() -> (tempfile::TempDir, std::path::PathBuf) {
    let t = tempfile::tempdir().unwrap();
    make_dataset(&t.path().join("src"));
    keygen(t.path());
    std::fs::write(
        t.path().join("meta.toml"),
        "license = \"CC-BY-4.0\"\nmodality = [\"text\"]\nowner_team = \"vision\"\n[preprocessing]\nsteps = [\"dedup\"]\n",
    )
    .unwrap();
    ok(
        &[
            "pack",
            "src",
            "--name",
            "toy",
            "--version",
            "1.0.0",
            "--key",
            "key",
            "--out",
            "out",
            "--chunk-size",
            "64KiB",
            "--meta",
            "meta.toml",
        ],
        t.path(),
    );
    let out = t.path().join("out");
    (t, out)
}

#[test]
fn pack_writes_files_b3sum_agrees_and_verify_passes() {
    let (t, out) = packed();
    let m = manifest(&out);
    assert_eq!(m["schema"], "shardgate.manifest/v1");
    let files = m["files"].as_array().unwrap();
    assert_eq!(files.len(), 7);
    for f in files {
        let path = out.join("files").join(f["path"].as_str().unwrap());
        assert_eq!(b3sum(&path), f["blake3"].as_str().unwrap(), "{path:?}");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), f["size"].as_u64().unwrap());
        if let Some(t) = f["chunk_table"].as_str() {
            assert_eq!(b3sum(&out.join(format!("tables/{t}.sgct"))), t);
        }
    }
    // The release id printed by pack is b3sum of manifest.json.
    assert_eq!(m["records"]["jsonl_lines"], 1000);
    assert_eq!(m["envelope"]["owner_team"], "vision");
    let stdout = ok(&["inspect", "out"], t.path());
    assert!(stdout.contains(&b3sum(&out.join("manifest.json"))), "{stdout}");
    assert!(stdout.contains("CC-BY-4.0"));
    let stdout = ok(&["verify", "out", "--trust", "key.pub"], t.path());
    assert!(stdout.starts_with("OK toy@1.0.0"), "{stdout}");
}

#[test]
fn verify_locates_a_flipped_byte_in_a_file() {
    let (t, out) = packed();
    flip_byte(&out.join("files/part1/blob5.bin"), 200_000);
    let o = run(&["verify", "out", "--trust", "key.pub"], t.path());
    assert_eq!(o.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&o.stdout);
    // 200000 lies in 64 KiB chunk 3: bytes 196608..262144.
    assert!(stdout.contains("FAIL files/part1/blob5.bin: bytes 196608..262144 (offset 196608)"), "{stdout}");
    assert_eq!(stdout.lines().filter(|l| l.starts_with("FAIL")).count(), 1, "{stdout}");
}

#[test]
fn verify_locates_a_flipped_byte_in_a_table() {
    let (t, out) = packed();
    let m = manifest(&out);
    let f = m["files"].as_array().unwrap().iter().find(|f| f["path"] == "part1/blob5.bin").unwrap();
    let table = f["chunk_table"].as_str().unwrap();
    // Entry 2 of the table starts at 24 + 2 * 32.
    flip_byte(&out.join(format!("tables/{table}.sgct")), 24 + 2 * 32 + 5);
    let o = run(&["verify", "out", "--trust", "key.pub"], t.path());
    assert_eq!(o.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains(&format!("FAIL tables/{table}.sgct: bytes 93..94 (offset 93): entry 2 damaged")),
        "{stdout}"
    );
}

#[test]
fn verify_refuses_a_manifest_with_one_changed_character() {
    let (t, out) = packed();
    let text = std::fs::read_to_string(out.join("manifest.json")).unwrap();
    // Change the size of one file by one digit and, separately, a character of the license.
    for (from, to) in [("\"size\": 300000", "\"size\": 300001"), ("CC-BY-4.0", "CC-BY-4.1"), ("\"toy\"", "\"toz\"")] {
        assert!(text.contains(from));
        std::fs::write(out.join("manifest.json"), text.replacen(from, to, 1)).unwrap();
        let o = run(&["verify", "out", "--trust", "key.pub"], t.path());
        assert_eq!(o.status.code(), Some(1), "{from} -> {to} accepted");
        assert!(String::from_utf8_lossy(&o.stdout).contains("FAIL manifest.json"));
    }
    // A key that did not sign it is not trusted.
    std::fs::write(out.join("manifest.json"), &text).unwrap();
    ok(&["keygen", "--out", "other"], t.path());
    let o = run(&["verify", "out", "--trust", "other.pub"], t.path());
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stdout).contains("not a trusted key"));
}

#[test]
fn bad_input_gets_one_clear_line() {
    let (t, _out) = packed();
    let d = t.path();
    let base = ["pack", "src", "--name", "toy", "--version", "1.0.0", "--key", "key", "--out", "o2"];
    fails(
        &["pack", "missing", "--name", "toy", "--version", "1.0.0", "--key", "key", "--out", "o2"],
        d,
        "missing: no such directory",
    );
    fails(
        &["pack", "src", "--name", "toy", "--version", "1.0", "--key", "key", "--out", "o2"],
        d,
        "not a semantic version",
    );
    fails(
        &["pack", "src", "--name", "Toy!", "--version", "1.0.0", "--key", "key", "--out", "o2"],
        d,
        "not a dataset name",
    );
    fails(
        &["pack", "src", "--name", "toy", "--version", "1.0.0", "--key", "key.pub", "--out", "o2"],
        d,
        "not an ed25519 private key",
    );
    fails(&["pack", "src", "--name", "toy", "--version", "1.0.0", "--key", "nokey", "--out", "o2"], d, "nokey");
    std::fs::write(d.join("bad.toml"), "license = [1]\n").unwrap();
    fails(&[&base[..], &["--meta", "bad.toml"]].concat(), d, "key `license`");
    std::fs::write(d.join("bad2.toml"), "license = \n").unwrap();
    fails(&[&base[..], &["--meta", "bad2.toml"]].concat(), d, "not valid TOML");
    fails(&[&base[..], &["--chunk-size", "1000"]].concat(), d, "chunk size 1000");
    // A special file cannot be packed; nothing is written.
    let status = std::process::Command::new("mkfifo").arg(d.join("src/pipe")).status().unwrap();
    assert!(status.success());
    fails(&base, d, "not a regular file");
    std::fs::remove_file(d.join("src/pipe")).unwrap();
    assert!(!d.join("o2").exists());
    // An unreadable file (only meaningful when not running as root).
    let uid = std::process::Command::new("id").arg("-u").output().unwrap();
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d.join("src/train.jsonl"), std::fs::Permissions::from_mode(0o000)).unwrap();
        fails(&base, d, "train.jsonl");
        std::fs::set_permissions(d.join("src/train.jsonl"), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    // No staging leftovers after failures.
    let leftovers: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn out_holding_a_different_release_is_refused_and_kept() {
    let (t, out) = packed();
    let d = t.path();
    let before = std::fs::read(out.join("manifest.json")).unwrap();
    std::fs::write(d.join("src/new.bin"), b"more").unwrap();
    fails(
        &["pack", "src", "--name", "toy", "--version", "1.0.0", "--key", "key", "--out", "out"],
        d,
        "already holds release toy@1.0.0",
    );
    fails(
        &["pack", "src", "--name", "other", "--version", "2.0.0", "--key", "key", "--out", "out"],
        d,
        "already holds release toy@1.0.0",
    );
    assert_eq!(std::fs::read(out.join("manifest.json")).unwrap(), before);
    ok(&["verify", "out", "--trust", "key.pub"], d);
    // A non-empty directory that is not a release is not overwritten either.
    std::fs::create_dir(d.join("busy")).unwrap();
    std::fs::write(d.join("busy/keep.txt"), b"mine").unwrap();
    fails(
        &["pack", "src", "--name", "toy", "--version", "1.0.0", "--key", "key", "--out", "busy"],
        d,
        "not an empty directory",
    );
    assert_eq!(std::fs::read(d.join("busy/keep.txt")).unwrap(), b"mine");
}

#[test]
fn reproducible_with_source_date_epoch() {
    let t = tempfile::tempdir().unwrap();
    make_dataset(&t.path().join("src"));
    keygen(t.path());
    let pack = |out: &str| {
        let o = std::process::Command::new(bin())
            .args(["pack", "src", "--name", "toy", "--version", "1.0.0", "--key", "key", "--out", out])
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .current_dir(t.path())
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let a = pack("a");
    let b = pack("b");
    assert_eq!(a, b, "same input, same key, same time: same release id");
    // Packing the identical release into the same OUT again is an idempotent success.
    assert_eq!(pack("a"), a);
}

#[test]
fn keygen_never_overwrites() {
    let t = tempfile::tempdir().unwrap();
    let pubkey = ok(&["keygen", "--out", "k"], t.path());
    assert!(pubkey.starts_with("ed25519:"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(t.path().join("k")).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::read_to_string(t.path().join("k.pub")).unwrap().trim(), pubkey.trim());
    fails(&["keygen", "--out", "k"], t.path(), "refusing to overwrite");
}

#[test]
fn webdataset_shards_group_samples_and_respect_shard_size() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..40 {
        std::fs::write(src.join(format!("s{i:03}.jpg")), vec![i as u8; 10_000]).unwrap();
        std::fs::write(src.join(format!("s{i:03}.cls")), format!("{}", i % 3)).unwrap();
    }
    keygen(t.path());
    ok(
        &[
            "pack",
            "src",
            "--name",
            "wds",
            "--version",
            "0.1.0",
            "--key",
            "key",
            "--out",
            "out",
            "--format",
            "webdataset",
            "--shard-size",
            "100KiB",
        ],
        t.path(),
    );
    let m = manifest(&t.path().join("out"));
    let files = m["files"].as_array().unwrap();
    assert!(files.len() >= 4, "{files:?}");
    let mut samples = 0;
    for (i, f) in files.iter().enumerate() {
        assert_eq!(f["path"], format!("shard-{i:06}.tar"));
        assert_eq!(f["media_type"], "application/x-tar");
        assert!(f["size"].as_u64().unwrap() <= 100 * 1024);
        samples += f["records"].as_u64().unwrap();
        // Each shard is a tar that lists both members of each sample.
        let listing = std::process::Command::new("tar")
            .arg("tf")
            .arg(t.path().join("out/files").join(f["path"].as_str().unwrap()))
            .output()
            .unwrap();
        let names = String::from_utf8(listing.stdout).unwrap();
        let jpgs = names.lines().filter(|n| n.ends_with(".jpg")).count();
        let clss = names.lines().filter(|n| n.ends_with(".cls")).count();
        assert_eq!(jpgs, clss);
        assert_eq!(jpgs as u64, f["records"].as_u64().unwrap());
    }
    assert_eq!(samples, 40);
    assert_eq!(m["records"]["webdataset_samples"], 40);
    ok(&["verify", "out", "--trust", "key.pub"], t.path());
}

#[test]
fn tenant_key_prints_a_key_once_and_only_its_hash_for_config() {
    let t = tempfile::tempdir().unwrap();
    let out = run(&["tenant", "key", "--tenant", "vision"], t.path());
    assert!(out.status.success());
    let key = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(key.starts_with("sgk_"), "{key}");
    let hash = format!("blake3:{}", blake3::hash(key.as_bytes()).to_hex());
    assert!(stderr.contains(&hash), "{stderr}");
    assert!(stderr.contains("id = \"vision\""));
    assert!(!stderr.contains(&key), "the clear key must not be in the config lines");
    let again = run(&["tenant", "key"], t.path());
    assert_ne!(String::from_utf8(again.stdout).unwrap().trim(), key);
}
