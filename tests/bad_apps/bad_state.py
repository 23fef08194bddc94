"""A state computation returning a wrong shape (``--shape``), or a partition
function returning a list (``--shape list_key``)."""

import wallaroo


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode(data):
    return data


@wallaroo.encoder
def encode(data):
    return data + b"\n"


class Counter:
    def __init__(self):
        self.count = 0


SHAPES = {
    "good": lambda data: (data, True),
    "non_tuple": lambda data: data,
    "three_tuple": lambda data: (data, True, "extra"),
    "yes": lambda data: (data, "yes"),
    "list_key": lambda data: (data, True),
}


def _flag(args, name, default=None):
    return args[args.index(name) + 1] if name in args else default


@wallaroo.partition
def list_key(data):
    return [data]


def application_setup(args):
    shape = SHAPES[_flag(args, "--shape")]

    @wallaroo.state_computation(name="count it")
    def count_it(data, state):
        state.count += 1
        return shape(data)

    builder = wallaroo.ApplicationBuilder("bad state").new_pipeline(
        "p", wallaroo.FileSourceConfig(_flag(args, "--input"), decode)
    )
    if _flag(args, "--shape") == "list_key":
        builder = builder.to_state_partition(count_it, Counter, "counts", list_key, [])
    else:
        builder = builder.to_stateful(count_it, Counter, "counts")
    return builder.to_sink(wallaroo.FileSinkConfig(_flag(args, "--output"), encode)).build()
