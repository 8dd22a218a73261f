import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")

# Allocate, touch and free a 64 MiB tensor eight times and count the page faults of the last
# round, before and after keep_freed_memory() (the heap needs a few rounds to settle: small
# allocations can land in a freed block); a fresh interpreter keeps this test's process as is.
_PROBE = textwrap.dedent("""
    import resource, torch
    from multibox.memory import keep_freed_memory

    def faults():
        for _ in range(8):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t = torch.ones(16 * 2**20)  # 64 MiB, touched
            del t
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    plain = faults()
    applied = keep_freed_memory()
    print(plain, faults(), applied, keep_freed_memory())
""")


def _probe(env=None):
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True, env=env)
    plain, kept, applied, again = out.stdout.split()
    return int(plain), int(kept), applied == "True", again == "True"


def test_keep_freed_memory_stops_page_faults_on_reused_blocks():
    plain, kept, applied, again = _probe()
    if not applied:
        pytest.skip("not glibc: keep_freed_memory() is a no-op here")
    assert again  # idempotent
    assert plain > 10_000  # a fresh 64 MiB mapping faults in ~16k pages each time
    assert kept < plain / 10  # reused heap memory is already mapped


def test_keep_freed_memory_can_be_turned_off():
    env = dict(os.environ, MULTIBOX_KEEP_FREED_MEMORY="0")
    plain, kept, applied, _ = _probe(env)
    assert not applied
    assert kept > plain / 2  # nothing changed
