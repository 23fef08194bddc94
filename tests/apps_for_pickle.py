"""Module-level decorated objects for the pickle round-trip tests in test_api.py.

Pickle finds decorated objects by module and name, so they must live at module
level in an importable module rather than inside a test function.
"""

import struct

import wallaroo


@wallaroo.computation(name="double")
def double(data):
    return data * 2


@wallaroo.computation_multi(name="split words")
def split_words(data):
    return data.split()


@wallaroo.state_computation(name="add to total")
def add_to_total(data, state):
    state.append(data)
    return sum(state), True


@wallaroo.state_computation_multi(name="add and echo")
def add_and_echo(data, state):
    state.append(data)
    return [data, sum(state)], True


@wallaroo.partition
def first_letter(data):
    return data[0]


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode_utf8(data):
    return data.decode("utf-8")


@wallaroo.decoder(header_length=8, length_fmt="<Q")
def decode_reversed(data):
    return data[::-1]


@wallaroo.encoder
def encode_framed(data):
    payload = data.encode("utf-8")
    return struct.pack(">I", len(payload)) + payload


class Holder:
    """A decorated object reached through a class attribute (dotted qualname)."""

    @wallaroo.computation(name="nested")
    def nested(data):
        return data + 1


def triple(data):
    return data * 3


def passthrough(data):
    return data


# Decorated objects stored under another name than their function's: these
# pickle by value (the wrapped function by reference) instead of by name.
TRIPLE = wallaroo.computation(name="triple")(triple)
UNBOUND_DECODER = wallaroo.decoder(header_length=2, length_fmt=">H")(passthrough)
