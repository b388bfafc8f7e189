//! A release round-trips through a real node: pack, publish, read every
#![allow(clippy::unwrap_used)]
//! file back with `cat`, compare hashes; a rerun adds nothing.

mod support;

use std::time::Duration;

use shardgate::btfs::{NodeClient, NodeConfig};
use support::*;

#[test]
fn release_round_trips_through_the_dev_node() {
    let node = DevNode::start();
    let t = tempfile::tempdir().unwrap();
    make_dataset(&t.path().join("src"));
    // One file large enough for many node blocks and many chunks.
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    std::fs::write(t.path().join("src/big.bin"), &big).unwrap();
    keygen(t.path());
    ok(&["pack", "src", "--name", "roundtrip", "--version", "1.0.0", "--key", "key", "--out", "out"], t.path());
    let publish = ["publish", "out", "--node", &node.api, "--api-prefix", &node.api_prefix];
    let cid = ok(&publish, t.path());
    let cid = cid.trim();
    assert!(cid.starts_with("bafk"), "manifest CID {cid:?} should be CIDv1 raw, base32");

    let placement: serde_json::Value =
        serde_json::from_slice(&std::fs::read(t.path().join("out/placement.json")).unwrap()).unwrap();
    assert_eq!(placement["manifest_cid"], cid);
    let m = manifest(&t.path().join("out"));
    let client = NodeClient::new(
        NodeConfig { url: node.api.clone(), api_prefix: node.api_prefix.clone(), token: None },
        Duration::from_secs(5),
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        // The manifest comes back byte for byte.
        let bytes = std::fs::read(t.path().join("out/manifest.json")).unwrap();
        let got = client.cat_all(cid, 0, bytes.len() as u64, Duration::from_secs(10)).await.unwrap();
        assert_eq!(&got[..], &bytes[..]);
        for f in m["files"].as_array().unwrap() {
            let hash = f["blake3"].as_str().unwrap();
            let size = f["size"].as_u64().unwrap();
            let file_cid = placement["blobs"][hash]["cid"].as_str().unwrap();
            let got = client.cat_all(file_cid, 0, size, Duration::from_secs(10)).await.unwrap();
            assert_eq!(blake3::hash(&got).to_hex().as_str(), hash, "{}", f["path"]);
            if let Some(table) = f["chunk_table"].as_str() {
                let table_cid = placement["blobs"][table]["cid"].as_str().unwrap();
                let size = placement["blobs"][table]["size"].as_u64().unwrap();
                let got = client.cat_all(table_cid, 0, size, Duration::from_secs(10)).await.unwrap();
                assert_eq!(blake3::hash(&got).to_hex().as_str(), table);
            }
        }
        // A ranged cat of the big file returns exactly those bytes.
        let f = m["files"].as_array().unwrap().iter().find(|f| f["path"] == "big.bin").unwrap();
        let big_cid = placement["blobs"][f["blake3"].as_str().unwrap()]["cid"].as_str().unwrap();
        let got = client.cat_all(big_cid, 1_000_003, 524_288, Duration::from_secs(10)).await.unwrap();
        assert_eq!(&got[..], &big[1_000_003..1_000_003 + 524_288]);
    });

    // Rerunning adds nothing: every blob is still pinned.
    let o = run(&publish, t.path());
    assert!(o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("0 copies added"), "{stderr}");
    // After an interruption (placement lost one entry), only that one is added.
    let mut p = placement.clone();
    let first = p["blobs"].as_object().unwrap().keys().next().unwrap().clone();
    p["blobs"].as_object_mut().unwrap().remove(&first);
    std::fs::write(t.path().join("out/placement.json"), serde_json::to_vec_pretty(&p).unwrap()).unwrap();
    let o = run(&publish, t.path());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("1 copies added"), "{stderr}");
}

#[test]
fn publish_to_an_unreachable_node_is_one_clear_error() {
    let t = tempfile::tempdir().unwrap();
    make_dataset(&t.path().join("src"));
    keygen(t.path());
    ok(&["pack", "src", "--name", "x", "--version", "1.0.0", "--key", "key", "--out", "out"], t.path());
    // Port 9 (discard) on loopback: nothing listens there.
    fails(&["publish", "out", "--node", "http://127.0.0.1:9"], t.path(), "127.0.0.1:9");
}

/// Runs the CLI with the admin token in its environment; stdout on success.
fn admin_cli(args: &[&str], cwd: &std::path::Path, token: &str) -> String {
    let out = std::process::Command::new(bin())
        .args(args)
        .current_dir(cwd)
        .env("SHARDGATE_ADMIN_TOKEN", token)
        .output()
        .unwrap();
    assert!(out.status.success(), "shardgate {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn publish_registers_with_a_gateway_that_serves_from_the_node() {
    let node = DevNode::start();
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    make_dataset(&d.join("src"));
    keygen(d);
    ok(&["pack", "src", "--name", "lifecycle", "--version", "1.0.0", "--key", "key", "--out", "v1"], d);
    std::fs::write(d.join("src/extra.txt"), b"new in 2.0.0\n").unwrap();
    ok(&["pack", "src", "--name", "lifecycle", "--version", "2.0.0", "--key", "key", "--out", "v2"], d);
    let made = run(&["release", "token"], d);
    let token = String::from_utf8(made.stdout).unwrap().trim().to_string();
    let stderr = String::from_utf8(made.stderr).unwrap();
    let hash = stderr.split('"').find(|s| s.starts_with("blake3:")).unwrap().to_string();
    // A gateway with no releases in its config, reading only from the node.
    std::fs::write(
        d.join("gw.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[trust]\nkeys = [\"key.pub\"]\n\
             [[origins]]\nkind = \"btfs-api\"\nurl = \"{}\"\napi_prefix = \"{}\"\n\
             [registry]\npath = \"state/registry.redb\"\n\
             [grpc]\nlisten = \"127.0.0.1:0\"\nadmin_tokens = [\"{hash}\"]\n",
            node.api, node.api_prefix
        ),
    )
    .unwrap();
    let srv = Server::start(&d.join("gw.toml"));
    let api = srv.usage_api.clone().unwrap();
    for v in ["v1", "v2"] {
        let publish = ["publish", v, "--node", &node.api, "--api-prefix", &node.api_prefix, "--gateway", &api];
        admin_cli(&publish, d, &token);
    }
    let m = manifest(&d.join("v1"));
    let f = m["files"].as_array().unwrap().iter().find(|f| f["size"].as_u64().unwrap() > 0).unwrap();
    let path = f["path"].as_str().unwrap();
    let want = std::fs::read(d.join("v1/files").join(path)).unwrap();
    let get = |url: &str| {
        let out = std::process::Command::new("curl").args(["-s", "-D", "-", "-o", "-", url]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let url = format!("{}/v1/datasets/lifecycle/1.0.0/files/{path}", srv.base);
    let body = std::process::Command::new("curl").args(["-sf", &url]).output().unwrap();
    assert!(body.status.success(), "{}", srv.logs());
    assert_eq!(body.stdout, want, "the registered release is served from the node");

    // Tag, deprecate, take down, all through the CLI.
    admin_cli(&["release", "tag", "lifecycle", "stable", "1.0.0", "--api", &api], d, &token);
    let head = get(&format!("{}/v1/datasets/lifecycle/stable/files/{path}", srv.base));
    assert!(head.contains(&format!("content-location: /v1/datasets/lifecycle/1.0.0/files/{path}")), "{head}");
    admin_cli(
        &["release", "deprecate", "lifecycle@1.0.0", "--successor", "2.0.0", "--reason", "superseded", "--api", &api],
        d,
        &token,
    );
    let head = get(&url);
    assert!(head.contains("deprecation: @") && head.contains("rel=\"successor-version\""), "{head}");
    admin_cli(&["release", "takedown", "lifecycle@1.0.0", "--reason", "licence withdrawn", "--api", &api], d, &token);
    let head = get(&url);
    assert!(head.starts_with("HTTP/1.1 451"), "{head}");
    assert!(head.contains("licence withdrawn"), "{head}");
    let list = admin_cli(&["release", "list", "--api", &api], d, &token);
    let rows: Vec<serde_json::Value> = list.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r["origin"] == "registry"));
    assert_eq!(rows.iter().find(|r| r["version"] == "1.0.0").unwrap()["state"], "taken_down");
    // The verification drill through the gateway and the node itself.
    let node_via = format!("btfs-api:{}{}", node.api, node.api_prefix);
    let drill = [
        "verify",
        "lifecycle@2.0.0",
        "--via",
        &srv.base,
        "--via",
        &node_via,
        "--placement",
        "v2/placement.json",
        "--trust",
        "key.pub",
    ];
    let out = run(&drill, d);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.lines().filter(|l| l.starts_with("PATH ") && l.ends_with(", 0 failures")).count(), 2, "{stdout}");
    assert!(stdout.contains("OK lifecycle@2.0.0"), "{stdout}");
    // A taken-down release fails the drill at the gateway (451), and says so.
    let drill1 = ["verify", "lifecycle@1.0.0", "--via", &srv.base, "--trust", "key.pub"];
    let out = run(&drill1, d);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("451"),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Without the token, nothing is allowed.
    let out = std::process::Command::new(bin())
        .args(["release", "list", "--api", &api])
        .current_dir(d)
        .env("SHARDGATE_ADMIN_TOKEN", "wrong")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Unauthenticated"));
}
