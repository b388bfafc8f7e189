//! Sensitive datasets from the command line, with the real `age` CLI and a
//! real PKCS#11 token (SoftHSM2): pack --encrypt, the key envelope in both
//! directions with `age`, `shardgate decrypt`, PKCS#11 wrap and unwrap,
//! two sign-offs shown by `inspect`, and policy refusals naming the rule.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::Command;

use support::*;

fn tool(cmd: &str, args: &[&str], cwd: &Path) -> Vec<u8> {
    let out = Command::new(cmd).args(args).current_dir(cwd).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(out.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// `age-keygen -o FILE`; returns the recipient.
fn age_keygen(dir: &Path, name: &str) -> String {
    tool("age-keygen", &["-o", name], dir);
    let text = std::fs::read_to_string(dir.join(name)).unwrap();
    text.lines().find_map(|l| l.strip_prefix("# public key: ")).unwrap().trim().to_string()
}

fn pack_encrypted(t: &Path, recipient: &str) -> serde_json::Value {
    make_dataset(&t.join("src"));
    keygen(t);
    ok(
        &[
            "pack",
            "src",
            "--name",
            "cohort",
            "--version",
            "1.0.0",
            "--key",
            "key",
            "--out",
            "out",
            "--chunk-size",
            "64KiB",
            "--encrypt",
            "part0/*",
            "--recipient",
            recipient,
        ],
        t,
    );
    manifest(&t.join("out"))
}

#[test]
fn the_age_cli_opens_a_shardgate_envelope_and_makes_one_that_works() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let alice = age_keygen(d, "alice.key");
    let m = pack_encrypted(d, &alice);
    assert_eq!(m["schema"], "shardgate.manifest/v2");
    let files = m["files"].as_array().unwrap();
    let enc: Vec<_> = files.iter().filter(|f| f.get("encryption").is_some()).collect();
    assert_eq!(enc.len(), 3, "part0/* is three files");
    assert!(
        files
            .iter()
            .filter(|f| f.get("encryption").is_none())
            .all(|f| !f["path"].as_str().unwrap().starts_with("part0/"))
    );
    // The ciphertext is what the manifest's public hash names: b3sum agrees without a key.
    for f in &enc {
        let p = d.join("out/files").join(f["path"].as_str().unwrap());
        assert_eq!(b3sum(&p), f["blake3"].as_str().unwrap());
        let plain = std::fs::read(d.join("src").join(f["path"].as_str().unwrap())).unwrap();
        let stored = std::fs::read(&p).unwrap();
        assert!(plain.len() < 4096 || !stored.windows(4096).any(|w| plain.windows(4096).next() == Some(w)));
    }
    let envelope = d.join("out.keys.json");
    assert!(envelope.exists(), "the envelope is written beside the release, not in it");
    assert!(!d.join("out/keys.json").exists());
    ok(&["verify", "out", "--trust", "key.pub"], d);

    // 1. The age CLI unwraps the envelope shardgate wrote.
    let env: serde_json::Value = serde_json::from_slice(&std::fs::read(&envelope).unwrap()).unwrap();
    std::fs::write(d.join("wrapped.age"), env["age"].as_str().unwrap()).unwrap();
    let raw = tool("age", &["-d", "-i", "alice.key", "-o", "data.key", "wrapped.age"], d);
    assert!(raw.is_empty());
    assert_eq!(std::fs::metadata(d.join("data.key")).unwrap().len(), 32);
    let path = "part0/blob4.bin";
    let digest = ok(&["decrypt", "out", "--path", path, "--data-key-file", "data.key", "--out", "plain.bin"], d);
    assert_eq!(std::fs::read(d.join("plain.bin")).unwrap(), std::fs::read(d.join("src").join(path)).unwrap());
    assert_eq!(digest.trim(), b3sum(&d.join("plain.bin")), "the sealed digest is what b3sum prints");

    // 2. An envelope made with the age CLI, for another recipient, works with shardgate.
    let bob = age_keygen(d, "bob.key");
    tool("age", &["-e", "-a", "-r", &bob, "-o", "bob.age", "data.key"], d);
    let key_id = env["key_id"].as_str().unwrap();
    ok(
        &["keys", "from-age", "bob.age", "cohort@1.0.0", "--key-id", key_id, "--recipient", &bob, "--out", "bob.json"],
        d,
    );
    ok(&["decrypt", "out", "--path", path, "--envelope", "bob.json", "-i", "bob.key", "--out", "plain2.bin"], d);
    assert_eq!(std::fs::read(d.join("plain2.bin")).unwrap(), std::fs::read(d.join("src").join(path)).unwrap());
    // Alice cannot open Bob's envelope; the error says so.
    fails(
        &["decrypt", "out", "--path", path, "--envelope", "bob.json", "-i", "alice.key", "--out", "x.bin"],
        d,
        "no wrapping this gateway's keys open",
    );
    // Rewrap to Bob only: Alice is revoked.
    ok(&["keys", "rewrap", "out.keys.json", "-i", "alice.key", "--recipient", &bob, "--out", "rewrapped.json"], d);
    fails(
        &["decrypt", "out", "--path", path, "--envelope", "rewrapped.json", "-i", "alice.key", "--out", "x.bin"],
        d,
        "revoked",
    );
    let shown = ok(&["keys", "show", "rewrapped.json"], d);
    assert!(shown.contains(key_id) && shown.contains(&bob) && !shown.contains(&alice), "{shown}");
    // A damaged ciphertext is refused offline and nothing is written.
    flip_byte(&d.join("out/files").join(path), 40_000);
    fails(
        &["decrypt", "out", "--path", path, "--data-key-file", "data.key", "--out", "bad.bin"],
        d,
        "does not decrypt",
    );
    assert!(!d.join("bad.bin").exists());
}

#[test]
fn softhsm2_wraps_and_unwraps_the_data_key_through_pkcs11() {
    let module = Path::new("/usr/lib/softhsm/libsofthsm2.so");
    assert!(module.exists(), "SoftHSM2 is installed by conf/test.sh (apt-get install softhsm2)");
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    std::fs::create_dir(d.join("tokens")).unwrap();
    let conf = d.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!("directories.tokendir = {}/tokens\nobjectstore.backend = file\nlog.level = ERROR\n", d.display()),
    )
    .unwrap();
    let hsm = |args: &[&str]| {
        let out = Command::new("softhsm2-util").args(args).env("SOFTHSM2_CONF", &conf).output().unwrap();
        assert!(out.status.success(), "softhsm2-util {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    hsm(&["--init-token", "--free", "--label", "shardgate-test", "--pin", "1234", "--so-pin", "5678"]);
    std::fs::write(d.join("pin"), "1234\n").unwrap();
    std::fs::write(
        d.join("hsm.toml"),
        format!(
            "module = \"{}\"\ntoken_label = \"shardgate-test\"\npin_file = \"{}/pin\"\nkey_label = \"shardgate-kek\"\n",
            module.display(),
            d.display()
        ),
    )
    .unwrap();
    let sg = |args: &[&str]| {
        let out = Command::new(bin()).args(args).current_dir(d).env("SOFTHSM2_CONF", &conf).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (okk, _, err) = sg(&["keys", "pkcs11-init", "--pkcs11", "hsm.toml"]);
    assert!(okk && err.contains("created"), "{err}");
    let (okk, _, err) = sg(&["keys", "pkcs11-init", "--pkcs11", "hsm.toml"]);
    assert!(okk && err.contains("found"), "the second init finds the key: {err}");
    make_dataset(&d.join("src"));
    keygen(d);
    let (okk, _, err) = sg(&[
        "pack",
        "src",
        "--name",
        "hsm",
        "--version",
        "1.0.0",
        "--key",
        "key",
        "--out",
        "out",
        "--chunk-size",
        "64KiB",
        "--encrypt",
        "*.jsonl",
        "--pkcs11",
        "hsm.toml",
    ]);
    assert!(okk, "{err}");
    let env: serde_json::Value = serde_json::from_slice(&std::fs::read(d.join("out.keys.json")).unwrap()).unwrap();
    let w = &env["pkcs11"][0];
    assert_eq!(w["token_label"], "shardgate-test");
    assert!(w["mechanism"].as_str().unwrap().starts_with("aes-key-wrap"));
    assert!(env.get("age").is_none());
    let decrypt_to = |out: &str| {
        sg(&[
            "decrypt",
            "out",
            "--path",
            "train.jsonl",
            "--envelope",
            "out.keys.json",
            "--pkcs11-unwrap",
            "hsm.toml",
            "--out",
            out,
        ])
    };
    let (okk, _, err) = decrypt_to("train.jsonl");
    assert!(okk, "{err}");
    assert_eq!(std::fs::read(d.join("train.jsonl")).unwrap(), std::fs::read(d.join("src/train.jsonl")).unwrap());
    // A wrong PIN is an error naming the problem, not a panic.
    std::fs::write(d.join("pin"), "0000\n").unwrap();
    let (okk, _, err) = decrypt_to("again.jsonl");
    assert!(!okk && !err.contains("panicked") && err.to_lowercase().contains("pin"), "{err}");
}

#[test]
fn two_signoffs_are_collected_verified_and_shown_and_policy_refusals_name_the_rule() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    make_dataset(&d.join("src"));
    keygen(d);
    let security = ok(&["keygen", "--out", "security.key"], d);
    let legal = ok(&["keygen", "--out", "legal.key"], d);
    let recipient = age_keygen(d, "gw.key");
    std::fs::write(
        d.join("policy.toml"),
        format!(
            "default_class = \"public\"\n[roles]\nsecurity = [\"{}\"]\nlegal = [\"{}\"]\n[classes.public]\n\
             [classes.pii]\nplaintext_allowed = false\nclearance_required = true\nsignoffs = {{ security = 1, legal = 1 }}\n",
            security.trim(),
            legal.trim()
        ),
    )
    .unwrap();
    std::fs::write(d.join("meta.toml"), "compliance_class = \"pii\"\n").unwrap();
    let pack = |extra: &[&str]| {
        let mut a = vec![
            "pack",
            "src",
            "--name",
            "people",
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
            "--policy",
            "policy.toml",
        ];
        a.extend_from_slice(extra);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let args = pack(&[]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    fails(&refs, d, "classes.pii.plaintext_allowed");
    assert!(!d.join("out").exists(), "nothing written");
    let args = pack(&["--recipient", &recipient]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(&refs, d);
    assert!(manifest(&d.join("out"))["files"].as_array().unwrap().iter().all(|f| f.get("encryption").is_some()));
    // Publishing without sign-offs is refused before anything is uploaded (the node URL is never dialled).
    fails(
        &["publish", "out", "--node", "http://127.0.0.1:9", "--policy", "policy.toml"],
        d,
        "classes.pii.signoffs.legal",
    );
    ok(&["approve", "out", "--key", "security.key", "--role", "security"], d);
    fails(
        &["publish", "out", "--node", "http://127.0.0.1:9", "--policy", "policy.toml"],
        d,
        "classes.pii.signoffs.legal",
    );
    // A key that does not hold the role does not count.
    ok(&["approve", "out", "--key", "security.key", "--role", "legal"], d);
    fails(
        &["publish", "out", "--node", "http://127.0.0.1:9", "--policy", "policy.toml"],
        d,
        "classes.pii.signoffs.legal",
    );
    ok(&["approve", "out", "--key", "legal.key", "--role", "legal"], d);
    let shown = ok(&["inspect", "out", "--policy", "policy.toml"], d);
    assert!(shown.contains(&format!("sign-off  security by {}", security.trim())), "{shown}");
    assert!(shown.contains(&format!("sign-off  legal by {}", legal.trim())), "{shown}");
    assert!(shown.contains("class pii: meets its rules"), "{shown}");
    let j: serde_json::Value =
        serde_json::from_str(&ok(&["inspect", "out", "--json", "--policy", "policy.toml"], d)).unwrap();
    assert_eq!(j["approvals"].as_array().unwrap().iter().filter(|a| a["valid"] == true).count(), 3);
    assert_eq!(j["policy"]["meets_rules"], true);
    ok(&["verify", "out", "--trust", "key.pub"], d);
    // A sign-off edited by hand no longer verifies, and inspect says so.
    let m = std::fs::read_to_string(d.join("out/manifest.json")).unwrap();
    let tampered = m.replacen("\"role\": \"security\"", "\"role\": \"securitx\"", 1);
    assert_ne!(m, tampered);
    std::fs::write(d.join("out/manifest.json"), tampered).unwrap();
    let shown = ok(&["inspect", "out", "--policy", "policy.toml"], d);
    assert!(shown.contains("INVALID") && shown.contains("classes.pii.signoffs.security"), "{shown}");
    // An unknown class is refused by name.
    std::fs::write(d.join("meta.toml"), "compliance_class = \"secret\"\n").unwrap();
    let mut args = pack(&["--recipient", &recipient]);
    args[9] = "out2".into();
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    fails(&refs, d, "rule `classes`");
}
