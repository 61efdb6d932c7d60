"""Parts of the agent that need no node: command lines blanked in what it serves, and the
Pacer that spreads a sample's walk over its CPU budget (real CPU time, real sleeps)."""
from __future__ import annotations

import json
import time

from nsnet.agent.serve import without_cmdlines


def test_command_lines_are_blanked_everywhere_in_a_document():
    doc = {"processes": [{"pid": 1, "cmdline": ["mysql", "--password=hunter2"]}],
           "namespaces": [{"listening": [{"processes": [{"cmdline": ["x", "secret"]}]}]}]}
    assert "hunter2" not in json.dumps(without_cmdlines(doc))
    assert "secret" not in json.dumps(without_cmdlines(doc))
    assert without_cmdlines(doc)["processes"][0] == {"pid": 1, "cmdline": []}


def burn(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_pacer_spreads_work_to_the_budget_and_hurries_on_request():
    import threading

    from nsnet.agent.sampler import Pacer

    pacer = Pacer(max_cpu=0.5, within=10.0)
    burn(0.2)
    wall0 = time.monotonic()
    pacer()                                 # 0.2 s CPU at 50%: ~0.4 s of wall are due
    assert pacer.slept > 0.1 and time.monotonic() - wall0 >= pacer.slept * 0.9
    capped = Pacer(max_cpu=0.01, within=0.3)
    burn(0.1)
    capped()                                # would need 10 s; never past `within`
    assert capped.slept <= 0.3
    hurry = threading.Event()
    hurried = Pacer(max_cpu=0.01, within=10.0, hurry=hurry)
    burn(0.05)
    hurry.set()
    hurried()
    assert hurried.slept == 0.0
