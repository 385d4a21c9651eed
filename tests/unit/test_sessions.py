"""The web page's session cookies: issued for a key, honoured for that key alone and
for SESSION_SECONDS, and never holding the key."""

from __future__ import annotations

import time

from app.api.access import SESSION_SECONDS, _session_key, session_token

KEYS = frozenset({"first-key", "second-key"})


def test_a_session_names_the_key_it_was_issued_for() -> None:
    now = int(time.time())
    token = session_token("second-key", now)
    assert _session_key(token, KEYS) == "second-key"
    assert "second-key" not in token
    assert session_token("second-key", now - 1) != token  # each login its own


def test_a_session_ends_with_its_key_or_its_time() -> None:
    now = int(time.time())
    assert _session_key(session_token("gone-key", now), KEYS) is None
    assert _session_key(session_token("first-key", now - SESSION_SECONDS - 5), KEYS) is None
    assert _session_key(session_token("first-key", now + 3600), KEYS) is None  # not yet


def test_a_forged_or_garbled_session_is_refused() -> None:
    now = int(time.time())
    token = session_token("first-key", now)
    issued, mac = token.split(".")
    assert _session_key(f"{int(issued) - 10}.{mac}", KEYS) is None  # its time changed
    assert _session_key(f"{issued}.{'0' * len(mac)}", KEYS) is None
    for garbled in ("", ".", "abc", f"{issued}", f"-5.{mac}"):
        assert _session_key(garbled, KEYS) is None
