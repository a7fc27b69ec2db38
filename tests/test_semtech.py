"""The Semtech packet forwarder protocol codec (gateway.lora.semtech), sans-IO.

Golden datagrams: the example JSON objects of sx1302_hal's packet_forwarder/PROTOCOL.md
(the same as Lora-net/packet_forwarder PROTOCOL.TXT), behind the header bytes the document
specifies. Then one case per malformed-datagram reason, and a fuzz target: whatever bytes
arrive, only MalformedDatagram escapes.
"""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.lora.radio import DataRate, DutyCycle, time_on_air
from gateway.lora.semtech import (
    REASONS,
    MalformedDatagram,
    PullData,
    PushData,
    TxAck,
    Txpk,
    parse_datagram,
    pull_ack,
    pull_resp,
    push_ack,
)

EUI = bytes.fromhex("AA555A0000000000")
TOKEN = b"\x3a\x7c"

# PROTOCOL.md section 4, the rxpk example, exactly as printed (whitespace and all)
RXPK_EXAMPLE = """{"rxpk":[
	{
		"time":"2013-03-31T16:21:17.528002Z",
		"tmst":3512348611,
		"chan":2,
		"rfch":0,
		"freq":866.349812,
		"stat":1,
		"modu":"LORA",
		"datr":"SF7BW125",
		"codr":"4/6",
		"rssi":-35,
		"lsnr":5.1,
		"size":32,
		"data":"-DS4CGaDCdG+48eJNM3Vai-zDpsR71Pn9CPA9uCON84"
	},{
		"time":"2013-03-31T16:21:17.530974Z",
		"tmst":3512348514,
		"chan":9,
		"rfch":1,
		"freq":869.1,
		"stat":1,
		"modu":"FSK",
		"datr":50000,
		"rssi":-75,
		"size":16,
		"data":"VEVTVF9QQUNLRVRfMTIzNA=="
	},{
		"time":"2013-03-31T16:21:17.532038Z",
		"tmst":3316387610,
		"chan":0,
		"rfch":0,
		"freq":863.00981,
		"stat":1,
		"modu":"LORA",
		"datr":"SF10BW125",
		"codr":"4/7",
		"rssi":-38,
		"lsnr":5.5,
		"size":32,
		"data":"ysgRl452xNLep9S1NTIg2lomKDxUgn3DJ7DE+b00Ass"
	}
]}"""

STAT_EXAMPLE = """{"stat":{
    "time":"2014-01-12 08:59:28 GMT",
    "lati":46.24000,
    "long":3.25230,
    "alti":145,
    "rxnb":2,
    "rxok":2,
    "rxfw":2,
    "ackr":100.0,
    "dwnb":2,
    "txnb":2,
    "temp": 23.2
}}"""

TXPK_ACK_ERROR = """{"txpk_ack":{
	"error":"COLLISION_PACKET"
}}"""

TXPK_ACK_WARN = """{"txpk_ack":{
	"warn":"TX_POWER",
    "value":20
}}"""


def push_data(body: str | bytes, version: int = 2, token: bytes = TOKEN) -> bytes:
    data = body.encode() if isinstance(body, str) else body
    return bytes([version]) + token + b"\x00" + EUI + data


def rxpk_datagram(**fields: object) -> bytes:
    rxpk = {
        "tmst": 1000,
        "freq": 868.1,
        "stat": 1,
        "modu": "LORA",
        "datr": "SF9BW125",
        "codr": "4/5",
        "rssi": -80,
        "lsnr": 7.5,
        "size": 3,
        "data": "AQID",
    }
    rxpk.update(fields)
    rxpk = {k: v for k, v in rxpk.items() if v is not None}
    return push_data(json.dumps({"rxpk": [rxpk]}))


# -- golden datagrams ------------------------------------------------------------------------


def test_golden_rxpk_example_is_parsed_packet_by_packet_and_acknowledged() -> None:
    datagram = push_data(RXPK_EXAMPLE)
    event = parse_datagram(datagram)
    assert isinstance(event, PushData)
    assert (event.version, event.token, event.gateway) == (2, TOKEN, "AA555A0000000000")
    # the third packet is good LoRa: 43 base64 characters without padding, 32 bytes
    (good,) = event.rxpk
    assert good.data == base64.b64decode("ysgRl452xNLep9S1NTIg2lomKDxUgn3DJ7DE+b00Ass=")
    assert len(good.data) == 32
    assert good.freq_hz == 863_009_810
    assert good.rate == DataRate(10, 125)
    assert (good.codr, good.rssi, good.lsnr, good.tmst) == ("4/7", -38, 5.5, 3316387610)
    assert (good.chan, good.rfch, good.time) == (0, 0, "2013-03-31T16:21:17.532038Z")
    # the first has '-' in its data (not base64), the second is FSK: each rejected on its own
    assert [(r.index, r.reason) for r in event.rejected] == [(0, "base64"), (1, "not_lora")]
    assert event.stat is None
    # PUSH_ACK: version, the same token, identifier 0x01
    assert push_ack(event) == b"\x02\x3a\x7c\x01"


def test_golden_stat_example_and_version_1() -> None:
    event = parse_datagram(push_data(STAT_EXAMPLE, version=1, token=b"\x00\xff"))
    assert isinstance(event, PushData)
    assert event.rxpk == () and event.rejected == ()
    assert event.stat is not None
    assert (event.stat["rxnb"], event.stat["ackr"], event.stat["temp"]) == (2, 100.0, 23.2)
    assert push_ack(event) == b"\x01\x00\xff\x01"  # answered in the gateway's version


def test_pull_data_gets_pull_ack_with_its_token() -> None:
    event = parse_datagram(b"\x02\xbe\xef\x02" + EUI)
    assert event == PullData(2, b"\xbe\xef", "AA555A0000000000")
    assert pull_ack(event) == b"\x02\xbe\xef\x04"


def test_golden_tx_ack_examples() -> None:
    header = b"\x02\x12\x34\x05" + EUI
    assert parse_datagram(header) == TxAck(2, b"\x12\x34", "AA555A0000000000", None)
    error = parse_datagram(header + TXPK_ACK_ERROR.encode())
    assert isinstance(error, TxAck) and error.error == "COLLISION_PACKET"
    warn = parse_datagram(header + TXPK_ACK_WARN.encode())
    assert isinstance(warn, TxAck)
    assert (warn.error, warn.warning, warn.value) == (None, "TX_POWER", 20)
    # packet_forwarder v4 says "NONE", C strings may keep their NUL: both mean accepted
    none = parse_datagram(header + b'{"txpk_ack":{"error":"NONE"}}\x00')
    assert isinstance(none, TxAck) and none.error is None


def test_pull_resp_carries_the_txpk_the_document_describes() -> None:
    txpk = Txpk(
        data=b"\x01\x02\x03\x04",
        freq_hz=869_525_000,
        rate=DataRate(9, 125),
        power_dbm=14,
        tmst=(4294967000 + 1_000_000) & 0xFFFFFFFF,
    )
    datagram = pull_resp(txpk, 2, token=b"\xaa\xbb")
    assert datagram[:4] == b"\x02\xaa\xbb\x03"
    body = json.loads(datagram[4:])
    assert body == {
        "txpk": {
            "tmst": 999704,  # the 32-bit counter wraps
            "freq": 869.525,
            "rfch": 0,
            "powe": 14,
            "modu": "LORA",
            "datr": "SF9BW125",
            "codr": "4/5",
            "ipol": True,
            "size": 4,
            "data": "AQIDBA==",
        }
    }
    assert pull_resp(txpk, 1)[:4] == b"\x01\x00\x00\x03"  # version 1: token bytes unused
    immediate = json.loads(pull_resp(Txpk(b"x", 868_100_000, DataRate(7, 125), 14))[4:])
    assert immediate["txpk"]["imme"] is True and "tmst" not in immediate["txpk"]


# -- malformed: one case per reason ----------------------------------------------------------

MALFORMED = [
    (b"\x02\x00", "too_short"),
    (b"\x02\x00\x00\x00" + EUI[:4], "too_short"),
    (b"\x03\x00\x00\x02" + EUI, "bad_version"),
    (b"\x02\x00\x00\x09" + EUI, "unknown_identifier"),
    (b"\x01\x00\x00\x05" + EUI, "unknown_identifier"),  # TX_ACK does not exist in version 1
    (b"\x02\x00\x00\x01", "wrong_direction"),
    (b"\x02\x00\x00\x03{}", "wrong_direction"),
    (push_data(b'{"rxpk": ['), "bad_json"),
    (push_data(b"\xff\xfe"), "bad_json"),
    (push_data(b"[1, 2]"), "bad_json"),
    (push_data(b'{"rxpk": {}}'), "bad_field"),
    (push_data(b'{"stat": 7}'), "bad_field"),
    (b"\x02\x00\x00\x05" + EUI + b'{"txpk_ack": []}', "bad_field"),
]


@pytest.mark.parametrize(("datagram", "reason"), MALFORMED)
def test_malformed_datagrams_name_their_reason(datagram: bytes, reason: str) -> None:
    with pytest.raises(MalformedDatagram) as caught:
        parse_datagram(datagram)
    assert caught.value.reason == reason
    assert reason in REASONS
    assert "\n" not in str(caught.value)


BAD_RXPK = [
    ({"data": None}, "missing_field"),
    ({"tmst": None}, "missing_field"),
    ({"stat": -1}, "crc_error"),
    ({"modu": "FSK"}, "not_lora"),
    ({"datr": "SF13BW125"}, "bad_field"),
    ({"datr": "SF7BW200"}, "bad_field"),
    ({"datr": 50000}, "bad_field"),
    ({"data": "A*ID"}, "base64"),
    ({"data": 7}, "base64"),
    ({"size": 4}, "size_mismatch"),
    ({"freq": "868.1"}, "bad_field"),
    ({"freq": True}, "bad_field"),
    ({"tmst": 2**32}, "bad_field"),
    ({"tmst": 1.5}, "bad_field"),
    ({"codr": "4/9"}, "bad_field"),
    ({"rssi": "strong"}, "bad_field"),
    # security review: numbers no radio reports, a traceback per datagram before
    ({"rssi": 10**400}, "bad_field"),
    ({"rssi": 1000}, "bad_field"),
    ({"lsnr": -(10**400)}, "bad_field"),
]


@pytest.mark.parametrize(("fields", "reason"), BAD_RXPK)
def test_a_bad_rxpk_is_rejected_alone(fields: dict[str, object], reason: str) -> None:
    event = parse_datagram(rxpk_datagram(**fields))
    assert isinstance(event, PushData)
    assert event.rxpk == ()
    assert [(r.index, r.reason) for r in event.rejected] == [(0, reason)]


def test_nan_rssi_from_pythons_json_is_a_bad_field() -> None:
    event = parse_datagram(
        push_data(
            b'{"rxpk":[{"tmst":1,"freq":868.1,"stat":1,"modu":"LORA",'
            b'"datr":"SF7BW125","rssi":NaN,"data":"AQID"}]}'
        )
    )
    assert isinstance(event, PushData) and event.rejected[0].reason == "bad_field"


def test_signal_rssi_is_preferred_when_the_sx1302_gives_it() -> None:
    event = parse_datagram(rxpk_datagram(rssi=-60, rssis=-67))
    assert isinstance(event, PushData) and event.rxpk[0].rssi == -67


@given(st.binary(max_size=200))
@example(push_data(b'{"rxpk":[{"data":"AQID"}]}'))
@example(push_data(b"{" * 5000))
@example(b"\x02\x00\x00\x05" + EUI + b'{"txpk_ack":{"error":5}}')
def test_any_bytes_parse_or_raise_malformed(data: bytes) -> None:
    try:
        event = parse_datagram(data)
    except MalformedDatagram as exc:
        assert exc.reason in REASONS
    else:
        assert isinstance(event, PushData | PullData | TxAck)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
        max_leaves=12,
    )
)
def test_any_json_in_an_rxpk_parses_or_is_rejected(value: object) -> None:
    for body in ({"rxpk": [value]}, {"rxpk": value}, {"stat": value}, value):
        try:
            event = parse_datagram(push_data(json.dumps(body)))
        except MalformedDatagram as exc:
            assert exc.reason in REASONS
        else:
            assert isinstance(event, PushData)
            assert all(r.reason in REASONS for r in event.rejected)


# -- airtime and duty cycle --------------------------------------------------------------------


def test_time_on_air_matches_semtechs_calculator() -> None:
    # LoRaWAN's 23-byte PHY payload at SF7/125: 61.7 ms; 51 bytes at SF12/125: 2.466 s
    # (Semtech LoRa calculator, CR 4/5, 8 symbols preamble, explicit header, CRC on)
    assert time_on_air(23, DataRate(7, 125)) == pytest.approx(0.061696, abs=1e-6)
    assert time_on_air(51, DataRate(12, 125)) == pytest.approx(2.465792, abs=1e-6)


def test_duty_cycle_limits_each_eu868_sub_band_over_an_hour() -> None:
    now = [0.0]
    duty = DutyCycle(clock=lambda: now[0])
    # g1 (868.0-868.6 MHz): 1 % of an hour is 36 s
    assert duty.allow(868_100_000, 30.0)
    assert not duty.allow(868_300_000, 7.0)
    assert duty.allow(869_525_000, 300.0)  # g3 (10 %) is another budget
    assert duty.allow(915_000_000, 1e6)  # outside EU868: not limited here
    assert not duty.allow(864_100_000, 4.0)  # 863-865 MHz: 0.1 %, 3.6 s an hour
    assert duty.allow(864_100_000, 3.5)
    now[0] = 3600.5  # the first transmission left the window
    assert duty.allow(868_100_000, 35.0)
    assert duty.used(868_100_000) == pytest.approx(35.0)


def test_no_crc_is_taken_a_failed_one_is_not() -> None:
    """stat 0: the node sent no CRC; the frame authenticates itself, so it is taken."""
    event = parse_datagram(rxpk_datagram(stat=0))
    assert isinstance(event, PushData) and len(event.rxpk) == 1 and not event.rejected
    event = parse_datagram(rxpk_datagram(stat=-1))
    assert isinstance(event, PushData) and event.rejected[0].reason == "crc_error"


@pytest.mark.parametrize(
    "body", [b'{"rxpk": [', b"\xff\xfe", b"[1, 2]", b'{"rxpk": {}}', b'{"stat": 7}']
)
def test_a_push_data_with_a_good_header_is_acknowledged_whatever_its_json(body: bytes) -> None:
    with pytest.raises(MalformedDatagram) as caught:
        parse_datagram(b"\x02\x12\x34\x00" + EUI + body)
    assert caught.value.push == (2, b"\x12\x34", EUI.hex().upper())
    assert push_ack(caught.value.push) == b"\x02\x12\x34\x01"
    with pytest.raises(MalformedDatagram) as caught:
        parse_datagram(b"\x02\x00\x00\x00" + EUI[:4])  # no whole header: nothing to answer
    assert caught.value.push is None
