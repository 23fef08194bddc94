import wallaroo
print "Python 2 so far"

def application_setup(args)
    return wallaroo.ApplicationBuilder("broken").build()
