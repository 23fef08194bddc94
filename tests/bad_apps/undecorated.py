"""A step, a decoder or an encoder given as a plain function (its decorator
forgotten): ``--forget step|decoder|encoder|partition``."""

import argparse

import wallaroo


def plain(data):
    return data


decode = wallaroo.decoder(header_length=4, length_fmt=">I")(plain)
encode = wallaroo.encoder(plain)
step = wallaroo.computation(name="step")(plain)
state_step = wallaroo.state_computation(name="state step")(lambda data, state: (data, True))
partition = wallaroo.partition(plain)


def application_setup(args):
    parser = argparse.ArgumentParser()
    parser.add_argument("--forget", required=True)
    forget = parser.parse_known_args(args)[0].forget
    pipeline = wallaroo.ApplicationBuilder("undecorated").new_pipeline(
        "p",
        wallaroo.FileSourceConfig("does-not-matter.txt", plain if forget == "decoder" else decode),
    )
    pipeline = pipeline.to(plain if forget == "step" else step)
    pipeline = pipeline.to_state_partition(
        state_step, dict, "states", plain if forget == "partition" else partition
    )
    sink = wallaroo.StdoutSinkConfig(plain if forget == "encoder" else encode)
    return pipeline.to_sink(sink).build()
