"""Sibling module of dir_app.py, imported as a top-level module."""

PREFIX = "rev:"


def reverse(text):
    return text[::-1]
