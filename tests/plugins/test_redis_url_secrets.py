"""No Redis sequence URL shows its password, whatever characters the password holds (encoded or not)."""

from __future__ import annotations

import string

from hypothesis import given, settings
from hypothesis import strategies as st

import hvcore
from hvplugin_redis._url import parse_url, redact

# a password the rest of the URL cannot contain by chance: a marker, then anything a user may type, '/', '?', '#',
# '@', ':', '%' and spaces included
PASSWORDS = st.text(alphabet=string.ascii_letters + string.digits + "/?#@:%&=+ !$", min_size=1, max_size=20).map(
    lambda text: f"Zq9{text}"
)


@settings(max_examples=300, deadline=None)
@given(password=PASSWORDS, user=st.sampled_from(["", "app"]), tail=st.sampled_from(["/0", "", "/0?key_prefix=x"]))
def test_no_redis_url_error_or_name_shows_its_password(password: str, user: str, tail: str) -> None:
    url = f"redis://{user}:{password}@127.0.0.1:6379{tail}"
    assert password not in redact(url)
    try:
        parsed = parse_url(url)
    except hvcore.ConfigError as exc:
        assert password not in str(exc), str(exc)
        return
    assert password not in parsed.name
    try:
        generator = hvcore.KeyGenerator(sequence=url)
    except hvcore.ConfigError as exc:
        assert password not in str(exc), str(exc)
        return
    try:
        assert password not in repr(generator)
    finally:
        generator.close()


def test_an_unencoded_slash_in_the_password_says_to_percent_encode_it() -> None:
    try:
        parse_url("redis://app:S3cret/x@127.0.0.1:6379/0")
    except hvcore.ConfigError as exc:
        text = str(exc)
        assert "percent-encoded" in text and "S3cret" not in text and "redis://***@127.0.0.1:6379/0" in text, text
    else:
        raise AssertionError("accepted")


def test_a_url_without_user_info_is_shown_as_written() -> None:
    assert redact("redis://127.0.0.1:6379/0?key_prefix=a") == "redis://127.0.0.1:6379/0?key_prefix=a"
    assert redact("redis://app:pw@127.0.0.1:6379/0?key_prefix=a") == "redis://***@127.0.0.1:6379/0?key_prefix=a"


def test_an_at_sign_outside_the_user_info_is_a_valid_url_shown_as_written() -> None:
    """Only a password the parser cut short is masked and refused: an ``@`` in a query option or a unix socket's file
    name is part of a valid URL (the first version of the masking refused ``?client_name=a@b``)."""
    for url in ("redis://127.0.0.1:6379/0?client_name=a@b", "unix:///tmp/redis@1.sock?db=2"):
        parsed = parse_url(url)
        assert redact(url) == url and "***" not in parsed.name, (url, parsed.name)
