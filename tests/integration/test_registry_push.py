"""Pushing a Kubernetes run's image to a registry (a local stand-in of one): once per content hash,
and a refusal said with what to do."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from moat.errors import EngineError
from moat.plan.model import ImageSpec
from moat.runtime.docker import DockerRuntime
from tests.registryfake import FakeRegistry


@pytest.fixture
def small_image(engine: DockerRuntime) -> Iterator[str]:
    tag = f"moat-test/push:{uuid.uuid4().hex[:12]}"
    dockerfile = f"FROM scratch\nCOPY hello.txt /hello.txt\nLABEL moat.test={tag.rpartition(':')[2]}\n"
    engine.build_image(ImageSpec(tag, "scratch", dockerfile, (), 0, 0, context={"hello.txt": "hello\n"}),
                       {"moat.test": "push"}, lambda _line: None)
    yield tag
    engine.remove_image(tag)


def test_an_image_is_pushed_once_under_its_content_hash(engine: DockerRuntime, small_image: str) -> None:
    with FakeRegistry() as registry:
        remote = f"{registry.address}/team/moat-agent:{small_image.rpartition(':')[2]}"
        assert engine.push_image(small_image, remote, lambda _line: None) is True
        assert registry.manifest_puts == 1 and registry.blob_uploads >= 2  # a layer and the config
        uploads = registry.blob_uploads
        assert engine.push_image(small_image, remote, lambda _line: None) is False  # the registry has it
        assert registry.blob_uploads == uploads and registry.manifest_puts == 1
    assert not engine.image_exists(remote)  # the registry's name for it is not kept here


def test_a_refused_push_says_what_to_do(engine: DockerRuntime, small_image: str) -> None:
    with FakeRegistry(refuse_pushes=True) as registry:
        remote = f"{registry.address}/team/moat-agent:x1"
        with pytest.raises(EngineError, match="the registry refused") as info:
            engine.push_image(small_image, remote, lambda _line: None)
        assert f"docker login {registry.address}" in (info.value.hint or "")
    assert not engine.image_exists(remote)
