"""A step object with name() but neither compute() nor compute_multi()."""

import wallaroo


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode(data):
    return data


@wallaroo.encoder
def encode(data):
    return data


class NotAStep:
    def name(self):
        return "lazy step"


def application_setup(args):
    return (
        wallaroo.ApplicationBuilder("no compute")
        .new_pipeline("p", wallaroo.FileSourceConfig("does-not-matter.txt", decode))
        .to(NotAStep())
        .to_sink(wallaroo.StdoutSinkConfig(encode))
        .build()
    )
