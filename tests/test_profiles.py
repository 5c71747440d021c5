"""Machine profiles and the modeled clock."""
import re
import tomllib
from importlib import resources

import numpy as np
import pytest

import ccadgpu
from ccadgpu import errors as E
from ccadgpu import ops
from ccadgpu.clock import SECTOR, Clock, available_profiles, load_profile, parse_profile

BUILTIN = ("gh200", "h100-pcie", "capi-power8", "cxl-type2")
P = 16 << 10


def small(profile="gh200", **kw):
    return ccadgpu.Space(device_memory="4MiB", host_memory="16MiB", page_size=P,
                         profile=profile, **kw)


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_profiles_load(name):
    p = load_profile(name)
    assert p.name == name and p.description
    assert p.bandwidth.shape == (2, 2) and (p.bandwidth > 0).all()
    assert (p.latency >= 0).all() and p.link[0, 1] > 0 and p.link[1, 0] > 0
    assert p.device_capacity > 0 and p.per_page >= 0
    # the device's own memory is its fastest path, and the link is slower than local memory
    assert p.bandwidth[1, 1] == p.bandwidth.max()
    assert p.bandwidth[1, 0] < p.bandwidth[1, 1] and p.bandwidth[0, 1] < p.bandwidth[0, 0]


@pytest.mark.parametrize("name", BUILTIN)
def test_every_number_has_a_source_comment(name):
    """Each numeric setting is preceded, within its table, by a comment (its source)."""
    text = (resources.files("ccadgpu") / "profiles" / f"{name}.toml").read_text()
    commented = False
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("["):
            commented = False
        elif s.startswith("#"):
            commented = True
        elif re.match(r"^\w+\s*=\s*[0-9\"]", s) and s.split("=")[0].strip() not in (
                "name", "description"):
            assert commented or "#" in s, f"{name}: no source comment for {s!r}"


def test_capi_profile_has_the_threads_figures():
    p = load_profile("capi-power8")
    assert 16e9 <= p.bandwidth[1, 0] <= 32e9           # device reading host memory
    assert p.bandwidth[1, 1] == 500e9                  # device-local memory


def test_unknown_profile_lists_names():
    with pytest.raises(E.UnknownProfileError) as ei:
        small("no-such-machine")
    for n in BUILTIN:
        assert n in str(ei.value)
    with pytest.raises(E.UnknownProfileError):
        load_profile("/nonexistent/dir/x.toml")
    with pytest.raises(E.UnknownProfileError):
        load_profile(42)
    assert set(BUILTIN) <= set(available_profiles())


GOOD = """
name = "{name}"
description = "test machine"
[device]
capacity = "8GiB"
[bandwidth_gbps.cpu]
host = 100
device = 10
[bandwidth_gbps.device]
host = 20
device = 1000
[latency_ns.cpu]
host = 100
device = 1000
[latency_ns.device]
host = 1000
device = 400
[migration]
host_to_device_gbps = 25
device_to_host_gbps = 20
per_page_us = 3
"""


def test_user_profile_by_path_and_search_dir(tmp_path, monkeypatch):
    f = tmp_path / "mybox.toml"
    f.write_text(GOOD.format(name="mybox"))
    with small(str(f)) as sp:
        assert sp.profile.name == "mybox" and sp.profile.launch == 0.0
    monkeypatch.setenv("CCADGPU_PROFILE_PATH", str(tmp_path))
    assert "mybox" in available_profiles()
    with small("mybox") as sp:
        assert sp.profile.bandwidth[1, 1] == 1000e9


@pytest.mark.parametrize("edit,match", [
    (lambda t: t.replace("host = 100\ndevice = 10\n", "host = 100\n"), "device"),
    (lambda t: t.replace("device = 1000\n", "device = -1\n"), "must be >"),
    (lambda t: t.replace("per_page_us = 3", "per_page_us = \"fast\""), "number"),
    (lambda t: t.replace('capacity = "8GiB"', 'capacity = "lots"'), "capacity"),
    (lambda t: t.replace("[migration]", "[migration"), "TOML"),
    (lambda t: t.replace('name = "bad"', ""), "name"),
])
def test_malformed_profiles(tmp_path, edit, match):
    f = tmp_path / "bad.toml"
    f.write_text(edit(GOOD.format(name="bad")))
    with pytest.raises(E.ProfileError, match=match):
        load_profile(str(f))


def test_modeled_launch_time_follows_the_formula():
    with small() as sp:
        x = sp.asarray(np.arange(1.0, 8 * P // 8 + 1), placement="device")   # 8 device pages
        y = sp.asarray(np.arange(2.0, 8 * P // 8 + 2))                         # 8 host pages
        prof = sp.profile
        ops.sum(x)
        local = sp.device.last_launch.modeled_seconds
        exp = prof.launch + prof.latency[1, 1] + x.nbytes / prof.bandwidth[1, 1]
        assert local == pytest.approx(exp, rel=1e-12)
        ops.sum(y)
        remote = sp.device.last_launch.modeled_seconds
        exp = prof.launch + prof.latency[1, 0] + y.nbytes / prof.bandwidth[1, 0]
        assert remote == pytest.approx(exp, rel=1e-12)
        assert remote > local
        ops.copy(x, y)                            # reads host, writes device: both paths add up
        exp = prof.launch + prof.latency[1, 0] + prof.latency[1, 1] + \
            y.nbytes / prof.bandwidth[1, 0] + x.nbytes / prof.bandwidth[1, 1]
        assert sp.device.last_launch.modeled_seconds == pytest.approx(exp, rel=1e-12)
        # gathers pay a whole sector per 8-byte access
        idx = sp.asarray(np.zeros(1000, np.int64) + 3)
        out = sp.empty(1000, placement="device")
        ops.gather(out, y, idx)
        exp = prof.launch + prof.latency[1, 0] + prof.latency[1, 1] + \
            (idx.nbytes + 1000 * SECTOR) / prof.bandwidth[1, 0] + out.nbytes / prof.bandwidth[1, 1]
        assert sp.device.last_launch.modeled_seconds == pytest.approx(exp, rel=1e-12)


def test_modeled_time_grows_with_bytes_and_follows_the_profile():
    times = {}
    for name in BUILTIN:
        with small(name) as sp:
            row = []
            for n in (1_000, 10_000, 100_000):
                a = sp.asarray(np.arange(1.0, n + 1.0))
                b = sp.empty(n)
                ops.copy(b, a)
                row.append(sp.device.last_launch.modeled_seconds)
            assert row[0] < row[1] < row[2]
            times[name] = row[-1]
    # host-resident data streamed by the device: the link decides
    assert times["capi-power8"] > times["h100-pcie"] > times["gh200"]


def test_migration_modeled_seconds():
    with small("h100-pcie") as sp:
        a = sp.asarray(np.arange(1.0, 10 * P // 8 + 1))
        r = sp.move_pages(a, "device")
        p = sp.profile
        assert r.modeled_seconds == pytest.approx(10 * P / p.link[0, 1] + 10 * p.per_page)
        r2 = sp.move_pages(a, "host", pages=[0, 1, 2])
        assert r2.modeled_seconds == pytest.approx(3 * P / p.link[1, 0] + 3 * p.per_page)
        assert sp.move_pages(a, "host", pages=[0]).modeled_seconds == 0.0   # nothing moved
        assert sp.clock.by_kind["migration"] == pytest.approx(r.modeled_seconds
                                                              + r2.modeled_seconds)


def test_clock_accumulates():
    with small() as sp:
        a = sp.asarray(np.arange(1.0, 5_000.0))
        ops.sum(a)
        a * 2
        sp.move_pages(a, "device")
        c = sp.clock
        assert c.by_kind["kernel"] > 0 and c.by_kind["host"] > 0 and c.by_kind["migration"] > 0
        assert c.elapsed == pytest.approx(sum(c.by_kind.values()))
        assert c.wall > 0


def test_parse_profile_dict_and_clock_errors():
    doc = tomllib.loads(GOOD.format(name="d"))
    p = parse_profile(doc)
    c = Clock(p)
    assert c.migration_seconds(np.array([0, 0]), 1, 4096) == pytest.approx(
        2 * 4096 / 25e9 + 2 * 3e-6)
    with pytest.raises(E.ProfileError):
        c.access_seconds(0, np.array([0, 0, 5]), launch=False)
