"""The transparency statement: a privacy policy in plain words, for the people who live with the
sensors (ARCHITECTURE.md, rule 4: the policy the gateway runs on renders as this statement).

`statement_text(policy, "en" | "nl")` writes it in English or Dutch; `statement_json(policy)`
gives the same facts as data (with both texts), for the gateway to publish retained on MQTT
and for a city's sensor register to import.

Everything is derived from the policy: what is measured (from the streams' messages and
quantities), what leaves and at what granularity, what never leaves, small-count suppression
(k), the noise (epsilon, daily cap) and its accuracy as OpenDP computes it, pseudonym keys,
retention, the register fields and the policy's hash. Free-text fields of the policy (register
values, a stream's own `retention` text) are quoted as written; a register field may be given
per language ({ en = "...", nl = "..." }), and one not filled in ("not set") is said in the
statement's language, as is the schema's default retention text.

The statement describes what the privacy engine (engine.py) does with the policy, not just
what the file says: the key rotation is the engine's (`key_rotation_minutes` rounded down to
whole windows, pseudonyms.rotation_seconds); `k` on a readings stream withholds summaries of
fewer than k readings, on observations it withholds counts below k; the daily cap is booked
per stream and zone (or node) and UTC day (ledger.py), so it also gives the most counts a day
can have. Policies the engine refuses (`engine.check`) are refused by `edgeveil policy` too.

The output is deterministic: the same policy gives the same text, byte for byte (no dates, no
dictionary-order surprises), so a published statement can be compared and cited.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable
from dataclasses import fields
from decimal import Decimal
from typing import Any

from protocol.messages import EVENT_CODES

from . import dp
from .ledger import KEEP_DAYS
from .policy import (
    MESSAGES,
    QUANTITY_NAMES,
    Policy,
    Register,
    Stream,
    releases_per_day,
    windows_per_day,
)
from .pseudonyms import rotation_seconds

LANGUAGES = ("en", "nl")
ALPHA = 0.05  # accuracy is quoted at 95 % confidence
WIDTH = 78
FORMAT = "edgeveil-transparency/1"  # the JSON document's version

# --- words ------------------------------------------------------------------------------------
# Every table is keyed by language. Quantities in everyday words, in the registry's order.

_QUANTITY: dict[str, dict[str, str]] = {
    "temperature": {"en": "temperature", "nl": "temperatuur"},
    "humidity": {"en": "air humidity", "nl": "luchtvochtigheid"},
    "pressure": {"en": "air pressure", "nl": "luchtdruk"},
    "battery": {"en": "battery voltage", "nl": "batterijspanning"},
    "co2": {"en": "carbon dioxide (CO2)", "nl": "koolstofdioxide (CO2)"},
    "noise": {"en": "noise level", "nl": "geluidsniveau"},
    "illuminance": {"en": "light", "nl": "lichtsterkte"},
    "motion": {"en": "movement (PIR)", "nl": "beweging (PIR)"},
    "people": {"en": "number of people (people counter)", "nl": "aantal mensen (personenteller)"},
}
_PM = {"pm1": "PM1", "pm2_5": "PM2.5", "pm10": "PM10"}  # fine dust, shown as one group
_FINE_DUST = {"en": "fine dust", "nl": "fijnstof"}

# The longer form, in "What is measured": what the quantity is and what it is not.
_QUANTITY_MORE: dict[str, dict[str, str]] = {
    "noise": {
        "en": "noise level (how loud it is, in decibels; never the sound itself)",
        "nl": "geluidsniveau (hoe hard het is, in decibel; nooit het geluid zelf)",
    },
    "motion": {
        "en": "movement (a PIR motion sensor notices that something moves, not who or what)",
        "nl": "beweging (een PIR-bewegingsmelder merkt dat er iets beweegt, niet wie of wat)",
    },
}

_DEVICES = {
    "en": "nearby phones and other Bluetooth devices",
    "nl": "telefoons en andere Bluetooth-apparaten in de buurt",
}
_HEALTH = {
    "en": "the sensor boxes' own state (battery, running time, free memory, cause of the last "
    "restart, message statistics, software version, clock status)",
    "nl": "de technische toestand van de sensorkastjes (batterij, looptijd, vrij geheugen, "
    "oorzaak van de laatste herstart, berichtenstatistiek, softwareversie, klokstatus)",
}
# Event codes (protocol.messages.EVENT_CODES) in words; "motion" is said separately.
_EVENTS: dict[str, dict[str, str]] = {
    "boot": {"en": "restarts", "nl": "herstarts"},
    "sensor_fault": {"en": "a failing sensor", "nl": "een defecte sensor"},
    "low_battery": {"en": "low battery", "nl": "een bijna lege batterij"},
    "queue_overflow": {"en": "lost messages", "nl": "verloren berichten"},
    "config_applied": {"en": "new settings", "nl": "nieuwe instellingen"},
    "config_rejected": {"en": "new settings", "nl": "nieuwe instellingen"},
    "time_request": {"en": "requests for the time", "nl": "verzoeken om de tijd"},
    "counter_low": {
        "en": "a box that must soon be replaced",
        "nl": "een kastje dat binnenkort vervangen moet worden",
    },
}
_MOTION_EVENTS = {
    "en": "movement noticed by its motion sensor",
    "nl": "beweging die de bewegingsmelder opmerkt",
}

# Statistics: (mean, min, max) read as adjectives of one "value"; the others as nouns.
_ADJECTIVES: dict[str, dict[str, str]] = {
    "mean": {"en": "average", "nl": "gemiddelde"},
    "min": {"en": "lowest", "nl": "laagste"},
    "max": {"en": "highest", "nl": "hoogste"},
}
_NOUNS: dict[str, dict[str, str]] = {
    "count": {"en": "the number of readings", "nl": "het aantal metingen"},
    "sum": {"en": "the total", "nl": "het totaal"},
    "p50": {"en": "the median", "nl": "de mediaan"},
    "distinct_devices": {
        "en": "the number of different devices",
        "nl": "het aantal verschillende apparaten",
    },
}
_MOTION_SUM = {
    "en": "the number of movements noticed",
    "nl": "het aantal keren dat er beweging is opgemerkt",
}

_UNIT = {
    "zone": {"en": "zone", "nl": "zone"},
    "node": {"en": "sensor box", "nl": "sensorkastje"},
}
_PASS = {
    "readings": {"en": "every reading of each sensor box, as measured",
                 "nl": "elke meting van elk sensorkastje, zoals gemeten"},
    "status": {"en": "each report, per sensor box, as it arrives",
               "nl": "elk bericht, per sensorkastje, zodra het binnenkomt"},
    "event": {"en": "each event, per sensor box, with its time, as it happens",
              "nl": "elke gebeurtenis, per sensorkastje, met tijdstip, zodra die plaatsvindt"},
}  # fmt: skip

_REGISTER_LABELS: dict[str, dict[str, str]] = {
    "sensor_type": {"en": "Sensor type", "nl": "Soort sensor"},
    "organisation": {"en": "Organisation", "nl": "Organisatie"},
    "contact": {"en": "Contact", "nl": "Contact"},
    "goal": {"en": "Goal", "nl": "Doel"},
    "legal_ground": {"en": "Legal ground", "nl": "Wettelijke grondslag"},
    "personal_data": {"en": "Personal data", "nl": "Persoonsgegevens"},
    "active_until": {"en": "Active until", "nl": "Actief tot"},
}
_REGISTER_ORDER = (
    "sensor_type", "organisation", "contact", "goal", "legal_ground", "personal_data",
    "active_until",
)  # fmt: skip

_T: dict[str, dict[str, str]] = {
    "title": {"en": "Transparency statement: {name}", "nl": "Transparantieverklaring: {name}"},
    "intro": {
        "en": "This statement explains in plain words what the sensors here measure and what "
        "of it is passed on. Each sensor box sends its measurements to a gateway nearby: a "
        "small computer that decides what may go further. This text is generated from the "
        "same policy the gateway runs on; the fingerprint at the end identifies that policy.",
        "nl": "Deze verklaring legt in gewone taal uit wat de sensoren hier meten en wat daarvan "
        "wordt doorgegeven. Elk sensorkastje stuurt zijn metingen naar een gateway in de buurt: "
        "een kleine computer die bepaalt wat verder mag. Deze tekst is gemaakt uit hetzelfde "
        "beleid waarmee de gateway werkt; de vingerafdruk aan het eind geeft aan om welk "
        "beleid het gaat.",
    },
    "h_register": {"en": "About these sensors", "nl": "Over deze sensoren"},
    "h_measured": {"en": "What is measured", "nl": "Wat er wordt gemeten"},
    "h_leaves": {"en": "What leaves the gateway", "nl": "Wat de gateway doorgeeft"},
    "h_never": {"en": "What never leaves the gateway", "nl": "Wat de gateway nooit doorgeeft"},
    "h_retention": {"en": "How long data is kept", "nl": "Hoe lang gegevens worden bewaard"},
    "h_hash": {"en": "Policy fingerprint", "nl": "Vingerafdruk van het beleid"},
    "personal_yes": {
        "en": "Yes. The sensors see personal data ({what}); it is anonymised at the gateway "
        "and never leaves it.",
        "nl": "Ja. De sensoren zien persoonsgegevens ({what}); die worden in de gateway "
        "geanonimiseerd en verlaten de gateway nooit.",
    },
    "personal_forwarded": {
        "en": "Yes. The sensors see personal data ({what}). The gateway replaces the addresses "
        "by pseudonyms that change {every} and passes those pseudonyms on; pseudonymised data "
        "is still personal data.",
        "nl": "Ja. De sensoren zien persoonsgegevens ({what}). De gateway vervangt de adressen "
        "door pseudoniemen die {every} veranderen en geeft die pseudoniemen door; "
        "gepseudonimiseerde gegevens blijven persoonsgegevens.",
    },
    "personal_what": {
        "en": "Bluetooth addresses of nearby devices",
        "nl": "Bluetooth-adressen van apparaten in de buurt",
    },
    "personal_no": {
        "en": "No personal data: nothing this policy lets through is about people or their "
        "devices.",
        "nl": "Geen persoonsgegevens: niets wat dit beleid doorlaat, gaat over mensen of hun "
        "apparaten.",
    },
    "partial": {
        "en": "The gateway keeps nothing of a window across a restart or a change of this "
        "policy: the first summary or count after one covers only the part of its window since "
        'then, and says so ("covered": the seconds it covers).',
        "nl": "Over een herstart van de gateway of een wijziging van dit beleid heen bewaart de "
        "gateway niets van een venster: de eerste samenvatting of telling daarna beslaat alleen "
        'het deel van het venster sindsdien, en zegt dat ook ("covered": het aantal seconden '
        "dat ze beslaat).",
    },
    "unset_sensor_type": {"en": "not set", "nl": "niet ingevuld"},
    "unset_organisation": {
        "en": "not set: fill in the organisation responsible",
        "nl": "niet ingevuld: vul de verantwoordelijke organisatie in",
    },
    "unset_contact": {
        "en": "not set: fill in a contact address for residents",
        "nl": "niet ingevuld: vul een contactadres voor bewoners in",
    },
    "unset_goal": {
        "en": "not set: fill in why the sensors are there",
        "nl": "niet ingevuld: vul in waarom de sensoren er zijn",
    },
    "unset_legal_ground": {
        "en": "not set: e.g. public task (GDPR art. 6(1)(e))",
        "nl": "niet ingevuld: bijvoorbeeld publieke taak (AVG art. 6 lid 1 onder e)",
    },
    "unset_active_until": {"en": "not set", "nl": "niet ingevuld"},
    "register_unset": {
        "en": "Some of these fields are not filled in yet. Until they are, this policy is not "
        "ready for use in public space.",
        "nl": "Een deel van deze velden is nog niet ingevuld. Zolang dat zo is, is dit beleid "
        "niet klaar voor gebruik in de openbare ruimte.",
    },
    "measured": {"en": "The sensors measure {what}.", "nl": "De sensoren meten {what}."},
    "measured_devices": {
        "en": "They also notice nearby phones and other Bluetooth devices: these are counted, "
        "never identified.",
        "nl": "Ook merken ze telefoons en andere Bluetooth-apparaten in de buurt op: die worden "
        "geteld, nooit herkend.",
    },
    "measured_devices_forwarded": {
        "en": "They also notice nearby phones and other Bluetooth devices: these are counted and "
        "given pseudonyms (see below), never identified by their address.",
        "nl": "Ook merken ze telefoons en andere Bluetooth-apparaten in de buurt op: die worden "
        "geteld en krijgen een pseudoniem (zie hieronder), maar worden nooit herkend aan hun "
        "adres.",
    },
    "measured_health": {
        "en": "In addition, the sensor boxes report on their own state: battery, running time, "
        "memory and restarts.",
        "nl": "Daarnaast melden de sensorkastjes hoe het met ze gaat: batterij, looptijd, "
        "geheugen en herstarts.",
    },
    "leaves_intro": {
        "en": "Only the following leaves the gateway; everything else is dropped there.",
        "nl": "Alleen het volgende verlaat de gateway; al het andere wordt daar weggegooid.",
    },
    "alarm": {
        "en": "Whatever this policy says, an alarm without any content when a sensor box's "
        "identity is used by two devices (a copied box or a restored backup), on that box's "
        "event topic, at most once an hour (counter_reuse).",
        "nl": "Wat dit beleid ook zegt, een alarm zonder inhoud wanneer de identiteit van een "
        "sensorkastje door twee apparaten wordt gebruikt (een gekopieerd kastje of een "
        "teruggezette back-up), op het gebeurtenissenkanaal van dat kastje, hooguit eens per "
        "uur (counter_reuse).",
    },
    "zone": {
        "en": "A zone is an area, such as a street or a square, with one or more sensor boxes.",
        "nl": "Een zone is een gebied, zoals een straat of plein, met een of meer sensorkastjes.",
    },
    "granularity": {"en": "per {unit} {every}", "nl": "per {unit} {every}"},
    "k_readings": {
        "en": "Summaries of fewer than {k} readings are not published.",
        "nl": "Samenvattingen van minder dan {k} metingen worden niet gepubliceerd.",
    },
    "k": {
        "en": "A count is published only when the published (noisy) count is at least {k}. "
        "Because of the noise, a small true count can be published and a larger one withheld: "
        "the threshold is applied after the noise on purpose, since a threshold on the true "
        "count would itself tell whether few people were there.",
        "nl": "Een aantal wordt alleen gepubliceerd als het gepubliceerde aantal (met ruis) "
        "minstens {k} is. Door de ruis kan een klein werkelijk aantal wel worden gepubliceerd "
        "en een groter niet: de drempel geldt bewust na de ruis, want een drempel op het "
        "werkelijke aantal zou zelf verraden dat er maar weinig mensen waren.",
    },
    "noise": {
        "en": "Random noise is added to each count, so that the numbers reveal next to nothing "
        "about any single device (differential privacy): epsilon {epsilon} per count, at most "
        "{cap} per day per {unit}. Epsilon measures how much a count can reveal: the smaller, "
        "the more private. A device seen within {window} is protected at epsilon {epsilon}; a "
        "device present all day, at epsilon {cap} at most. When that budget is spent, no more "
        "counts are published that day; it is enough for at most {releases} per {unit} per "
        "day (days count in UTC).",
        "nl": "Aan elk aantal wordt willekeurige ruis toegevoegd, zodat de cijfers vrijwel niets "
        "verraden over één afzonderlijk apparaat (differentiële privacy): epsilon {epsilon} per "
        "telling, hooguit {cap} per dag per {unit}. Epsilon is een maat voor hoeveel een aantal "
        "kan verraden: hoe kleiner, hoe beter de privacy. Een apparaat dat binnen {window} "
        "wordt gezien, is beschermd met epsilon {epsilon}; een apparaat dat de hele dag "
        "aanwezig is, met hooguit epsilon {cap}. Is dat budget op, dan worden die dag geen "
        "tellingen meer gepubliceerd; het is genoeg voor hooguit {releases} per {unit} per "
        "dag (dagen in UTC-tijd).",
    },
    "and": {"en": "and", "nl": "en"},
    "budget_short": {
        "en": "That is fewer than the day's {windows} windows: from the {next} window of a day "
        "on, counts are withheld until the next day.",
        "nl": "Dat is minder dan de {windows} vensters van een dag: vanaf het {next_nl} venster "
        "van een dag worden tellingen tot de volgende dag achtergehouden.",
    },
    "releases": {"en": "{n} counts", "nl": "{n} tellingen"},
    "release_one": {"en": "1 count", "nl": "1 telling"},
    "accuracy": {
        "en": "Counts are accurate to about ±{n} with 95% confidence.",
        "nl": "De gepubliceerde aantallen zijn met 95% zekerheid nauwkeurig tot op ongeveer ±{n}.",
    },
    "pseudonyms": {
        "en": "Bluetooth addresses are replaced at the gateway by pseudonyms, made with a secret "
        "key that is replaced {every}; only the count leaves the gateway.",
        "nl": "Bluetooth-adressen worden in de gateway vervangen door pseudoniemen, gemaakt met "
        "een geheime sleutel die {every} wordt vervangen; alleen het aantal verlaat de gateway.",
    },
    "pseudonyms_forwarded": {
        "en": "Bluetooth addresses are replaced at the gateway by pseudonyms, made with a secret "
        "key that is replaced {every}. These pseudonyms are passed on as well: within {window} "
        "they show that the same device was seen again. Whoever receives them can count them, "
        "so the noise no longer protects these counts.",
        "nl": "Bluetooth-adressen worden in de gateway vervangen door pseudoniemen, gemaakt met "
        "een geheime sleutel die {every} wordt vervangen. Die pseudoniemen worden ook "
        "doorgegeven: binnen {window} laten ze zien dat hetzelfde apparaat opnieuw is gezien. "
        "Wie ze ontvangt, kan ze tellen: de ruis beschermt deze aantallen dan niet meer.",
    },
    "never_ids": {
        "en": "Bluetooth addresses or other identifiers of phones and devices, and the "
        "pseudonyms made from them.",
        "nl": "Bluetooth-adressen of andere kenmerken van telefoons en apparaten, en de "
        "pseudoniemen die ervan zijn gemaakt.",
    },
    "never_ids_forwarded": {
        "en": "Bluetooth addresses or other identifiers of phones and devices (only their "
        "pseudonyms, see above).",
        "nl": "Bluetooth-adressen of andere kenmerken van telefoons en apparaten (alleen hun "
        "pseudoniemen, zie hierboven).",
    },
    "never_ids_dropped": {
        "en": "Reports of nearby Bluetooth devices: if a sensor box sends them, the gateway "
        "drops them at once.",
        "nl": "Meldingen van Bluetooth-apparaten in de buurt: als een sensorkastje ze stuurt, "
        "gooit de gateway ze meteen weg.",
    },
    "never_keys": {
        "en": "The secret keys for the pseudonyms.",
        "nl": "De geheime sleutels voor de pseudoniemen.",
    },
    "never_single": {
        "en": "The readings of individual sensor boxes: only the summaries per zone listed "
        "above leave.",
        "nl": "De metingen van afzonderlijke sensorkastjes: alleen de samenvattingen per zone "
        "hierboven gaan naar buiten.",
    },
    "never_single_except": {
        "en": "The readings of individual sensor boxes, except {what} (see above).",
        "nl": "De metingen van afzonderlijke sensorkastjes, behalve {what} (zie hierboven).",
    },
    "never_rest": {
        "en": "Anything not listed above: the gateway drops it.",
        "nl": "Alles wat hierboven niet staat: de gateway gooit het weg.",
    },
    "never_rest_quantities": {
        "en": "With this policy that includes these measurements: {what}.",
        "nl": "Bij dit beleid gaat het onder meer om deze metingen: {what}.",
    },
    "never_rest_messages": {
        "en": "It also drops {what}.",
        "nl": "Ook gooit de gateway {what} weg.",
    },
    "dropped_status": {
        "en": "the sensor boxes' reports on their own state",
        "nl": "de berichten van de sensorkastjes over hun eigen toestand",
    },
    "dropped_event": {
        "en": "the sensor boxes' events (restarts, faults, movement)",
        "nl": "de gebeurtenissen van de sensorkastjes (herstarts, storingen, beweging)",
    },
    "kept_window": {
        "en": "Not stored: the measurements behind each summary stay in the gateway's working "
        "memory (RAM) only until the end of their {window}, and are discarded once the "
        "summary is out.",
        "nl": "Niet opgeslagen: de metingen achter elke samenvatting blijven alleen tot het "
        "einde van hun {window} in het werkgeheugen (RAM) van de gateway, en worden gewist "
        "zodra de samenvatting verstuurd is.",
    },
    "window_one": {"en": "{n}-minute window", "nl": "periode van {n} minuten"},
    "window_many": {"en": "window ({n} minutes)", "nl": "periode ({n} minuten)"},
    "kept_pass": {
        "en": "{what}: passed on as they arrive; the gateway does not keep them.",
        "nl": "{what}: doorgegeven zodra ze binnenkomen; de gateway bewaart ze niet.",
    },
    "kept_custom": {"en": "{what}: {text}", "nl": "{what}: {text}"},
    "kept_outbox": {
        "en": "What leaves waits in the gateway's outbox on disk until the receiving server "
        "has confirmed it, and is then deleted from the gateway.",
        "nl": "Wat de gateway doorgeeft, wacht in zijn uitgaande berichten op schijf tot de "
        "ontvangende server het heeft bevestigd, en wordt daarna van de gateway gewist.",
    },
    "kept_budget": {
        "en": "For {days} days the gateway keeps how much of each day's budget was used, per "
        "{unit}: numbers only, nothing about devices.",
        "nl": "De gateway houdt {days} dagen lang bij hoeveel van het dagbudget per {unit} is "
        "gebruikt: alleen getallen, niets over apparaten.",
    },
    "kept_keys": {
        "en": "Pseudonym keys exist only in the gateway's working memory (RAM), never on disk. "
        "Each key is replaced {every} and then destroyed; after that nobody, not even the "
        "gateway, can tell which device a pseudonym belonged to.",
        "nl": "Sleutels voor pseudoniemen bestaan alleen in het werkgeheugen (RAM) van de "
        "gateway, nooit op schijf. Elke sleutel wordt {every} vervangen en daarna vernietigd; "
        "daarna kan niemand, ook de gateway niet, nog nagaan bij welk apparaat een pseudoniem "
        "hoorde.",
    },
    "hash": {
        "en": "This is the SHA-256 fingerprint of the policy. Any change to the policy changes "
        "the fingerprint; what the gateway publishes under this policy carries the same "
        "fingerprint.",
        "nl": "Dit is de SHA-256-vingerafdruk van het beleid. Elke wijziging in het beleid "
        "verandert de vingerafdruk; wat de gateway onder dit beleid publiceert, draagt "
        "dezelfde vingerafdruk.",
    },
    "health_label": {
        "en": "the sensor boxes' state reports",
        "nl": "toestandsberichten van de sensorkastjes",
    },
    "events_label": {
        "en": "the sensor boxes' events",
        "nl": "gebeurtenissen van de sensorkastjes",
    },
    "health_events_label": {
        "en": "the sensor boxes' state reports and events",
        "nl": "toestandsberichten en gebeurtenissen van de sensorkastjes",
    },
    "devices_label": {"en": "nearby devices", "nl": "apparaten in de buurt"},
}

_DEFAULT_RETENTION = Stream.retention  # the schema's default text: rendered, not quoted


# --- small helpers ----------------------------------------------------------------------------


def _check(language: str) -> None:
    if language not in LANGUAGES:
        raise ValueError(f"language must be one of {', '.join(LANGUAGES)}; got {language!r}")


def _t(key: str, lang: str, **values: Any) -> str:
    return _T[key][lang].format(**values)


def _join(items: Iterable[str], lang: str, *, either: bool = False) -> str:
    """Words as a list: "a, b and c" ("a, b en c"); with either: "a, b or c"."""
    words = list(dict.fromkeys(items))  # in order, without repeats
    if len(words) <= 1:
        return "".join(words)
    last = {"en": (" and ", " or "), "nl": (" en ", " of ")}[lang][either]
    return ", ".join(words[:-1]) + last + words[-1]


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _number(x: float, lang: str) -> str:
    """0.5 -> "0.5" (nl "0,5"), 2.0 -> "2.0", 0.00001 -> "0.00001": as written, never 1e-05."""
    text = format(Decimal(repr(float(x))), "f")
    return text.replace(".", ",") if lang == "nl" else text


def _every(minutes: int, lang: str) -> str:
    en = lang == "en"
    if minutes == 1:
        return "every minute" if en else "elke minuut"
    if minutes == 15:
        return "every 15 minutes" if en else "elk kwartier"
    if minutes == 30:
        return "every half hour" if en else "elk half uur"
    if minutes == 60:
        return "every hour" if en else "elk uur"
    if minutes % 60 == 0:
        return f"every {minutes // 60} hours" if en else f"elke {minutes // 60} uur"
    return f"every {minutes} minutes" if en else f"elke {minutes} minuten"


def _duration(minutes: int, lang: str) -> str:
    """The length of a window, after "within": "15 minutes", "een kwartier"."""
    if lang == "nl" and minutes == 15:
        return "een kwartier"
    if minutes % 60 == 0:
        hours = minutes // 60
        if lang == "en":
            return "an hour" if hours == 1 else f"{hours} hours"
        return "een uur" if hours == 1 else f"{hours} uur"
    if lang == "en":
        return "a minute" if minutes == 1 else f"{minutes} minutes"
    return "een minuut" if minutes == 1 else f"{minutes} minuten"


def _quantity_words(quantities: Iterable[str], lang: str, *, more: bool = False) -> list[str]:
    """Quantities in everyday words, in the registry's order, fine dust as one group."""
    chosen = set(quantities)
    words: list[str] = []
    pm = [label for name, label in _PM.items() if name in chosen]
    for name in QUANTITY_NAMES:
        if name not in chosen:
            continue
        if name in _PM:
            if pm:
                labels = [p.replace(".", ",") if lang == "nl" else p for p in pm]
                words.append(f"{_FINE_DUST[lang]} ({_join(labels, lang)})")
                pm = []
            continue
        table = _QUANTITY_MORE if more and name in _QUANTITY_MORE else _QUANTITY
        words.append(table[name][lang] if name in table else name)
    return words


def _what(stream: Stream, lang: str) -> str:
    """What a stream selects, in words (lower case)."""
    if stream.message == "readings":
        return _join(_quantity_words(stream.quantities, lang), lang)
    if stream.message == "observations":
        return _DEVICES[lang]
    if stream.message == "status":
        return _HEALTH[lang]
    selected = stream.events or EVENT_CODES  # none named: every event (engine._event_selected)
    kinds = [words[lang] for code, words in _EVENTS.items() if code in selected]
    motion = f" {_t('and', lang)} {_MOTION_EVENTS[lang]}" if "motion" in selected else ""
    if lang == "en":
        return f"events of each sensor box ({_join(kinds, lang)}){motion}"
    return f"gebeurtenissen van elk sensorkastje ({_join(kinds, lang)}){motion}"


def _label(stream: Stream, lang: str) -> str:
    """A short name for a stream, for the retention list."""
    if stream.message == "readings":
        return _what(stream, lang)
    key = {"observations": "devices_label", "status": "health_label", "event": "events_label"}
    return _t(key[stream.message], lang)


def _statistics(stream: Stream, lang: str) -> str:
    adjectives = [_ADJECTIVES[s][lang] for s in ("mean", "min", "max") if s in stream.statistics]
    parts: list[str] = []
    if adjectives:
        article, noun = ("the", "value") if lang == "en" else ("de", "waarde")
        parts.append(f"{article} {_join(adjectives, lang)} {noun}")
    for s in stream.statistics:
        if s in _ADJECTIVES:
            continue
        if s == "sum" and stream.quantities == ("motion",):
            parts.append(_MOTION_SUM[lang])
        elif s in _NOUNS:
            parts.append(_NOUNS[s][lang])
        else:  # a percentile, p90: the value that 90 % of the readings stay below
            pct = s[1:]
            parts.append(
                f"the value that {pct}% of the readings stay below"
                if lang == "en"
                else f"de waarde waar {pct}% van de metingen onder blijft"
            )
    return _join(parts, lang)


def _granularity(stream: Stream, lang: str) -> str:
    if stream.action == "pass":
        return _PASS[stream.message][lang]
    unit = _UNIT[stream.group_by][lang]
    return _t("granularity", lang, unit=unit, every=_every(stream.window_minutes, lang))


def _rotation(stream: Stream) -> int:
    """Minutes a pseudonym key lives: the engine's period (the policy's key_rotation_minutes,
    rounded down to whole windows), so the statement never promises a longer life than the
    engine gives a key, nor a shorter one."""
    return rotation_seconds(stream) // 60


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _accuracy(stream: Stream) -> int | None:
    if stream.noise is None:
        return None
    return round(dp.accuracy(stream.noise, ALPHA))


def _released(stream: Stream, lang: str) -> str:
    """The sentence of what leaves for one stream ("Temperature, ...: the average ...")."""
    if stream.action == "pass":
        return f"{_cap(_what(stream, lang))}: {_granularity(stream, lang)}."
    return (
        f"{_cap(_what(stream, lang))}: {_statistics(stream, lang)}, {_granularity(stream, lang)}."
    )


def _details(stream: Stream, lang: str) -> list[str]:
    """The protections of one stream: k, noise, accuracy, pseudonyms."""
    out: list[str] = []
    unit = _UNIT["node" if stream.action == "pass" else stream.group_by][lang]
    if stream.k is not None:
        out.append(_t("k_readings" if stream.message == "readings" else "k", lang, k=stream.k))
    if stream.noise is not None:
        releases = releases_per_day(stream) or 0
        out.append(
            _t(
                "noise",
                lang,
                epsilon=_number(stream.noise.epsilon, lang),
                cap=_number(stream.noise.daily_cap, lang),
                unit=unit,
                releases=_t("release_one", lang)
                if releases == 1
                else _t("releases", lang, n=releases),
                window=_duration(stream.window_minutes, lang),
            )
        )
        windows = windows_per_day(stream)
        if releases < windows:
            out.append(
                _t(
                    "budget_short",
                    lang,
                    windows=windows,
                    next=_ordinal(releases + 1),
                    next_nl=f"{releases + 1}e",
                )
            )
        out.append(_t("accuracy", lang, n=_accuracy(stream)))
    if stream.personal:
        every = _every(_rotation(stream), lang)
        if stream.forward_pseudonyms:
            window = _duration(_rotation(stream), lang)
            out.append(_t("pseudonyms_forwarded", lang, every=every, window=window))
        else:
            out.append(_t("pseudonyms", lang, every=every))
    return out


def _personal_data(policy: Policy, lang: str) -> str:
    if not policy.contains_personal_data:
        return _t("personal_no", lang)
    what = _t("personal_what", lang)
    forwarding = [s for s in policy.streams if s.personal and s.forward_pseudonyms]
    if forwarding:
        every = _every(min(_rotation(s) for s in forwarding), lang)
        return _t("personal_forwarded", lang, what=what, every=every)
    return _t("personal_yes", lang, what=what)


def _register_values(policy: Policy, lang: str) -> dict[str, str]:
    """The register's fields in the statement's language: the operator's text, or, for a field
    not filled in, what to fill in, in that language."""
    r = policy.register
    out = {}
    for name in ("sensor_type", "organisation", "contact", "goal", "legal_ground"):
        out[name] = r.text(name, lang) or _t(f"unset_{name}", lang)
    out["personal_data"] = _personal_data(policy, lang)
    out["active_until"] = r.text("active_until", lang) or _t("unset_active_until", lang)
    return out


def _register_complete(register: Register) -> bool:
    return all(register.text(f.name, "en") is not None for f in fields(Register))


def _measured(policy: Policy, lang: str) -> list[str]:
    """The paragraph "What is measured", as sentences."""
    quantities: list[str] = []
    for s in policy.streams:
        if s.message == "readings":
            quantities.extend(s.quantities)
        elif s.message == "event":
            quantities.append("motion")  # motion events carry movement
    sentences: list[str] = []
    if quantities:
        words = _quantity_words(quantities, lang, more=True)
        sentences.append(_t("measured", lang, what=_join(words, lang)))
    messages = {s.message for s in policy.streams}
    if any(s.personal and s.forward_pseudonyms for s in policy.streams):
        sentences.append(_t("measured_devices_forwarded", lang))
    elif "observations" in messages:
        sentences.append(_t("measured_devices", lang))
    if "status" in messages:
        sentences.append(_t("measured_health", lang))
    return sentences


def _never(policy: Policy, lang: str) -> list[str]:
    out: list[str] = []
    personal = [s for s in policy.streams if s.personal]
    if not personal:
        out.append(_t("never_ids_dropped", lang))
    elif any(s.forward_pseudonyms for s in personal):
        out.append(_t("never_ids_forwarded", lang))
        out.append(_t("never_keys", lang))
    else:
        out.append(_t("never_ids", lang))
        out.append(_t("never_keys", lang))
    readings = [s for s in policy.streams if s.message == "readings"]
    single = [s for s in readings if s.action == "pass" or s.group_by == "node"]
    if readings and not single:
        out.append(_t("never_single", lang))
    elif single:
        what = _join([q for s in single for q in _quantity_words(s.quantities, lang)], lang)
        out.append(_t("never_single_except", lang, what=what))
    rest = [_t("never_rest", lang)]
    quantities, messages = _dropped_words(policy, lang)
    if quantities:
        rest.append(_t("never_rest_quantities", lang, what=_join(quantities, lang)))
    if messages:
        rest.append(_t("never_rest_messages", lang, what=_join(messages, lang)))
    out.append(" ".join(rest))
    return out


def _dropped(policy: Policy) -> tuple[list[str], list[str]]:
    """The quantities and message types no stream selects (the engine drops them)."""
    selected_q = {q for s in policy.streams for q in s.quantities}
    selected_m = {s.message for s in policy.streams}
    quantities = [q for q in QUANTITY_NAMES if q not in selected_q]
    messages = [m for m in MESSAGES if m not in selected_m]
    return quantities, messages


def _dropped_words(policy: Policy, lang: str) -> tuple[list[str], list[str]]:
    """What no stream selects, in words: (measurements, other messages). Observations are
    said in their own line; the battery only when the state reports (which carry it) are
    dropped as well, lest the two lines seem to contradict each other."""
    quantities, messages = _dropped(policy)
    if "status" not in messages:
        quantities = [q for q in quantities if q != "battery"]
    words = [_t(f"dropped_{m}", lang) for m in messages if m in ("status", "event")]
    return _quantity_words(quantities, lang), words


def _kept(policy: Policy, lang: str) -> list[str]:
    out: list[str] = []
    windows = sorted(
        {s.window_minutes for s in policy.streams
         if s.action == "aggregate" and s.retention == _DEFAULT_RETENTION}
    )  # fmt: skip
    if windows:
        if len(windows) == 1:
            window = _t("window_one", lang, n=windows[0])
        else:
            n = _join([str(w) for w in windows], lang, either=True)
            window = _t("window_many", lang, n=n)
        out.append(_t("kept_window", lang, window=window))
    passed = [s for s in policy.streams if s.action == "pass" and s.retention == _DEFAULT_RETENTION]
    if passed:
        labels = [_label(s, lang) for s in passed]
        if {"status", "event"} <= {s.message for s in passed}:
            labels = [_label(s, lang) for s in passed if s.message not in ("status", "event")]
            labels.append(_t("health_events_label", lang))
        out.append(_t("kept_pass", lang, what=_cap(_join(labels, lang))))
    for s in policy.streams:
        if s.retention != _DEFAULT_RETENTION:
            text = s.retention.strip()
            text += "" if text.endswith((".", "!", "?")) else "."
            out.append(_t("kept_custom", lang, what=_cap(_label(s, lang)), text=text))
    out.append(_t("kept_outbox", lang))
    noisy = [s for s in policy.streams if s.noise is not None]
    if noisy:
        units = [_UNIT["node" if s.action == "pass" else s.group_by][lang] for s in noisy]
        out.append(_t("kept_budget", lang, days=KEEP_DAYS, unit=_join(units, lang, either=True)))
    personal = [s for s in policy.streams if s.personal]
    if personal:
        every = _every(min(_rotation(s) for s in personal), lang)
        out.append(_t("kept_keys", lang, every=every))
    return out


# --- layout -----------------------------------------------------------------------------------


def _wrap(text: str, first: str, rest: str) -> list[str]:
    return textwrap.wrap(
        text,
        WIDTH,
        initial_indent=first,
        subsequent_indent=rest,
        break_long_words=False,
        break_on_hyphens=False,
    )


class _Page:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def heading(self, text: str) -> None:
        if self.lines:
            self.lines.append("")
        self.lines.append(text)

    def para(self, text: str) -> None:
        self.lines.extend(_wrap(text, "  ", "  "))

    def bullet(self, text: str, level: int = 0) -> None:
        indent = "  " + "  " * level
        self.lines.extend(_wrap(text, indent + "- ", indent + "  "))

    def field(self, label: str, value: str, width: int) -> None:
        first = "  " + (label + ":").ljust(width)
        self.lines.extend(_wrap(value, first, " " * len(first)))

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


# --- the API ----------------------------------------------------------------------------------


def statement_text(policy: Policy, language: str = "en") -> str:
    """The transparency statement in plain language: "en" (English) or "nl" (Dutch)."""
    _check(language)
    lang = language
    page = _Page()
    title = _t("title", lang, name=policy.name)
    page.lines.extend([title, "=" * len(title), ""])
    page.para(_t("intro", lang))

    page.heading(_t("h_register", lang))
    values = _register_values(policy, lang)
    labels = {key: _REGISTER_LABELS[key][lang] for key in _REGISTER_ORDER}
    width = max(len(label) for label in labels.values()) + 2
    for key in _REGISTER_ORDER:
        page.field(labels[key], values[key], width)
    if not _register_complete(policy.register):
        page.lines.append("")
        page.para(_t("register_unset", lang))

    page.heading(_t("h_measured", lang))
    page.para(" ".join(_measured(policy, lang)))

    page.heading(_t("h_leaves", lang))
    intro = _t("leaves_intro", lang)
    if any(s.action == "aggregate" and s.group_by == "zone" for s in policy.streams):
        intro += " " + _t("zone", lang)
    page.para(intro)
    for s in policy.streams:
        page.bullet(_released(s, lang))
        for detail in _details(s, lang):
            page.bullet(detail, level=1)
    page.bullet(_t("alarm", lang))  # the gateway's own (ingest.py), whatever the policy
    if any(s.action == "aggregate" for s in policy.streams):
        page.para(_t("partial", lang))  # engine.Due.covered_s

    page.heading(_t("h_never", lang))
    for line in _never(policy, lang):
        page.bullet(line)

    page.heading(_t("h_retention", lang))
    for line in _kept(policy, lang):
        page.bullet(line)

    page.heading(_t("h_hash", lang))
    page.para(policy.hash)
    page.para(_t("hash", lang))
    return page.text()


def _both(make: Any) -> dict[str, str]:
    return {lang: make(lang) for lang in LANGUAGES}


def _stream_json(stream: Stream) -> dict[str, Any]:
    aggregate = stream.action == "aggregate"
    noise = stream.noise
    return {
        "name": stream.name,
        "message": stream.message,
        "what": {
            "quantities": list(stream.quantities),
            **_both(lambda lang: _what(stream, lang)),
        },
        "action": stream.action,
        "released": _both(lambda lang: _released(stream, lang)),
        "granularity": _both(lambda lang: _granularity(stream, lang)),
        "window_minutes": stream.window_minutes if aggregate else None,
        "group_by": stream.group_by if aggregate else "node",
        "statistics": list(stream.statistics) if aggregate else [],
        "k": stream.k,
        "noise_mechanism": noise.mechanism if noise else None,
        "epsilon": noise.epsilon if noise else None,
        "daily_cap": noise.daily_cap if noise else None,
        "max_contribution": noise.max_contribution if noise else None,
        "max_releases_per_day": releases_per_day(stream),
        "accuracy_95": _accuracy(stream),
        "key_rotation_minutes": _rotation(stream) if stream.personal else None,
        "pseudonym_bits": stream.pseudonym_bits if stream.personal else None,
        "forward_pseudonyms": stream.forward_pseudonyms,
        "retention": stream.retention,
        "personal_data": stream.personal,
        "protections": _both(lambda lang: _details(stream, lang)),
    }


def statement_json(policy: Policy) -> dict[str, Any]:
    """The statement's facts as data, with both texts: JSON-serialisable and deterministic.

    `accuracy_95` is the ± bound quoted in the texts (OpenDP's figure at 95 %, rounded);
    `window_minutes` and `statistics` are None / [] for streams passed on per message.
    """
    r = policy.register
    quantities, messages = _dropped(policy)
    return {
        "format": FORMAT,
        "policy": {"name": policy.name, "hash": policy.hash, "hash_algorithm": "sha256"},
        "register": {  # in English, as the operator wrote it or, not filled in, "not set: ..."
            **{k: v for k, v in _register_values(policy, "en").items() if k != "personal_data"},
            "contains_personal_data": policy.contains_personal_data,
            "personal_data": _both(lambda lang: _personal_data(policy, lang)),
            "complete": _register_complete(r),
        },
        "streams": [_stream_json(s) for s in policy.streams],
        "gateway_alarms": [{"name": "counter_reuse", **_both(lambda lang: _t("alarm", lang))}],
        "dropped": {"quantities": quantities, "messages": messages},
        "measured": _both(lambda lang: " ".join(_measured(policy, lang))),
        "never_leaves": _both(lambda lang: _never(policy, lang)),
        "retention": _both(lambda lang: _kept(policy, lang)),
        "statement": _both(lambda lang: statement_text(policy, lang)),
    }
