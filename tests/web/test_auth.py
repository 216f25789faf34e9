"""Console users and settings: passwords hashed and checked, a users file that says which
line is wrong, a console that is closed unless configured otherwise."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from dicom_node.config import ConfigError, load_config
from dicom_node.web.auth import Users, UsersFileError, add_user, hash_password, verify_password


def test_a_password_is_stored_salted_and_only_the_right_one_is_accepted(tmp_path: Path) -> None:
    first, second = hash_password("correct horse"), hash_password("correct horse")
    assert first != second and "correct horse" not in first  # salted, never stored as is
    assert verify_password("correct horse", first) and not verify_password("correct hors", first)
    assert not verify_password("correct horse", "md5$abc")

    path = tmp_path / "web-users"
    assert add_user(path, "oncall", "night shift 0300") is True
    assert add_user(path, "oncall", "day shift 0900") is False  # a new password for the same user
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    users = Users(path)
    assert users.check("oncall", "day shift 0900") and not users.check("oncall", "night shift 0300")
    assert not users.check("nobody", "day shift 0900")
    with pytest.raises(UsersFileError, match="at least 8"):
        add_user(path, "short", "1234567")
    with pytest.raises(UsersFileError, match="user name"):
        add_user(path, "a b", "long enough")


def test_a_users_file_line_that_is_not_a_hash_is_named(tmp_path: Path) -> None:
    path = tmp_path / "web-users"
    path.write_text("# users\noncall:plaintext-password\n")
    with pytest.raises(UsersFileError, match="line 2"):
        Users(path).names()


def test_the_console_is_loopback_only_unless_configured(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text('[web]\nhost = "0.0.0.0"\n')
    with pytest.raises(ConfigError, match="web.host: '0.0.0.0' is not a loopback address"):
        load_config(config)
    config.write_text('[web]\nhost = "0.0.0.0"\nallow_non_loopback = true\ncertificate = "/no/such.pem"\n'
                      'private_key = "/no/such.key"\n')
    with pytest.raises(ConfigError, match="web.certificate: file /no/such.pem does not exist"):
        load_config(config)
    config.write_text('[web]\ntrusted_user_header = "X Remote"\n')
    with pytest.raises(ConfigError, match="web.trusted_user_header"):
        load_config(config)
    assert load_config(None, environ={}).web.host == "127.0.0.1"  # the default: loopback
