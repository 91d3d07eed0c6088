"""Class prompts: parsing, validation, channel order and targets."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from seg2change_core.errors import PromptError, Seg2ChangeError
from seg2change_core.prompts import ClassPrompt, PromptSet


def test_cli_string_splits_classes_and_synonyms() -> None:
    ps = PromptSet.from_string(" building, roof ,house ; water,river;")
    assert ps.classes == (ClassPrompt(("building", "roof", "house")), ClassPrompt(("water", "river")))
    assert ps.labels == ("building", "water")
    assert ps.num_classes == 2
    assert ps.background is None and ps.background_index is None
    assert ps.targets == ("building", "water")
    assert ps.to_string() == "building,roof,house;water,river"
    assert PromptSet.from_string(ps.to_string()) == ps


def test_background_is_channel_zero_and_never_a_default_target() -> None:
    ps = PromptSet.from_string("building,roof;water", background="background")
    assert ps.labels == ("background", "building", "water")
    assert ps.num_classes == 3
    assert ps.background_index == 0
    assert ps.targets == ("building", "water")
    assert ps.target_indices == (1, 2)
    assert ps.index("ROOF") == 1 and ps.index("background") == 0


def test_targets_accept_synonyms_case_insensitively_and_keep_class_order() -> None:
    ps = PromptSet.from_string("building,roof;water,river;tree", targets=["River", "roof"])
    assert ps.targets == ("building", "water")
    assert ps.target_indices == (0, 1)
    assert PromptSet.from_string("a;b;c", targets="c,a").targets == ("a", "c")


def test_class_file_like_openearthmap(tmp_path: Path) -> None:
    path = tmp_path / "cls_openearthmap.txt"
    path.write_text(
        "background\nbareland,barren\ngrass\n\n# comment line\npavement\nroad\ntree,forest\n"
        "water,river\ncropland\nbuilding,roof,house"
    )
    ps = PromptSet.from_file(path, background="background")
    assert ps.labels == (
        "background", "bareland", "grass", "pavement", "road", "tree", "water", "cropland", "building",
    )  # fmt: skip
    assert ps.background == "background"
    without = PromptSet.from_file(path)
    assert without.background is None and without.labels[0] == "background"


def test_background_line_with_synonyms_is_promoted_with_them(tmp_path: Path) -> None:
    ps = PromptSet.from_lines(["background,clutter", "car"], background="background")
    assert ps.background == "background,clutter"
    assert ps.background_prompt == ClassPrompt(("background", "clutter"))
    assert ps.labels == ("background", "car")


def test_yaml_list_and_mapping(tmp_path: Path) -> None:
    ps = PromptSet.from_yaml("- building,roof,house\n- [water, river]\n")
    assert ps.labels == ("building", "water") and ps.classes[1].names == ("water", "river")
    doc = "classes: ['building,roof', water]\nbackground: background\ntargets: [roof]\n"
    path = tmp_path / "prompts.yaml"
    path.write_text(doc)
    for source in (doc, path, str(path)):
        ps = PromptSet.from_yaml(source)
        assert ps.labels == ("background", "building", "water")
        assert ps.targets == ("building",)


@pytest.mark.parametrize(
    ("build", "words"),
    [
        (lambda: PromptSet.from_string("building,roof;Roof"), ["'Roof'", "one class only"]),
        (lambda: PromptSet.from_string("water,river,WATER"), ["twice"]),
        (lambda: PromptSet.from_string("building,,roof"), ["empty name", "stray separator"]),
        (lambda: PromptSet.from_string(""), ["no classes"]),
        (lambda: PromptSet.from_string("a;;b"), ["empty class name", "stray separator"]),
        (lambda: PromptSet.from_string("building", targets=["water"]), ["'water'", "not among"]),
        (lambda: PromptSet.from_string("a;b", background="bg", targets=["bg"]), ["background cannot"]),
        (lambda: PromptSet((ClassPrompt(("a",)),), background="A"), ["'A'", "both"]),
        (lambda: PromptSet.from_yaml("classes: [a]\ntarget: [a]\n"), ["unknown prompt keys"]),
        (lambda: PromptSet.from_yaml("a: [b"), ["does not parse"]),
        (lambda: PromptSet.from_yaml("- [a, 3]\n"), ["neither a string"]),
        (lambda: ClassPrompt(("a,b",)), ["separator"]),
        (lambda: ClassPrompt("abc"), ["ClassPrompt.parse"]),  # type: ignore[arg-type]
    ],
)
def test_invalid_prompts_raise_prompt_error_naming_the_fix(
    build: Callable[[], object], words: list[str]
) -> None:
    with pytest.raises(PromptError) as info:
        build()
    assert isinstance(info.value, Seg2ChangeError)
    for word in words:
        assert word in str(info.value)


def test_unreadable_class_file_is_a_prompt_error(tmp_path: Path) -> None:
    with pytest.raises(PromptError, match="cannot read the class file"):
        PromptSet.from_file(tmp_path / "missing.txt")


def test_prompt_set_is_frozen_and_accepts_strings() -> None:
    ps = PromptSet(("building,roof", "water"), background=" background ")  # type: ignore[arg-type]
    assert ps.classes[0] == ClassPrompt(("building", "roof"))
    assert ps.background == "background"
    with pytest.raises(AttributeError):
        ps.background = None  # type: ignore[misc]
    same = PromptSet((ClassPrompt(("building", "roof")), ClassPrompt(("water",))), "background")
    assert ps == same and hash(ps) == hash(same)
