# Duty-cycle limits of EU868 and an optional daily airtime budget.
#
# In Europe a LoRa node transmits under the short range device rules (ERC Recommendation 70-03
# Annex 1, non-specific SRDs; harmonised standard ETSI EN 300 220-2): each sub-band below has a
# maximum radiated power and a maximum duty cycle, the share of time one device may transmit in
# it, "over any one hour period" (EN 300 220-1, definition of duty cycle). LoRaWAN's Regional
# Parameters (RP002, EU863-870) use the same table.
#
# How the limit is kept: a sliding hour, not LoRaWAN's "off-time = airtime x (1/dc - 1)" rule.
# The off-time rule allows one packet more than the budget in a window that starts just before a
# packet (up to 2.5 s over the 36 s of a 1 % band at SF12); the sliding hour never exceeds it.
# Memory stays bounded: airtime is summed per one-minute bucket, and a new packet is allowed only
# if the buckets of the last 62 minutes plus the packet fit the budget of one hour. Any hour long
# window lies within those 62 buckets (a packet lasts less than a minute and is counted whole in
# the bucket of its start), so the check is strict, and at most 2 minutes too cautious.
# The daily budget (like The Things Network's fair-use policy of 30 s a day) works the same way
# with one-hour buckets over 26 hours.
#
# Times are a monotonic millisecond count, not MicroPython's ticks (which wrap after 12.4 days
# on most ports): the caller keeps one (LoRaLink does).

try:
    from micropython import const
except ImportError:  # CPython: the gateway and the emulators use this module as it is

    def const(value):  # type: ignore[misc]  # MicroPython's const() is the identity
        return value

# (lowest kHz, highest kHz, 1 / duty cycle, maximum e.r.p. in dBm). A channel must lie wholly in
# one sub-band: its centre frequency +- half its bandwidth.
SUB_BANDS = (
    (863000, 865000, 1000, 14),  # 0.1 %, 25 mW
    (865000, 868000, 100, 14),  # 1 %, 25 mW
    (868000, 868600, 100, 14),  # 1 %, 25 mW: the three LoRaWAN default channels 868.1/.3/.5
    (868700, 869200, 1000, 14),  # 0.1 %, 25 mW
    (869400, 869650, 10, 27),  # 10 %, 500 mW: LoRaWAN's RX2 channel 869.525
    (869700, 870000, 100, 14),  # 1 %, 25 mW
)

_MINUTE_MS = const(60000)
_HOUR_MS = const(3600000)
_HOUR_BUCKETS = const(62)  # one-minute buckets: the hour plus a minute at each end
_DAY_BUCKETS = const(26)  # one-hour buckets: the day plus an hour at each end


def sub_band(freq_khz, bw_khz):
    """Index in SUB_BANDS of the sub-band that holds the whole channel, or None."""
    # doubled, so that a half bandwidth of 62.5 kHz stays a whole number
    low = 2 * freq_khz - bw_khz
    high = 2 * freq_khz + bw_khz
    for i, band in enumerate(SUB_BANDS):
        if 2 * band[0] <= low and high <= 2 * band[1]:
            return i
    return None


def describe_sub_bands():
    """The sub-bands as text, for configuration errors."""
    parts = []
    for low, high, divisor, dbm in SUB_BANDS:
        share = str(100 // divisor) + "%" if divisor <= 100 else "0.1%"
        parts.append(str(low) + "-" + str(high) + " kHz (" + share + ", " + str(dbm) + " dBm)")
    return ", ".join(parts)


class AirtimeWindow:
    """Airtime spent in a sliding window of `count` buckets of `width_ms` each, against a limit."""

    def __init__(self, width_ms, count, limit_us):
        self.width_ms = width_ms
        self.limit_us = limit_us
        self._buckets = [0] * count
        self._newest = 0  # number of the newest bucket (time // width_ms)
        self._total = 0

    def _advance(self, now_ms):
        number = now_ms // self.width_ms
        if number < self._newest:
            # buckets after now_ms were already emptied for reuse: the count would be wrong
            raise ValueError("time went back: now_ms must never decrease")
        count = len(self._buckets)
        if number - self._newest >= count:
            for i in range(count):
                self._buckets[i] = 0
            self._total = 0
        else:
            for n in range(self._newest + 1, number + 1):
                self._total -= self._buckets[n % count]
                self._buckets[n % count] = 0
        self._newest = number

    def used_us(self, now_ms):
        self._advance(now_ms)
        return self._total

    def wait_ms(self, airtime_us, now_ms):
        """0 when `airtime_us` fits now; else the milliseconds until it fits as old buckets
        leave the window; None when it can never fit (longer than the whole limit)."""
        if airtime_us > self.limit_us:
            return None
        self._advance(now_ms)
        excess = self._total + airtime_us - self.limit_us
        if excess <= 0:
            return 0
        count = len(self._buckets)
        freed = 0
        for k in range(1, count + 1):
            freed += self._buckets[(self._newest + k) % count]  # the oldest buckets first
            if freed >= excess:
                return (self._newest + k) * self.width_ms - now_ms
        return None  # not reached: the whole window frees the whole limit

    def spend(self, airtime_us, now_ms):
        self._advance(now_ms)
        self._buckets[self._newest % len(self._buckets)] += airtime_us
        self._total += airtime_us


class DutyCycleLimiter:
    """EU868 duty cycle per sub-band (sliding hour) and an optional daily airtime budget."""

    def __init__(self, daily_airtime_ms=0):
        self._bands = {}  # sub-band index -> AirtimeWindow, made when the sub-band is first used
        self.daily = None
        if daily_airtime_ms:
            self.daily = AirtimeWindow(_HOUR_MS, _DAY_BUCKETS, daily_airtime_ms * 1000)

    def _band(self, freq_khz, bw_khz):
        index = sub_band(freq_khz, bw_khz)
        if index is None:
            raise ValueError(str(freq_khz) + " kHz is in no EU868 sub-band")
        window = self._bands.get(index)
        if window is None:
            # the budget of one hour: 3600 s / divisor, in microseconds
            window = AirtimeWindow(_MINUTE_MS, _HOUR_BUCKETS, 3600000000 // SUB_BANDS[index][2])
            self._bands[index] = window
        return window

    def band_wait_ms(self, freq_khz, bw_khz, airtime_us, now_ms):
        return self._band(freq_khz, bw_khz).wait_ms(airtime_us, now_ms)

    def budget_wait_ms(self, airtime_us, now_ms):
        if self.daily is None:
            return 0
        return self.daily.wait_ms(airtime_us, now_ms)

    def wait_ms(self, freq_khz, bw_khz, airtime_us, now_ms):
        """0 when a packet of `airtime_us` may start now; else how long to wait; None when it
        never may (longer than a limit)."""
        band = self.band_wait_ms(freq_khz, bw_khz, airtime_us, now_ms)
        budget = self.budget_wait_ms(airtime_us, now_ms)
        if band is None or budget is None:
            return None
        return band if band > budget else budget

    def spend(self, freq_khz, bw_khz, airtime_us, now_ms):
        """Record a packet that starts now."""
        self._band(freq_khz, bw_khz).spend(airtime_us, now_ms)
        if self.daily is not None:
            self.daily.spend(airtime_us, now_ms)
