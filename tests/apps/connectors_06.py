"""Upper-case text between a source connector and a sink connector
(Wallaroo 0.6 connector style).

    python -m wallaroo connectors_06.py --source-port P --sink-port Q

Connector scripts write frames (u32 LE length, i64 LE event time, payload) to
the source connector's port; the app connects to the sink connector's port
and writes the upper-cased text in the same frames.
"""

import argparse

import wallaroo
import wallaroo.experimental as ex


def application_setup(args):
    parser = argparse.ArgumentParser("connectors 0.6")
    parser.add_argument("--source-port", type=int, default=7100)
    parser.add_argument("--sink-port", type=int, default=7200)
    opts, _ = parser.parse_known_args(args)

    text = wallaroo.source(
        "Text", ex.SourceConnectorConfig("text_feed", encode, decode, opts.source_port)
    )
    sink = ex.SinkConnectorConfig("upper_out", encode, decode, opts.sink_port)
    return wallaroo.build_application("Connectors", text.to(upper).to_sink(sink))


@ex.stream_message_decoder
def decode(payload):
    return payload.decode("utf-8")


@ex.stream_message_encoder
def encode(text):
    return text.encode("utf-8")


@wallaroo.computation(name="upper")
def upper(text):
    return text.upper()
