# Python 3 only syntax (fissix cannot parse it); used as it is, with the
# compat layer.


def describe(command):
    match command:
        case {"counts": counts}:
            return sorted(counts.iteritems())
        case _:
            return None
