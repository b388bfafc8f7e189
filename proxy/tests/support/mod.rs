//! Shared helpers for the CLI integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

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

/// `shardgate serve` as a child process, killed when dropped.
pub struct Server {
    pub child: Child,
    pub base: String,
    pub addr: String,
    /// The second stdout line, when the usage API listens: its base URL.
    pub usage_api: Option<String>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Server {
    pub fn start(config: &Path) -> Server {
        let mut child = Command::new(bin())
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let err_pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err_pipe).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let base = line.trim().rsplit(' ').next().unwrap().to_string();
        assert!(base.starts_with("http"), "unexpected first line {line:?}: {}", stderr.lock().unwrap());
        let addr = base.rsplit("://").next().unwrap().to_string();
        let text = std::fs::read_to_string(config).unwrap_or_default();
        let usage_api = text.contains("[grpc]").then(|| {
            let mut line = String::new();
            out.read_line(&mut line).unwrap();
            assert!(line.contains("usage API"), "unexpected second line {line:?}");
            line.trim().rsplit(' ').next().unwrap().to_string()
        });
        // Keep reading stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in out.lines() {});
        Server { child, base, addr, usage_api, stderr }
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([&format!("-{sig}"), &self.child.id().to_string()]).status().unwrap();
        assert!(ok.success());
    }

    pub fn logs(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `openssl` in `d`, asserting success.
pub fn openssl(d: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(d).output().unwrap();
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Key options for an EC P-256 key without a passphrase.
pub const EC_KEY: [&str; 5] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];

/// A test CA in `d`: `ca.key` and `ca.crt`.
pub fn test_ca(d: &Path) {
    let subj = ["-days", "2", "-subj", "/CN=test-ca", "-keyout", "ca.key", "-out", "ca.crt"];
    openssl(d, &[&["req", "-x509"][..], &EC_KEY, &subj].concat());
}

/// `{name}.key` and `{name}.crt` for `cn`, signed by the CA of [`test_ca`],
/// with the extension line `ext` (such as a subjectAltName).
pub fn signed_cert(d: &Path, name: &str, cn: &str, ext: &str) {
    let (key, csr, crt, extf) =
        (format!("{name}.key"), format!("{name}.csr"), format!("{name}.crt"), format!("{name}.ext"));
    let subj = format!("/CN={cn}");
    openssl(d, &[&["req"][..], &EC_KEY, &["-subj", &subj, "-keyout", &key, "-out", &csr]].concat());
    std::fs::write(d.join(&extf), format!("{ext}\n")).unwrap();
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &extf,
            "-out",
            &crt,
        ],
    );
}

const CHROME_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--virtual-time-budget=20000",
];

/// Debian's Chromium, if installed (required when `SHARDGATE_REQUIRE_HOSTS` is set).
pub fn chromium() -> Option<PathBuf> {
    for c in ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"] {
        if Path::new(c).exists() {
            return Some(c.into());
        }
    }
    assert!(
        std::env::var_os("SHARDGATE_REQUIRE_HOSTS").is_none(),
        "chromium is required (SHARDGATE_REQUIRE_HOSTS is set); install Debian's chromium"
    );
    None
}

/// Runs headless Chromium on `url` with a fresh profile.
pub fn chrome(bin: &Path, profile: &Path, extra: &[&str], url: &str) -> Vec<u8> {
    let out = Command::new(bin)
        .args(CHROME_FLAGS)
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .output()
        .expect("chromium runs");
    assert!(out.status.success(), "chromium {extra:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// Like [`chrome`], but gives up after `limit`: `None` when Chromium did not
/// finish, as when a response is an attachment and no document is rendered.
pub fn chrome_within(bin: &Path, profile: &Path, extra: &[&str], url: &str, limit: Duration) -> Option<Vec<u8>> {
    let out = Command::new("timeout")
        .args(["-s", "KILL", &limit.as_secs().max(1).to_string()])
        .arg(bin)
        .args(CHROME_FLAGS)
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .output()
        .expect("timeout and chromium run");
    out.status.success().then_some(out.stdout)
}
