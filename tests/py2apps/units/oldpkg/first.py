import second


def greet(name):
    print >>second.OUT, "hello", name
    return second.OUT.getvalue()
