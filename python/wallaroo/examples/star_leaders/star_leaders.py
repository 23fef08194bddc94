"""GitHub star leaders: which repositories got the most stars in the last
24 hours, per partition, published on every change.

Reads GitHub Archive events (JSON) from Kafka (or a file with --input),
keeps watch / fork / pull-request events, counts stars per repository in 10
state partitions (consistent hashing of the repository name) and writes each
partition's new top 10 to Kafka (or a file with --output).

Run it: ``python -m wallaroo star_leaders`` (embedded Kafka, generated events,
live dashboard), or with a real Kafka:
``python -m wallaroo star_leaders --kafka_source_brokers HOST:9092
--kafka_sink_brokers HOST:9092 --kafka_source_topic gharchive
--kafka_sink_topic leaderboard``.
"""

import argparse

import simplejson as json

import wallaroo
from repo_metadata import RepoMetadata
from repo_partitioner import RepoPartitioner

INTERESTING = ("WatchEvent", "ForkEvent", "PullRequestEvent")
PARTITIONER = RepoPartitioner(10)


def application_setup(args):
    files = argparse.ArgumentParser(add_help=False)
    files.add_argument("--input", help="read events from this file instead of Kafka")
    files.add_argument("--output", help="write leaderboards to this file instead of Kafka")
    paths = files.parse_known_args(args)[0]

    if paths.input:
        source = wallaroo.FileSourceConfig(paths.input, decoder)
    else:
        in_topic, in_brokers, in_log_level = wallaroo.kafka_parse_source_options(args)
        source = wallaroo.KafkaSourceConfig(in_topic, in_brokers, in_log_level, decoder)
    if paths.output:
        sink = wallaroo.FileSinkConfig(paths.output, line_encoder)
    else:
        (out_topic, out_brokers, out_log_level, out_max_produce_buffer_ms,
         out_max_message_size) = wallaroo.kafka_parse_sink_options(args)
        sink = wallaroo.KafkaSinkConfig(out_topic, out_brokers, out_log_level,
                                        out_max_produce_buffer_ms,
                                        out_max_message_size, encoder)

    ab = wallaroo.ApplicationBuilder("GitHub Star Leaders")
    ab.new_pipeline("star leaders", source)
    ab.to(filter_interesting_events)
    ab.to_state_partition(annotate_repos, RepoMetadata, "repo_metadata",
                          PARTITIONER, PARTITIONER.partitions)
    ab.to_sink(sink)
    return ab.build()


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decoder(bs):
    return json.loads(bs)


@wallaroo.computation(name="filter interesting events")
def filter_interesting_events(event):
    if event.get("type") in INTERESTING:
        return event
    return None


@wallaroo.state_computation(name="annotate repos")
def annotate_repos(event, state):
    leaders = state.update(event)
    if leaders is None:
        return (None, True)
    return ({"leaders": leaders, "partition": PARTITIONER.partition(event)}, True)


@wallaroo.encoder
def encoder(data):
    return json.dumps(data)


@wallaroo.encoder
def line_encoder(data):
    return json.dumps(data, sort_keys=True) + "\n"
