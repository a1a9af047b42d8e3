"""The registry: a taken name stays with its first owner (built-in plugins first), and options are checked
against the factory's signature before it is called."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pluggy
import pytest

import facerec_plugins.facenet.mtcnn
from facerec.contract import hookspecs
from facerec.contract.registry import PluginInfo, Registration, Registry, _collect_parts, registry
from facerec.errors import UsageError
from facerec.plugin import hookimpl
from support import SHARED

PHOTO = SHARED / "faces" / "photos" / "obama_small.jpg"


class Rogue:
    """A detector a third party registers under a built-in's name."""


def plugin(**hooks) -> SimpleNamespace:
    """A plugin object, as an entry point loads one: its attributes are hook implementations."""
    return SimpleNamespace(**{name: hookimpl(function) for name, function in hooks.items()})


def collected(*plugins: tuple[str, str, SimpleNamespace]) -> Registry:
    """A registry filled from (name, source, plugin), loaded in the order given, as entry points are."""
    manager = pluggy.PluginManager("facerec")
    manager.add_hookspecs(hookspecs)
    found = Registry()
    for name, source, module in plugins:
        found.plugins[name] = PluginInfo(name, source)
        manager.register(module, name=name)
    _collect_parts(found, manager)
    return found


def intruder() -> SimpleNamespace:
    def register_detectors(register):
        register("mtcnn", Rogue)
        register("rogue", Rogue)

    return plugin(register_detectors=register_detectors)


def test_a_plugin_cannot_take_a_built_in_name_even_when_it_loads_first():
    found = collected(
        ("intruder", "facerec-intruder 1.0", intruder()), ("mtcnn", "built-in", facerec_plugins.facenet.mtcnn)
    )
    assert found.parts["detector"]["mtcnn"].factory is facerec_plugins.facenet.mtcnn.MTCNN
    assert found.parts["detector"]["rogue"].factory is Rogue  # its other parts still work
    assert found.plugins["intruder"].registers == {"detector": ["rogue"]}
    assert found.plugins["intruder"].error == (
        "detector 'mtcnn' is taken by plugin 'mtcnn' (built-in); kept that one"
    )
    assert found.plugins["mtcnn"].error is None and found.plugins["mtcnn"].registers == {
        "detector": ["mtcnn"]
    }


def test_between_third_parties_the_first_keeps_a_name_and_every_clash_is_reported():
    def twice(register):
        register("rogue", Rogue)
        register("rogue", Rogue)

    found = collected(
        ("first", "facerec-first 1.0", intruder()),
        ("second", "facerec-second 2.0", plugin(register_detectors=twice)),
    )
    assert found.parts["detector"]["rogue"].plugin == "first"
    clash = "detector 'rogue' is taken by plugin 'first' (facerec-first 1.0); kept that one"
    assert found.plugins["second"].error == f"{clash}; {clash}"
    assert found.plugins["second"].registers == {}


def test_the_cli_names_the_detectors_options(cli):
    result = cli("detect", PHOTO, "-D", "unknown=1")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "Error: detector 'mtcnn' has no option 'unknown' (options: min_face_size, thresholds, factor, device)"
    )


def registry_with(factory) -> Registry:
    found = Registry()
    found.parts["head"]["made"] = Registration("head", "made", factory, "test")
    return found


def test_options_are_checked_against_the_signature():
    def sized(size: int, colour: str = "red"):
        return (size, colour)

    found = registry_with(sized)
    assert found.create("head", "made", size=3) == (3, "red")
    with pytest.raises(
        UsageError, match=r"^head 'made' has no options 'shape', 'hue' \(options: size, colour\)$"
    ):
        found.create("head", "made", size=3, shape=1, hue=2)
    with pytest.raises(UsageError, match=r"^head 'made' needs the option\(s\) 'size'$"):
        found.create("head", "made", colour="blue")
    with pytest.raises(
        UsageError, match=r"^aligner 'landmarks' has no option 'margin' \(it takes no options\)$"
    ):
        registry().create("aligner", "landmarks", margin=3)


def test_a_factory_taking_any_keyword_gets_them_all():
    found = registry_with(lambda **options: options)
    assert found.create("head", "made", anything=1) == {"anything": 1}


def test_a_type_error_inside_the_factory_is_not_taken_for_a_bad_option():
    def broken(size: int = 1):
        return len(size)  # a bug of the part's own

    with pytest.raises(TypeError, match="has no len"):
        registry_with(broken).create("head", "made", size=2)


def test_loading_every_plugin_leaves_what_only_some_commands_need_unimported():
    """Every command loads every plugin, so a plugin module imports at its top only what each command
    needs: FAISS (searching galleries) and requests (downloading) are imported where they are used."""
    script = (
        "import sys; from facerec.contract.registry import registry; from facerec.pipeline import weights; "
        "found = registry(); assert not any(p.error for p in found.plugins.values()), found.plugins; "
        "print(sorted(m for m in ('faiss', 'requests') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.split() == ["[]"]
