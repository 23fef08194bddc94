# Python 2: fissix adds an import line at the top (fix_reduce); tracebacks
# must still name the original lines.
def total(xs):
    return reduce(lambda a, b: a + b, xs)


def fail():
    print "about to fail"
    raise ValueError, "line 9"
