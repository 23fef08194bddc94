//! What the Kafka source and sink share: client configuration (with the
//! user's librdkafka settings passed through untouched), topic checks, and
//! the embedded broker used when an application names no broker.

use std::sync::Mutex;
use std::time::Duration;

use pyo3::prelude::*;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::KafkaError;
use rdkafka::message::DeliveryResult;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::producer::{BaseProducer, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;

use crate::errors::Error;
use crate::sync::lock;

/// How long start-up waits for broker metadata before going on without it.
pub const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

/// One client's connection settings, from the plan
/// (`wallaroo.contract.KafkaClient`).
#[derive(Debug, Clone, FromPyObject)]
#[pyo3(from_item_all)]
pub struct ClientSettings {
    /// `host:port,...`.
    pub bootstrap: String,
    /// 0.4.2 log level: Fine, Info, Warn, Error.
    pub log_level: String,
    /// librdkafka settings from the command line, applied last.
    #[pyo3(item("config"))]
    pub extra: Vec<(String, String)>,
}

impl ClientSettings {
    /// A librdkafka configuration: the engine's defaults, then the user's settings.
    pub fn config(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap);
        // Back after an outage within a second (librdkafka's default waits up to 10 s).
        config.set("reconnect.backoff.max.ms", "1000");
        if self.log_level == "Fine" {
            // librdkafka writes debug lines only for the contexts named here.
            config.set("debug", "generic,broker,topic,msg,consumer,cgrp");
        }
        for (key, value) in defaults {
            config.set(*key, *value);
        }
        for (key, value) in &self.extra {
            config.set(key, value);
        }
        config.set_log_level(log_level(&self.log_level));
        config
    }
}

/// 0.4.2's log levels as librdkafka's.
pub fn log_level(level: &str) -> RDKafkaLogLevel {
    match level {
        "Fine" => RDKafkaLogLevel::Debug,
        "Info" => RDKafkaLogLevel::Info,
        "Error" => RDKafkaLogLevel::Error,
        _ => RDKafkaLogLevel::Warning,
    }
}

/// Remembers the first error librdkafka reports that retrying cannot cure:
/// credentials the brokers refuse (SASL) or a TLS handshake that fails.
#[derive(Default)]
struct StartupErrors {
    refused: Mutex<Option<String>>,
}

impl ClientContext for StartupErrors {
    fn error(&self, error: KafkaError, reason: &str) {
        let lasting = matches!(
            error.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::Authentication
                    | RDKafkaErrorCode::SaslAuthenticationFailed
                    | RDKafkaErrorCode::SSL
            )
        );
        if lasting {
            let mut refused = lock(&self.refused);
            refused.get_or_insert_with(|| reason.to_string());
        }
    }
}

impl ProducerContext for StartupErrors {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &DeliveryResult<'_>, _: ()) {}
}

/// The SASL mechanism and security protocol of `settings`, for messages.
fn security(settings: &ClientSettings) -> String {
    let get = |key: &str| {
        settings
            .extra
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    let protocol = get("security.protocol").unwrap_or("plaintext");
    match get("sasl.mechanism").or(get("sasl.mechanisms")) {
        Some(mechanism) if protocol.to_ascii_lowercase().starts_with("sasl") => {
            format!("security.protocol {protocol}, SASL mechanism {mechanism}")
        }
        _ => format!("security.protocol {protocol}"),
    }
}

/// Check at start-up that `topic` exists; create it when asked. A broker that
/// does not answer yet is not an error (the clients keep retrying), a missing
/// topic is, and so are refused credentials or a failed TLS handshake (no
/// retry cures them: the run stops at once instead of waiting forever).
pub fn check_topic(
    settings: &ClientSettings,
    topic: &str,
    create_partitions: Option<i32>,
    what: &str,
) -> Result<(), Error> {
    // A producer: its poll hands the client's error events to the context.
    let client: BaseProducer<StartupErrors> = settings
        .config(&[("allow.auto.create.topics", "false")])
        .create_with_context(StartupErrors::default())
        .map_err(|e| Error::Config(format!("{what}: cannot create a Kafka client: {e}")))?;
    let metadata = match client
        .client()
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
    {
        Ok(metadata) => metadata,
        Err(e) => {
            // The client's error events say why it got no answer (one
            // event per poll; its log lines come through the same queue).
            let refused = (0..200).find_map(|_| {
                client.poll(Duration::ZERO);
                lock(&client.context().refused).take()
            });
            if let Some(reason) = refused {
                return Err(Error::Config(format!(
                    "{what}: Kafka brokers {} refused the connection ({}): {reason}",
                    settings.bootstrap,
                    security(settings)
                )));
            }
            log::warn!(
                "{what}: Kafka brokers {} do not answer yet ({e}); will keep trying",
                settings.bootstrap
            );
            return Ok(());
        }
    };
    let missing = metadata.topics().iter().all(|t| {
        t.name() != topic
            || t.partitions().is_empty()
            || t.error()
                .map(|e| RDKafkaErrorCode::from(e) == RDKafkaErrorCode::UnknownTopicOrPartition)
                .unwrap_or(false)
    });
    if !missing {
        return Ok(());
    }
    let Some(partitions) = create_partitions else {
        return Err(Error::Config(format!(
            "{what}: Kafka topic {topic:?} does not exist on {} (create it, or run with \
             --kafka-create-topics)",
            settings.bootstrap
        )));
    };
    create_topic(settings, topic, partitions)
        .map_err(|e| Error::Config(format!("{what}: cannot create Kafka topic {topic:?}: {e}")))?;
    log::info!("{what}: created Kafka topic {topic:?} with {partitions} partitions");
    Ok(())
}

fn create_topic(settings: &ClientSettings, topic: &str, partitions: i32) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = settings.config(&[]).create()?;
    let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = futures_executor::block_on(admin.create_topics([&new_topic], &options))?;
    for result in results {
        if let Err((_, code)) = result {
            if code != RDKafkaErrorCode::TopicAlreadyExists {
                return Err(KafkaError::AdminOp(code));
            }
        }
    }
    Ok(())
}

/// A Kafka-protocol broker inside this process (librdkafka's mock cluster),
/// used when the application names no broker. It listens on a loopback port
/// that other local programs can use, and lives as long as this object.
/// It keeps about 5 MiB per partition: older messages are dropped.
#[pyclass(unsendable, module = "wallaroo._engine")]
pub struct EmbeddedKafka {
    cluster: MockCluster<'static, DefaultProducerContext>,
}

#[pymethods]
impl EmbeddedKafka {
    /// Start the broker.
    #[new]
    fn new() -> PyResult<EmbeddedKafka> {
        let cluster = MockCluster::new(1)
            .map_err(|e| Error::Config(format!("cannot start the embedded Kafka broker: {e}")))?;
        Ok(EmbeddedKafka { cluster })
    }

    /// The `host:port` clients connect to.
    #[getter]
    fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    /// Create `topic` with `partitions` partitions (no-op if it exists).
    #[pyo3(signature = (topic, partitions = 1))]
    fn create_topic(&self, topic: &str, partitions: i32) -> PyResult<()> {
        self.cluster
            .create_topic(topic, partitions, 1)
            .map_err(|e| Error::Config(format!("cannot create topic {topic:?}: {e}")).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_levels_map_to_librdkafka() {
        assert!(matches!(log_level("Fine"), RDKafkaLogLevel::Debug));
        assert!(matches!(log_level("Info"), RDKafkaLogLevel::Info));
        assert!(matches!(log_level("Warn"), RDKafkaLogLevel::Warning));
        assert!(matches!(log_level("Error"), RDKafkaLogLevel::Error));
    }

    #[test]
    fn user_settings_come_last() {
        let settings = ClientSettings {
            bootstrap: "b:1".into(),
            log_level: "Warn".into(),
            extra: vec![("linger.ms".into(), "7".into())],
        };
        let config = settings.config(&[("linger.ms", "0"), ("acks", "all")]);
        assert_eq!(config.get("linger.ms"), Some("7"));
        assert_eq!(config.get("acks"), Some("all"));
        assert_eq!(config.get("bootstrap.servers"), Some("b:1"));
    }

    #[test]
    fn missing_topic_is_an_error_and_created_topic_is_not() {
        let cluster = MockCluster::new(1).unwrap();
        let settings = ClientSettings {
            bootstrap: cluster.bootstrap_servers(),
            log_level: "Warn".into(),
            extra: vec![],
        };
        cluster.create_topic("present", 1, 1).unwrap();
        assert!(check_topic(&settings, "present", None, "test").is_ok());
        let err = check_topic(&settings, "absent", None, "test").unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }
}
