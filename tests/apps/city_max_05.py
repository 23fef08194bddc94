"""The hottest reading so far per city, between two connectors (Wallaroo 0.5
connector style: ``source_connector``/``sink_connector`` and connector names
in place of source and sink configs).

    python -m wallaroo city_max_05.py --feed-port P --report-port Q

A connector script writes readings ``city:celsius`` (0.5 frames) into
``readings``; for each, the app sends ``city max M`` (M the city's highest
reading so far, one decimal) to the connector script listening for ``maxima``.
Cities are partition keys made on first use (no key list).
"""

import argparse

import wallaroo
import wallaroo.experimental


def application_setup(args):
    parser = argparse.ArgumentParser("city max 0.5")
    parser.add_argument("--feed-port", type=int, default=None)
    parser.add_argument("--report-port", type=int, default=None)
    opts, _ = parser.parse_known_args(args)

    ab = wallaroo.ApplicationBuilder("City maxima")
    ab.source_connector("readings", encoder=encode_reading, decoder=decode_reading,
                        port=opts.feed_port)
    ab.sink_connector("maxima", encoder=encode_report, decoder=decode_report,
                      port=opts.report_port)
    ab.new_pipeline("Maxima", "readings")
    ab.to(parse)
    ab.to_state_partition(keep_max, Hottest, "hottest", by_city)
    ab.to_sink("maxima")
    return ab.build()


class Hottest:
    def __init__(self):
        self.celsius = None


@wallaroo.computation(name="parse reading")
def parse(text):
    city, celsius = text.split(":")
    return (city, float(celsius))


@wallaroo.partition
def by_city(reading):
    return reading[0]


@wallaroo.state_computation(name="keep max")
def keep_max(reading, hottest):
    city, celsius = reading
    if hottest.celsius is None or celsius > hottest.celsius:
        hottest.celsius = celsius
    return (f"{city} max {hottest.celsius:.1f}", True)


@wallaroo.experimental.stream_message_encoder
def encode_reading(text):
    return text.encode()


@wallaroo.experimental.stream_message_decoder
def decode_reading(data):
    return data.decode()


@wallaroo.experimental.stream_message_encoder
def encode_report(text):
    return text.encode()


@wallaroo.experimental.stream_message_decoder
def decode_report(data):
    return data.decode()
