//! Shared helpers for the CLI integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_shardgate"))
}

pub fn run(args: &[&str], cwd: &Path) -> Output {
    Command::new(bin()).args(args).current_dir(cwd).env("NO_COLOR", "1").output().expect("spawn shardgate")
}

pub fn ok(args: &[&str], cwd: &Path) -> String {
    let out = run(args, cwd);
    assert!(
        out.status.success(),
        "shardgate {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts failure with exactly one `error:` line on stderr mentioning `needle`, and no panic.
pub fn fails(args: &[&str], cwd: &Path, needle: &str) -> String {
    let out = run(args, cwd);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "shardgate {args:?} should fail");
    assert_ne!(out.status.code(), Some(101), "panicked: {stderr}");
    assert!(!stderr.contains("panicked"), "panicked: {stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "want one error line, got: {stderr}");
    assert!(errors[0].contains(needle), "error line {:?} should mention {needle:?}", errors[0]);
    stderr
}

/// Writes a small mixed dataset: sizes around 64 KiB chunk boundaries, JSONL, nested dirs.
pub fn make_dataset(dir: &Path) {
    let sizes = [0usize, 1, 65535, 65536, 65537, 300_000];
    for (i, size) in sizes.iter().enumerate() {
        let bytes: Vec<u8> = (0..*size).map(|j| ((j * 7 + i * 13) % 251) as u8).collect();
        std::fs::create_dir_all(dir.join(format!("part{}", i % 2))).unwrap();
        std::fs::write(dir.join(format!("part{}/blob{i}.bin", i % 2)), bytes).unwrap();
    }
    let jsonl: String = (0..1000).map(|i| format!("{{\"id\":{i},\"label\":\"c{}\"}}\n", i % 5)).collect();
    std::fs::write(dir.join("train.jsonl"), jsonl).unwrap();
}

pub fn keygen(dir: &Path) -> (PathBuf, PathBuf) {
    ok(&["keygen", "--out", "key"], dir);
    (dir.join("key"), dir.join("key.pub"))
}

pub fn manifest(out: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap()
}

pub fn flip_byte(path: &Path, offset: u64) {
    let mut b = std::fs::read(path).unwrap();
    b[offset as usize] ^= 0x01;
    std::fs::write(path, b).unwrap();
}

/// b3sum of a file, from the real `b3sum` tool.
pub fn b3sum(path: &Path) -> String {
    let out = Command::new("b3sum").arg("--no-names").arg(path).output().expect(
        "b3sum is not installed: run the tests through conf/test.sh, which installs it (apt-get install b3sum)",
    );
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A real dev node (js-ipfs speaking the RPC API under /api/v0), started from
/// `conf/dev-node` into a private state directory and stopped on drop. When
/// `DEV_NODE_API` is set (the test script starts one node for the whole run),
/// that node is used instead.
pub struct DevNode {
    pub api: String,
    pub api_prefix: String,
    pub gateway: String,
    pub gateway_prefix: String,
    state: Option<tempfile::TempDir>,
}

impl DevNode {
    pub fn start() -> DevNode {
        if let Ok(api) = std::env::var("DEV_NODE_API") {
            return DevNode {
                api,
                api_prefix: std::env::var("DEV_NODE_API_PREFIX").unwrap_or_else(|_| "/api/v0".into()),
                gateway: std::env::var("DEV_NODE_GATEWAY").unwrap_or_default(),
                gateway_prefix: std::env::var("DEV_NODE_GATEWAY_PREFIX").unwrap_or_else(|_| "/ipfs".into()),
                state: None,
            };
        }
        let repo_root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
        let state = tempfile::tempdir().unwrap();
        let out = Command::new("bash")
            .arg(repo_root.join("conf/dev-node/start.sh"))
            .arg(state.path())
            .output()
            .expect("run conf/dev-node/start.sh");
        assert!(
            out.status.success(),
            "the dev node did not start (conf/dev-node/start.sh): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let env = std::fs::read_to_string(state.path().join("env")).unwrap();
        let get = |k: &str| {
            env.lines().find_map(|l| l.strip_prefix(&format!("{k}="))).unwrap_or_default().trim_matches('"').to_string()
        };
        DevNode {
            api: get("DEV_NODE_API"),
            api_prefix: get("DEV_NODE_API_PREFIX"),
            gateway: get("DEV_NODE_GATEWAY"),
            gateway_prefix: get("DEV_NODE_GATEWAY_PREFIX"),
            state: Some(state),
        }
    }
}

impl Drop for DevNode {
    fn drop(&mut self) {
        if let Some(state) = &self.state {
            let repo_root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
            let _ = Command::new("bash").arg(repo_root.join("conf/dev-node/stop.sh")).arg(state.path()).output();
        }
    }
}
