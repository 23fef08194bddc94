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

use std::sync::Arc;
/// How long one wait for the brokers' acknowledgements before a snapshot lasts.
const SYNC_WAIT: Duration = Duration::from_secs(5);
/// When a snapshot stops waiting for them (and is not stored).
const SYNC_GIVE_UP: Duration = Duration::from_secs(300);

use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};

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

/// Sees every delivery report.
pub struct DeliveryReports {
    pipeline: String,
    topic: String,
    bad: Arc<BadInput>,
    metrics: Arc<PipelineMetrics>,
}

impl ClientContext for DeliveryReports {}

impl ProducerContext for DeliveryReports {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
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
    transactional: bool,
    /// A failed commit aborts the run through it.
    control: RunHandle,
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
            transactional: ctx.transactional_id.is_some(),
            control: ctx.control.clone(),
        })
    }

    /// Commit the open transaction and open the next one. A failed commit
    /// stops the run: its output was aborted, and only a restart from the
    /// last snapshot produces it again.
    fn commit(&mut self, next: bool) -> std::io::Result<()> {
        let started = Instant::now();
        let result = self
            .producer
            .commit_transaction(TRANSACTION_TIMEOUT)
            .and_then(|()| {
                if next {
                    self.producer.begin_transaction()
                } else {
                    Ok(())
                }
            });
        match result {
            Ok(()) => {
                log::debug!(
                    "{}: transaction committed in {:?}",
                    self.label(),
                    started.elapsed()
                );
                Ok(())
            }
            Err(e) => {
                let reason = format!(
                    "{}: Kafka transaction commit failed ({e}); start the run again to \
                     recover from the last snapshot",
                    self.label()
                );
                self.control.abort(reason.clone());
                Err(std::io::Error::other(reason))
            }
        }
    }

    fn send(&mut self, record: &Output) {
        loop {
            let mut message = BaseRecord::to(&self.topic).payload(&record.value);
            if let Some(key) = &record.key {
                message = message.key(key);
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
                    self.producer.poll(Duration::from_millis(100));
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
    fn write_batch(&mut self, batch: &[Output]) -> std::io::Result<()> {
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
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.producer.poll(Duration::ZERO);
        Ok(())
    }

    fn finish(&mut self) -> std::io::Result<()> {
        if self.transactional {
            return self.commit(false);
        }
        let started = Instant::now();
        let result = self.producer.flush(FINAL_FLUSH);
        let left = self.producer.in_flight_count();
        match result {
            Ok(()) => {
                log::debug!("{}: flushed in {:?}", self.label(), started.elapsed());
                Ok(())
            }
            Err(e) => Err(std::io::Error::other(format!(
                "{left} records not acknowledged by the brokers after {FINAL_FLUSH:?}: {e}"
            ))),
        }
    }

    fn sync(&mut self, snapshot: u64) -> std::io::Result<()> {
        if self.transactional {
            // The interval's records reach the brokers first (a crash meanwhile
            // aborts them); the line is logged before the commit itself: a crash
            // from there until the snapshot is written makes this interval's
            // output come twice.
            let _ = self.producer.flush(TRANSACTION_TIMEOUT);
            log::debug!(
                "{}: committing the transaction of snapshot {snapshot}",
                self.label()
            );
            return self.commit(true);
        }
        // Until the brokers acknowledged everything: a snapshot must not be
        // stored while output before it could still be lost.
        let mut waited = Duration::ZERO;
        while self.producer.flush(SYNC_WAIT).is_err() {
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
