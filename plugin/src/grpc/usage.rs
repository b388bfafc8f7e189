//! `shardgate.usage.v1.UsageService`: the usage API over tonic. It is served
//! by [`crate::grpc`], behind the billing-token check.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::pricing::Money;
use crate::reports::Chargeback;
use crate::usage::ledger::{Entry, Ledger, LedgerError};
use crate::usage::proto::usage_service_server::UsageService;
use crate::usage::proto::{self, usage_record};
use crate::usage::{RecordKey, Source, WINDOW_SECS, unix_now};

const DEFAULT_LIMIT: u32 = 1000;
const MAX_LIMIT: u32 = 10_000;

fn status(e: LedgerError) -> Status {
    match e {
        LedgerError::BadCursor(_) | LedgerError::CursorAhead { .. } => Status::invalid_argument(e.to_string()),
        LedgerError::Corrupt { .. } => Status::data_loss(e.to_string()),
        LedgerError::Open { .. } | LedgerError::Storage(_) => Status::unavailable(e.to_string()),
    }
}

fn source(s: Source) -> proto::Source {
    match s {
        Source::Hot => proto::Source::Hot,
        Source::Origin => proto::Source::Origin,
    }
}

fn to_proto(ledger: &Ledger, e: &Entry) -> proto::UsageRecord {
    let key = &e.record.key;
    let c = &e.record.counters;
    let counters = match key {
        RecordKey::TenantUsage { tenant, dataset, version, source: s, .. } => {
            usage_record::Counters::TenantUsage(proto::TenantUsage {
                tenant: tenant.to_string(),
                dataset: dataset.to_string(),
                version: version.to_string(),
                source: source(*s).into(),
                bytes: c.bytes,
                requests: c.requests,
                aborted_requests: c.aborted_requests,
            })
        }
        RecordKey::DatasetCost { dataset, version, .. } => usage_record::Counters::DatasetCost(proto::DatasetCost {
            dataset: dataset.to_string(),
            version: version.to_string(),
            origin_egress_bytes: c.origin_egress_bytes,
            integrity_failed_bytes: c.integrity_failed_bytes,
            integrity_aborted_bytes: c.integrity_aborted_bytes,
            integrity_aborted_requests: c.integrity_aborted_requests,
        }),
    };
    proto::UsageRecord {
        id: key.id(ledger.instance()),
        gateway_instance: ledger.instance().to_string(),
        cursor: ledger.cursor(e.seq),
        window_start: key.window(),
        window_end: key.window() + WINDOW_SECS,
        counters: Some(counters),
    }
}

fn money(m: Money) -> proto::Money {
    // Lines are rounded already; totals are sums of rounded lines.
    proto::Money { btt: m.btt.to_string(), fiat: m.fiat.to_string(), fiat_buffered: m.fiat_buffered.to_string() }
}

/// Runs a blocking ledger call off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, LedgerError> + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Status::internal(e.to_string()))?.map_err(status)
}

#[derive(Debug, Clone)]
pub struct UsageApi {
    ledger: Arc<Ledger>,
    gw: Arc<crate::gateway::Gateway>,
    /// Becomes true when the server stops; open streams then end.
    stop: watch::Receiver<bool>,
}

impl UsageApi {
    pub fn new(gw: Arc<crate::gateway::Gateway>, stop: watch::Receiver<bool>) -> Self {
        Self { ledger: gw.ledger().clone(), gw, stop }
    }
}

type RecordStream = Pin<Box<dyn Stream<Item = Result<proto::UsageRecord, Status>> + Send>>;

#[tonic::async_trait]
impl UsageService for UsageApi {
    async fn list_usage(
        &self,
        req: Request<proto::ListUsageRequest>,
    ) -> Result<Response<proto::ListUsageResponse>, Status> {
        let r = req.into_inner();
        let after = self.ledger.parse_cursor(&r.after_cursor).map_err(status)?;
        let limit = match r.limit {
            0 => DEFAULT_LIMIT,
            n if n > MAX_LIMIT => {
                return Err(Status::invalid_argument(format!("limit {n} is above the maximum {MAX_LIMIT}")));
            }
            n => n,
        };
        if r.tenant.as_deref() == Some("") {
            return Err(Status::invalid_argument("tenant is empty; leave it unset for all tenants"));
        }
        let ledger = self.ledger.clone();
        let (entries, next, last) = blocking(move || ledger.page(after, limit as usize, r.tenant.as_deref())).await?;
        let next = if entries.is_empty() { r.after_cursor } else { self.ledger.cursor(next) };
        Ok(Response::new(proto::ListUsageResponse {
            records: entries.iter().map(|e| to_proto(&self.ledger, e)).collect(),
            next_cursor: next,
            last_cursor: self.ledger.cursor(last),
        }))
    }

    type StreamUsageStream = RecordStream;

    async fn stream_usage(
        &self,
        req: Request<proto::StreamUsageRequest>,
    ) -> Result<Response<Self::StreamUsageStream>, Status> {
        let r = req.into_inner();
        let start = self.ledger.parse_cursor(&r.after_cursor).map_err(status)?;
        if r.tenant.as_deref() == Some("") {
            return Err(Status::invalid_argument("tenant is empty; leave it unset for all tenants"));
        }
        let s = record_stream(self.ledger.clone(), start, r.tenant, self.stop.clone());
        Ok(Response::new(Box::pin(s)))
    }

    async fn get_totals(
        &self,
        req: Request<proto::GetTotalsRequest>,
    ) -> Result<Response<proto::GetTotalsResponse>, Status> {
        let r = req.into_inner();
        if r.tenant.is_empty() {
            return Err(Status::invalid_argument("tenant is required"));
        }
        let to = if r.to == 0 { unix_now() + WINDOW_SECS } else { r.to };
        if r.from > to {
            return Err(Status::invalid_argument(format!("from {} is after to {to}", r.from)));
        }
        let ledger = self.ledger.clone();
        let (tenant, dataset, from) = (r.tenant.clone(), r.dataset.clone(), r.from);
        let sums = blocking(move || ledger.totals(&tenant, dataset.as_deref(), from, to)).await?;
        let mut out = proto::GetTotalsResponse { tenant: r.tenant, ..Default::default() };
        for (s, c) in sums {
            out.bytes += c.bytes;
            out.requests += c.requests;
            out.aborted_requests += c.aborted_requests;
            out.by_source.push(proto::SourceTotals {
                source: source(s).into(),
                bytes: c.bytes,
                requests: c.requests,
                aborted_requests: c.aborted_requests,
            });
        }
        Ok(Response::new(out))
    }

    async fn get_chargeback(
        &self,
        req: Request<proto::GetChargebackRequest>,
    ) -> Result<Response<proto::GetChargebackResponse>, Status> {
        let r = req.into_inner();
        let to = if r.to == 0 { unix_now() + WINDOW_SECS } else { r.to };
        if r.from > to {
            return Err(Status::invalid_argument(format!("from {} is after to {to}", r.from)));
        }
        let ledger = self.ledger.clone();
        let from = r.from;
        let records = blocking(move || ledger.period(from, to)).await?;
        let pricing = self.gw.pricing();
        let c = Chargeback::compute(from, to, &records, pricing.as_deref());
        Ok(Response::new(proto::GetChargebackResponse {
            from,
            to,
            gateway_instance: self.ledger.instance().to_string(),
            pricing: pricing.as_deref().map(|p| proto::Pricing {
                currency: p.currency.clone(),
                fiat_rate: p.fiat_rate.normalize().to_string(),
                rate_date: p.rate_date.to_string(),
                risk_buffer_percent: p.risk_buffer_percent.normalize().to_string(),
                retrieval_ubtt_per_mib: p.retrieval_ubtt_per_mib.normalize().to_string(),
            }),
            lines: c
                .lines
                .into_iter()
                .map(|l| proto::ChargebackLine {
                    tenant: l.tenant,
                    dataset: l.dataset,
                    version: l.version,
                    hot_bytes: l.hot_bytes,
                    origin_bytes: l.origin_bytes,
                    bytes: l.bytes,
                    requests: l.requests,
                    aborted_requests: l.aborted_requests,
                    charge: l.charge.map(money),
                })
                .collect(),
            releases: c
                .releases
                .into_iter()
                .map(|s| proto::ReleaseSpend {
                    dataset: s.dataset,
                    version: s.version,
                    origin_egress_bytes: s.origin_egress_bytes,
                    integrity_failed_bytes: s.integrity_failed_bytes,
                    integrity_aborted_requests: s.integrity_aborted_requests,
                    spend: s.spend.map(money),
                })
                .collect(),
            total_charge: c.total_charge.map(money),
            total_spend: c.total_spend.map(money),
        }))
    }

    async fn ack_usage(
        &self,
        req: Request<proto::AckUsageRequest>,
    ) -> Result<Response<proto::AckUsageResponse>, Status> {
        let r = req.into_inner();
        if r.cursor.is_empty() {
            return Err(Status::invalid_argument("cursor is required"));
        }
        let seq = self.ledger.parse_cursor(&r.cursor).map_err(status)?;
        let ledger = self.ledger.clone();
        let acked = blocking(move || ledger.ack(seq)).await?;
        Ok(Response::new(proto::AckUsageResponse { acked_cursor: self.ledger.cursor(acked) }))
    }
}

/// Pages through closed records after `start`, then waits for windows to
/// close. Ends when the server stops.
fn record_stream(
    ledger: Arc<Ledger>,
    start: u64,
    tenant: Option<String>,
    stop: watch::Receiver<bool>,
) -> impl Stream<Item = Result<proto::UsageRecord, Status>> + Send {
    struct St {
        ledger: Arc<Ledger>,
        after: u64,
        tenant: Option<String>,
        buf: VecDeque<Entry>,
        closed: watch::Receiver<u64>,
        stop: watch::Receiver<bool>,
        stopping: bool,
    }
    let closed = ledger.subscribe();
    let st = St { ledger, after: start, tenant, buf: VecDeque::new(), closed, stop, stopping: false };
    futures_util::stream::unfold(Some(st), |st| async move {
        let mut st = st?;
        loop {
            if let Some(e) = st.buf.pop_front() {
                st.after = e.seq;
                let rec = to_proto(&st.ledger, &e);
                return Some((Ok(rec), Some(st)));
            }
            // Mark the current state seen *before* listing, so a window that
            // closes during the listing still wakes the wait below.
            st.closed.borrow_and_update();
            let (ledger, after, tenant) = (st.ledger.clone(), st.after, st.tenant.clone());
            match blocking(move || ledger.list(after, DEFAULT_LIMIT as usize, tenant.as_deref())).await {
                Ok(page) if !page.is_empty() => st.buf.extend(page),
                Ok(_) if st.stopping => return None,
                Ok(_) => {
                    tokio::select! {
                        r = st.closed.changed() => if r.is_err() { st.stopping = true },
                        // The server is stopping: the final commit has been made,
                        // so send what it closed, then end.
                        _ = st.stop.wait_for(|s| *s) => st.stopping = true,
                    }
                }
                Err(e) => return Some((Err(e), None)),
            }
        }
    })
}
