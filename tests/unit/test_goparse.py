import pytest

from hbd.services import goparse


@pytest.mark.parametrize(("text", "binary", "value"), [
    ("10", False, 10), ("10m", False, 10_000_000), ("10 m", False, 10_000_000),
    ("1.5k", False, 1500), ("1KiB", False, 1000), ("1kb", False, 1000),
    ("1m", True, 1024 * 1024), ("2g", True, 2 * 1024**3), ("5 ", False, 5),
    ("100000000000000000000", False, goparse.INT64_MIN),
])
def test_size(text: str, binary: bool, value: int) -> None:
    assert goparse.size(text, binary) == value


@pytest.mark.parametrize(("text", "message"), [
    ("abc", "invalid size: 'abc'"), ("-1", "invalid size: '-1'"), ("1e3", "invalid size: '1e3'"),
    (".5k", "invalid size: '.5k'"), ("5.", "invalid size: '5.'"), ("1kbb", "invalid size: '1kbb'"),
    ("\u0661", "invalid size: '\u0661'"), ("5\n", "invalid size: '5\n'"),
    ("1.5.3", 'strconv.ParseFloat: parsing "1.5.3": invalid syntax'),
])
def test_size_refuses(text: str, message: str) -> None:
    with pytest.raises(ValueError) as e:
        goparse.size(text)
    assert str(e.value) == message


def test_atoi_and_parse_bool() -> None:
    assert goparse.atoi("+3") == 3 and goparse.atoi("-7") == -7
    for bad in (" 3", "3_0", "", "0x1"):
        with pytest.raises(ValueError, match="invalid syntax"):
            goparse.atoi(bad)
    assert goparse.parse_bool("T") is True and goparse.parse_bool("False") is False
    with pytest.raises(ValueError, match='parsing "yes"'):
        goparse.parse_bool("yes")
