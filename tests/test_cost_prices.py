"""Every cost table ends with the prices it used: each one's date, source, and whether it was checked
against the provider's own page (not a bare "not confirmed")."""

from __future__ import annotations

import argparse

import pytest

from tuneforge.cost.catalog import load_catalog
from tuneforge.cost.report import price_checked, price_note, price_record


def run_cost(argv: list[str], capsys) -> list[str]:
    from tuneforge.cost.cli import register

    parser = argparse.ArgumentParser(prog="tuneforge")
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    return capsys.readouterr().out.splitlines()


THIRD_PARTY = "no: read from a third-party page"


@pytest.mark.parametrize(
    ("provider", "source", "note", "checked"),
    [
        ("aws", "https://aws.amazon.com/ec2/pricing/on-demand/", "confirmed", "yes"),
        ("lambda", "https://lambda.ai/pricing", "confirmed (read on the day)", "yes"),
        ("lambda", "https://techbytes.app/posts/x", "confirmed (third-party page)", THIRD_PARTY),
        ("aws", "https://aws.amazon.com/ec2/pricing/on-demand/", "not confirmed in this session", "no"),
        ("aws", "https://notaws.amazon.com.example/", "confirmed", THIRD_PARTY),
        ("custom", "given on the command line", "price given by the user", "given by you"),
        ("me", None, None, "no"),
    ],
)  # fmt: skip
def test_a_price_is_checked_only_when_confirmed_on_the_providers_own_site(provider, source, note, checked):
    assert price_checked({"provider": provider, "source": source, "note": note}) == checked


def test_the_note_drops_what_the_check_column_says():
    assert price_note({"note": "not confirmed in this session (list price as commonly quoted)"}) == (
        "list price as commonly quoted"
    )
    assert price_note({"note": "confirmed (same page); host size not confirmed"}) == "host size not confirmed"
    assert price_note({"note": "third-party page; verify"}) == "third-party page; verify"
    assert price_note({"note": None}) == "-"


def test_cost_instance_ends_with_the_price_its_date_source_and_check(tmp_path, capsys):
    out = run_cost(["cost", "instance", "c7i.large", "--rps", "0.5", "--out", str(tmp_path)], capsys)
    inst = load_catalog().get("c7i.large")
    title = out.index("Prices used")
    assert out[title + 1].split()[:4] == ["price", "USD/h", "date", "checked"]
    row = out[title + 2]
    assert row.split()[:4] == ["c7i.large", f"${inst.on_demand_usd_per_hour:.4g}", inst.price_date, "no"]
    assert inst.source in row and "list price as commonly quoted" in row
    assert out[title + 3].startswith("Prices change: check the source")
    assert not any(line.startswith("note: not confirmed") for line in out)  # said once, in the table
    md = (tmp_path / "cost.md").read_text()
    assert md.split("## Prices used")[1].count("| c7i.large |") == 1
    assert f"<td>{inst.price_date}</td>" in (tmp_path / "cost.html").read_text()


def test_cost_compare_lists_each_instance_price_once(tmp_path, capsys):
    configs = tmp_path / "configs.yaml"
    configs.write_text(
        "configs:\n  - {instance: g5.xlarge, requests_per_second: 4}\n"
        "  - {instance: g5.xlarge, requests_per_second: 5, name: again}\n"
        "  - {instance: gpu_1x_a10, requests_per_second: 4}\n"
    )
    out = run_cost(["cost", "compare", str(configs), "--out", str(tmp_path)], capsys)
    prices = out[out.index("Prices used") + 2 : -3]
    assert [line.split()[0] for line in prices] == ["g5.xlarge", "gpu_1x_a10"]
    g5, a10 = (price_record(load_catalog().get(n).model_dump()) for n in ("g5.xlarge", "gpu_1x_a10"))
    assert g5["price_date"] in prices[0] and a10["price_date"] in prices[1]
    assert THIRD_PARTY in prices[1]  # Lambda's price, read from another site
