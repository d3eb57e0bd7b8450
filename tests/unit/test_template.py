"""Guest templates: the cache key covers every input, a changed input means
another template, builds are shared and their failure is a cold boot, and
a clone's QEMU is started as its template was, on the template's RAM."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from pathlib import Path

import pytest

from hbd.drivers.template import (
    Template,
    TemplateShape,
    TemplateStore,
    template_key,
)
from hbd.drivers.vm import GuestFiles, HostFds, NicSpec, QemuMicrovmDriver, VMSpec, build_argv


def shape(tmp_path: Path, **changes: object) -> TemplateShape:
    base = TemplateShape(kernel=tmp_path / "vmlinux", initrd=tmp_path / "initrd.cpio",
                         accel="tcg", memory_mib=256, vcpus=1, nics=4, balloon=True,
                         cmdline="", tcg_tb_size_mib=32)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


@pytest.fixture
def guest_files(tmp_path: Path) -> Path:
    (tmp_path / "vmlinux").write_bytes(b"kernel one")
    (tmp_path / "initrd.cpio").write_bytes(b"initrd one")
    return tmp_path


def test_every_input_changes_the_key(tmp_path: Path) -> None:
    base = shape(tmp_path)
    key = template_key(base, "k", "i", "qemu 7.2")
    assert key == template_key(shape(tmp_path), "k", "i", "qemu 7.2")
    assert template_key(base, "k2", "i", "qemu 7.2") != key
    assert template_key(base, "k", "i2", "qemu 7.2") != key
    assert template_key(base, "k", "i", "qemu 10.0") != key
    for change in ({"memory_mib": 512}, {"vcpus": 2}, {"nics": 0}, {"balloon": False},
                   {"cmdline": "hbd.trace"}, {"tcg_tb_size_mib": 8}, {"accel": "kvm"}):
        assert template_key(shape(tmp_path, **change), "k", "i", "qemu 7.2") != key, change


def test_the_shape_of_a_guest_is_what_a_clone_must_match(tmp_path: Path) -> None:
    vm = VMSpec(run_dir=tmp_path / "a", kernel=tmp_path / "vmlinux",
                initrd=tmp_path / "initrd.cpio", memory_mib=512, vcpus=2,
                nics=[NicSpec("t0", "02:00:00:00:00:01", 5)] * 3, host_cpus=[1])
    other = dataclasses.replace(vm, run_dir=tmp_path / "b", host_cpus=[],
                                nics=[NicSpec("t9", "02:00:00:00:00:09", 7)] * 3)
    # Paths, taps, MACs, disks and pinning are a guest's own, not its shape.
    assert TemplateShape.of(vm) == TemplateShape.of(other)
    assert TemplateShape.of(vm).nics == 3
    assert TemplateShape.of(dataclasses.replace(vm, memory_mib=256)) != TemplateShape.of(vm)


def store(tmp_path: Path) -> TemplateStore:
    templates = TemplateStore(QemuMicrovmDriver("/bin/true"), tmp_path / "templates",
                              "hbttest", 5.0)
    templates._qemu_identity = "qemu test"
    return templates


def test_a_changed_kernel_or_initrd_is_another_template(guest_files: Path) -> None:
    async def go() -> None:
        templates = store(guest_files)
        first = await templates.key(shape(guest_files))
        assert await templates.key(shape(guest_files)) == first
        (guest_files / "vmlinux").write_bytes(b"kernel two")
        second = await templates.key(shape(guest_files))
        assert second != first
        (guest_files / "initrd.cpio").write_bytes(b"initrd two, longer")
        assert await templates.key(shape(guest_files)) not in (first, second)

    asyncio.run(go())


def fake_template(key: str, s: TemplateShape, tmp_path: Path) -> Template:
    state = tmp_path / "templates" / key / "state"
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_bytes(b"state")
    return Template(key=key, shape=s, ram_fd=os.memfd_create("t"), state=state)


def test_builds_are_shared_and_a_rebuild_replaces_the_old_template(guest_files: Path) -> None:
    async def go() -> None:
        templates = store(guest_files)
        builds: list[str] = []
        gate = asyncio.Event()

        async def build(key: str, s: TemplateShape) -> Template:
            builds.append(key)
            await gate.wait()
            return fake_template(key, s, guest_files)

        templates._build = build  # type: ignore[method-assign]
        wanted = shape(guest_files)
        # The first asks for it: none yet, boot cold; a build starts.
        assert await templates.get(wanted) is None
        await asyncio.sleep(0)
        # Those who come while it is built wait for it, all of them for one build.
        waiters = [asyncio.ensure_future(templates.get(wanted)) for _ in range(5)]
        await asyncio.sleep(0.01)
        assert not any(w.done() for w in waiters)
        gate.set()
        got = await asyncio.gather(*waiters)
        assert len(builds) == 1 and all(t is got[0] and t is not None for t in got)
        assert await templates.get(wanted) is got[0]
        # A shape of its own is a build of its own.
        assert await templates.get(shape(guest_files, memory_mib=512)) is None
        await asyncio.sleep(0.01)
        assert len(builds) == 2
        # The kernel changes: the next guest boots while a new template is
        # built; once it is ready, the old one is gone (state and RAM).
        old = got[0]
        assert old is not None
        (guest_files / "vmlinux").write_bytes(b"kernel two")
        assert await templates.get(wanted) is None
        await asyncio.sleep(0.01)
        new = await templates.get(wanted)
        assert new is not None and new.key != old.key
        assert old.key not in templates.templates and not old.state.parent.exists()
        with pytest.raises(OSError):
            os.fstat(old.ram_fd)
        await templates.close()

    asyncio.run(go())


def test_a_failed_build_means_cold_boots_for_a_while(guest_files: Path) -> None:
    async def go() -> None:
        templates = store(guest_files)
        builds = 0

        async def build(key: str, s: TemplateShape) -> Template:
            nonlocal builds
            builds += 1
            raise OSError("no memfd for you")

        templates._build = build  # type: ignore[method-assign]
        wanted = shape(guest_files)
        assert await templates.get(wanted) is None
        await asyncio.sleep(0.01)
        assert await templates.get(wanted) is None
        await templates.prepare(wanted)
        await asyncio.sleep(0.01)
        assert builds == 1  # not tried again at once
        key = await templates.key(wanted)
        templates._failed[key] = 0.0  # the while is over
        await templates.prepare(wanted)
        await asyncio.sleep(0.01)
        assert builds == 2

    asyncio.run(go())


def test_a_clone_starts_on_the_templates_ram_waiting_for_its_state(tmp_path: Path) -> None:
    spec = VMSpec(run_dir=tmp_path, kernel=tmp_path / "k", initrd=tmp_path / "i",
                  ram_file="/proc/self/fd/7", ram_shared=False, incoming=True,
                  extra_fds=[7, 8])
    fds = HostFds(qmp=3, agent=4, console=5, fdsets=[(5, 1, "console")])
    files = GuestFiles("/k", "/i")
    argv = build_argv("qemu", spec, fds, files, sandbox=True)
    backend = json.loads(argv[argv.index("-object") + 1])
    assert backend["qom-type"] == "memory-backend-file"
    assert backend["mem-path"] == "/proc/self/fd/7" and backend["share"] is False
    assert "memory-backend=ram" in argv[argv.index("-M") + 1]
    assert argv[argv.index("-incoming") + 1] == "defer"
    template = build_argv("qemu", dataclasses.replace(spec, ram_shared=True, incoming=False),
                          fds, files, sandbox=True)
    assert json.loads(template[template.index("-object") + 1])["share"] is True
    assert "-incoming" not in template


def test_the_shapes_used_least_lately_go(guest_files: Path) -> None:
    async def go() -> None:
        templates = store(guest_files)

        async def build(key: str, s: TemplateShape) -> Template:
            return fake_template(key, s, guest_files)

        templates._build = build  # type: ignore[method-assign]
        shapes = [shape(guest_files, memory_mib=m) for m in (128, 256, 512, 1024, 2048)]
        for s in shapes[:4]:
            await templates.get(s)
            await asyncio.sleep(0.01)
        assert len(templates.templates) == 4
        assert await templates.get(shapes[0]) is not None  # used again: kept
        await templates.get(shapes[4])
        await asyncio.sleep(0.01)
        kept = {t.shape.memory_mib for t in templates.templates.values()}
        assert kept == {128, 512, 1024, 2048}
        await templates.close()

    asyncio.run(go())
