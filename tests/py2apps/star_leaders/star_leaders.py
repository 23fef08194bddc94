# A user's own copy of the star leaders example, as a Wallaroo 0.4.2 user
# kept it next to primary.sh: Python 2, Kafka in and out, no file options.
# The tests run it from its own directory, where it shadows the bundled one.

import json

import wallaroo
from repo_metadata import RepoMetadata
from repo_partitioner import RepoPartitioner

INTERESTING = ("WatchEvent", "ForkEvent", "PullRequestEvent")
PARTITIONER = RepoPartitioner(10)


def application_setup(args):
    in_topic, in_brokers, in_log_level = wallaroo.kafka_parse_source_options(args)
    (out_topic, out_brokers, out_log_level, out_max_produce_buffer_ms,
     out_max_message_size) = wallaroo.kafka_parse_sink_options(args)
    print "star leaders: %s -> %s" % (in_topic, out_topic)

    ab = wallaroo.ApplicationBuilder("GitHub Star Leaders")
    ab.new_pipeline("star leaders",
                    wallaroo.KafkaSourceConfig(in_topic, in_brokers, in_log_level,
                                               decoder))
    ab.to(filter_interesting_events)
    ab.to_state_partition(annotate_repos, RepoMetadata, "repo_metadata",
                          PARTITIONER, PARTITIONER.partitions)
    ab.to_sink(wallaroo.KafkaSinkConfig(out_topic, out_brokers, out_log_level,
                                        out_max_produce_buffer_ms,
                                        out_max_message_size, encoder))
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
