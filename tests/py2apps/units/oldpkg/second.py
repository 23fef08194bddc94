from StringIO import StringIO

OUT = StringIO()
NAME = "second"
assert OUT <> None
