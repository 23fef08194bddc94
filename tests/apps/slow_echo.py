"""Echo TCP input to standard output, slowly: each record sleeps in the
decoder (``--slow-decoder``) or in the step (``--slow-step``).

    python -m wallaroo slow_echo.py --in 127.0.0.1:7010 --slow-step 0.002

Used to send SIGTERM while Python code of the application is running.
"""

import argparse
import time

import wallaroo

DELAYS = {"decoder": 0.0, "step": 0.0}


def application_setup(args):
    parser = argparse.ArgumentParser("slow echo")
    parser.add_argument("--slow-decoder", type=float, default=0.0)
    parser.add_argument("--slow-step", type=float, default=0.0)
    opts, _ = parser.parse_known_args(args)
    DELAYS["decoder"] = opts.slow_decoder
    DELAYS["step"] = opts.slow_step
    in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]

    ab = wallaroo.ApplicationBuilder("Slow Echo")
    ab.new_pipeline("slow echo", wallaroo.TCPSourceConfig(in_host, in_port, decoder))
    ab.to(slow_step)
    ab.to_sink(wallaroo.StdoutSinkConfig(encoder))
    return ab.build()


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decoder(bs):
    if DELAYS["decoder"]:
        time.sleep(DELAYS["decoder"])
    return bs.decode("utf-8")


@wallaroo.computation(name="slow step")
def slow_step(data):
    if DELAYS["step"]:
        time.sleep(DELAYS["step"])
    return data


@wallaroo.encoder
def encoder(data):
    return data + "\n"
