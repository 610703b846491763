"""Parsers for identity, network and storage answers."""

from __future__ import annotations

import pytest

from modems.errors import ParseError
from modems.replies import (
    choose_cnmi,
    iccid_from_crsm,
    normalize_iccid,
    parse_cnmi_ranges,
    parse_cops_numeric,
    parse_cpms_usage,
    parse_creg,
    parse_csq,
    parse_list_entry,
    parse_number_entry,
    split_imsi,
)


def test_csq() -> None:
    assert parse_csq("21,99") == (21, 99)
    assert parse_csq("99,99") == (99, 99)
    with pytest.raises(ParseError):
        parse_csq("40,0")
    with pytest.raises(ParseError):
        parse_csq("x")


def test_creg_forms() -> None:
    assert parse_creg("0,1").status == 1
    assert parse_creg("5").status == 5  # unsolicited form
    assert parse_creg('1,"5E25","605F"').status == 1  # unsolicited with location
    assert parse_creg('2,5,"2AF5","0B88E350",2').registered
    with pytest.raises(ParseError):
        parse_creg("")


def test_cops() -> None:
    assert parse_cops_numeric('0,2,"25001",7') == "25001"
    assert parse_cops_numeric('0,2,"310260"') == "310260"
    assert parse_cops_numeric("0") is None
    with pytest.raises(ParseError):
        parse_cops_numeric('0,0,"MTS RUS",7')


def test_imsi_home_network() -> None:
    assert split_imsi("250011234567890") == ("250", "01")
    assert split_imsi("310260123456789") == ("310", "260")
    with pytest.raises(ParseError):
        split_imsi("25001abc")


@pytest.mark.parametrize(
    ("answer", "iccid"),
    [
        ("8970101234567890123", "8970101234567890123"),
        ('"89701012345678901234"', "89701012345678901234"),
        ("8970101234567890123F", "8970101234567890123"),
        ("ICCID: 8970101234567890123", "8970101234567890123"),
        ("98070121436587092143", "89701012345678901234"),  # Huawei ^ICCID?: nibble-swapped
    ],
)
def test_iccid_answers(answer: str, iccid: str) -> None:
    assert normalize_iccid(answer) == iccid


def test_iccid_from_crsm() -> None:
    assert iccid_from_crsm('144,0,"98070121436587092143"') == "89701012345678901234"
    assert iccid_from_crsm('144,0,"980701214365870921F3"') == "8970101234567890123"
    with pytest.raises(ParseError):
        iccid_from_crsm('148,4,""')
    with pytest.raises(ParseError):
        normalize_iccid("12")


def test_numbers() -> None:
    assert parse_number_entry('"","+79281234567",145') == "79281234567"
    assert parse_number_entry('1,"79281234567",129,"Own"') == "79281234567"
    assert parse_number_entry('"Me","",129') is None


def test_cpms_usage() -> None:
    assert parse_cpms_usage("3,30,3,30,3,30") == (3, 30)
    assert parse_cpms_usage('"SM",2,20,"SM",2,20') == (2, 20)


def test_cnmi_choice_follows_what_the_modem_offers() -> None:
    assert choose_cnmi(parse_cnmi_ranges("(0-2),(0-3),(0,2),(0-2),(0,1)"))[0] == (2, 1, 0, 0, 0)
    assert choose_cnmi(parse_cnmi_ranges("(0-2),(0-3),(2),(0-2),(0,1)"))[0] == (2, 1, 2, 1, 0)
    assert choose_cnmi(parse_cnmi_ranges("(1),(1),(0),(0),(0)"))[0] == (1, 1, 0, 0, 0)
    assert choose_cnmi(None)[0] == (2, 1, 0, 0, 0)


def test_list_entry() -> None:
    assert parse_list_entry("3,1,,25") == (3, 1)
    with pytest.raises(ParseError):
        parse_list_entry("x,1")
