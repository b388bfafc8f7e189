//! Pre-warm: loads files' chunks into the tiers at low priority, verified
//! as any read is. Started over gRPC (`release prewarm --api`, a release on
//! one gateway) or over HTTP (`POST` on a file's path, what
//! `release prewarm --via` sends through a balancer, so each file is warmed
//! on the member that serves it). The caller opens the files through the
//! door ([`crate::door::open_files`]) before anything awaits, so a takedown
//! that lands while a pre-warm waits for its turn keeps its chunks out.

use serde::Serialize;
use tokio::sync::mpsc;

use crate::door::OpenFile;
use crate::gateway::Gateway;

/// One pre-warm at a time per gateway, so pre-warming never takes more than
/// one span's worth of origin and CPU from foreground traffic.
static ONE_AT_A_TIME: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// How far a pre-warm is, sent after every span and at the end.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Progress {
    /// The file being warmed.
    pub file: String,
    pub chunks_done: u64,
    pub chunks_total: u64,
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// Chunks that were in no cache tier (memory or disk) when the pre-warm
    /// reached them, so were fetched from an origin and verified; the rest
    /// were cached already.
    pub chunks_fetched: u64,
}

/// Why a pre-warm stopped before its end.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PrewarmError {
    #[error("the release was taken down during the pre-warm")]
    TakenDown,
    #[error("the gateway is shutting down")]
    Stopped,
    #[error("{file}: {why}")]
    Fetch { file: String, why: String },
}

/// Longest a pre-warm holds its turn waiting for a reader to take progress.
const SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Sends `m`; false when nobody is listening or nobody read it in time.
async fn send(tx: &mpsc::Sender<Result<Progress, PrewarmError>>, m: Result<Progress, PrewarmError>) -> bool {
    matches!(tokio::time::timeout(SEND_TIMEOUT, tx.send(m)).await, Ok(Ok(())))
}

/// Warms `opened` in order, sending progress to `tx` when its turn comes
/// and after every span; the last message is the final progress or the
/// error. Waits for its turn first, sending nothing, and gives it up when
/// nobody is listening any more. Stops when `stop()` says so, when nobody
/// listens, and when progress is not read within [`SEND_TIMEOUT`] (so a
/// stalled reader cannot hold every other pre-warm back).
pub async fn warm(
    gw: &Gateway,
    opened: Vec<OpenFile>,
    stop: impl Fn() -> bool,
    tx: mpsc::Sender<Result<Progress, PrewarmError>>,
) {
    let _turn = tokio::select! {
        turn = ONE_AT_A_TIME.acquire() => turn,
        () = tx.closed() => return,
    };
    let mut p = Progress {
        bytes_total: opened.iter().map(|o| o.file.entry().size).sum(),
        chunks_total: opened.iter().map(|o| o.spec.layout.chunk_count()).sum(),
        ..Progress::default()
    };
    if !send(&tx, Ok(p.clone())).await {
        return;
    }
    let span = gw.config().fetch.span.0;
    for mut open in opened {
        let spec = open.spec.clone();
        p.file = open.file.entry().path.clone();
        let per_span = (span / spec.layout.chunk_size()).max(1);
        let count = spec.layout.chunk_count();
        if open.file.entry().size == 0 {
            // Nothing to fetch: an empty file is served without its origin.
            p.chunks_done += count;
            if !send(&tx, Ok(p.clone())).await {
                return;
            }
            continue;
        }
        let mut cold = crate::fetch::ColdSet::default();
        for i in 0..count {
            if tx.is_closed() {
                return;
            }
            if stop() {
                send(&tx, Err(PrewarmError::Stopped)).await;
                return;
            }
            if i % per_span == 0 && open.liveness.check().is_err() {
                send(&tx, Err(PrewarmError::TakenDown)).await;
                return;
            }
            let end = (i - i % per_span + per_span).min(count);
            if i % per_span == 0 {
                // One origin request fetches the whole span: what was cold is seen before it.
                cold = gw.fetcher().cold_set(&spec, std::slice::from_ref(&(i..end)));
            }
            match gw.fetcher().chunk(&spec, i, end).await {
                Ok((b, _)) => {
                    p.bytes_done += b.len() as u64;
                    if cold.contains(i) {
                        p.chunks_fetched += 1;
                    }
                }
                Err(e) => {
                    send(&tx, Err(PrewarmError::Fetch { file: p.file.clone(), why: e.to_string() })).await;
                    return;
                }
            }
            p.chunks_done += 1;
            // Low priority: give way to foreground requests between chunks.
            tokio::task::yield_now().await;
            let step = (i + 1) % per_span == 0 || i + 1 == count;
            if step && !send(&tx, Ok(p.clone())).await {
                return;
            }
        }
    }
}
