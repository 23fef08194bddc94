"""application_setup builds the application but forgets to return it."""

import wallaroo


def application_setup(args):
    wallaroo.ApplicationBuilder("forgot return").new_pipeline(
        "p", wallaroo.FileSourceConfig("in.txt", None)
    ).build()
