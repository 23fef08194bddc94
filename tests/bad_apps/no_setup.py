"""An application module that forgot application_setup."""

import wallaroo

APP_NAME = wallaroo.ApplicationBuilder("nothing")
