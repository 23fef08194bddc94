//! Kafka source: the engine assigns the topic's partitions itself (never a
//! group subscription, so restarts never wait on group coordination), starts
//! from the committed offsets / earliest / latest, and commits what it has
//! handed over under the group id so lag tools see progress.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Sender};
use rdkafka::bindings;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaResult;
use rdkafka::ClientContext;
use rdkafka::{Offset, TopicPartitionList};

use super::{
    send_batch, Frame, Pos, PosStyle, SourceContext, SourceHandle, SourceInfo, CHANNEL_BATCHES,
};
use crate::errors::Error;
use crate::kafka::{check_topic, METADATA_TIMEOUT};
use crate::plan::{KafkaSourcePlan, StartOffset};

const POLL: Duration = Duration::from_millis(100);
const COMMIT_EVERY: Duration = Duration::from_secs(1);
const WARN_EVERY: Duration = Duration::from_secs(30);

/// Logs a repeated problem at most once per [`WARN_EVERY`].
#[derive(Default)]
pub struct Throttle {
    last: Option<Instant>,
}

impl Throttle {
    /// Whether to log now.
    pub fn ready(&mut self) -> bool {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < WARN_EVERY)
        {
            return false;
        }
        self.last = Some(now);
        true
    }
}

/// Check the topic now (a missing topic fails the start), consume on a thread.
pub fn start(plan: KafkaSourcePlan, ctx: SourceContext) -> Result<SourceHandle, Error> {
    let what = format!("pipeline {:?}: Kafka source", ctx.pipeline);
    check_topic(&plan.settings, &plan.topic, plan.create_partitions, &what)?;
    let reset = if plan.start_offset == StartOffset::Latest {
        "latest"
    } else {
        "earliest"
    };
    let consumer: BaseConsumer = plan
        .settings
        .config(&[
            ("group.id", plan.group_id.as_str()),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("enable.partition.eof", "false"),
            ("auto.offset.reset", reset),
        ])
        .create()
        .map_err(|e| Error::Config(format!("{what}: cannot create the Kafka consumer: {e}")))?;
    let info = SourceInfo {
        label: format!("kafka topic {}", plan.topic),
        style: PosStyle::Partitions,
    };
    let (tx, rx) = bounded(CHANNEL_BATCHES);
    let thread_info = info.clone();
    let read_everywhere = Arc::new(AtomicBool::new(false));
    let everywhere = read_everywhere.clone();
    let thread = std::thread::Builder::new()
        .name(format!("kafka {}", ctx.pipeline))
        .spawn(move || consume(consumer, plan, ctx, thread_info, tx, &everywhere))
        .map_err(|e| Error::Config(format!("cannot start a source thread: {e}")))?;
    Ok(SourceHandle {
        rx,
        info,
        threads: vec![thread],
        read_everywhere,
    })
}

/// This worker's share of the topic's partitions, and whether every worker
/// of the cluster has a share; waits (with back-off) while the brokers do
/// not answer.
fn wait_for_partitions(
    consumer: &BaseConsumer,
    topic: &str,
    ctx: &SourceContext,
    label: &str,
) -> Option<(Vec<i32>, bool)> {
    let mut delay = Duration::from_millis(200);
    let mut throttle = Throttle::default();
    while !ctx.finished() {
        match consumer.fetch_metadata(Some(topic), METADATA_TIMEOUT) {
            Ok(metadata) => {
                let partitions: Vec<i32> = metadata
                    .topics()
                    .iter()
                    .filter(|t| t.name() == topic && t.error().is_none())
                    .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                    .collect();
                if !partitions.is_empty() {
                    let everywhere = partitions.len() >= ctx.peers;
                    return Some((mine(partitions, ctx.worker, ctx.peers), everywhere));
                }
                if throttle.ready() {
                    log::warn!("{label}: the topic has no partitions yet; waiting");
                }
            }
            Err(e) => {
                if throttle.ready() {
                    log::warn!(
                        "{label}: Kafka brokers not reachable ({e}); retrying with back-off"
                    );
                }
            }
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_secs(5));
    }
    None
}

/// Worker `worker`'s share of `partitions` among `peers` workers.
fn mine(partitions: Vec<i32>, worker: usize, peers: usize) -> Vec<i32> {
    partitions
        .into_iter()
        .filter(|p| usize::try_from(*p).unwrap_or(0) % peers.max(1) == worker)
        .collect()
}

fn starting_offsets(
    consumer: &BaseConsumer,
    plan: &KafkaSourcePlan,
    partitions: &[i32],
    label: &str,
) -> TopicPartitionList {
    let mut list = TopicPartitionList::new();
    for &partition in partitions {
        list.add_partition(&plan.topic, partition);
    }
    let default = match plan.start_offset {
        StartOffset::Latest => Offset::End,
        _ => Offset::Beginning,
    };
    let committed = match plan.start_offset {
        StartOffset::Committed => {
            match consumer.committed_offsets(list.clone(), Duration::from_secs(10)) {
                Ok(committed) => Some(committed),
                Err(e) => {
                    log::warn!("{label}: cannot read the committed offsets ({e}); starting from the beginning");
                    None
                }
            }
        }
        _ => None,
    };
    let mut start = TopicPartitionList::new();
    for &partition in partitions {
        if let Some(&next) = plan.resume.get(&partition) {
            if let Err(e) = start.add_partition_offset(&plan.topic, partition, Offset::Offset(next))
            {
                log::error!("{label}: partition {partition}: {e}");
            }
            continue;
        }
        let offset = committed
            .as_ref()
            .and_then(|c| c.find_partition(&plan.topic, partition))
            .map(|e| e.offset())
            .filter(|o| matches!(o, Offset::Offset(_)))
            .unwrap_or_else(|| latest(consumer, &plan.topic, partition, default, label));
        if let Err(e) = start.add_partition_offset(&plan.topic, partition, offset) {
            log::error!("{label}: partition {partition}: {e}");
        }
    }
    start
}

/// `default`, except that the end is looked up now: "latest" means the
/// end when the source starts (logged with the start), not wherever the end
/// is when the first fetch happens.
fn latest(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    default: Offset,
    label: &str,
) -> Offset {
    if default != Offset::End {
        return default;
    }
    match consumer.fetch_watermarks(topic, partition, Duration::from_secs(10)) {
        Ok((_, high)) => Offset::Offset(high),
        Err(e) => {
            log::warn!(
                "{label}: partition {partition}: cannot look up its end offset ({e}); reading \
                 from its end at the first fetch"
            );
            Offset::End
        }
    }
}

fn commit(
    consumer: &BaseConsumer,
    topic: &str,
    next: &BTreeMap<i32, i64>,
    mode: CommitMode,
) -> KafkaResult<()> {
    if next.is_empty() {
        return Ok(());
    }
    let mut list = TopicPartitionList::new();
    for (&partition, &offset) in next {
        list.add_partition_offset(topic, partition, Offset::Offset(offset))?;
    }
    consumer.commit(&list, mode)
}

/// How long the source tries to commit its last offsets at its end (a
/// broker that just came back may not know the group's coordinator yet).
const FINAL_COMMIT_FOR: Duration = Duration::from_secs(10);

/// Commit the offsets the source ends at, trying again while the group's
/// coordinator is not reachable; a failure in the end is logged (the next
/// run then reads again from the last offsets committed: nothing is lost).
fn commit_at_end(consumer: &BaseConsumer, topic: &str, next: &BTreeMap<i32, i64>, label: &str) {
    let deadline = Instant::now() + FINAL_COMMIT_FOR;
    let mut tries = 0u32;
    loop {
        tries += 1;
        match commit(consumer, topic, next, CommitMode::Sync) {
            Ok(()) => return,
            Err(e) if Instant::now() < deadline => {
                log::debug!("{label}: final offset commit failed (try {tries}): {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => {
                log::warn!(
                    "{label}: cannot commit the offsets it ended at {next:?} after {tries} \
                     tries: {e}; a later run of the group reads again from the last offsets \
                     committed"
                );
                return;
            }
        }
    }
}

/// Each partition's lag (messages behind its high watermark) for the
/// metrics, from librdkafka's cached watermarks: no broker round trip.
fn report_lag(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: &[i32],
    next: &BTreeMap<i32, i64>,
    ctx: &SourceContext,
) {
    if !ctx.metrics.detailed {
        return;
    }
    let Ok(name) = std::ffi::CString::new(topic) else {
        return;
    };
    let mut lag = BTreeMap::new();
    for &partition in partitions {
        let (mut low, mut high) = (-1i64, -1i64);
        // SAFETY: the client lives as long as `consumer`; the topic name and
        // the out-pointers are valid for the call.
        let err = unsafe {
            rdkafka::bindings::rd_kafka_get_watermark_offsets(
                consumer.client().native_ptr(),
                name.as_ptr(),
                partition,
                &mut low,
                &mut high,
            )
        };
        if err != rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || high < 0 {
            continue;
        }
        let position = next.get(&partition).copied().unwrap_or(low.max(0));
        lag.insert(partition, (high - position).max(0));
    }
    ctx.metrics.set_kafka_lag(topic, lag);
}

/// The consumer's queue read in batches (`rd_kafka_consume_batch_queue`):
/// `BaseConsumer::poll` turned each message into an event, an `Arc` and a
/// borrowed message, about half of the source thread's instructions per
/// message once the payload copy is left out. librdkafka's log lines are
/// sent to a queue of their own, served here through the consumer's
/// context as rdkafka does (in the consumer's queue a batch read would print
/// them to stderr). Lives no longer than the consumer it reads.
struct BatchReader<'a> {
    consumer: &'a BaseConsumer,
    queue: *mut bindings::rd_kafka_queue_t,
    logs: *mut bindings::rd_kafka_queue_t,
    messages: Vec<*mut bindings::rd_kafka_message_t>,
}

/// What one read of the queue ended with.
enum Read {
    /// Every message asked for: more may be waiting.
    Full,
    /// Fewer: the queue is empty for now.
    Drained,
    /// A consumer error (the first of the read; every message of the read
    /// was taken, before and after it).
    Error(String),
}

impl<'a> BatchReader<'a> {
    /// None when the client has no consumer queue (no group id). Called
    /// before any partition is assigned (it serves what is queued so far).
    fn new(consumer: &'a BaseConsumer) -> Option<Self> {
        let client = consumer.client().native_ptr();
        // SAFETY: `client` is a live consumer handle for the reader's life;
        // each queue obtained here is released in `drop`.
        unsafe {
            let queue = bindings::rd_kafka_queue_get_consumer(client);
            if queue.is_null() {
                return None;
            }
            let logs = bindings::rd_kafka_queue_new(client);
            bindings::rd_kafka_set_log_queue(client, logs);
            let reader = BatchReader {
                consumer,
                queue,
                logs,
                messages: Vec::new(),
            };
            // Log lines queued before the switch are served as rdkafka's poll
            // serves them (called before any partition is assigned: no
            // message can be among them).
            for _ in 0..10_000 {
                if bindings::rd_kafka_queue_length(queue) == 0 {
                    break;
                }
                let _ = consumer.poll(Duration::ZERO);
            }
            Some(reader)
        }
    }

    /// Read up to `max` messages, waiting at most `timeout` for the first;
    /// each goes to `take(partition, offset, payload)` in the queue's order.
    fn read(
        &mut self,
        timeout: Duration,
        max: usize,
        mut take: impl FnMut(i32, i64, &[u8]),
    ) -> Read {
        let max = max.max(1);
        self.messages.clear();
        self.messages.resize(max, std::ptr::null_mut());
        let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: the array holds `max` pointers; each message returned is
        // read, then destroyed once, before the next call.
        let count = unsafe {
            bindings::rd_kafka_consume_batch_queue(
                self.queue,
                timeout_ms,
                self.messages.as_mut_ptr(),
                max,
            )
        };
        let count = usize::try_from(count).unwrap_or(0).min(max);
        let mut error = None;
        for &message in &self.messages[..count] {
            // SAFETY: librdkafka returned `count` valid messages.
            unsafe {
                let m = &*message;
                if m.err == bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                    // Every message is taken, those after an error too: the
                    // consumer's position has moved past them, so one left
                    // out would never come again (and a later commit would
                    // skip it).
                    let payload = if m.payload.is_null() {
                        &[][..]
                    } else {
                        std::slice::from_raw_parts(m.payload.cast::<u8>(), m.len)
                    };
                    take(m.partition, m.offset, payload);
                } else if m.err != bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__PARTITION_EOF
                    && error.is_none()
                {
                    let text = bindings::rd_kafka_message_errstr(message);
                    let text = if text.is_null() {
                        String::new()
                    } else {
                        std::ffi::CStr::from_ptr(text)
                            .to_string_lossy()
                            .into_owned()
                    };
                    error = Some(format!(
                        "{} ({text})",
                        rdkafka::error::RDKafkaErrorCode::from(m.err)
                    ));
                }
                bindings::rd_kafka_message_destroy(message);
            }
        }
        self.serve_logs();
        match error {
            Some(error) => Read::Error(error),
            None if count == max => Read::Full,
            None => Read::Drained,
        }
    }

    /// Hand librdkafka's queued log lines to the consumer's context.
    fn serve_logs(&self) {
        loop {
            // SAFETY: `logs` is a live queue; each event is destroyed once.
            unsafe {
                let event = bindings::rd_kafka_queue_poll(self.logs, 0);
                if event.is_null() {
                    return;
                }
                let (mut fac, mut text, mut level) = (std::ptr::null(), std::ptr::null(), 0);
                if bindings::rd_kafka_event_type(event) == bindings::RD_KAFKA_EVENT_LOG
                    && bindings::rd_kafka_event_log(event, &mut fac, &mut text, &mut level) == 0
                    && !fac.is_null()
                    && !text.is_null()
                {
                    let fac = std::ffi::CStr::from_ptr(fac).to_string_lossy();
                    let text = std::ffi::CStr::from_ptr(text).to_string_lossy();
                    self.consumer
                        .context()
                        .log(log_level_of(level), fac.trim(), text.trim());
                }
                bindings::rd_kafka_event_destroy(event);
            }
        }
    }
}

impl Drop for BatchReader<'_> {
    fn drop(&mut self) {
        let client = self.consumer.client().native_ptr();
        // SAFETY: the client outlives the reader; the log lines go back to
        // the main queue (served by rdkafka's poll and close) before the
        // reader's own queue is served a last time and released.
        unsafe {
            let main = bindings::rd_kafka_queue_get_main(client);
            bindings::rd_kafka_set_log_queue(client, main);
            bindings::rd_kafka_queue_destroy(main);
            self.serve_logs();
            bindings::rd_kafka_queue_destroy(self.logs);
            bindings::rd_kafka_queue_destroy(self.queue);
        }
    }
}

/// librdkafka's (syslog) level as rdkafka's.
fn log_level_of(level: i32) -> RDKafkaLogLevel {
    match level {
        i32::MIN..=0 => RDKafkaLogLevel::Emerg,
        1 => RDKafkaLogLevel::Alert,
        2 => RDKafkaLogLevel::Critical,
        3 => RDKafkaLogLevel::Error,
        4 => RDKafkaLogLevel::Warning,
        5 => RDKafkaLogLevel::Notice,
        6 => RDKafkaLogLevel::Info,
        _ => RDKafkaLogLevel::Debug,
    }
}

fn consume(
    consumer: BaseConsumer,
    plan: KafkaSourcePlan,
    ctx: SourceContext,
    info: SourceInfo,
    tx: Sender<Vec<Frame>>,
    read_everywhere: &AtomicBool,
) {
    let label = info.label.clone();
    // Before any partition is assigned: no message is served while the log
    // lines queued so far are.
    let Some(mut reader) = BatchReader::new(&consumer) else {
        log::error!("{label}: the Kafka client has no consumer queue");
        return;
    };
    let Some((partitions, everywhere)) = wait_for_partitions(&consumer, &plan.topic, &ctx, &label)
    else {
        return;
    };
    // Set before the first batch is sent: the worker sees it with every batch.
    read_everywhere.store(everywhere, Ordering::Relaxed);
    if partitions.is_empty() {
        log::info!(
            "{label}: no partition for worker {} of {}",
            ctx.worker,
            ctx.peers
        );
        return;
    }
    let start = starting_offsets(&consumer, &plan, &partitions, &label);
    if let Err(e) = consumer.assign(&start) {
        log::error!("{label}: cannot assign partitions {partitions:?}: {e}");
        return;
    }
    if plan.resume.is_empty() {
        let offsets: BTreeMap<i32, i64> = start
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(offset) => Some((e.partition(), offset)),
                _ => None,
            })
            .collect();
        log::info!(
            "{label}: reading partitions {partitions:?} (start: {:?}{}, group {:?})",
            plan.start_offset,
            if offsets.is_empty() {
                String::new()
            } else {
                format!(" at {offsets:?}")
            },
            plan.group_id
        );
    } else {
        log::info!(
            "{label}: reading partitions {partitions:?} from the snapshot's offsets {:?} \
             (others: {:?}, group {:?})",
            plan.resume,
            plan.start_offset,
            plan.group_id
        );
    }
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    let mut batch = Vec::with_capacity(ctx.batch_size);
    // The first batches are small, then double up to the batch size (as the
    // file source's): the first records reach the worker, and their outputs
    // the sink, at once rather than after a whole batch was read and
    // processed.
    let mut limit = 1;
    let mut errors = Throttle::default();
    let mut gaps = Throttle::default();
    let mut last_commit = Instant::now();
    while !ctx.finished() {
        // The first record of a batch is waited for; the rest of it is what
        // is already fetched, up to the batch's size.
        let (timeout, want) = if batch.is_empty() {
            (POLL, 1)
        } else {
            (Duration::ZERO, limit - batch.len())
        };
        let read = reader.read(timeout, want, |partition, offset, payload| {
            if let Some(&expected) = next.get(&partition) {
                if offset > expected && gaps.ready() {
                    log::warn!(
                        "{label}: partition {partition}: offsets {expected}..{} were not \
                         delivered (retention, compaction or transaction markers)",
                        offset - 1
                    );
                }
            }
            next.insert(partition, offset + 1);
            batch.push(Frame {
                payload: payload.to_vec(),
                pos: Pos {
                    stream: u32::try_from(partition).unwrap_or_default(),
                    index: u64::try_from(offset).unwrap_or_default(),
                    offset: u64::try_from(offset).unwrap_or_default(),
                },
                read_ns: 0,
            });
        });
        match read {
            Read::Full if batch.len() < limit => continue,
            Read::Full | Read::Drained => {}
            Read::Error(e) => {
                if errors.ready() {
                    log::warn!("{label}: {e} (librdkafka retries on its own)");
                }
            }
        }
        if !batch.is_empty() {
            limit = (limit * 2).min(ctx.batch_size.max(1));
        }
        if !send_batch(&tx, std::mem::take(&mut batch), &ctx) {
            return;
        }
        if last_commit.elapsed() >= COMMIT_EVERY {
            if plan.commit {
                if let Err(e) = commit(&consumer, &plan.topic, &next, CommitMode::Async) {
                    log::debug!("{label}: offset commit failed: {e}");
                }
            }
            report_lag(&consumer, &plan.topic, &partitions, &next, &ctx);
            last_commit = Instant::now();
        }
    }
    drop(reader);
    send_batch(&tx, batch, &ctx);
    if plan.commit {
        commit_at_end(&consumer, &plan.topic, &next, &label);
    }
    log::info!("{label}: stopped at {next:?} (next offset per partition)");
}

/// Where a Kafka source stood: the next offset to read per partition.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KafkaPosition {
    /// Records this worker's source handed to the dataflow, since the lineage began.
    pub sent: u64,
    /// Per partition, the offset of the next record to read.
    #[serde(default, deserialize_with = "partition_keys")]
    pub partitions: BTreeMap<i32, i64>,
}

/// Partition numbers from JSON object keys (strings), parsed by hand:
/// serde cannot parse a number out of a key of a position read as one of
/// several kinds (a tagged enum).
fn partition_keys<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<i32, i64>, D::Error> {
    use serde::de::Error as _;
    use serde::Deserialize as _;
    BTreeMap::<String, i64>::deserialize(deserializer)?
        .into_iter()
        .map(|(partition, next)| {
            let number = partition
                .parse()
                .map_err(|_| D::Error::custom(format!("partition {partition:?}")))?;
            Ok((number, next))
        })
        .collect()
}

impl KafkaPosition {
    /// Note the records of a batch handed to the dataflow.
    pub fn advance(&mut self, frames: &[Frame]) {
        self.sent += frames.len() as u64;
        for frame in frames {
            let next = i64::try_from(frame.pos.offset).unwrap_or(i64::MAX) + 1;
            let partition = i32::try_from(frame.pos.stream).unwrap_or(i32::MAX);
            self.partitions.insert(partition, next);
        }
    }

    /// Unite two workers' partitions (the furthest offset of each); the
    /// record count is this worker's own.
    pub fn merge(&mut self, other: &KafkaPosition, mine: bool) {
        for (&partition, &next) in &other.partitions {
            let slot = self.partitions.entry(partition).or_insert(next);
            *slot = (*slot).max(next);
        }
        if mine {
            self.sent = other.sent;
        }
    }

    /// Make `plan` read as a crash-recovering run does: from these offsets
    /// (overriding its start offset for the partitions they name), without
    /// committing to the group (the snapshots hold the offsets).
    pub fn resume(&self, plan: &mut KafkaSourcePlan) {
        plan.resume = self.partitions.clone();
        plan.commit = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::ClientSettings;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use rdkafka::ClientConfig;

    type Mock = MockCluster<'static, rdkafka::producer::DefaultProducerContext>;

    /// A mock cluster whose one-partition `topic` holds `r0`, `r1`, ...
    /// (`records` of them), and the plan of a source reading it from the
    /// start in group `topic`.
    fn mock_topic(topic: &str, records: usize, commit: bool) -> (Mock, KafkaSourcePlan) {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic(topic, 1, 1).unwrap();
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .create()
            .unwrap();
        for i in 0..records {
            let value = format!("r{i}");
            producer
                .send(BaseRecord::<(), _>::to(topic).payload(&value))
                .unwrap();
        }
        producer.flush(Duration::from_secs(10)).unwrap();
        let plan = KafkaSourcePlan {
            topic: topic.to_owned(),
            settings: ClientSettings {
                bootstrap: cluster.bootstrap_servers(),
                log_level: "Error".into(),
                extra: vec![],
            },
            group_id: topic.to_owned(),
            start_offset: StartOffset::Earliest,
            create_partitions: None,
            resume: BTreeMap::new(),
            commit,
        };
        (cluster, plan)
    }

    #[test]
    fn first_batches_are_small_then_double_up_to_the_batch_size() {
        let (_cluster, plan) = mock_topic("ramp", 3000, false);
        let handle = start(plan, SourceContext::for_test(Some(3000))).unwrap();
        let batches: Vec<Vec<Frame>> = handle.rx.iter().collect();
        let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
        assert_eq!(sizes.first(), Some(&1), "the first record alone: {sizes:?}");
        for (i, size) in sizes.iter().enumerate() {
            let limit = 1usize
                .checked_shl(u32::try_from(i).unwrap())
                .unwrap_or(usize::MAX);
            assert!(*size <= limit.min(1000), "batch {i} of {sizes:?}");
        }
        let read: Vec<Vec<u8>> = batches.into_iter().flatten().map(|f| f.payload).collect();
        let want: Vec<Vec<u8>> = (0..3000).map(|i| format!("r{i}").into_bytes()).collect();
        assert_eq!(read, want);
    }

    #[test]
    fn the_end_commit_is_tried_again_until_the_coordinator_takes_it() {
        use rdkafka::consumer::BaseConsumer;
        use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

        let (cluster, plan) = mock_topic("ends", 50, true);
        // The coordinator refuses the next commits (a broker that just came
        // back is loading the group's offsets).
        cluster.request_errors(
            RDKafkaApiKey::OffsetCommit,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS; 4],
        );
        let handle = start(plan, SourceContext::for_test(Some(50))).unwrap();
        assert_eq!(handle.rx.iter().map(|b| b.len()).sum::<usize>(), 50);
        for thread in handle.threads {
            thread.join().unwrap();
        }
        let reader: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("group.id", "ends")
            .create()
            .unwrap();
        let mut list = TopicPartitionList::new();
        list.add_partition("ends", 0);
        let committed = reader
            .committed_offsets(list, Duration::from_secs(10))
            .unwrap();
        let offset = committed.find_partition("ends", 0).map(|p| p.offset());
        assert_eq!(offset, Some(Offset::Offset(50)));
    }
}
