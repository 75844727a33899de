"""
`mailhub-admin dkim make|show --domain D` takes the hub's own rule for a
domain name: a name with a slash or `..` is refused, never a folder outside
DATA/dkim (`../../etc` wrote four key files into ./etc).
"""

from __future__ import annotations

import os

import pytest

from tests.test_admin import mailhub_admin
from twisted_mailhub.mailauth import keys


def test_dkim_make_refuses_a_domain_that_names_a_folder_elsewhere(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    result = mailhub_admin("dkim", "make", "--data", "d", "--domain", "../../escape", "--domain", "x/../../y.org", "--domain", "example.org", cwd=str(work))
    assert result.returncode == 1
    assert "; ../../escape: not a domain name (want e.g. example.org)" in result.stderr
    assert "; x/../../y.org: not a domain name" in result.stderr
    assert "_domainkey.example.org." in result.stdout  # the good one is made
    assert sorted(os.listdir(tmp_path)) == ["work"]
    assert sorted(os.listdir(work)) == ["d"] and os.listdir(work / "d" / "dkim") == ["example.org"]


def test_the_key_folder_of_a_name_that_is_not_a_domain_is_refused():
    with pytest.raises(ValueError):
        keys.domain_dir("/data", "../../etc")
    assert keys.domain_dir("/data", "Example.ORG") == os.path.join("/data", "dkim", "example.org")
