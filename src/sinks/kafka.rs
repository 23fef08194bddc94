//! Kafka sink: an idempotent producer. Records larger than the app's
//! `max_message_size` and records librdkafka finally fails to deliver (after
//! its own retries) are counted, logged and kept in the dead-letter record;
//! the end of the run waits for every accepted record to be acknowledged.
//!
//! In transactional mode (with crash recovery) the output between two
//! snapshots is one transaction, committed when the snapshot is taken; a
//! restarted worker's producer (same transactional id) aborts what its
//! crashed predecessor left open, and that output is produced again from the
//! snapshot. Consumers reading with `isolation.level=read_committed` see each
//! record once, except when the crash falls between a transaction's commit
//! and the snapshot's write on every worker (the time of a snapshot's store,
//! tens to hundreds of milliseconds), when that interval comes twice. Tested
//! against Apache Kafka (tests/test_apache_kafka.py).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
/// How long one wait for the brokers' acknowledgements before a snapshot lasts.
const SYNC_WAIT: Duration = Duration::from_secs(5);
/// When a snapshot stops waiting for them (and is not stored).
const SYNC_GIVE_UP: Duration = Duration::from_secs(300);

use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext, PurgeConfig};

use super::{BatchWriter, Output, SinkContext};
use crate::bad_input::BadInput;
use crate::control::RunHandle;
use crate::errors::Error;
use crate::kafka::check_topic;
use crate::metrics::PipelineMetrics;
use crate::plan::KafkaSinkPlan;
use crate::sources::kafka::Throttle;

/// How long transaction calls wait for the brokers.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the end of the run waits for outstanding deliveries.
const FINAL_FLUSH: Duration = Duration::from_secs(60);

/// How long one wait for delivery reports lasts while flushing, or while the
/// producer's queue is full.
const REPORT_POLL: Duration = Duration::from_millis(1);

/// Sees every delivery report.
pub struct DeliveryReports {
    pipeline: String,
    topic: String,
    bad: Arc<BadInput>,
    metrics: Arc<PipelineMetrics>,
    /// Transactional: a record counts as delivered when its transaction
    /// commits, not when the brokers acknowledge it.
    transactional: bool,
    /// Records the brokers acknowledged since the open transaction began
    /// (transactional mode: what a failed or aborted transaction loses).
    acked: AtomicU64,
}

impl ClientContext for DeliveryReports {}

impl ProducerContext for DeliveryReports {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if result.is_ok() {
            if self.transactional {
                self.acked.fetch_add(1, Ordering::Relaxed);
            } else {
                PipelineMetrics::add(&self.metrics.sink_records, 1);
            }
        }
        if let Err((error, message)) = result {
            PipelineMetrics::add(&self.metrics.sink_errors, 1);
            self.bad.record(
                &self.pipeline,
                &format!("kafka sink topic {}", self.topic),
                "delivery_failed",
                &error.to_string(),
                message.payload().unwrap_or_default(),
            );
        }
    }
}

/// Writes batches to a Kafka topic.
pub struct KafkaWriter {
    producer: BaseProducer<DeliveryReports>,
    topic: String,
    max_message_size: usize,
    pipeline: String,
    bad: Arc<BadInput>,
    metrics: Arc<PipelineMetrics>,
    queue_full: Throttle,
    /// A failed commit aborts the run through it.
    control: RunHandle,
    /// Transactional mode: why a commit failed (its records were counted as
    /// not delivered); the end of the run reports it.
    failed: Option<String>,
    /// How long the end of the run waits for outstanding deliveries.
    final_flush: Duration,
}

impl KafkaWriter {
    /// Check the topic (a missing one fails the start) and create the producer.
    pub fn new(plan: KafkaSinkPlan, ctx: &SinkContext) -> Result<KafkaWriter, Error> {
        let what = format!("pipeline {:?}: Kafka sink", ctx.pipeline);
        check_topic(&plan.settings, &plan.topic, plan.create_partitions, &what)?;
        let linger = plan.max_produce_buffer_ms.to_string();
        // Leave room for the record overhead above the largest accepted value.
        let max_bytes = (plan.max_message_size + 64 * 1024).to_string();
        let context = DeliveryReports {
            pipeline: ctx.pipeline.clone(),
            topic: plan.topic.clone(),
            bad: ctx.bad.clone(),
            metrics: ctx.metrics.clone(),
            transactional: ctx.transactional_id.is_some(),
            acked: AtomicU64::new(0),
        };
        let mut settings = vec![
            ("enable.idempotence", "true"),
            ("linger.ms", linger.as_str()),
            ("message.max.bytes", max_bytes.as_str()),
        ];
        if let Some(id) = &ctx.transactional_id {
            settings.push(("transactional.id", id.as_str()));
        }
        let producer: BaseProducer<DeliveryReports> = plan
            .settings
            .config(&settings)
            .create_with_context(context)
            .map_err(|e| Error::Config(format!("{what}: cannot create the Kafka producer: {e}")))?;
        if let Some(id) = &ctx.transactional_id {
            // Fences a crashed predecessor and aborts what it left open.
            producer
                .init_transactions(TRANSACTION_TIMEOUT)
                .and_then(|()| producer.begin_transaction())
                .map_err(|e| {
                    Error::Config(format!(
                        "{what}: cannot start transactions (transactional.id {id}): {e}"
                    ))
                })?;
            log::info!("{what}: transactional producer {id}: output is committed at each snapshot");
        }
        Ok(KafkaWriter {
            producer,
            topic: plan.topic,
            max_message_size: plan.max_message_size,
            pipeline: ctx.pipeline.clone(),
            bad: ctx.bad.clone(),
            metrics: ctx.metrics.clone(),
            queue_full: Throttle::default(),
            control: ctx.control.clone(),
            failed: None,
            final_flush: FINAL_FLUSH,
        })
    }

    /// Commit the open transaction (its records acknowledged) and open the
    /// next one. A failed commit stops the run: its output was aborted,
    /// counted as not delivered, and only a restart from the last snapshot
    /// produces it again.
    fn commit(&mut self, snapshot: u64) -> std::io::Result<()> {
        if let Some(failed) = &self.failed {
            return Err(std::io::Error::other(failed.clone()));
        }
        let started = Instant::now();
        let result = self
            .producer
            .commit_transaction(TRANSACTION_TIMEOUT)
            .and_then(|()| self.producer.begin_transaction());
        // Delivery reports served by the commit's flush are in.
        let records = self.producer.context().acked.swap(0, Ordering::Relaxed);
        match result {
            Ok(()) => {
                PipelineMetrics::add(&self.metrics.sink_records, records);
                log::debug!(
                    "{}: transaction of snapshot {snapshot} committed ({records} records) in {:?}",
                    self.label(),
                    started.elapsed()
                );
                Ok(())
            }
            Err(e) => {
                PipelineMetrics::add(&self.metrics.sink_errors, records);
                let reason = format!(
                    "the Kafka transaction of snapshot {snapshot} failed to commit ({e}): its \
                     {records} records are not delivered; start the run again to recover from \
                     the last snapshot"
                );
                self.control.abort(format!("{}: {reason}", self.label()));
                self.failed = Some(reason.clone());
                Err(std::io::Error::other(reason))
            }
        }
    }

    /// The end of a transactional run: the open transaction holds output
    /// after the last snapshot stored (none when the run ended well: its last
    /// snapshot committed the rest), so it is aborted, never committed: a run
    /// started again produces that output again from the snapshot.
    fn abort_open(&mut self) -> std::io::Result<()> {
        if let Some(failed) = &self.failed {
            return Err(std::io::Error::other(failed.clone()));
        }
        let _ = self.wait_acknowledged(self.final_flush);
        let records = self.producer.context().acked.swap(0, Ordering::Relaxed);
        // Aborted: not delivered (the run ended in an error; its next start
        // produces them again from the last snapshot).
        PipelineMetrics::add(&self.metrics.sink_errors, records);
        match self.producer.abort_transaction(TRANSACTION_TIMEOUT) {
            Ok(()) if records > 0 => log::warn!(
                "{}: aborted the open transaction: its {records} records came after the last \
                 snapshot (a run started again produces them again)",
                self.label()
            ),
            Ok(()) => log::debug!("{}: aborted the empty open transaction", self.label()),
            // Then the broker aborts it: when this transactional id's next
            // producer starts, or after transaction.timeout.ms.
            Err(e) => log::warn!(
                "{}: could not abort the open transaction ({records} records after the last \
                 snapshot; the brokers abort it later): {e}",
                self.label()
            ),
        }
        Ok(())
    }

    /// Wait until the brokers acknowledged (or failed) every record handed
    /// to the producer, at most `timeout`. rdkafka's own `flush` serves the
    /// delivery reports in polls that each last their whole 100 ms, so it
    /// returned at the next multiple of 100 ms after the last
    /// acknowledgement (the end of every run, every snapshot); this asks
    /// librdkafka to send what it holds and polls in steps of [`REPORT_POLL`].
    fn wait_acknowledged(&self, timeout: Duration) -> KafkaResult<()> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.producer.flush(Duration::ZERO) {
                Ok(()) => return Ok(()),
                Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut))
                    if Instant::now() < deadline => {}
                Err(e) => return Err(e),
            }
            self.producer.poll(REPORT_POLL);
        }
    }

    fn send(&mut self, record: &Output) {
        loop {
            let mut message = BaseRecord::to(&self.topic).payload(&record.value);
            if let Some(key) = &record.key {
                message = message.key(key);
            }
            if let Some(partition) = record.partition {
                message = message.partition(partition);
            }
            match self.producer.send(message) {
                Ok(()) => return,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    if self.queue_full.ready() {
                        log::info!(
                            "pipeline {:?}: Kafka producer queue full, waiting for the brokers",
                            self.pipeline
                        );
                    }
                    self.producer.poll(REPORT_POLL);
                }
                Err((error, _)) => {
                    PipelineMetrics::add(&self.metrics.sink_errors, 1);
                    self.bad.record(
                        &self.pipeline,
                        &format!("kafka sink topic {}", self.topic),
                        "produce_failed",
                        &error.to_string(),
                        &record.value,
                    );
                    return;
                }
            }
        }
    }
}

impl BatchWriter for KafkaWriter {
    /// Returns 0: a record counts as delivered when the brokers acknowledge
    /// it (transactional: when its transaction commits).
    fn write_batch(&mut self, batch: &[Output]) -> std::io::Result<u64> {
        for record in batch {
            if record.value.len() > self.max_message_size {
                // Bad output, like bad input: kept, not a delivery failure.
                self.bad.record(
                    &self.pipeline,
                    &format!("kafka sink topic {}", self.topic),
                    "oversize_output",
                    &format!(
                        "encoded record of {} bytes is larger than max_message_size {}",
                        record.value.len(),
                        self.max_message_size
                    ),
                    &record.value,
                );
                continue;
            }
            self.send(record);
        }
        self.producer.poll(Duration::ZERO);
        Ok(0)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.producer.poll(Duration::ZERO);
        Ok(())
    }

    fn idle(&mut self) {
        self.producer.poll(Duration::ZERO);
    }

    fn finish(&mut self) -> std::io::Result<()> {
        if self.producer.context().transactional {
            return self.abort_open();
        }
        let started = Instant::now();
        let result = self.wait_acknowledged(self.final_flush);
        let left = self.producer.in_flight_count();
        match result {
            Ok(()) => {
                log::debug!("{}: flushed in {:?}", self.label(), started.elapsed());
                Ok(())
            }
            Err(e) => {
                // Their delivery reports (purged) count them as not delivered
                // and keep them in the dead-letter record.
                self.producer
                    .purge(PurgeConfig::default().queue().inflight());
                let _ = self.wait_acknowledged(Duration::from_secs(1));
                Err(std::io::Error::other(format!(
                    "final flush failed: {left} records not acknowledged by the brokers after \
                     {:?}, not delivered: {e}",
                    self.final_flush
                )))
            }
        }
    }

    fn sync(&mut self, snapshot: u64) -> std::io::Result<()> {
        if self.producer.context().transactional {
            // The interval's records reach the brokers first (a crash meanwhile
            // aborts them); the line is logged before the commit itself: a crash
            // from there until the snapshot is written makes this interval's
            // output come twice.
            let _ = self.wait_acknowledged(TRANSACTION_TIMEOUT);
            log::debug!(
                "{}: committing the transaction of snapshot {snapshot}",
                self.label()
            );
            return self.commit(snapshot);
        }
        // Until the brokers acknowledged everything: a snapshot must not be
        // stored while output before it could still be lost.
        let mut waited = Duration::ZERO;
        while self.wait_acknowledged(SYNC_WAIT).is_err() {
            waited += SYNC_WAIT;
            if waited >= SYNC_GIVE_UP {
                return Err(std::io::Error::other(format!(
                    "{} records not acknowledged by the brokers after {waited:?}",
                    self.producer.in_flight_count()
                )));
            }
            log::warn!(
                "{}: {} records not yet acknowledged; the snapshot waits",
                self.label(),
                self.producer.in_flight_count()
            );
        }
        Ok(())
    }

    fn label(&self) -> String {
        format!("kafka topic {}", self.topic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::ClientSettings;
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    fn writer(
        cluster: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
        name: &str,
        transactional: bool,
    ) -> KafkaWriter {
        cluster.create_topic(name, 1, 1).unwrap();
        let plan = KafkaSinkPlan {
            topic: name.to_owned(),
            settings: ClientSettings {
                bootstrap: cluster.bootstrap_servers(),
                log_level: "Error".into(),
                extra: vec![],
            },
            max_produce_buffer_ms: 1,
            max_message_size: 1000,
            create_partitions: None,
            transactions: transactional,
        };
        let ctx = SinkContext {
            pipeline: name.to_owned(),
            bad: Arc::new(BadInput::new(None).unwrap()),
            metrics: Arc::new(crate::metrics::PipelineMetrics::default()),
            connect_timeout_s: 1.0,
            append: false,
            transactional_id: transactional.then(|| format!("test.{name}")),
            control: crate::control::RunControl::new(),
        };
        KafkaWriter::new(plan, &ctx).unwrap()
    }

    fn records(n: usize) -> Vec<Output> {
        (0..n)
            .map(|i| Output {
                value: format!("r{i}").into_bytes(),
                ..Output::default()
            })
            .collect()
    }

    #[test]
    fn a_failed_final_flush_counts_its_records_as_not_delivered() {
        let cluster = MockCluster::new(1).unwrap();
        let mut sink = writer(&cluster, "final-flush", false);
        assert_eq!(sink.write_batch(&records(3)).unwrap(), 0);
        sink.finish().unwrap();
        // Counted as delivered once acknowledged, not when handed over.
        assert_eq!(PipelineMetrics::get(&sink.metrics.sink_records), 3);
        cluster.broker_down(1).unwrap();
        sink.final_flush = Duration::from_millis(500);
        sink.write_batch(&records(7)).unwrap();
        let err = sink.finish().unwrap_err().to_string();
        assert!(err.contains("7 records not acknowledged"), "{err}");
        assert_eq!(PipelineMetrics::get(&sink.metrics.sink_errors), 7);
        assert_eq!(PipelineMetrics::get(&sink.metrics.sink_records), 3);
        assert_eq!(sink.bad.counts().get("delivery_failed"), Some(&7));
    }

    #[test]
    fn a_failed_commit_counts_its_transaction_and_fails_the_end() {
        let cluster = MockCluster::new(1).unwrap();
        let mut sink = writer(&cluster, "failed-commit", true);
        sink.write_batch(&records(4)).unwrap();
        sink.sync(1).unwrap();
        assert_eq!(PipelineMetrics::get(&sink.metrics.sink_records), 4);
        sink.write_batch(&records(5)).unwrap();
        cluster.request_errors(
            RDKafkaApiKey::EndTxn,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_PRODUCER_EPOCH; 4],
        );
        let err = sink.sync(2).unwrap_err().to_string();
        assert!(err.contains("snapshot 2 failed to commit"), "{err}");
        assert!(err.contains("its 5 records are not delivered"), "{err}");
        assert_eq!(PipelineMetrics::get(&sink.metrics.sink_errors), 5);
        assert_eq!(PipelineMetrics::get(&sink.metrics.sink_records), 4);
        let end = sink.finish().unwrap_err().to_string();
        assert_eq!(end, err);
        let aborted = sink.control.peek_abort().unwrap_or_default();
        assert!(aborted.contains("snapshot 2 failed to commit"), "{aborted}");
    }

    #[test]
    fn the_end_of_a_transactional_run_aborts_the_open_transaction() {
        let cluster = MockCluster::new(1).unwrap();
        let mut sink = writer(&cluster, "abort-open", true);
        sink.write_batch(&records(2)).unwrap();
        sink.sync(1).unwrap();
        sink.write_batch(&records(3)).unwrap();
        sink.finish().unwrap();
        // Committed: delivered; aborted: not (a run started again makes them).
        assert_eq!(PipelineMetrics::get(&sink.metrics.sink_records), 2);
        assert_eq!(PipelineMetrics::get(&sink.metrics.sink_errors), 3);
    }
}
