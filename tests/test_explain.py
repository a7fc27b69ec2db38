"""The transparency statement (`gateway.privacy.explain`, `edgeveil policy explain|check`).

The statement is what residents read, so the tests check facts, not layout: every register
field, every selected quantity in everyday words, k, epsilon, the daily cap, the accuracy as
OpenDP computes it, the key rotation and the policy hash, in English and in Dutch, and the
same facts in the JSON form. Texts are compared with their whitespace folded, because long
sentences wrap.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import opendp.prelude as opendp
import pytest

from gateway.errors import ConfigError
from gateway.privacy import dp, policy
from gateway.privacy.explain import LANGUAGES, statement_json, statement_text
from gateway.privacy.policy import QUANTITY_NAMES, Policy
from protocol.messages import EVENT_CODES

from .command import edgeveil

ROOT = Path(__file__).resolve().parent.parent

# what each selection must be called, per language (everyday words, not the policy's names)
WORDS: dict[str, dict[str, tuple[str, ...]]] = {
    "en": {
        "temperature": ("temperature",),
        "humidity": ("air humidity",),
        "pressure": ("air pressure",),
        "pm1": ("fine dust", "PM1"),
        "pm2_5": ("fine dust", "PM2.5"),
        "pm10": ("fine dust", "PM10"),
        "co2": ("carbon dioxide (CO2)",),
        "noise": ("noise level",),
        "illuminance": ("light",),
        "motion": ("movement (PIR)",),
        "battery": ("battery voltage",),
        "people": ("number of people (people counter)",),
        "observations": ("nearby phones and other Bluetooth devices", "never identified"),
        "status": ("battery", "running time"),
        "event": ("restarts",),
    },
    "nl": {
        "temperature": ("temperatuur",),
        "humidity": ("luchtvochtigheid",),
        "pressure": ("luchtdruk",),
        "pm1": ("fijnstof", "PM1"),
        "pm2_5": ("fijnstof", "PM2,5"),
        "pm10": ("fijnstof", "PM10"),
        "co2": ("koolstofdioxide (CO2)",),
        "noise": ("geluidsniveau",),
        "illuminance": ("lichtsterkte",),
        "motion": ("beweging (PIR)",),
        "battery": ("batterijspanning",),
        "people": ("aantal mensen (personenteller)",),
        "observations": ("Bluetooth-apparaten in de buurt", "nooit herkend"),
        "status": ("batterij", "looptijd"),
        "event": ("herstarts",),
    },
}

# event codes said in words (motion: as movement)
EVENTS_SAID = (
    "boot", "sensor_fault", "low_battery", "queue_overflow", "config_applied",
    "config_rejected", "time_request", "counter_low",
)  # fmt: skip

PERSONAL = {
    "en": "the sensors see personal data (Bluetooth addresses of nearby devices); it is "
    "anonymised at the gateway and never leaves it",
    "nl": "de sensoren zien persoonsgegevens (Bluetooth-adressen van apparaten in de buurt); "
    "die worden in de gateway geanonimiseerd en verlaten de gateway nooit",
}
NO_PERSONAL = {"en": "no personal data", "nl": "geen persoonsgegevens"}

REGISTER = {
    "sensor_type": "luchtkwaliteitsmeter met PIR en Bluetooth-teller",
    "organisation": "Gemeente Voorbeeld, afdeling Openbare Ruimte",
    "contact": "sensoren@voorbeeld.example",
    "goal": "Drukte en luchtkwaliteit op het Marktplein volgen",
    "legal_ground": "publieke taak (AVG art. 6 lid 1 onder e)",
    "active_until": "2027-12-31",
}

CLIMATE_ONLY = {
    "name": "climate only",
    "register": REGISTER,
    "streams": [
        {"name": "climate", "message": "readings", "quantities": ["temperature", "humidity"]},
    ],
}


def flat(text: str) -> str:
    return " ".join(text.split())


def words_of(p: Policy) -> list[str]:
    keys: list[str] = []
    for s in p.streams:
        keys.extend(s.quantities if s.message == "readings" else [s.message])
    return keys


def opendp_accuracy(epsilon: float, max_contribution: int) -> float:
    """OpenDP's own figure, asked directly (not through gateway.privacy.dp)."""
    scale = max_contribution / epsilon
    return float(opendp.discrete_laplacian_scale_to_accuracy(scale, 0.05))


@pytest.fixture
def default() -> Policy:
    return policy.default()


@pytest.fixture
def filled(default: Policy) -> Policy:
    """The default policy with its register filled in (a city's real values)."""
    data = default.canonical()
    data["register"] = REGISTER
    data["streams"] = [
        {key: value for key, value in s.items() if value is not None} for s in data["streams"]
    ]
    return policy.parse(data, "filled")


# -- the text ------------------------------------------------------------------------------------


@pytest.mark.parametrize("lang", LANGUAGES)
def test_every_register_field_value_is_in_the_statement(filled: Policy, lang: str) -> None:
    text = flat(statement_text(filled, lang))
    for value in REGISTER.values():
        assert value in text, value
    assert filled.hash in text


@pytest.mark.parametrize("lang", LANGUAGES)
def test_the_default_register_values_are_shown_and_flagged(default: Policy, lang: str) -> None:
    text = flat(statement_text(default, lang))
    register = default.register
    sensor_type = register.sensor_type
    assert isinstance(sensor_type, dict) and sensor_type[lang] in text
    unset = {"en": "not set: fill in a contact address for residents",
             "nl": "niet ingevuld: vul een contactadres voor bewoners in"}[lang]  # fmt: skip
    assert unset in text and register.text("contact", lang) is None
    warning = {"en": "not filled in yet", "nl": "nog niet ingevuld"}[lang]
    assert warning in text


@pytest.mark.parametrize("lang", LANGUAGES)
def test_every_stream_is_said_in_everyday_words(default: Policy, lang: str) -> None:
    text = flat(statement_text(default, lang))
    for key in words_of(default):
        for word in WORDS[lang][key]:
            assert word.lower() in text.lower(), (key, word)
    # the policy's own names for quantities do not show through
    for raw in ("pm2_5", "illuminance", "humidity ", "distinct_devices", "p90"):
        assert raw not in text


@pytest.mark.parametrize("lang", LANGUAGES)
def test_the_gateways_own_alarm_is_named_whatever_the_policy(default: Policy, lang: str) -> None:
    text = flat(statement_text(default, lang))
    said = {"en": "an alarm without any content", "nl": "een alarm zonder inhoud"}[lang]
    assert said in text and "(counter_reuse)" in text
    assert statement_json(default)["gateway_alarms"][0]["name"] == "counter_reuse"


@pytest.mark.parametrize("lang", LANGUAGES)
def test_granularity(default: Policy, lang: str) -> None:
    text = flat(statement_text(default, lang))
    expected = {
        "en": ("the average, lowest and highest value, per zone every 15 minutes",
               "each report, per sensor box, as it arrives"),
        "nl": ("de gemiddelde, laagste en hoogste waarde, per zone elk kwartier",
               "elk bericht, per sensorkastje, zodra het binnenkomt"),
    }[lang]  # fmt: skip
    for phrase in expected:
        assert phrase in text


def test_k_epsilon_cap_and_accuracy_quoted_with_opendps_figure(default: Policy) -> None:
    people = next(s for s in default.streams if s.message == "observations")
    assert people.noise is not None and people.k is not None
    n = round(opendp_accuracy(people.noise.epsilon, people.noise.max_contribution))
    assert n == round(dp.accuracy(people.noise, 0.05))
    en = flat(statement_text(default, "en"))
    # the threshold as it works: on the published (noisy) count, never the true one
    assert f"only when the published (noisy) count is at least {people.k}" in en
    assert "a small true count can be published and a larger one withheld" in en
    assert "epsilon 0.5 per count, at most 12.0 per day per zone" in en
    # both guarantees: one window's device, and a device present all day
    assert "A device seen within an hour is protected at epsilon 0.5" in en
    assert "a device present all day, at epsilon 12.0 at most" in en
    assert "enough for at most 24 counts per zone per day" in en
    assert "withheld until the next day" not in en  # the cap covers all 24 windows
    assert f"Counts are accurate to about ±{n} with 95% confidence" in en
    assert n == 6  # the figure for epsilon 0.5
    assert "replaced every hour" in en
    assert "working memory (RAM)" in en
    nl = flat(statement_text(default, "nl"))
    assert f"alleen gepubliceerd als het gepubliceerde aantal (met ruis) minstens {people.k}" in nl
    assert "epsilon 0,5 per telling, hooguit 12,0 per dag per zone" in nl
    assert "Een apparaat dat binnen een uur wordt gezien, is beschermd met epsilon 0,5" in nl
    assert "Is dat budget op, dan worden die dag geen tellingen meer gepubliceerd" in nl
    assert f"met 95% zekerheid nauwkeurig tot op ongeveer ±{n}" in nl
    assert "elk uur wordt vervangen" in nl
    assert "werkgeheugen (RAM)" in nl


def test_a_cap_short_of_a_day_of_windows_is_said_and_warned(tmp_path: Path) -> None:
    """15-minute people counts under the old cap of 2.0: 4 of 96 windows per zone and day."""
    text = (Path(policy.__file__).parent.parent / "policies" / "default.toml").read_text()
    text = text.replace("window_minutes = 60", "window_minutes = 15").replace(
        "daily_cap = 12.0", "daily_cap = 2.0"
    )
    short = tmp_path / "short.toml"
    short.write_text(text)
    p = policy.load(short)
    en, nl = (flat(statement_text(p, lang)) for lang in LANGUAGES)
    assert "fewer than the day's 96 windows: from the 5th window of a day on, counts are " in en
    assert "minder dan de 96 vensters van een dag: vanaf het 5e venster" in nl
    checked = edgeveil("policy", "check", "--policy", str(short))
    assert checked.returncode == 0, checked.stderr
    assert (
        "warning: people: its daily cap 2 pays for 4 of the 96 windows per zone and day; "
        "the other 92 are withheld (budget) every day"
    ) in checked.stdout
    shipped = edgeveil("policy", "check")
    assert "warning" not in shipped.stdout  # the default covers every hourly window


@pytest.mark.parametrize("lang", LANGUAGES)
def test_motion_events_are_said_only_when_the_policy_lets_them_pass(lang: str) -> None:
    motion = {"en": "movement noticed by its motion sensor", "nl": "beweging die de "
              "bewegingsmelder opmerkt"}[lang]  # fmt: skip
    every = policy.parse({"streams": [{"name": "e", "message": "event", "action": "pass"}]})
    assert motion in flat(statement_text(every, lang))
    assert motion not in flat(statement_text(policy.default(), lang))
    demo = policy.load(Path(policy.__file__).parent.parent / "policies" / "demo.toml")
    assert motion not in flat(statement_text(demo, lang))


def test_accuracy_follows_the_policys_noise() -> None:
    data: dict[str, Any] = {
        "streams": [
            {
                "name": "people",
                "message": "observations",
                "k": 10,
                "noise": {"epsilon": 0.2, "daily_cap": 1.0, "max_contribution": 2},
            }
        ]
    }
    p = policy.parse(data)
    n = round(opendp_accuracy(0.2, 2))
    assert n > 6  # less epsilon, more contribution: less accurate than the default
    assert f"about ±{n} with 95% confidence" in flat(statement_text(p, "en"))
    assert f"ongeveer ±{n}" in flat(statement_text(p, "nl"))
    assert "at most 5 counts per zone per day" in flat(statement_text(p, "en"))


@pytest.mark.parametrize("lang", LANGUAGES)
def test_personal_data_sentence(default: Policy, lang: str) -> None:
    assert default.contains_personal_data
    text = flat(statement_text(default, lang)).lower()
    assert PERSONAL[lang].lower() in text
    assert NO_PERSONAL[lang] not in text

    climate = policy.parse(CLIMATE_ONLY)
    assert not climate.contains_personal_data
    text = flat(statement_text(climate, lang)).lower()
    assert PERSONAL[lang].lower() not in text
    assert NO_PERSONAL[lang] in text
    assert "pseudonym" not in text  # no keys, no pseudonyms to speak of


def test_forwarded_pseudonyms_are_not_called_anonymous() -> None:
    data: dict[str, Any] = {
        "streams": [
            {
                "name": "people",
                "message": "observations",
                "k": 5,
                "noise": {},
                "forward_pseudonyms": True,
                "key_rotation_minutes": 60,
            }
        ]
    }
    p = policy.parse(data)
    en = flat(statement_text(p, "en"))
    assert "pseudonymised data is still personal data" in en
    assert "never leaves it" not in en
    assert "and the pseudonyms made from them" not in en  # they do leave
    assert "every hour" in en
    assert "the noise no longer protects these counts" in en
    nl = flat(statement_text(p, "nl"))
    assert "gepseudonimiseerde gegevens blijven persoonsgegevens" in nl
    assert "elk uur" in nl


def test_key_rotation_is_the_engines_whole_windows() -> None:
    """A key_rotation_minutes that is not a whole number of windows is rounded down by the
    engine (pseudonyms.rotation_seconds): the statement says what the engine does."""
    stream = {"name": "people", "message": "observations", "k": 5, "noise": {}}
    p = policy.parse({"streams": [{**stream, "key_rotation_minutes": 40}]})
    assert "replaced every half hour" in flat(statement_text(p, "en"))
    assert statement_json(p)["streams"][0]["key_rotation_minutes"] == 30


def test_k_on_readings_is_about_readings_not_people() -> None:
    stream = {"name": "air", "message": "readings", "quantities": ["pm10"], "k": 3}
    p = policy.parse({"streams": [stream]})
    assert "Summaries of fewer than 3 readings are not published" in flat(statement_text(p))
    assert "Samenvattingen van minder dan 3 metingen" in flat(statement_text(p, "nl"))


@pytest.mark.parametrize("lang", LANGUAGES)
def test_what_never_leaves(default: Policy, lang: str) -> None:
    text = flat(statement_text(default, lang))
    expected = {
        "en": ("What never leaves the gateway", "Bluetooth addresses",
               "The secret keys for the pseudonyms", "Anything not listed above",
               "number of people (people counter)"),
        "nl": ("Wat de gateway nooit doorgeeft", "Bluetooth-adressen",
               "De geheime sleutels voor de pseudoniemen", "Alles wat hierboven niet staat",
               "aantal mensen (personenteller)"),
    }[lang]  # fmt: skip
    for phrase in expected:
        assert phrase in text


@pytest.mark.parametrize("name", QUANTITY_NAMES)
def test_every_quantity_has_words_in_both_languages(name: str) -> None:
    stream = {"name": "one", "message": "readings", "quantities": [name]}
    p = policy.parse({"streams": [stream]})
    for lang in LANGUAGES:
        text = flat(statement_text(p, lang)).lower()
        for word in WORDS[lang][name]:
            assert word.lower() in text, (name, lang, word)


def test_every_event_code_has_words() -> None:
    p = policy.parse({"streams": [{"name": "events", "message": "event", "action": "pass"}]})
    data = statement_json(p)
    assert set(EVENT_CODES) == {*EVENTS_SAID, "motion"}
    for lang in LANGUAGES:
        what = data["streams"][0]["what"][lang]
        for code in EVENTS_SAID:
            assert code not in what
        for word in WORDS[lang]["event"]:
            assert word in what
        assert {"en": "motion sensor", "nl": "bewegingsmelder"}[lang] in what  # all events


def test_deterministic(default: Policy) -> None:
    again = policy.default()
    for lang in LANGUAGES:
        assert statement_text(default, lang) == statement_text(again, lang)
    assert json.dumps(statement_json(default)) == json.dumps(statement_json(again))


def test_unknown_language(default: Policy) -> None:
    with pytest.raises(ValueError, match="en, nl"):
        statement_text(default, "de")


# -- the JSON form -------------------------------------------------------------------------------


def test_json_round_trips_and_has_the_same_facts(filled: Policy) -> None:
    data = statement_json(filled)
    assert json.loads(json.dumps(data)) == data
    assert data["policy"]["hash"] == filled.hash
    assert data["policy"]["name"] == filled.name
    for key, value in REGISTER.items():
        assert data["register"][key] == value
    assert data["register"]["contains_personal_data"] is True
    assert data["register"]["complete"] is True
    for lang in LANGUAGES:
        assert data["statement"][lang] == statement_text(filled, lang)
        assert PERSONAL[lang].lower() in data["register"]["personal_data"][lang].lower()
    by_name = {s["name"]: s for s in data["streams"]}
    assert list(by_name) == [s.name for s in filled.streams]
    people = by_name["people"]
    assert people["message"] == "observations"
    assert people["personal_data"] is True
    assert people["k"] == 5
    assert people["epsilon"] == 0.5
    assert people["daily_cap"] == 12.0
    assert people["max_releases_per_day"] == 24
    assert people["accuracy_95"] == round(opendp_accuracy(0.5, 1))
    assert people["key_rotation_minutes"] == 60
    assert people["forward_pseudonyms"] is False
    assert people["statistics"] == ["distinct_devices"]
    assert f"±{people['accuracy_95']}" in data["statement"]["en"]
    env = by_name["environment"]
    assert env["what"]["quantities"][:2] == ["temperature", "humidity"]
    assert env["window_minutes"] == 15
    assert env["group_by"] == "zone"
    assert env["statistics"] == ["mean", "min", "max"]
    assert env["k"] is None and env["epsilon"] is None and env["accuracy_95"] is None
    assert env["personal_data"] is False
    assert env["retention"] == filled.streams[0].retention
    assert "per zone every 15 minutes" in env["granularity"]["en"]
    health = by_name["health"]
    assert health["action"] == "pass"
    assert health["window_minutes"] is None
    assert health["group_by"] == "node"
    assert data["dropped"] == {"quantities": ["battery", "people"], "messages": []}


def test_json_without_personal_data() -> None:
    data = statement_json(policy.parse(CLIMATE_ONLY))
    assert data["register"]["contains_personal_data"] is False
    assert NO_PERSONAL["en"] in data["register"]["personal_data"]["en"].lower()
    assert data["dropped"]["messages"] == ["observations", "status", "event"]
    (stream,) = data["streams"]
    assert stream["key_rotation_minutes"] is None
    assert stream["personal_data"] is False


# -- the command ---------------------------------------------------------------------------------


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("edgeveil policy: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.mark.parametrize("lang", LANGUAGES)
def test_cli_explain(default: Policy, lang: str) -> None:
    result = edgeveil("policy", "explain", "--language", lang)
    assert result.returncode == 0, result.stderr
    assert result.stdout == statement_text(default, lang)


def test_cli_explain_a_file_as_json(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(
        'name = "climate only"\n[[streams]]\nname = "climate"\nmessage = "readings"\n'
        'quantities = ["temperature", "humidity"]\n',
        encoding="utf-8",
    )
    result = edgeveil("policy", "explain", "--policy", str(path), "--format", "json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["policy"]["name"] == "climate only"
    assert data["register"]["contains_personal_data"] is False
    assert data["policy"]["hash"] == policy.load(path).hash


def test_cli_check(default: Policy) -> None:
    result = edgeveil("policy", "check")
    assert result.returncode == 0, result.stderr
    assert default.hash in result.stdout
    assert "register not filled in: organisation" in result.stdout


def test_cli_takes_the_policy_the_gateway_configuration_names(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(
        'name = "configured"\n[[streams]]\nname = "climate"\nmessage = "readings"\n'
        'quantities = ["temperature"]\n',
        encoding="utf-8",
    )
    config = tmp_path / "gateway.toml"
    config.write_text(f'[privacy]\npolicy = "{path}"\n', encoding="utf-8")
    result = edgeveil("policy", "explain", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Transparency statement: configured")
    result = edgeveil("policy", "check", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{path}: ok")
    # --policy wins over the configuration; a configuration without [privacy]: the default
    result = edgeveil("policy", "check", "--config", str(config), "--policy", str(path))
    assert result.returncode == 0, result.stderr
    config.write_text("", encoding="utf-8")
    result = edgeveil("policy", "check", "--config", str(config))
    assert result.stdout.startswith("default policy: ok")
    config.write_text("[privacy]\npolcy = 1\n", encoding="utf-8")
    assert_one_line_error(edgeveil("policy", "check", "--config", str(config)), "privacy.polcy")


BAD_POLICIES = [
    pytest.param(
        '[[streams]]\nname = "people"\nmessage = "observations"\nk = 1\nnoise = {}\n',
        ("streams[0] (people).k", "2..1000"),
        id="bad-k",
    ),
    pytest.param(
        '[[streams]]\nname = "people"\nmessage = "observations"\nk = 5\n',
        ("streams[0] (people)", "needs both k and noise"),
        id="observations-without-noise",
    ),
    pytest.param(
        '[[streams]]\nname = "people"\nmessage = "observations"\nk = 5\nnoise = { epsilon = 0 }\n',
        ("streams[0] (people).noise.epsilon",),
        id="bad-epsilon",
    ),
    pytest.param(
        '[[streams]]\nname = "air"\nmessage = "readings"\nquantities = ["pm25"]\n',
        ("streams[0] (air).quantities", "pm25"),
        id="unknown-quantity",
    ),
    pytest.param("[register]\norganisation = 5\n", ("register.organisation",), id="register"),
    pytest.param('[[streams]\nname = "x"\n', ("not valid TOML",), id="invalid-toml"),
    pytest.param(
        '[[streams]]\nname = "air"\nmessage = "readings"\nquantities = ["pm10"]\nnoise = {}\n',
        ("streams[0] (air).noise", "observations"),
        id="refused-by-the-engine",  # valid schema, but the gateway would not run it
    ),
    pytest.param(
        '[[streams]]\nname = "people"\nmessage = "observations"\nk = 5\n'
        'noise = { epsilon = "high" }\n',
        ("streams[0] (people).noise.epsilon", "must be a number"),
        id="wrong-type",
    ),
]


@pytest.mark.parametrize(("text", "needles"), BAD_POLICIES)
@pytest.mark.parametrize("command", ["explain", "check"])
def test_cli_bad_policy_is_one_line_naming_the_key(
    tmp_path: Path, text: str, needles: tuple[str, ...], command: str
) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(text, encoding="utf-8")
    assert_one_line_error(edgeveil("policy", command, "--policy", str(path)), str(path), *needles)


def test_cli_missing_or_binary_policy_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    assert_one_line_error(edgeveil("policy", "explain", "--policy", str(missing)), str(missing))
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe[\x00")
    assert_one_line_error(edgeveil("policy", "check", "--policy", str(binary)), "UTF-8")


# English words that are no Dutch words: none may show in a Dutch statement
ENGLISH = (
    "the", "and", "not set", "fill in", "with", "environmental", "climate", "quality",
    "counting", "device", "public task", "GDPR", "counts", "published", "window",
)  # fmt: skip


@pytest.mark.parametrize("which", ["default", "demo", "filled"])
def test_the_dutch_statement_is_dutch_throughout(which: str, filled: Policy) -> None:
    chosen = {
        "default": policy.default(),
        "demo": policy.load(Path(policy.__file__).parent.parent / "policies" / "demo.toml"),
        "filled": filled,
    }[which]
    text = flat(statement_text(chosen, "nl"))
    text = text.replace(chosen.name, "")  # the policy's own name is a name
    for word in ENGLISH:
        assert not re.search(rf"\b{re.escape(word)}\b", text, re.IGNORECASE), word
    assert "niet ingevuld" in text or which == "filled"


def test_register_fields_by_language(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(
        '[register]\ngoal = { en = "Measure air quality", nl = "Luchtkwaliteit meten" }\n'
        'organisation = "Gemeente Voorbeeld"\n'
        '[[streams]]\nname = "c"\nmessage = "readings"\nquantities = ["temperature"]\n'
    )
    p = policy.load(path)
    assert "Measure air quality" in statement_text(p, "en")
    assert "Luchtkwaliteit meten" in statement_text(p, "nl")
    assert "Gemeente Voorbeeld" in statement_text(p, "nl")  # one text for every language
    assert statement_json(p)["register"]["goal"] == "Measure air quality"
    bad = tmp_path / "bad.toml"
    bad.write_text("[register]\ngoal = { en = 3 }\n")
    with pytest.raises(ConfigError, match=r"register\.goal"):
        policy.load(bad)


@pytest.mark.parametrize("lang", LANGUAGES)
def test_a_release_that_covers_part_of_its_window_is_explained(lang: str) -> None:
    said = {"en": "covers only the part of its window since then",
            "nl": "beslaat alleen het deel van het venster sindsdien"}[lang]  # fmt: skip
    assert said in flat(statement_text(policy.default(), lang))
    passing = policy.parse({"streams": [{"name": "s", "message": "status", "action": "pass"}]})
    assert said not in flat(statement_text(passing, lang))  # nothing aggregated: not said
