//! The C ABI: the engine embedded in another process (a BTFS storage node,
//! through cgo). The header is `plugin/include/shardgate.h`, generated from
//! this module by cbindgen and checked against it by a test.
//!
//! - Handles are numbers, not pointers: a handle used after
//!   `shardgate_stop` (or never issued) gets `SHARDGATE_ERR_HANDLE`, never a
//!   crash.
//! - Each engine runs its own tokio runtime on its own threads; calls block
//!   the calling host thread until done. Calls may come from several host
//!   threads at once; `shardgate_stop` waits for calls in progress.
//! - No panic crosses the boundary: every entry point catches it and returns
//!   `SHARDGATE_ERR_PANIC`.
//! - Strings the library returns are allocated by it and freed with
//!   `shardgate_string_free`; nothing else frees them.

#![allow(unsafe_code)] // The C ABI: every unsafe block says why it is sound.

use std::collections::HashMap;
use std::ffi::{CStr, CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use serde::Serialize;

use crate::config::Config;
use crate::engine::Engine;

/// The version of this ABI. It changes when a call's signature or meaning does.
pub const SHARDGATE_ABI_VERSION: u32 = 3;

/// Success.
pub const SHARDGATE_OK: i32 = 0;
/// `shardgate_verify_chunk`: the bytes are not the published chunk.
pub const SHARDGATE_MISMATCH: i32 = 1;
/// A pointer argument was null, or a string was not UTF-8.
pub const SHARDGATE_ERR_ARGUMENT: i32 = -1;
/// The configuration was refused (the error says which key and why).
pub const SHARDGATE_ERR_CONFIG: i32 = -2;
/// The handle is unknown or its engine was stopped.
pub const SHARDGATE_ERR_HANDLE: i32 = -3;
/// The engine failed (a listener, the ledger, an origin).
pub const SHARDGATE_ERR_ENGINE: i32 = -4;
/// The release or file named is not served.
pub const SHARDGATE_ERR_NOT_FOUND: i32 = -5;
/// A bug inside the library was caught at the boundary.
pub const SHARDGATE_ERR_PANIC: i32 = -6;
/// The release was taken down: its bytes are no longer vouched for (the
/// error carries the reason). Since ABI version 2.
pub const SHARDGATE_ERR_TAKEN_DOWN: i32 = -7;
/// The release breaks its policy class (the error names the rule), so it is
/// not served. Since ABI version 3.
pub const SHARDGATE_ERR_REFUSED: i32 = -8;

/// An engine, as the host sees it. 0 is never a valid handle.
pub type ShardgateHandle = u64;

struct Embedded {
    /// `None` once stopped. Calls hold the read lock while they run; stop
    /// takes the write lock, so it waits for them.
    rt: RwLock<Option<tokio::runtime::Runtime>>,
    engine: Mutex<Option<Engine>>,
    base: Option<std::path::PathBuf>,
}

fn engines() -> &'static Mutex<HashMap<u64, Arc<Embedded>>> {
    static ENGINES: OnceLock<Mutex<HashMap<u64, Arc<Embedded>>>> = OnceLock::new();
    ENGINES.get_or_init(|| Mutex::new(HashMap::new()))
}

static NEXT_HANDLE: AtomicU64 = AtomicU64::new(1);

/// An error for the host: its code and message.
struct Failure(i32, String);

impl Failure {
    fn argument(what: &str) -> Self {
        Failure(SHARDGATE_ERR_ARGUMENT, what.to_string())
    }
    fn handle(h: u64) -> Self {
        Failure(SHARDGATE_ERR_HANDLE, format!("handle {h} is unknown or its engine was stopped"))
    }
}

/// Runs `f`, catching panics, and reports a failure through `error`.
fn boundary(error: *mut *mut c_char, f: impl FnOnce() -> Result<(), Failure>) -> i32 {
    let outcome = catch_unwind(AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(Failure(SHARDGATE_ERR_PANIC, "internal error (a panic was caught)".into())));
    match outcome {
        Ok(()) => SHARDGATE_OK,
        Err(Failure(code, message)) => {
            if code != SHARDGATE_MISMATCH {
                tracing::debug!(code, %message, "C ABI call failed");
            }
            set_string(error, &message);
            code
        }
    }
}

/// Stores a library-allocated copy of `s` in `*out`, if `out` is not null.
fn set_string(out: *mut *mut c_char, s: &str) {
    if out.is_null() {
        return;
    }
    let c = CString::new(s.replace('\0', " ")).unwrap_or_default();
    // SAFETY: `out` is non-null and the caller promises it points to writable
    // storage for one `char *` (the header documents every out-parameter so).
    unsafe { *out = c.into_raw() };
}

/// A borrowed C string as UTF-8.
fn str_arg<'a>(p: *const c_char, name: &str) -> Result<&'a str, Failure> {
    if p.is_null() {
        return Err(Failure::argument(&format!("{name} is null")));
    }
    // SAFETY: non-null, and the caller promises a NUL-terminated string that
    // stays valid for the duration of the call.
    let c = unsafe { CStr::from_ptr(p) };
    c.to_str().map_err(|_| Failure::argument(&format!("{name} is not UTF-8")))
}

fn parse_config(toml: &str, base: Option<&Path>) -> Result<Config, Failure> {
    let mut cfg = Config::from_toml(toml).map_err(|e| Failure(SHARDGATE_ERR_CONFIG, e.to_string()))?;
    if let Some(b) = base {
        cfg.resolve_paths(b);
    }
    cfg.validate().map_err(|e| Failure(SHARDGATE_ERR_CONFIG, e.to_string()))?;
    Ok(cfg)
}

/// Locks ignore poisoning: a panic caught at the boundary must not make an
/// engine unreachable, or `shardgate_stop` skip its drain and final commit.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn lookup(h: u64) -> Result<Arc<Embedded>, Failure> {
    lock(engines()).get(&h).cloned().ok_or_else(|| Failure::handle(h))
}

/// Runs `f` on the handle's runtime, blocking this host thread.
fn with_engine<T>(
    h: u64,
    f: impl FnOnce(&tokio::runtime::Runtime, &Arc<crate::gateway::Gateway>, &Embedded) -> Result<T, Failure>,
) -> Result<T, Failure> {
    let e = lookup(h)?;
    let rt = e.rt.read().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(rt) = rt.as_ref() else { return Err(Failure::handle(h)) };
    let gw = lock(&e.engine).as_ref().map(|en| en.gateway().clone());
    let Some(gw) = gw else { return Err(Failure::handle(h)) };
    f(rt, &gw, &e)
}

/// The ABI version this library implements (`SHARDGATE_ABI_VERSION`). A
/// host checks it before any other call.
#[unsafe(no_mangle)]
pub extern "C" fn shardgate_abi_version() -> u32 {
    SHARDGATE_ABI_VERSION
}

/// Starts an engine from a TOML config (the sidecar's format) and writes its
/// handle to `*out_handle`. Relative paths in the config are taken from
/// `base_dir` (may be null: the host's working directory). The engine serves
/// HTTP (and gRPC, if configured) on its own threads until `shardgate_stop`.
/// On failure returns a negative code and, if `error` is not null, a message
/// in `*error` (free it with `shardgate_string_free`).
///
/// # Safety
/// `config_toml` (and `base_dir` unless null) must be NUL-terminated strings;
/// `out_handle` must point to writable storage; `error` may be null.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shardgate_start(
    config_toml: *const c_char,
    base_dir: *const c_char,
    out_handle: *mut ShardgateHandle,
    error: *mut *mut c_char,
) -> i32 {
    boundary(error, || {
        if out_handle.is_null() {
            return Err(Failure::argument("out_handle is null"));
        }
        let toml = str_arg(config_toml, "config_toml")?;
        let base =
            if base_dir.is_null() { None } else { Some(Path::new(str_arg(base_dir, "base_dir")?).to_path_buf()) };
        let cfg = parse_config(toml, base.as_deref())?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("shardgate-embedded")
            .build()
            .map_err(|e| Failure(SHARDGATE_ERR_ENGINE, format!("tokio runtime: {e}")))?;
        let engine = rt.block_on(Engine::start(cfg)).map_err(|e| {
            let code = match crate::error::Classify::class(&e) {
                crate::error::ErrorClass::Config => SHARDGATE_ERR_CONFIG,
                _ => SHARDGATE_ERR_ENGINE,
            };
            Failure(code, e.to_string())
        })?;
        let h = NEXT_HANDLE.fetch_add(1, Ordering::Relaxed);
        let embedded = Embedded { rt: RwLock::new(Some(rt)), engine: Mutex::new(Some(engine)), base };
        engines()
            .lock()
            .map_err(|_| Failure(SHARDGATE_ERR_ENGINE, "engine table poisoned".into()))?
            .insert(h, Arc::new(embedded));
        // SAFETY: checked non-null above; the caller promises writable storage.
        unsafe { *out_handle = h };
        Ok(())
    })
}

/// Stops an engine: drains HTTP (up to `server.shutdown_grace`), stops gRPC,
/// makes the final usage commit, and ends its threads. Waits for calls in
/// progress on other threads. The handle is invalid afterwards.
///
/// # Safety
/// `error` may be null or must point to writable storage for one `char *`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shardgate_stop(handle: ShardgateHandle, error: *mut *mut c_char) -> i32 {
    boundary(error, || {
        let e = engines()
            .lock()
            .map_err(|_| Failure::handle(handle))?
            .remove(&handle)
            .ok_or_else(|| Failure::handle(handle))?;
        let mut rt_slot = e.rt.write().map_err(|_| Failure::handle(handle))?;
        let rt = rt_slot.take().ok_or_else(|| Failure::handle(handle))?;
        let engine = e.engine.lock().map_err(|_| Failure::handle(handle))?.take();
        if let Some(engine) = engine {
            rt.block_on(engine.stop());
        }
        rt.shutdown_timeout(Duration::from_secs(5));
        Ok(())
    })
}

/// Applies a new TOML config to a running engine: releases, trusted keys,
/// origins, tenants. A config that does not validate is refused and the
/// running one kept. Listener settings need a stop and start.
///
/// # Safety
/// `config_toml` must be a NUL-terminated string; `error` may be null.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shardgate_reload(
    handle: ShardgateHandle,
    config_toml: *const c_char,
    error: *mut *mut c_char,
) -> i32 {
    boundary(error, || {
        let toml = str_arg(config_toml, "config_toml")?;
        with_engine(handle, |rt, gw, e| {
            let cfg = parse_config(toml, e.base.as_deref())?;
            rt.block_on(gw.reload(cfg)).map_err(|e| Failure(SHARDGATE_ERR_CONFIG, e.to_string()))
        })
    })
}

#[derive(Serialize)]
struct Stats {
    abi_version: u32,
    listen: String,
    grpc_listen: Option<String>,
    releases: usize,
    hot_tier_bytes: u64,
    disk_tier_bytes: Option<u64>,
    chunks_verified: u64,
    hot_tier_hits: u64,
    hot_tier_misses: u64,
    disk_tier_hits: u64,
    /// Bytes billed per tenant this calendar month (UTC), committed or not.
    month_bytes_by_tenant: std::collections::BTreeMap<String, u64>,
    month_start: i64,
    month_end: i64,
    /// The usage ledger's newest closed-record cursor.
    usage_last_cursor: String,
}

/// Writes the engine's stats as a JSON object to `*out_json`: listen
/// addresses, releases served, tier sizes, verification and hit counters,
/// and the bytes billed to each tenant this month.
///
/// # Safety
/// `out_json` must point to writable storage for one `char *`; `error` may be null.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shardgate_stats_json(
    handle: ShardgateHandle,
    out_json: *mut *mut c_char,
    error: *mut *mut c_char,
) -> i32 {
    boundary(error, || {
        if out_json.is_null() {
            return Err(Failure::argument("out_json is null"));
        }
        let json = with_engine(handle, |_, gw, e| {
            let (listen, grpc) = {
                let engine = lock(&e.engine);
                let engine = engine.as_ref().ok_or_else(|| Failure::handle(handle))?;
                (format!("{}://{}", engine.scheme(), engine.addr()), engine.grpc())
            };
            let m = gw.metrics();
            let (month_bytes_by_tenant, (month_start, month_end)) = gw.meter().month_totals();
            let stats = Stats {
                abi_version: SHARDGATE_ABI_VERSION,
                listen,
                grpc_listen: grpc.map(|(a, tls)| format!("{}://{a}", if tls { "https" } else { "http" })),
                releases: gw.registry().snapshot().release_count(),
                hot_tier_bytes: gw.fetcher().hot().weighted_bytes(),
                disk_tier_bytes: gw.fetcher().disk().map(|d| d.bytes()),
                chunks_verified: m.chunks_verified.get(),
                hot_tier_hits: m.hot_hits.get(),
                hot_tier_misses: m.hot_misses.get(),
                disk_tier_hits: m.disk_hits.get(),
                month_bytes_by_tenant,
                month_start,
                month_end,
                usage_last_cursor: gw.ledger().cursor(gw.ledger().last_seq()),
            };
            serde_json::to_string(&stats).map_err(|e| Failure(SHARDGATE_ERR_ENGINE, e.to_string()))
        })?;
        set_string(out_json, &json);
        Ok(())
    })
}

#[derive(Serialize)]
struct UsagePage {
    records: Vec<UsageRow>,
    next_cursor: String,
}

#[derive(Serialize)]
struct UsageRow {
    id: String,
    cursor: String,
    #[serde(flatten)]
    record: crate::usage::ledger::Closed,
}

/// Writes closed usage records after `after_cursor` (null or "" for the
/// start), at most `limit` (1 to 10000), as JSON `{"records": [...],
/// "next_cursor": "..."}` to `*out_json`: the same records, ids and cursors
/// as the gRPC `ListUsage`.
///
/// # Safety
/// `after_cursor` may be null or a NUL-terminated string; `out_json` must
/// point to writable storage; `error` may be null.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shardgate_usage_json(
    handle: ShardgateHandle,
    after_cursor: *const c_char,
    limit: u32,
    out_json: *mut *mut c_char,
    error: *mut *mut c_char,
) -> i32 {
    boundary(error, || {
        if out_json.is_null() {
            return Err(Failure::argument("out_json is null"));
        }
        if limit == 0 || limit > 10_000 {
            return Err(Failure::argument(&format!("limit {limit} is not between 1 and 10000")));
        }
        let cursor = if after_cursor.is_null() { "" } else { str_arg(after_cursor, "after_cursor")? };
        let json = with_engine(handle, |_, gw, _| {
            let ledger = gw.ledger();
            let after = ledger.parse_cursor(cursor).map_err(|e| Failure::argument(&e.to_string()))?;
            let entries =
                ledger.list(after, limit as usize, None).map_err(|e| Failure(SHARDGATE_ERR_ENGINE, e.to_string()))?;
            let next_cursor = entries.last().map_or_else(|| cursor.to_string(), |e| ledger.cursor(e.seq));
            let records = entries
                .into_iter()
                .map(|e| UsageRow {
                    id: e.record.key.id(ledger.instance()),
                    cursor: ledger.cursor(e.seq),
                    record: e.record,
                })
                .collect();
            serde_json::to_string(&UsagePage { records, next_cursor })
                .map_err(|e| Failure(SHARDGATE_ERR_ENGINE, e.to_string()))
        })?;
        set_string(out_json, &json);
        Ok(())
    })
}

/// Checks `len` bytes at `data` as chunk `chunk_index` of file `path` in
/// release `release` (`NAME@VERSION`, or `NAME@TAG`) against the signed
/// manifest's chunk table (fetched from the origins if not cached). Returns
/// `SHARDGATE_OK` when they are the published bytes, `SHARDGATE_MISMATCH`
/// when not, or a negative code. For a host that serves bytes itself.
///
/// # Safety
/// `release` and `path` must be NUL-terminated strings; `data` must point to
/// `len` readable bytes (it may be null only when `len` is 0); `error` may be null.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shardgate_verify_chunk(
    handle: ShardgateHandle,
    release: *const c_char,
    path: *const c_char,
    chunk_index: u64,
    data: *const u8,
    len: usize,
    error: *mut *mut c_char,
) -> i32 {
    boundary(error, || {
        let release = str_arg(release, "release")?;
        let path = str_arg(path, "path")?;
        let data: &[u8] = if len == 0 {
            &[]
        } else if data.is_null() {
            return Err(Failure::argument("data is null"));
        } else {
            // SAFETY: non-null, and the caller promises `len` readable bytes
            // that stay valid and unmodified for the duration of the call.
            unsafe { std::slice::from_raw_parts(data, len) }
        };
        let (name, segment) = release
            .rsplit_once('@')
            .ok_or_else(|| Failure::argument(&format!("release {release:?} is not NAME@VERSION")))?;
        let ok = with_engine(handle, |rt, gw, _| {
            // The same door as every HTTP request: a taken-down, unloaded or
            // unknown release is refused here, not vouched for.
            let mut open =
                crate::door::open_file(gw, name, segment, path, crate::door::Reader::Operator).map_err(|e| {
                    let code = match e {
                        crate::door::OpenError::TakenDown { .. } => SHARDGATE_ERR_TAKEN_DOWN,
                        crate::door::OpenError::Refused { .. } => SHARDGATE_ERR_REFUSED,
                        crate::door::OpenError::BadLayout { .. } => SHARDGATE_ERR_ENGINE,
                        _ => SHARDGATE_ERR_NOT_FOUND,
                    };
                    Failure(code, e.to_string())
                })?;
            let ok = rt.block_on(gw.fetcher().verify_chunk(&open.spec, chunk_index, data)).map_err(|e| match e {
                crate::fetch::FetchError::OutOfRange { .. } => Failure::argument(&e.to_string()),
                other => Failure(SHARDGATE_ERR_ENGINE, other.to_string()),
            })?;
            // A takedown that landed while the table was fetched: no verdict.
            open.liveness.check().map_err(|e| Failure(SHARDGATE_ERR_TAKEN_DOWN, e.to_string()))?;
            Ok(ok)
        })?;
        if ok {
            Ok(())
        } else {
            Err(Failure(SHARDGATE_MISMATCH, format!("chunk {chunk_index} of {path} does not match the manifest")))
        }
    })
}

/// Frees a string returned by this library (an error message or JSON). Null is ignored.
///
/// # Safety
/// `s` must be null or a string this library returned, not freed before.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shardgate_string_free(s: *mut c_char) {
    if s.is_null() {
        return;
    }
    // SAFETY: the caller promises `s` came from `CString::into_raw` in this
    // library and has not been freed; retaking it frees it once.
    let _ = catch_unwind(|| drop(unsafe { CString::from_raw(s) }));
}
