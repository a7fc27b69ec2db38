# The node application: a scheduler that reads sensors, seals what it measured and sends it,
# keeps frames until the gateway acknowledges them, and reports its own health.
#
# Links differ in what they promise (link.py, lora_link.py): a serial gateway acknowledges every
# frame, a LoRa link may run without acks (fire and forget: nothing is queued for retransmission
# and no time is asked for, since no answer can arrive) and limits the frame size per spreading
# factor (readings and status too big for one frame are split into several).
#
# One loop, no threads: each pass of the scheduler (step) feeds the watchdog, polls the link,
# handles what the gateway sent, and does at most one unit of work: answering the gateway (a
# configuration update's event), a readings or status cycle, one frame of the last BLE scan
# window's sightings, a scan window, a time request, or else sending again the oldest frame the
# retransmission queue says is due. When more is due it returns 0 and the loop comes straight
# back. Small passes keep what a pass allocates small (a 112 KB heap has no room for a scan
# window's six frames sealed at once, docs/firmware/ram.md), keep the watchdog fed and let a
# radio link take acks between frames. Everything it needs is passed in, so the same class runs
# on a board (main() builds the hardware), on a PC (firmware/host) and under the MicroPython
# interpreter in tests.

import gc
import json
import sys
import time

from micropython import const

from protocol import (
    MAX_FRAME,
    Ack,
    ConfigUpdate,
    Event,
    Observations,
    Readings,
    Status,
    TimeSync,
    seal,
)

from .counter import LOW_WATER, CounterError, FrameCounter
from .link import RetransmitQueue

FIRMWARE_VERSION = "0.1.0"
SETTINGS_FILE = "settings.json"  # configuration updates from the gateway survive a reboot

# protocol event codes (protocol/messages.py EVENT_CODES)
_EV_BOOT = const(0)
_EV_MOTION = const(1)
_EV_SENSOR_FAULT = const(2)
_EV_CONFIG_APPLIED = const(4)
_EV_CONFIG_REJECTED = const(5)
_EV_TIME_REQUEST = const(6)
_EV_COUNTER_LOW = const(8)

_MOTION_EVENT_GAP_MS = const(10000)  # at most one motion event per 10 s
_TIME_REQUEST_GAP_MS = const(3600000)  # ask for the time again hourly while unsynchronised
# and daily once synchronised: a clock drifts, and a wrong time (a time sync replayed after a
# reboot, before link.load_window guarded against that) must not stand for ever
_TIME_RESYNC_MS = const(86400000)
_POLL_MS = const(20)  # how often the link is polled while awake


def _ms(seconds):
    return seconds * 1000


class Node:
    def __init__(  # noqa: PLR0917 - hardware is passed in, one argument per part
        self,
        config,
        keys,
        counter,
        link,
        sensors=(),
        pir=None,
        battery=None,
        scanner=None,
        reset_cause=0,
        wdt=None,
        settings_file=SETTINGS_FILE,
    ):
        self.sleep = config.sleep
        self.keys = keys
        self._secret = config.secret  # for the keys of a new epoch (a re-key from the gateway)
        self._rekey = None  # a re-key waiting until nothing sealed under the old keys is pending
        self.counter = counter
        self.link = link
        self.sensors = sensors
        self.pir = pir
        self.battery = battery
        self.scanner = scanner
        self.reset_cause = reset_cause
        self.wdt = wdt
        self._settings_file = settings_file
        r = config.retransmit
        self.queue = RetransmitQueue(r["queue"], r["ack_timeout_ms"], r["max_retries"])
        # Sightings and motion events wait in a queue of their own: sharing one, a crowd would
        # push other frames out sooner and change the status figures (see send())
        self.personal_queue = RetransmitQueue(r["queue"], r["ack_timeout_ms"], r["max_retries"])
        self.acks = getattr(link, "acks", True)  # False: the gateway never answers
        self.max_frame = getattr(link, "max_frame", MAX_FRAME)
        self.intervals = dict(config.intervals)
        self.config_version = 0
        self.ble_scan = scanner is not None
        self._load_settings()
        now = time.ticks_ms()
        self._boot_ms = now
        self._next_reading = now
        self._next_status = now
        self._next_scan = now
        self._next_time_request = now
        self._last_motion_ms = time.ticks_add(now, -_MOTION_EVENT_GAP_MS)
        self._scanning = False
        self._clock_offset = None  # Unix time minus time.time(), once the gateway told us
        self._faulty = set()  # indexes of sensors whose failure was already reported
        self.sealed = 0
        self._seals = 0  # every frame sealed, for the scheduler (step)
        self.send_event(_EV_BOOT, reset_cause)

    # -- sending ---------------------------------------------------------------------------

    def send(self, message, droppable):
        counter = self.counter.take()  # persisted before use: see counter.py
        frame = seal(message, counter, self.keys)
        if len(frame) > self.max_frame:
            parts = _halves(message)
            if parts:  # the counter just taken stays unused: gaps are fine (SPEC.md 9)
                for part in parts:
                    self.send(part, droppable)
                return
        # Sightings and motion events are sent only when someone is near: how many there are
        # must show nowhere but in the gateway's protected figures, so no status field counts
        # them (frames_sent, retransmissions, dropped, queue_depth), and they do not compete
        # with other frames for the retransmission queue.
        personal = isinstance(message, Observations) or (
            isinstance(message, Event) and message.code == _EV_MOTION
        )
        if not self.acks:
            self.link.send(frame, personal)  # the link drops what it cannot send, and counts it
        elif personal:
            self.personal_queue.add(counter, frame, droppable, time.ticks_ms())
        else:
            self.queue.add(counter, frame, droppable, time.ticks_ms())
        self._seals += 1
        if not personal:
            self.sealed += 1
        if self.acks:
            self._flush(time.ticks_ms(), personal)

    def send_event(self, code, value=None):
        self.send(Event(code, value), False)

    def _flush(self, now, only_personal=False):
        """Send the oldest frame that is due (new or to be retried), if any: other frames
        first, then sightings and motion events. Right after sealing one of those, only
        their queue: when other frames go out must not depend on them either."""
        if not len(self.queue) and not len(self.personal_queue):
            return
        # a radio link receives its acks while it sends (in the window after each frame):
        # take them before deciding what is due again
        self._receive()
        personal = only_personal
        pending = None if only_personal else self.queue.next_due(now)
        if pending is None:
            personal = True
            pending = self.personal_queue.next_due(now)
        if pending is not None:
            if self.wdt is not None:
                # a radio link blocks for the frame's airtime and its receive window (over a
                # second at SF12): the watchdog is fed before each frame
                self.wdt.feed()
            self.link.send(pending.frame, personal)

    # -- clock -----------------------------------------------------------------------------

    def unix_time(self):
        if self._clock_offset is None:
            return None
        return int(time.time()) + self._clock_offset  # int: the unix port gives floats

    # -- cycles ----------------------------------------------------------------------------

    def readings_cycle(self):
        values = {}
        for i, sensor in enumerate(self.sensors):
            try:
                sensor.read_into(values)
            except OSError:
                if i not in self._faulty:  # report a failing sensor once, not every cycle
                    self._faulty.add(i)
                    self.send_event(_EV_SENSOR_FAULT, sensor.QUANTITIES[0])
                continue
            self._faulty.discard(i)
        if values:
            self.send(Readings(values, self.unix_time()), True)

    def status_cycle(self):
        left = self.counter.remaining()
        if left < LOW_WATER:  # the node must be replaced before its nonces run out
            self.send_event(_EV_COUNTER_LOW, left)
        fields = {
            "uptime_s": time.ticks_diff(time.ticks_ms(), self._boot_ms) // 1000,
            # after a collection, in 4 KB steps: what the last pass left behind (more after a
            # crowd's frames) is not part of the figure
            "free_heap": _free_heap(),
            "reset_cause": self.reset_cause,
            "frames_sent": self.sealed,
            "retransmissions": self.queue.retransmissions,
            "dropped": self.queue.dropped + self.queue.given_up + getattr(self.link, "dropped", 0),
            "queue_depth": len(self.queue),
            "firmware": FIRMWARE_VERSION,
            "clock_synced": self._clock_offset is not None,
        }
        if hasattr(self.link, "health"):  # a LoRa link (v1.1 status keys)
            fields.update(self.link.health(self.scanner is not None or self.pir is not None))
        if self.battery is not None:
            values = {}
            try:
                self.battery.read_into(values)
                fields["battery_mv"] = values[3]
            except OSError:
                pass
        self.send(Status(fields), False)

    def scan_cycle(self, now):
        scanner = self.scanner
        if not self._scanning:
            scanner.start_window(_ms(self.intervals["scan_window_s"]))
            self._scanning = True
            return
        if not scanner.window_done():
            return
        self._scanning = False
        self._next_scan = time.ticks_add(now, _ms(self.intervals["scan_s"]))
        # the sightings wait in the scanner's buffer: observations_frame(), one per pass

    def _observations_waiting(self):
        return self.scanner is not None and self.scanner.waiting() > 0

    def observations_frame(self):
        """Seal the next frame of the last window's sightings."""
        part = self.scanner.take(self.link.MAX_SIGHTINGS)
        # observations are personal data: sealed, sent to the gateway only, never stored
        self.send(Observations(0, part), True)

    def motion_check(self, now):
        if time.ticks_diff(now, self._last_motion_ms) < _MOTION_EVENT_GAP_MS:
            return
        count = self.pir.triggered()
        if count:
            self._last_motion_ms = now
            self.send_event(_EV_MOTION, count)

    # -- what the gateway sends ------------------------------------------------------------

    def _receive(self):
        """Handle what the gateway sent; True when there was anything."""
        messages = self.link.poll()
        for message in messages:
            self.handle(message)
        return bool(messages)

    def handle(self, message):
        if isinstance(message, Ack):
            self.queue.ack(message.counters)
            self.personal_queue.ack(message.counters)
        elif isinstance(message, TimeSync):
            self._clock_offset = message.time - int(time.time())
            self._next_time_request = time.ticks_add(time.ticks_ms(), _TIME_RESYNC_MS)
        elif isinstance(message, ConfigUpdate):
            if "key_epoch" in message.settings:
                self._rekey_step(message)
            else:
                self.apply_config(message)

    def _rekey_step(self, update=None):
        """Take a re-key (`update`) or switch to it (None): rekey.py, a module loaded for the
        moment (docs/firmware/ram.md)."""
        from . import rekey  # noqa: PLC0415

        rekey.step(self, update)
        _forget("rekey")

    def apply_config(self, update):
        if update.version < self.config_version:
            return  # an old update delivered again
        if update.version == self.config_version and update.version:
            # applied already: our answer was lost, so the gateway sends it again
            self.send_event(_EV_CONFIG_APPLIED, update.version)
            return
        s = update.settings
        interval_keys = (
            ("reading_interval_s", "reading_s"),
            ("status_interval_s", "status_s"),
            ("scan_window_s", "scan_window_s"),
        )
        for name, _ in interval_keys:
            if name in s and s[name] < 1:
                self.send_event(_EV_CONFIG_REJECTED, update.version)
                return
        for name, key in interval_keys:
            if name in s:
                self.intervals[key] = s[name]
        if "ble_scan" in s:
            self.ble_scan = s["ble_scan"] and self.scanner is not None
        if "max_retries" in s:
            self.queue.max_retries = s["max_retries"]
            self.personal_queue.max_retries = s["max_retries"]
        self.config_version = update.version
        self._save_settings()
        self.send_event(_EV_CONFIG_APPLIED, update.version)

    def _save_settings(self):
        data = {
            "version": self.config_version,
            "intervals": self.intervals,
            "ble_scan": self.ble_scan,
        }
        with open(self._settings_file, "w") as f:
            json.dump(data, f)

    def _load_settings(self):
        try:
            with open(self._settings_file) as f:
                data = json.load(f)
            self.intervals.update(data["intervals"])
            self.config_version = data["version"]
            self.ble_scan = data["ble_scan"] and self.scanner is not None
        except (OSError, ValueError, KeyError, TypeError):
            pass  # none yet, or damaged: the provisioned configuration stands

    # -- the loop --------------------------------------------------------------------------

    def step(self):
        """One pass of the scheduler. Returns the milliseconds until something is due."""
        if self.wdt is not None:
            self.wdt.feed()
        seals = self._seals
        received = self._receive()
        if self._rekey is not None and not len(self.queue) and not len(self.personal_queue):
            self._rekey_step()
        now = time.ticks_ms()
        # one unit per pass: the gateway's messages (and a configuration update's event),
        # else a cycle (its frames go out as they are sealed), else the oldest frame waiting
        # to be sent again
        if not received and self._seals == seals and not self._work(now):
            self._flush(time.ticks_ms())
        if self.pir is not None:
            self.motion_check(now)
        now = time.ticks_ms()
        wait = min(
            time.ticks_diff(self._next_reading, now), time.ticks_diff(self._next_status, now)
        )
        if self._observations_waiting():
            wait = 0
        if self.ble_scan and not self._scanning:
            wait = min(wait, time.ticks_diff(self._next_scan, now))
        if self.acks:
            wait = min(wait, time.ticks_diff(self._next_time_request, now))
        for queue in (self.queue, self.personal_queue):
            retry = queue.next_due_ms(now)
            if retry is not None:
                wait = min(wait, retry)
        held = self.link.next_due_ms() if hasattr(self.link, "next_due_ms") else None
        if held is not None:  # a frame the duty cycle holds back
            wait = min(wait, held)
        return max(0, wait)

    def _work(self, now):
        """The first unit of work that is due, if any; False when none was. The status and
        the time request come before the readings: they are due at most hourly, so they cannot
        starve the readings, where readings due again after every cycle (a slow link, a short
        interval) would starve them."""
        if time.ticks_diff(now, self._next_status) >= 0:
            self._next_status = time.ticks_add(now, _ms(self.intervals["status_s"]))
            self.status_cycle()
        elif self.acks and time.ticks_diff(now, self._next_time_request) >= 0:
            self._next_time_request = time.ticks_add(now, _TIME_REQUEST_GAP_MS)
            self.send_event(_EV_TIME_REQUEST)
        elif time.ticks_diff(now, self._next_reading) >= 0:
            self._next_reading = time.ticks_add(now, _ms(self.intervals["reading_s"]))
            self.readings_cycle()
        elif self._observations_waiting():
            self.observations_frame()
        elif self.ble_scan and time.ticks_diff(now, self._next_scan) >= 0:
            self.scan_cycle(now)
        else:
            return False
        return True

    def run(self):
        while True:
            wait = self.step()
            idle = not len(self.queue) and not len(self.personal_queue)
            if self.sleep and idle and not self._scanning and wait > 1000:
                import machine  # noqa: PLC0415 - only on a board

                machine.lightsleep(wait)
            else:
                time.sleep_ms(min(wait, _POLL_MS))


def _free_heap():
    gc.collect()
    return gc.mem_free() // 4096 * 4096


def _halves(message):
    """Readings or a status split into two messages of half the values each, or None."""
    if isinstance(message, Readings) and len(message.values) > 1:
        first, second = _split(message.values)
        return Readings(first, message.time), Readings(second, message.time)
    if isinstance(message, Status) and len(message.fields) > 1:
        first, second = _split(message.fields)
        return Status(first), Status(second)
    return None


def _split(items):
    keys = sorted(items)
    half = len(keys) // 2
    return {k: items[k] for k in keys[:half]}, {k: items[k] for k in keys[half:]}


def wait_forever(problem):
    """Say what is wrong on the console, again and again, without rebooting (no crash loop:
    a technician connecting later still sees the reason)."""
    while True:
        print("edgeveil: cannot start:", problem)
        time.sleep(30)


def _forget(name):
    """Drop a module the node needs only to start: once nothing refers to its functions, its
    code is garbage (a few KB of heap each, docs/firmware/ram.md)."""
    sys.modules.pop("edgeveil_node." + name, None)
    package = sys.modules.get("edgeveil_node")
    if package is not None and name in package.__dict__:
        delattr(package, name)


def boot_phases():
    """Start the node from its configuration on flash, in phases with a `yield` after each:
    the configuration and counter, the keys, the hardware, the running Node (yielded last).
    Each phase leaves garbage (modules loading, the configuration checked, keys derived), and
    boot() collects it before the next phase allocates; the heap meter (firmware/host/heap)
    runs the phases one at a time to measure each. A configuration or counter the node cannot
    use is reported on the console for ever."""
    from . import config as config_mod  # noqa: PLC0415

    try:
        config = config_mod.load()
        counter = FrameCounter(epoch=config.epoch)
        config_mod.check_continuity(config, counter)
    except (config_mod.ConfigError, CounterError) as exc:
        wait_forever(str(exc))
        return
    del config_mod
    _forget("config")  # checked: the values stay (config.Settings), the checks go
    yield None
    from protocol import NodeKeys  # noqa: PLC0415

    keys = NodeKeys(config.node_id, config.secret, None, counter.epoch)
    yield None
    from . import hardware  # noqa: PLC0415

    hw = hardware.build(config, keys)
    yield None
    print("edgeveil node", config.node_id, "firmware", FIRMWARE_VERSION, "starting")
    node = Node(
        config,
        keys,
        counter,
        hw.link,
        hw.sensors,
        hw.pir,
        hw.battery,
        hw.scanner,
        hw.reset_cause,
        hw.wdt,
    )
    for quantity in hw.failed:
        node.send_event(_EV_SENSOR_FAULT, quantity)
    _forget("hardware")
    yield node


def boot():
    """The running Node, ready for run()."""
    node = None
    gc.collect()  # what importing the application left
    for node in boot_phases():  # noqa: B007 - the last phase yields the node
        gc.collect()
    return node


def main():
    node = boot()
    if node is not None:
        node.run()
