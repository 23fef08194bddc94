"""0.6 key extractors: an int key becomes chr(key) as in 0.6; an int chr cannot
take (a large user id, say) fails with a message naming the extractor and the
fix, not a bare ``chr() arg not in range``."""

from __future__ import annotations

import pytest
import wallaroo


@wallaroo.key_extractor
def user_id(record):
    return record["id"]


@pytest.mark.parametrize("key_of", [user_id.extract_key, user_id.key_function()])
def test_an_int_key_is_chr_of_it(key_of):
    assert key_of({"id": 65}) == "A"
    assert key_of({"id": 0x10FFFF}) == chr(0x10FFFF)


@pytest.mark.parametrize("key_of", [user_id.extract_key, user_id.key_function()])
@pytest.mark.parametrize("big", [1_115_000, -1, 10**30])
def test_an_int_key_chr_cannot_take_names_the_extractor(key_of, big):
    with pytest.raises(ValueError) as err:
        key_of({"id": big})
    message = str(err.value)
    assert f"key_extractor user_id returned the int {big}" in message
    assert "chr(key)" in message and "return str(" in message
