//! Federation metrics, registered in the server's `/metrics` registry.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

/// Per remote datacenter: link state, traffic and forwarded requests.
#[derive(Clone)]
pub struct FederationMetrics {
    /// 1 while the link to the datacenter is up.
    pub link_up: IntGaugeVec,
    /// Smoothed round-trip time to the datacenter, in seconds.
    pub link_rtt: prometheus::GaugeVec,
    /// WAN messages (frames) by datacenter and direction.
    pub messages: IntCounterVec,
    /// WAN bytes by datacenter and direction.
    pub bytes: IntCounterVec,
    /// Forwarded requests by datacenter and outcome.
    pub forwarded: IntCounterVec,
    /// Time until a forwarded request's answer began, by datacenter.
    pub forward_duration: HistogramVec,
    /// Source revisions not yet applied here, by rule (target leader only).
    pub replication_lag_revisions: IntGaugeVec,
    /// Seconds since this target last held everything its source had, by rule.
    pub replication_lag_seconds: prometheus::GaugeVec,
    /// The source revision this target holds, by rule.
    pub replication_checkpoint: IntGaugeVec,
    /// Batches applied here, by rule and kind (changes, resync).
    pub replication_batches: IntCounterVec,
    /// Source changes applied here, by rule.
    pub replication_changes: IntCounterVec,
    /// Replication streams that failed, by rule.
    pub replication_errors: IntCounterVec,
    /// Replication streams served to targets, by rule and target datacenter.
    pub replication_streams_served: IntCounterVec,
}

impl FederationMetrics {
    /// Creates and registers the metrics.
    pub fn register(registry: &Registry) -> Result<FederationMetrics, prometheus::Error> {
        let m = FederationMetrics {
            link_up: IntGaugeVec::new(
                Opts::new(
                    "meridian_federation_link_up",
                    "1 while the WAN link to the datacenter is up.",
                ),
                &["dc"],
            )?,
            link_rtt: prometheus::GaugeVec::new(
                Opts::new(
                    "meridian_federation_link_rtt_seconds",
                    "Smoothed round-trip time of the WAN link to the datacenter.",
                ),
                &["dc"],
            )?,
            messages: IntCounterVec::new(
                Opts::new(
                    "meridian_federation_messages_total",
                    "WAN messages exchanged with the datacenter, by direction (sent, received).",
                ),
                &["dc", "direction"],
            )?,
            bytes: IntCounterVec::new(
                Opts::new(
                    "meridian_federation_bytes_total",
                    "WAN payload bytes exchanged with the datacenter, by direction (sent, received).",
                ),
                &["dc", "direction"],
            )?,
            forwarded: IntCounterVec::new(
                Opts::new(
                    "meridian_federation_forwarded_requests_total",
                    "Client requests forwarded to the datacenter, by outcome (ok, unreachable, refused).",
                ),
                &["dc", "outcome"],
            )?,
            forward_duration: HistogramVec::new(
                HistogramOpts::new(
                    "meridian_federation_forward_duration_seconds",
                    "Time from forwarding a client request until its answer began.",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
                &["dc"],
            )?,
            replication_lag_revisions: IntGaugeVec::new(
                Opts::new(
                    "meridian_replication_lag_revisions",
                    "Source revisions not yet applied in this target datacenter, by rule (exported by the target's leader).",
                ),
                &["rule", "source"],
            )?,
            replication_lag_seconds: prometheus::GaugeVec::new(
                Opts::new(
                    "meridian_replication_lag_seconds",
                    "Seconds since this target datacenter last held everything its source had, by rule (exported by the target's leader).",
                ),
                &["rule", "source"],
            )?,
            replication_checkpoint: IntGaugeVec::new(
                Opts::new(
                    "meridian_replication_checkpoint_revision",
                    "The source revision this target datacenter holds, by rule.",
                ),
                &["rule", "source"],
            )?,
            replication_batches: IntCounterVec::new(
                Opts::new(
                    "meridian_replication_batches_total",
                    "Replication batches applied in this datacenter, by rule and kind (changes, resync).",
                ),
                &["rule", "kind"],
            )?,
            replication_changes: IntCounterVec::new(
                Opts::new(
                    "meridian_replication_changes_total",
                    "Source changes (puts and deletes) applied in this datacenter, by rule.",
                ),
                &["rule"],
            )?,
            replication_errors: IntCounterVec::new(
                Opts::new(
                    "meridian_replication_errors_total",
                    "Replication streams that ended in an error, by rule.",
                ),
                &["rule"],
            )?,
            replication_streams_served: IntCounterVec::new(
                Opts::new(
                    "meridian_replication_streams_served_total",
                    "Replication streams this server started serving as a source, by rule and target datacenter.",
                ),
                &["rule", "dc"],
            )?,
        };
        registry.register(Box::new(m.link_up.clone()))?;
        registry.register(Box::new(m.replication_lag_revisions.clone()))?;
        registry.register(Box::new(m.replication_lag_seconds.clone()))?;
        registry.register(Box::new(m.replication_checkpoint.clone()))?;
        registry.register(Box::new(m.replication_batches.clone()))?;
        registry.register(Box::new(m.replication_changes.clone()))?;
        registry.register(Box::new(m.replication_errors.clone()))?;
        registry.register(Box::new(m.replication_streams_served.clone()))?;
        registry.register(Box::new(m.link_rtt.clone()))?;
        registry.register(Box::new(m.messages.clone()))?;
        registry.register(Box::new(m.bytes.clone()))?;
        registry.register(Box::new(m.forwarded.clone()))?;
        registry.register(Box::new(m.forward_duration.clone()))?;
        Ok(m)
    }

    /// Sends one frame to (or for) `dc`, counting it once sent.
    pub async fn send(
        &self,
        dc: &str,
        w: &mut meridian_gateway::FrameWriter,
        frame: &[u8],
    ) -> Result<(), meridian_gateway::GatewayError> {
        w.send(frame).await?;
        self.frame(dc, true, frame.len());
        Ok(())
    }

    /// Receives the next frame from (or for) `dc`, counting it.
    pub async fn next(
        &self,
        dc: &str,
        r: &mut meridian_gateway::FrameReader,
    ) -> Result<Option<Vec<u8>>, meridian_gateway::GatewayError> {
        let frame = r.next().await?;
        if let Some(frame) = &frame {
            self.frame(dc, false, frame.len());
        }
        Ok(frame)
    }

    /// Counts a frame received before it could be attributed (the first of a stream).
    pub fn received(&self, dc: &str, bytes: usize) {
        self.frame(dc, false, bytes);
    }

    /// Counts one frame.
    fn frame(&self, dc: &str, sent: bool, bytes: usize) {
        let direction = if sent { "sent" } else { "received" };
        self.messages.with_label_values(&[dc, direction]).inc();
        self.bytes
            .with_label_values(&[dc, direction])
            .inc_by(bytes as u64);
    }
}

/// The service catalog: instances, checks and lookups.
#[derive(Clone)]
pub struct CatalogMetrics {
    /// Registered instances by service and status (as this server reads them).
    pub instances: IntGaugeVec,
    /// Probes and lapsed TTL checks by check type and outcome.
    pub checks: IntCounterVec,
    /// Time a probe took, by check type.
    pub check_duration: HistogramVec,
    /// Lookups by outcome (local, failover, none, error).
    pub lookups: IntCounterVec,
    /// Datacenters asked by failover lookups, by datacenter and outcome
    /// (found, none, error).
    pub failover_hops: IntCounterVec,
}

impl CatalogMetrics {
    /// Creates and registers the metrics.
    pub fn register(registry: &Registry) -> Result<CatalogMetrics, prometheus::Error> {
        let m = CatalogMetrics {
            instances: IntGaugeVec::new(
                Opts::new(
                    "meridian_catalog_instances",
                    "Registered service instances in this datacenter, by service and health status.",
                ),
                &["service", "status"],
            )?,
            checks: IntCounterVec::new(
                Opts::new(
                    "meridian_catalog_checks_total",
                    "Health checks this server ran (and TTL checks it found lapsed), by type (http, tcp, ttl) and outcome (passing, warning, critical).",
                ),
                &["type", "outcome"],
            )?,
            check_duration: HistogramVec::new(
                HistogramOpts::new(
                    "meridian_catalog_check_duration_seconds",
                    "Time an HTTP or TCP health check took, by type.",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0,
                ]),
                &["type"],
            )?,
            lookups: IntCounterVec::new(
                Opts::new(
                    "meridian_catalog_lookups_total",
                    "Service lookups answered by this server, by outcome (local, failover, none, error).",
                ),
                &["outcome"],
            )?,
            failover_hops: IntCounterVec::new(
                Opts::new(
                    "meridian_catalog_failover_hops_total",
                    "Other datacenters asked by failover lookups, by datacenter and outcome (found, none, error).",
                ),
                &["dc", "outcome"],
            )?,
        };
        registry.register(Box::new(m.instances.clone()))?;
        registry.register(Box::new(m.checks.clone()))?;
        registry.register(Box::new(m.check_duration.clone()))?;
        registry.register(Box::new(m.lookups.clone()))?;
        registry.register(Box::new(m.failover_hops.clone()))?;
        Ok(m)
    }

    /// Sets the instance gauges from a read of the whole catalog.
    pub fn observe_instances(&self, snapshot: &crate::catalog::store::Snapshot) {
        let mut counts: std::collections::BTreeMap<(&str, &str), i64> = Default::default();
        for ((service, _), entry) in &snapshot.entries {
            *counts
                .entry((service.as_str(), entry.health.status.as_str()))
                .or_default() += 1;
        }
        self.instances.reset();
        for ((service, status), n) in counts {
            self.instances.with_label_values(&[service, status]).set(n);
        }
    }
}
