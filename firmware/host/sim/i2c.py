"""A simulated I2C bus with the methods of machine.I2C, dispatching to chip models by address.

    bus = SimI2C()
    chip = bus.attach(0x76, SimBME280())
    drv = BME280(bus, 0x76, sleep_ms=bus.clock.sleep_ms)

An address with no chip (or a chip with present = False) raises OSError(19) (ENODEV), which is
what MicroPython's machine.I2C raises when nobody acknowledges the address. Chip models raise the
same when they would not acknowledge (busy, no data) and OSError(5) (EIO) for a transfer the real
chip would not accept.

Chip models derive from I2CDevice (command chips: whole transfers) or RegisterDevice (an
auto-incrementing register pointer, like the BME280). Pure Python that also runs under MicroPython.
"""

from .clock import SimClock

ENODEV = 19
EIO = 5


class I2CDevice:
    """Base chip model. write(data) is one write transfer after the address; read(buf) fills
    one read transfer. The *_mem methods are a register-pointer write followed by a transfer."""

    present = True

    def __init__(self):
        self.clock = None
        self.bus = None

    def attached(self, bus):
        self.bus = bus
        self.clock = bus.clock

    def now_ms(self):
        return self.clock.now_ms if self.clock is not None else 0

    def write(self, data):
        raise OSError(EIO)

    def read(self, buf):
        raise OSError(ENODEV)

    def write_mem(self, memaddr, data):
        self.write(bytes([memaddr]) + bytes(data))

    def read_mem(self, memaddr, buf):
        self.write(bytes([memaddr]))
        self.read(buf)


class RegisterDevice(I2CDevice):
    """256 byte-wide registers behind an auto-incrementing pointer."""

    def __init__(self):
        super().__init__()
        self.regs = bytearray(256)
        self.ptr = 0

    def read_reg(self, reg):
        return self.regs[reg]

    def write_reg(self, reg, value):
        self.regs[reg] = value

    def write(self, data):
        if not len(data):
            return
        self.ptr = data[0]
        for i in range(1, len(data)):
            self.write_reg(self.ptr, data[i])
            self.ptr = (self.ptr + 1) & 0xFF

    def read(self, buf):
        for i in range(len(buf)):
            buf[i] = self.read_reg(self.ptr)
            self.ptr = (self.ptr + 1) & 0xFF


class SimI2C:
    def __init__(self, clock=None):
        self.clock = clock if clock is not None else SimClock()
        self.devices = {}
        self.transactions = 0  # transfers attempted, answered or not

    # -- wiring ---------------------------------------------------------------------------

    def attach(self, address, device):
        self.devices[address] = device
        device.attached(self)
        return device

    def detach(self, address):
        self.devices.pop(address, None)

    def _device(self, addr):
        self.transactions += 1
        dev = self.devices.get(addr)
        if dev is None or not dev.present:
            raise OSError(ENODEV)
        return dev

    # -- machine.I2C ----------------------------------------------------------------------

    def scan(self):
        return sorted(a for a, d in self.devices.items() if d.present)

    def readfrom_mem_into(self, addr, memaddr, buf, addrsize=8):
        self._device(addr).read_mem(memaddr, buf)

    def readfrom_mem(self, addr, memaddr, nbytes, addrsize=8):
        buf = bytearray(nbytes)
        self._device(addr).read_mem(memaddr, buf)
        return bytes(buf)

    def writeto_mem(self, addr, memaddr, buf, addrsize=8):
        self._device(addr).write_mem(memaddr, buf)

    def readfrom_into(self, addr, buf, stop=True):
        self._device(addr).read(buf)

    def readfrom(self, addr, nbytes, stop=True):
        buf = bytearray(nbytes)
        self._device(addr).read(buf)
        return bytes(buf)

    def writeto(self, addr, buf, stop=True):
        self._device(addr).write(bytes(buf))
        return len(buf)  # acknowledged bytes

    def writevto(self, addr, vector, stop=True):
        data = b"".join(bytes(v) for v in vector)
        self._device(addr).write(data)
        return len(data)
