"""Suites: built-ins, TOML files, errors that name the line, and the resolved round trip."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from mlsec.attacks import APGD, APGDDLR, APGDT, FGSM, PGD, Square
from mlsec.auditing.plan import make_plan, strength_note
from mlsec.auditing.suite import BUILTIN_SUITES, load_suite, parse_eps
from mlsec.errors import InputError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "audit.toml"
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def test_builtin_suites_are_what_the_docs_say() -> None:
    quick = load_suite("quick")
    assert [e.label for e in quick.entries] == ["fgsm", "pgd"]
    assert isinstance(quick.entries[1].attack, PGD)
    assert quick.entries[1].attack.steps == 20
    # thorough: the standard chain with restarts, and APGD on the DLR loss as well.
    thorough = load_suite("thorough")
    assert [e.label for e in thorough.entries] == ["apgd", "apgd-dlr", "apgd-t", "square"]
    apgd, dlr, targeted, square = (e.attack for e in thorough.entries)
    assert isinstance(apgd, APGD) and isinstance(dlr, APGDDLR) and isinstance(targeted, APGDT)
    assert isinstance(square, Square)
    assert (apgd.steps, apgd.restarts, dlr.restarts, targeted.targets) == (100, 5, 5, 9)
    assert (square.queries, square.restarts) == (5000, 5)
    assert load_suite("default").entries[1].attack == PGD(eps=0.0, steps=40)
    assert set(BUILTIN_SUITES) == {"default", "quick", "thorough", "standard"}


def test_toml_suite_with_defaults_and_per_attack_grid(tmp_path: Path) -> None:
    suite = load_suite(
        write(
            tmp_path,
            """
            name = "gate"
            eps = [0.3, 0.1]
            seed = 4

            [[attack]]
            name = "fgsm"

            [[attack]]
            name = "pgd"
            label = "pgd-10x2"
            steps = 10
            restarts = 2
            eps = [0.3]
            """,
        )
    )
    assert suite.name == "gate"
    assert suite.eps == [0.1, 0.3]
    fgsm, pgd = suite.entries
    assert fgsm.attack == FGSM(eps=0.0, seed=4)
    assert fgsm.eps == (0.1, 0.3)
    assert pgd.label == "pgd-10x2"
    assert pgd.attack == PGD(eps=0.0, steps=10, restarts=2, seed=4)
    assert pgd.eps == (0.3,)
    assert [e.label for e in suite.at(0.1)] == ["fgsm"]
    assert [e.label for e in suite.at(0.3)] == ["fgsm", "pgd-10x2"]


def test_resolved_suite_round_trips(tmp_path: Path) -> None:
    suite = BUILTIN_SUITES["thorough"].with_overrides(eps=[0.05, 0.2], params={"steps": 7})
    path = tmp_path / "resolved.toml"
    path.write_text(suite.to_toml())
    again = load_suite(path)
    assert again == suite
    assert again.entries[1].attack.steps == 7  # type: ignore[attr-defined]
    assert again.entries[3].attack.restarts == 5  # type: ignore[attr-defined]
    assert again.eps == [0.05, 0.2]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[attack]]\nname = "pgdd"\n', r"line 2: unknown attack 'pgdd'"),
        (
            '[[attack]]\nname = "fgsm"\n\n[[attack]]\nname = "pgd"\nstepz = 3\n',
            r"line 6: .*no parameter 'stepz'",
        ),
        ('[[attack]]\nname = "pgd"\nsteps = 0\n', r"line 3: steps must be an integer >= 1"),
        ('[[attack]]\nname = "pgd"\neps = [-0.1]\n', r"line 3: eps must be"),
        ('[[attack]]\nname = "pgd"\neps = "big"\n', r"line 3: eps must be a list"),
        ('epz = [0.1]\n[[attack]]\nname = "pgd"\n', r"line 1: unknown key 'epz'"),
        ("[[attack]]\nsteps = 3\n", r"line 1: \[\[attack\]\] needs name"),
        ('name = "x"\n', r"no attacks"),
        ('[[attack]\nname = "pgd"\n', r"not valid TOML.*line 1"),
        ('[[attack]]\nname = "pgd"\n[[attack]]\nname = "pgd"\n', r"labels must be distinct"),
    ],
)
def test_bad_suites_name_the_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(InputError, match=message) as info:
        load_suite(path)
    assert "\n" not in str(info.value)


def test_unknown_suite_name() -> None:
    # The library's terms: the error names its argument, the command line maps it to --suite.
    with pytest.raises(InputError, match=r"^suite: paranoid is neither") as info:
        load_suite("paranoid")
    assert info.value.subject == "suite"
    assert not info.value.detail.startswith("--")
    with pytest.raises(InputError, match="neither a built-in suite"):
        load_suite("paranoid")


def test_parse_eps_accepts_fractions() -> None:
    assert parse_eps("8/255, 0.1") == pytest.approx([8 / 255, 0.1])
    with pytest.raises(InputError, match="not a number") as info:
        parse_eps("0.1,big")
    assert info.value.subject == "eps" and info.value.detail.startswith("'big'")
    with pytest.raises(InputError, match="not a number"):
        parse_eps("1/0")


@pytest.mark.parametrize(
    ("chain", "missing"),
    [
        ("default", "no APGD-CE, no APGD-T or APGD-DLR, no Square"),
        ("quick", "no APGD-CE, no APGD-T or APGD-DLR, no Square"),
        ("standard", None),
        ("thorough", None),
    ],
)
def test_strength_note_of_the_builtin_suites(chain: str, missing: str | None) -> None:
    plan = make_plan(load_suite(chain))
    if missing is None:
        assert plan.strength_note is None
    else:
        assert plan.strength_note is not None
        assert plan.strength_note.startswith(f"weaker than the standard suite ({missing}):")
        assert "--suite standard" in plan.strength_note


def test_strength_note_names_what_is_missing_or_cut_short() -> None:
    eps = 0.3
    full = [APGD(eps=eps), APGDT(eps=eps), Square(eps=eps)]
    assert strength_note(full) is None
    assert strength_note([APGD(eps=eps), APGDDLR(eps=eps), Square(eps=eps)]) is None
    note = strength_note([APGD(eps=eps), Square(eps=eps)])
    assert note is not None and "(no APGD-T or APGD-DLR)" in note
    note = strength_note([APGD(eps=eps, steps=10), APGDT(eps=eps), Square(eps=eps, queries=100)])
    assert note is not None
    assert "(APGD-CE at 10 steps, not 100, Square at 100 queries, not 5000)" in note
    # Overriding the standard suite's steps makes it weaker, and the note says so.
    cut = make_plan(load_suite("standard").with_overrides(params={"steps": 20}))
    assert cut.strength_note is not None and "APGD-CE at 20 steps" in cut.strength_note
    assert strength_note([FGSM(eps=eps), PGD(eps=eps, steps=1000)]) is not None
