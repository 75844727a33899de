"""
bench/workers.py: where all the cores' time went during a round (the
hub, the client, the kernel's writeback threads, the neighbours, idle),
and the wait for a quiet disk before each round (--settle).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

from bench.workers import MACHINE_PARTS, every_process, machine_cpu, machine_split, machine_text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cpu(user=0.0, system=0.0, idle=0.0, iowait=0.0, softirq=0.0):
    return {"user": user, "nice": 0.0, "system": system, "idle": idle, "iowait": iowait, "irq": 0.0, "softirq": softirq, "steal": 0.0}


def test_each_process_is_charged_to_its_part_and_the_rest_is_unseen_or_idle():
    hub, worker, me = 101, 102, os.getpid()
    before = {
        hub: ("python3", False, 1.0),
        worker: ("python3", False, 2.0),
        201: ("kworker/u8:2-flush-254:0", True, 0.5),
        202: ("kworker/u8:3-ext4-rsv-conversion", True, 0.1),
        203: ("ksoftirqd/0", True, 0.0),
        me: ("python3", False, 3.0),
        301: ("pytest", False, 7.0),
    }
    after = {
        hub: ("python3", False, 1.3),
        worker: ("python3", False, 2.4),
        201: ("kworker/u8:2-flush-254:0", True, 0.6),
        202: ("kworker/u8:3-ext4-rsv-conversion", True, 0.15),
        203: ("ksoftirqd/0", True, 0.05),
        me: ("python3", False, 3.02),
        301: ("pytest", False, 7.2),
        302: ("cc1", False, 0.03),  # started between the looks: all of its time
    }
    parts = machine_split(cpu(10.0, 5.0, 20.0, 1.0, 0.5), cpu(10.9, 5.5, 20.3, 1.1, 0.6), before, after, [hub, worker], client=0.08)
    assert round(parts["hub"], 6) == 0.7
    assert round(parts["client"], 6) == 0.08
    assert round(parts["writeback"], 6) == 0.1
    assert round(parts["kernel"], 6) == 0.1
    assert round(parts["script"], 6) == 0.02
    assert round(parts["others"], 6) == 0.23
    assert round(parts["idle"], 6) == 0.4
    assert round(parts["iowait"], 6) == 0.1
    assert round(parts["softirq"], 6) == 0.1
    assert round(parts["total"], 6) == 1.9
    # busy 1.5: 1.23 charged to processes seen, the rest to none of them
    assert round(parts["unseen"], 6) == 0.27
    assert round(sum(parts[name] for name in MACHINE_PARTS), 6) == round(parts["total"], 6)
    text = machine_text(parts, 1000)
    assert text.startswith("1900 µs a message of all the cores = hub 700 + client 80 + kernel writeback threads 100 + other kernel threads 100")
    assert "idle 400 (of which waiting for I/O 100)" in text


def test_a_machine_that_cannot_be_read_gives_no_split():
    assert machine_split({}, {}, {}, {}, [1], 0.0) == {}
    assert machine_text({}, 10) == "cannot be read (/proc/stat)"


def test_the_looks_see_this_process_and_the_kernels_threads():
    seen = every_process()
    assert seen[os.getpid()][1] is False
    assert any(kernel for _, kernel, _ in seen.values())
    assert set(machine_cpu()) >= {"user", "system", "idle", "iowait", "softirq"}


def test_each_round_says_where_the_cores_went_and_how_quiet_it_began(tmp_path):
    done = subprocess.run(
        [sys.executable, "bench/workers.py", "--messages", "100", "--rounds", "1", "--clients", "4", "--settle", "1", "--dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    rounds = re.findall(r"round 1 +(.+?): .*before it: file creation \d+ µs CPU, CPUs \d+% idle, after \d+ s", out)
    assert rounds == ["1 process", "--workers 2"]
    splits = re.findall(r"where the cores went: (\d+) µs a message of all the cores = hub (\d+) \+ client (\d+) \+ kernel writeback threads (\d+) \+ other kernel threads (\d+) \+ this script (\d+) \+ other processes (\d+) \+ not seen (\d+) \+ idle (\d+)", out)
    assert len(splits) == 2
    for total, hub, client, *rest in ([int(n) for n in split] for split in splits):
        assert hub > 0 and client > 0
        assert total >= hub + client
    assert "where the cores went, per hub, medians of each part" in out
