"""API keys: the key file's format, Bearer authentication, and that the plain key is never kept."""

from __future__ import annotations

import hashlib

import pytest

from serve.auth import ApiKeys, hash_key, load_key_hashes, main

KEY = "correct-horse-battery-staple"
OTHER = "another-key-entirely"


def write(tmp_path, text: str):
    path = tmp_path / "keys.txt"
    path.write_text(text)
    return path


def test_hash_key_is_the_lowercase_hex_sha256_of_the_utf8_bytes():
    assert hash_key(KEY) == hashlib.sha256(KEY.encode()).hexdigest()
    assert hash_key("clé") == hashlib.sha256("clé".encode()).hexdigest()


def test_key_file_comments_blank_lines_and_whitespace(tmp_path):
    text = f"# service keys\n\n   {hash_key(KEY)}   # alice\n\t\n{hash_key(OTHER)}\n# {hash_key('commented-out')}\n"
    assert load_key_hashes(write(tmp_path, text)) == {hash_key(KEY), hash_key(OTHER)}


def test_empty_key_file_loads_no_keys_and_fails_closed(tmp_path):
    keys = ApiKeys.from_file(write(tmp_path, "# nobody yet\n"))
    assert keys.enabled and len(keys) == 0
    assert keys.authenticate(f"Bearer {KEY}") is None


@pytest.mark.parametrize(
    "bad",
    [
        "correct-horse-battery-staple",  # a plain key pasted by mistake
        hash_key(KEY).upper(),  # the format is lowercase
        hash_key(KEY)[:-1],
        hash_key(KEY) + "0",
        f"{hash_key(KEY)} {hash_key(OTHER)}",
    ],
)
def test_bad_line_names_file_and_line_number_but_not_the_content(tmp_path, bad):
    path = write(tmp_path, f"# keys\n{hash_key(OTHER)}\n{bad}\n")
    with pytest.raises(ValueError) as info:
        load_key_hashes(path)
    message = str(info.value)
    assert "line 3" in message and str(path) in message
    assert bad not in message and bad.lower() not in message


def test_good_key_gets_its_label(tmp_path):
    keys = ApiKeys.from_file(write(tmp_path, f"{hash_key(OTHER)}\n{hash_key(KEY)}\n"))
    assert keys.enabled
    assert keys.authenticate(f"Bearer {KEY}") == hash_key(KEY)[:12]
    assert keys.authenticate(f"Bearer {OTHER}") == hash_key(OTHER)[:12]


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer wrong-key",
        f"Bearer {KEY}x",
        "Bearer",
        "Bearer   ",
        f"Basic {KEY}",
        f"Token {KEY}",
        KEY,
        f"Bearer{KEY}",
    ],
)
def test_anything_but_a_bearer_header_with_a_stored_key_is_refused(header):
    keys = ApiKeys([hash_key(KEY)])
    assert keys.authenticate(header) is None


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer", "bEaReR"])
def test_scheme_is_case_insensitive_and_whitespace_is_tolerated(scheme):
    keys = ApiKeys([hash_key(KEY)])
    assert keys.authenticate(f"{scheme} {KEY}") == hash_key(KEY)[:12]
    assert keys.authenticate(f"  {scheme}\t {KEY}  ") == hash_key(KEY)[:12]


def test_disabled_keys_accept_nothing():
    keys = ApiKeys.disabled()
    assert not keys.enabled
    assert keys.authenticate(f"Bearer {KEY}") is None


def test_constructor_rejects_malformed_hashes():
    with pytest.raises(ValueError):
        ApiKeys([KEY])
    with pytest.raises(ValueError):
        ApiKeys([hash_key(KEY).upper()])


def test_plain_key_is_kept_nowhere_in_the_object(tmp_path):
    keys = ApiKeys.from_file(write(tmp_path, f"{hash_key(KEY)}\n"))
    assert keys.authenticate(f"Bearer {KEY}") is not None
    label = keys.authenticate(f"Bearer {KEY}")
    assert KEY not in label
    assert KEY not in repr(keys) and KEY not in str(keys)
    for value in vars(keys).values():
        assert KEY not in repr(value)
    assert hash_key(KEY) not in repr(keys)  # the repr does not list even the hashes


def test_new_key_prints_a_key_and_its_hash_line(capsys, tmp_path):
    assert main(["new-key"]) == 0
    out, err = capsys.readouterr()
    key, line = out.strip(), err.strip()
    assert len(key) >= 40 and line == hash_key(key)
    keys = ApiKeys.from_file(write(tmp_path, err))
    assert keys.authenticate(f"Bearer {key}") == line[:12]
    assert main(["new-key"]) == 0
    assert capsys.readouterr().out.strip() != key


def test_hash_command_reads_the_key_from_stdin(capsys, monkeypatch):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO(KEY + "\n"))
    assert main(["hash"]) == 0
    assert capsys.readouterr().out.strip() == hash_key(KEY)
    assert main(["bogus"]) == 2


def test_every_stored_hash_is_compared_in_constant_time_even_after_a_match(monkeypatch):
    import hmac
    from types import SimpleNamespace

    import serve.auth

    calls = []

    def counting_compare(a, b):
        calls.append((a, b))
        return hmac.compare_digest(a, b)

    monkeypatch.setattr(serve.auth, "hmac", SimpleNamespace(compare_digest=counting_compare))
    stored = sorted(hash_key(k) for k in (KEY, OTHER, "third"))
    keys = ApiKeys(stored)
    first = next(k for k in (KEY, OTHER, "third") if hash_key(k) == stored[0])
    assert keys.authenticate(f"Bearer {first}") == stored[0][:12]
    assert [a for a, _ in calls] == stored
