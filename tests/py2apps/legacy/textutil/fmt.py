import case_helpers   # implicit relative import: textutil/case_helpers.py

VERSION = 0644


def shout(name):
    return case_helpers.upper(name) + ur"!"


if __name__ == "__main__":
    print shout("x")
